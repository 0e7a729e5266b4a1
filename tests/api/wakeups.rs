//! Long polls are woken when work becomes runnable, not by the slow fallback poll (set to
//! 20 s here): when a requeued task's backoff ends (a timer for its `run_after`), and when a
//! dedup completion frees the project's concurrency key for its next dedup.

use std::time::{Duration, Instant};

use dataminer_tests::*;
use dataminer_wire::*;
use reqwest::StatusCode;

both!(a_requeued_task_wakes_waiters_when_its_backoff_ends, a_dedup_completion_wakes_the_projects_next_dedup);

async fn a_requeued_task_wakes_waiters_when_its_backoff_ends(db: Db) {
    let app = spawn_app_with(db, |c| {
        c.poll_fallback_ms = 20_000;
        c.retry_base_ms = 400;
    })
    .await;
    app.create_project("p").await;
    app.submit(&["https://example.com/a.mp4"], &["p"]).await;
    let a = app.register("a", &[Stage::Download], &[]).await;
    let t = app.lease_one(a, Stage::Download).await;
    let f: FailResponse = expect_json(app.fail(t.task_id, t.lease_token, "HTTP 503", true).await, StatusCode::OK).await;
    assert_eq!(f.state, TaskState::Queued);
    let started = Instant::now();
    let got = app.lease(a, &[Stage::Download], 1, 10_000).await;
    let waited = started.elapsed();
    assert_eq!(got.len(), 1, "nothing after {waited:?}");
    assert!(waited >= Duration::from_millis(150), "leased before its backoff ended: {waited:?}");
    assert!(waited < Duration::from_millis(1_500), "woken late: {waited:?}");
    app.stop().await;
}

async fn a_dedup_completion_wakes_the_projects_next_dedup(db: Db) {
    let app = spawn_app_with(db, |c| c.poll_fallback_ms = 20_000).await;
    app.create_project("p").await;
    app.submit(&["https://example.com/a.mp4", "https://example.com/b.mp4"], &["p"]).await;
    let w = app.register("w", &Stage::ALL, &DEFAULT_MODELS).await;
    for (i, stage) in [Stage::Download, Stage::Download, Stage::Extract, Stage::Extract, Stage::Filter, Stage::Filter]
        .into_iter()
        .enumerate()
    {
        let t = app.lease_one(w, stage).await;
        app.complete_ok(&t, &result_for(&t, 10 + i as u64 / 2 + (i as u64 % 2) * 100, 3)).await;
    }
    let first = app.lease_one(w, Stage::Dedup).await;
    let other = app.register("other", &[Stage::Dedup], &DEFAULT_MODELS).await;
    let waiter = async {
        let started = Instant::now();
        let got = app.lease(other, &[Stage::Dedup], 1, 10_000).await;
        (got, started.elapsed())
    };
    let completer = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        app.complete_ok(&first, &dedup_result(&first, 3, 2, None)).await;
    };
    let ((got, waited), ()) = tokio::join!(waiter, completer);
    assert_eq!(got.len(), 1, "the next dedup was not handed out ({waited:?})");
    assert_ne!(got[0].task_id, first.task_id);
    assert!(waited < Duration::from_millis(1_500), "woken late: {waited:?}");
    app.stop().await;
}
