//! Table-driven state transitions: for every stage, the task and its subject (the video, the
//! extraction, or the project-video) move through lease → release → lease → retryable fail → lease → fatal
//! fail exactly as the table says.

use dataminer_tests::*;
use dataminer_wire::*;
use reqwest::StatusCode;

both!(every_stage_follows_the_transition_table);

#[derive(Debug, Clone, Copy)]
enum Step {
    Lease,
    Release,
    FailRetryable,
    FailFatal,
}

/// (step, task state after it, subject state after it: `None` = the stage's waiting state,
/// `Some(true)` = its running state, `Some(false)` = FAILED)
const TABLE: &[(Step, TaskState, Option<bool>)] = &[
    (Step::Lease, TaskState::Leased, Some(true)),
    (Step::Release, TaskState::Queued, None),
    (Step::Lease, TaskState::Leased, Some(true)),
    (Step::FailRetryable, TaskState::Queued, None),
    (Step::Lease, TaskState::Leased, Some(true)),
    (Step::FailFatal, TaskState::Dead, Some(false)),
];

fn expected_subject(stage: Stage, after: Option<bool>) -> &'static str {
    let (waiting, running) = match stage {
        Stage::Download => ("PENDING", "DOWNLOADING"),
        Stage::Extract => ("PENDING", "EXTRACTING"),
        Stage::Filter => ("PENDING", "FILTERING"),
        Stage::Dedup => ("FILTERED", "DEDUPING"),
        Stage::Detect => ("DEDUPED", "DETECTING"),
    };
    match after {
        None => waiting,
        Some(true) => running,
        Some(false) => "FAILED",
    }
}

async fn subject_state(app: &TestApp, video: i64, stage: Stage) -> (TaskState, String) {
    let d = app.video(video).await;
    let task = d.tasks.iter().rev().find(|t| t.stage == stage).expect("task of the stage");
    let subject = if stage.is_project_stage() {
        serde_json::to_value(d.projects[0].state).expect("json").as_str().unwrap_or_default().to_string()
    } else if stage == Stage::Extract {
        let e = d.projects[0].extraction.as_ref().expect("extraction");
        assert_eq!(Some(e.id), task.extraction_id, "the extract task produces the project-video's extraction");
        e.state.as_str().to_string()
    } else {
        serde_json::to_value(d.video.state).expect("json").as_str().unwrap_or_default().to_string()
    };
    (task.state, subject)
}

async fn every_stage_follows_the_transition_table(db: Db) {
    let app = spawn_app_with(db, |c| c.retry_base_ms = 1).await;
    app.create_project("p").await;
    let agent = app.register("w1", &Stage::ALL, &DEFAULT_MODELS).await;
    for (n, stage) in Stage::ALL.into_iter().enumerate() {
        let v = app.submit(&[&format!("https://example.com/{n}.mp4")], &["p"]).await[0].id;
        // Complete the stages before this one.
        for prior in Stage::ALL.into_iter().take(n) {
            let t = app.lease_one(agent, prior).await;
            assert_eq!(t.input.video_id, v);
            app.complete_ok(&t, &result_for(&t, 1000 + n as u64, 3)).await;
        }
        let mut held: Option<LeasedTask> = None;
        for (i, (step, task_state, subject)) in TABLE.iter().enumerate() {
            match step {
                Step::Lease => held = Some(app.lease_one(agent, stage).await),
                Step::Release => {
                    let t = held.take().expect("held");
                    assert_eq!(app.release(t.task_id, t.lease_token).await.status(), StatusCode::NO_CONTENT);
                }
                Step::FailRetryable | Step::FailFatal => {
                    let t = held.take().expect("held");
                    let retryable = matches!(step, Step::FailRetryable);
                    let _: FailResponse =
                        expect_json(app.fail(t.task_id, t.lease_token, "boom", retryable).await, StatusCode::OK).await;
                }
            }
            let (got_task, got_subject) = subject_state(&app, v, stage).await;
            assert_eq!(got_task, *task_state, "{stage} step {i} {step:?}: task state");
            assert_eq!(got_subject, expected_subject(stage, *subject), "{stage} step {i} {step:?}: subject state");
        }
    }
    app.stop().await;
}
