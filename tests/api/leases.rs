//! The lease protocol: fencing tokens, idempotent completion, release, retryable and fatal
//! failure, cancellation through heartbeats, priority, capabilities, the long poll, batch
//! completion and result validation.

use std::time::{Duration, Instant};

use dataminer_tests::*;
use dataminer_wire::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

both!(
    stale_tokens_are_refused_and_change_nothing,
    complete_is_idempotent_for_the_same_token,
    release_gives_the_attempt_back,
    retryable_failures_back_off_then_die,
    cancelled_video_is_told_through_heartbeat,
    priority_then_age,
    capabilities_gate_platform_downloads,
    long_poll_wakes_promptly_on_submit,
    registration_and_protocol_version,
    completion_results_are_validated,
    batch_complete_judges_each_item,
);

async fn setup(db: Db) -> (TestApp, i64, i64) {
    let app = spawn_app(db).await;
    app.create_project("p").await;
    let v = app.submit(&["https://example.com/a.mp4"], &["p"]).await;
    let agent = app.register("w1", &Stage::ALL, &DEFAULT_MODELS).await;
    (app, agent, v[0].id)
}

async fn stale_tokens_are_refused_and_change_nothing(db: Db) {
    let (app, agent, vid) = setup(db).await;
    let t = app.lease_one(agent, Stage::Download).await;
    assert_eq!(t.lease_token, 1);
    // Give it back and lease it again: the token moves on, the old one is stale.
    assert_eq!(app.release(t.task_id, t.lease_token).await.status(), StatusCode::NO_CONTENT);
    let t2 = app.lease_one(agent, Stage::Download).await;
    assert_eq!((t2.task_id, t2.lease_token), (t.task_id, 2));
    let old = t.lease_token;
    expect_error(app.heartbeat(t.task_id, old).await, StatusCode::CONFLICT, "lease_lost").await;
    expect_error(app.complete(&t, &result_for(&t, 1, 0)).await, StatusCode::CONFLICT, "lease_lost").await;
    expect_error(app.fail(t.task_id, old, "x", false).await, StatusCode::CONFLICT, "lease_lost").await;
    expect_error(app.release(t.task_id, old).await, StatusCode::CONFLICT, "lease_lost").await;
    expect_error(app.heartbeat(t.task_id, 99).await, StatusCode::CONFLICT, "lease_lost").await;
    expect_error(app.heartbeat(424242, 1).await, StatusCode::NOT_FOUND, "not_found").await;
    let d = app.video(vid).await;
    assert_eq!(d.video.state, VideoState::Downloading);
    assert_eq!(d.tasks[0].state, TaskState::Leased);
    assert_eq!(d.tasks[0].attempts, 1, "the release gave attempt 1 back; attempt 2 is the current one");
    assert!(d.tasks[0].last_error.is_none(), "a refused fail wrote nothing");
    // The current holder is unaffected.
    let hb: HeartbeatResponse = expect_json(app.heartbeat(t2.task_id, t2.lease_token).await, StatusCode::OK).await;
    assert!(!hb.cancelled);
    app.complete_ok(&t2, &result_for(&t2, 1, 0)).await;
    app.stop().await;
}

async fn complete_is_idempotent_for_the_same_token(db: Db) {
    let (app, agent, vid) = setup(db).await;
    let t = app.lease_one(agent, Stage::Download).await;
    let r = result_for(&t, 1, 0);
    let first = app.complete_ok(&t, &r).await;
    assert!(!first.duplicate);
    let second = app.complete_ok(&t, &r).await;
    assert!(second.duplicate, "a repeated completion is acknowledged as a duplicate");
    let d = app.video(vid).await;
    assert_eq!(d.tasks.iter().filter(|t| t.stage == Stage::Extract).count(), 1, "successor enqueued once");
    // Any other token on the finished task is a conflict.
    expect_error(app.complete_token(t.task_id, t.lease_token + 1, &r).await, StatusCode::CONFLICT, "lease_lost").await;
    app.stop().await;
}

async fn release_gives_the_attempt_back(db: Db) {
    let (app, agent, vid) = setup(db).await;
    for _ in 0..7 {
        // More releases than max_attempts: a release never counts.
        let t = app.lease_one(agent, Stage::Download).await;
        assert_eq!(t.attempt, 1);
        assert_eq!(app.video(vid).await.video.state, VideoState::Downloading);
        assert_eq!(app.release(t.task_id, t.lease_token).await.status(), StatusCode::NO_CONTENT);
        let d = app.video(vid).await;
        assert_eq!(d.video.state, VideoState::Pending);
        assert_eq!(d.tasks[0].state, TaskState::Queued);
        assert_eq!(d.tasks[0].attempts, 0);
    }
    app.stop().await;
}

async fn retryable_failures_back_off_then_die(db: Db) {
    let app = spawn_app_with(db, |c| {
        c.max_attempts = 3;
        // Long enough that "not leasable before its backoff" holds on a loaded CI machine.
        c.retry_base_ms = 1_500;
        c.retry_max_ms = 10_000;
    })
    .await;
    app.create_project("p").await;
    let v = app.submit(&["https://example.com/a.mp4"], &["p"]).await;
    let agent = app.register("w1", &Stage::ALL, &DEFAULT_MODELS).await;
    for attempt in 1..=3u32 {
        let mut got = app.lease(agent, &[Stage::Download], 1, 8_000).await;
        assert_eq!(got.len(), 1, "attempt {attempt} was not handed out after its backoff");
        let t = got.remove(0);
        assert_eq!(t.attempt, attempt);
        let f: FailResponse =
            expect_json(app.fail(t.task_id, t.lease_token, "connection reset", true).await, StatusCode::OK).await;
        if attempt < 3 {
            assert_eq!(f.state, TaskState::Queued);
            let d = app.video(v[0].id).await;
            assert_eq!(d.video.state, VideoState::Pending, "back to waiting");
            let wait = f.run_after_ms.expect("run_after") - d.tasks[0].updated_at_ms;
            let base = 1_500 * (1 << (attempt - 1));
            assert!(wait >= base / 2 && wait <= base, "backoff {wait} ms for attempt {attempt}");
            // Not leasable before its backoff.
            assert!(app.lease(agent, &[Stage::Download], 1, 0).await.is_empty());
        } else {
            assert_eq!(f.state, TaskState::Dead);
        }
    }
    let d = app.video(v[0].id).await;
    assert_eq!(d.video.state, VideoState::Failed);
    assert_eq!(d.tasks[0].state, TaskState::Dead);
    assert!(d.tasks[0].last_error.as_deref().is_some_and(|e| e.contains("gave up after 3 attempts")));
    assert_eq!(d.projects[0].state, ProjectVideoState::Failed);
    // A user retries the dead task.
    let r: TaskView = expect_json(
        app.user(Method::POST, &format!("/v1/tasks/{}/retry", d.tasks[0].id)).send().await.expect("send"),
        StatusCode::OK,
    )
    .await;
    assert_eq!((r.state, r.attempts), (TaskState::Queued, 0));
    let d = app.video(v[0].id).await;
    assert_eq!(d.video.state, VideoState::Pending);
    assert_eq!(d.projects[0].state, ProjectVideoState::Pending);
    expect_error(
        app.user(Method::POST, &format!("/v1/tasks/{}/retry", d.tasks[0].id)).send().await.expect("send"),
        StatusCode::CONFLICT,
        "not_retryable",
    )
    .await;
    let t = app.lease_one(agent, Stage::Download).await;
    assert_eq!(t.attempt, 1);
    app.stop().await;
}

async fn cancelled_video_is_told_through_heartbeat(db: Db) {
    let (app, agent, vid) = setup(db).await;
    let t = app.lease_one(agent, Stage::Download).await;
    let d: VideoDetail = expect_json(
        app.user(Method::POST, &format!("/v1/videos/{vid}/cancel")).send().await.expect("send"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(d.video.state, VideoState::Cancelled);
    assert_eq!(d.projects[0].state, ProjectVideoState::Cancelled);
    assert_eq!(d.tasks[0].state, TaskState::Cancelled);
    let hb: HeartbeatResponse = expect_json(app.heartbeat(t.task_id, t.lease_token).await, StatusCode::OK).await;
    assert!(hb.cancelled);
    expect_error(app.complete(&t, &result_for(&t, 1, 0)).await, StatusCode::CONFLICT, "task_cancelled").await;
    expect_error(app.fail(t.task_id, t.lease_token, "x", true).await, StatusCode::CONFLICT, "task_cancelled").await;
    assert!(app.lease(agent, &Stage::ALL, 5, 0).await.is_empty());
    assert_eq!(app.project_status("p").await.state, ProjectState::Complete, "cancelled is terminal");
    // Retrying brings it back.
    let d: VideoDetail = expect_json(
        app.user(Method::POST, &format!("/v1/videos/{vid}/retry")).send().await.expect("send"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(d.video.state, VideoState::Pending);
    assert_eq!(d.projects[0].state, ProjectVideoState::Pending);
    let t2 = app.lease_one(agent, Stage::Download).await;
    assert!(t2.lease_token > t.lease_token);
    app.stop().await;
}

async fn priority_then_age(db: Db) {
    let app = spawn_app(db).await;
    app.create_project("p").await;
    let low =
        app.submit_with_priority(&["https://example.com/low1.mp4", "https://example.com/low2.mp4"], &["p"], 0).await;
    let high = app.submit_with_priority(&["https://example.com/high.mp4"], &["p"], 10).await;
    let agent = app.register("w1", &Stage::ALL, &DEFAULT_MODELS).await;
    let order: Vec<i64> = app.lease(agent, &[Stage::Download], 3, 0).await.iter().map(|t| t.input.video_id).collect();
    assert_eq!(order, vec![high[0].id, low[0].id, low[1].id]);
    app.stop().await;
}

async fn capabilities_gate_platform_downloads(db: Db) {
    let app = spawn_app(db).await;
    app.create_project("p").await;
    let v = app.submit(&["https://www.youtube.com/watch?v=abc"], &["p"]).await;
    let plain = app.register("plain", &[Stage::Download], &["ffmpeg"]).await;
    let ytdlp = app.register("ytdlp", &[Stage::Download], &["ffmpeg", "yt-dlp"]).await;
    assert!(app.lease(plain, &[Stage::Download], 1, 200).await.is_empty(), "needs yt-dlp");
    let t = app.lease_one(ytdlp, Stage::Download).await;
    assert_eq!(t.input.video_id, v[0].id);
    assert_eq!(t.input.source_kind.as_deref(), Some("platform"));
    app.stop().await;
}

async fn long_poll_wakes_promptly_on_submit(db: Db) {
    let app = spawn_app_with(db, |c| c.poll_fallback_ms = 10_000).await;
    app.create_project("p").await;
    let agent = app.register("w1", &Stage::ALL, &DEFAULT_MODELS).await;
    let waiter = {
        let client = app.client.clone();
        let url = app.url("/v1/leases");
        tokio::spawn(async move {
            let start = Instant::now();
            let r = client
                .post(url)
                .bearer_auth(AGENT_TOKEN)
                .json(&json!({"agent_id": agent, "stages": ["download"], "max_tasks": 1, "wait_ms": 8000}))
                .send()
                .await
                .expect("send");
            let body: LeaseResponse = r.json().await.expect("json");
            (body.tasks.len(), Instant::now(), start)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await; // let the lease request start waiting
    let submitted = Instant::now();
    app.submit(&["https://example.com/a.mp4"], &["p"]).await;
    let (n, got_at, started) = waiter.await.expect("join");
    assert_eq!(n, 1);
    let latency = got_at.duration_since(submitted);
    // The fallback poll is 10 s, so only the wake-up can make this fast.
    assert!(latency < Duration::from_secs(2), "woken after {latency:?}");
    assert!(got_at.duration_since(started) >= Duration::from_millis(250), "it did wait");
    // An empty wait ends at its deadline.
    let start = Instant::now();
    assert!(app.lease(agent, &[Stage::Detect], 1, 300).await.is_empty());
    assert!(start.elapsed() >= Duration::from_millis(290));
    app.stop().await;
}

async fn registration_and_protocol_version(db: Db) {
    let app = spawn_app(db).await;
    let id1 = app.register("w1", &[Stage::Download], &[]).await;
    let id2 = app.register("w1", &[Stage::Download, Stage::Extract], &["yt-dlp"]).await;
    assert_eq!(id1, id2, "re-registering keeps the identity");
    let reg = |body: serde_json::Value| app.agent(Method::POST, "/v1/agents/register").json(&body).send();
    let msg = expect_error(
        reg(json!({"name": "old", "stages": ["download"], "version": "0", "protocol_version": PROTOCOL_VERSION + 1}))
            .await
            .expect("send"),
        StatusCode::BAD_REQUEST,
        "protocol_version_unsupported",
    )
    .await;
    assert!(msg.contains("upgrade"), "{msg}");
    expect_error(
        reg(json!({"name": "bad name!", "stages": ["download"], "version": "0", "protocol_version": PROTOCOL_VERSION}))
            .await
            .expect("send"),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_agent",
    )
    .await;
    expect_error(
        reg(json!({"name": "x", "stages": ["transcode"], "version": "0", "protocol_version": PROTOCOL_VERSION}))
            .await
            .expect("send"),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_body",
    )
    .await;
    let lease = |body: serde_json::Value| app.agent(Method::POST, "/v1/leases").json(&body).send();
    expect_error(
        lease(json!({"agent_id": 9999, "stages": ["download"]})).await.expect("send"),
        StatusCode::CONFLICT,
        "agent_not_registered",
    )
    .await;
    expect_error(
        lease(json!({"agent_id": id1, "stages": ["detect"]})).await.expect("send"),
        StatusCode::UNPROCESSABLE_ENTITY,
        "stage_not_registered",
    )
    .await;
    for n in [0, 65] {
        expect_error(
            lease(json!({"agent_id": id1, "stages": ["download"], "max_tasks": n})).await.expect("send"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_lease",
        )
        .await;
    }
    let agents: Vec<AgentView> =
        expect_json(app.user(Method::GET, "/v1/agents").send().await.expect("send"), StatusCode::OK).await;
    assert_eq!(agents.len(), 1);
    assert!(agents[0].alive);
    assert_eq!(agents[0].capabilities, vec!["yt-dlp".to_string()]);
    app.stop().await;
}

async fn completion_results_are_validated(db: Db) {
    let (app, agent, vid) = setup(db).await;
    let t = app.lease_one(agent, Stage::Download).await;
    let d = &t.attempt_dir;
    let good = result_for(&t, 1, 0);
    let with = |f: &dyn Fn(&mut StageResult)| {
        let mut r = good.clone();
        f(&mut r);
        r
    };
    let cases: Vec<(StageResult, &str)> = vec![
        (
            StageResult::Extract { frames_dir: d.clone(), manifest_path: format!("{d}/m.json"), frame_count: 3 },
            "result_stage_mismatch",
        ),
        (
            with(&|r| {
                if let StageResult::Download { file_path, .. } = r {
                    *file_path = "videos/other/1.1/x.mp4".into()
                }
            }),
            "output_outside_attempt_dir",
        ),
        (
            with(&|r| {
                if let StageResult::Download { file_path, .. } = r {
                    *file_path = format!("{d}/../../x.mp4")
                }
            }),
            "output_outside_attempt_dir",
        ),
        (
            with(&|r| {
                if let StageResult::Download { sha256, .. } = r {
                    *sha256 = "XYZ".into()
                }
            }),
            "invalid_result",
        ),
        (
            with(&|r| {
                if let StageResult::Download { size_bytes, .. } = r {
                    *size_bytes = -1
                }
            }),
            "invalid_result",
        ),
    ];
    for (r, code) in cases {
        expect_error(app.complete(&t, &r).await, StatusCode::UNPROCESSABLE_ENTITY, code).await;
    }
    let body = app
        .agent(Method::POST, &format!("/v1/tasks/{}/complete", t.task_id))
        .json(&json!({"lease_token": t.lease_token, "result": {"stage": "download", "file_path": "x"}}))
        .send()
        .await
        .expect("send");
    expect_error(body, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body").await;
    // Still leased, nothing recorded; the good result is then accepted.
    let v = app.video(vid).await;
    assert_eq!(v.tasks[0].state, TaskState::Leased);
    assert!(v.video.sha256.is_none());
    app.complete_ok(&t, &good).await;
    let t = app.lease_one(agent, Stage::Extract).await;
    let zero = StageResult::Extract {
        frames_dir: t.attempt_dir.clone(),
        manifest_path: format!("{}/m.json", t.attempt_dir),
        frame_count: 0,
    };
    let msg = expect_error(app.complete(&t, &zero).await, StatusCode::UNPROCESSABLE_ENTITY, "invalid_result").await;
    assert!(msg.contains("zero-frame"), "{msg}");
    app.complete_ok(&t, &result_for(&t, 1, 0)).await;
    let t = app.lease_one(agent, Stage::Filter).await;
    let mut too_many = filter_result(&t, &[1, 2, 3, 4]);
    if let StageResult::Filter { frames_in, .. } = &mut too_many {
        *frames_in = 3;
    }
    expect_error(app.complete(&t, &too_many).await, StatusCode::UNPROCESSABLE_ENTITY, "invalid_result").await;
    app.stop().await;
}

async fn batch_complete_judges_each_item(db: Db) {
    let app = spawn_app(db).await;
    app.create_project("p").await;
    app.submit(&["https://example.com/1.mp4", "https://example.com/2.mp4", "https://example.com/3.mp4"], &["p"]).await;
    let agent = app.register("w1", &Stage::ALL, &DEFAULT_MODELS).await;
    let ts = app.lease(agent, &[Stage::Download], 3, 1_000).await;
    assert_eq!(ts.len(), 3);
    let body = json!({"completions": [
        {"task_id": ts[0].task_id, "lease_token": ts[0].lease_token, "result": result_for(&ts[0], 1, 0)},
        {"task_id": ts[1].task_id, "lease_token": ts[1].lease_token + 5, "result": result_for(&ts[1], 2, 0)},
        {"task_id": ts[2].task_id, "lease_token": ts[2].lease_token, "result": result_for(&ts[2], 3, 0)},
        {"task_id": 999999, "lease_token": 1, "result": result_for(&ts[2], 3, 0)},
        {"task_id": ts[0].task_id, "lease_token": ts[0].lease_token, "result": result_for(&ts[0], 1, 0)},
    ]});
    let r: BatchCompleteResponse = expect_json(
        app.agent(Method::POST, "/v1/tasks/complete").json(&body).send().await.expect("send"),
        StatusCode::OK,
    )
    .await;
    let statuses: Vec<u16> = r.results.iter().map(|o| o.status).collect();
    assert_eq!(statuses, vec![200, 409, 200, 404, 200]);
    assert!(r.results[4].duplicate);
    assert_eq!(r.results[1].error.as_ref().map(|e| e.code.as_str()), Some("lease_lost"));
    let extracts = app.lease(agent, &[Stage::Extract], 5, 500).await;
    assert_eq!(extracts.len(), 2, "one successor per accepted completion");
    let too_many: Vec<serde_json::Value> =
        (0..65).map(|_| json!({"task_id": 1, "lease_token": 1, "result": result_for(&ts[0], 1, 0)})).collect();
    expect_error(
        app.agent(Method::POST, "/v1/tasks/complete")
            .json(&json!({"completions": too_many}))
            .send()
            .await
            .expect("send"),
        StatusCode::UNPROCESSABLE_ENTITY,
        "batch_too_large",
    )
    .await;
    app.stop().await;
}
