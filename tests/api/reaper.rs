//! The reaper: expired leases are requeued with backoff and die after max_attempts;
//! heartbeats keep a lease alive; the hard time limit holds whatever the heartbeats say.
//! Lease expiry is decided by the database clock, so these use short real TTLs.

use std::time::{Duration, Instant};

use dataminer_tests::*;
use dataminer_wire::*;
use reqwest::StatusCode;

both!(expired_leases_are_requeued_then_dead, heartbeats_keep_a_lease, time_limit_is_hard);

async fn expired_leases_are_requeued_then_dead(db: Db) {
    let app = spawn_app_with(db, |c| {
        c.lease_ttl_ms = 300;
        c.reaper_interval_ms = 50;
        c.max_attempts = 2;
        c.retry_base_ms = 200;
    })
    .await;
    app.create_project("p").await;
    let v = app.submit(&["https://example.com/a.mp4"], &["p"]).await;
    let agent = app.register("w1", &Stage::ALL, &DEFAULT_MODELS).await;
    let t1 = app.lease_one(agent, Stage::Download).await;
    let leased_at = Instant::now();
    // Say nothing: the lease expires and the reaper requeues it. Within TTL + reaper
    // interval + the first backoff (≤ base) a second lease gets it, with a new token.
    let t2 = app.lease_one(agent, Stage::Download).await;
    let waited = leased_at.elapsed();
    assert!(waited >= Duration::from_millis(300), "requeued before the lease expired: {waited:?}");
    // TTL + reaper interval + first backoff + the waiter's fallback poll (500 ms), with slack
    // for a loaded machine.
    assert!(waited < Duration::from_millis(300 + 50 + 200 + 500 + 1_500), "too slow: {waited:?}");
    assert_eq!(t2.task_id, t1.task_id);
    assert_eq!((t2.lease_token, t2.attempt), (2, 2));
    let d = app.video(v[0].id).await;
    assert!(
        d.tasks[0].last_error.as_deref().is_some_and(|e| e.contains("lost its lease")),
        "{:?}",
        d.tasks[0].last_error
    );
    // The first holder is fenced out.
    expect_error(app.complete(&t1, &result_for(&t1, 1, 0)).await, StatusCode::CONFLICT, "lease_lost").await;
    // Second expiry is the last attempt: dead, video FAILED, project-video FAILED.
    app.wait_until(Duration::from_secs(5), "task dead", || async {
        app.video(v[0].id).await.tasks[0].state == TaskState::Dead
    })
    .await;
    let d = app.video(v[0].id).await;
    assert_eq!(d.video.state, VideoState::Failed);
    assert_eq!(d.projects[0].state, ProjectVideoState::Failed);
    expect_error(app.complete(&t2, &result_for(&t2, 1, 0)).await, StatusCode::CONFLICT, "lease_lost").await;
    let st = app.status().await;
    assert_eq!(st.tasks["download"]["dead"], 1);
    app.stop().await;
}

async fn heartbeats_keep_a_lease(db: Db) {
    let app = spawn_app_with(db, |c| {
        c.lease_ttl_ms = 1_000;
        c.reaper_interval_ms = 50;
    })
    .await;
    app.create_project("p").await;
    app.submit(&["https://example.com/a.mp4"], &["p"]).await;
    let agent = app.register("w1", &Stage::ALL, &DEFAULT_MODELS).await;
    let t = app.lease_one(agent, Stage::Download).await;
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let hb: HeartbeatResponse = expect_json(app.heartbeat(t.task_id, t.lease_token).await, StatusCode::OK).await;
        assert!(!hb.cancelled);
        assert_eq!(hb.lease_expires_in_ms, 1_000);
    }
    // 2.4 s later — more than two TTLs — the lease still holds and the completion is accepted.
    app.complete_ok(&t, &result_for(&t, 1, 0)).await;
    app.stop().await;
}

async fn time_limit_is_hard(db: Db) {
    let app = spawn_app_with(db, |c| {
        c.lease_ttl_ms = 10_000;
        c.reaper_interval_ms = 50;
        c.time_limit_download_s = 1;
        c.max_attempts = 1;
    })
    .await;
    app.create_project("p").await;
    let v = app.submit(&["https://example.com/a.mp4"], &["p"]).await;
    let agent = app.register("w1", &Stage::ALL, &DEFAULT_MODELS).await;
    let t = app.lease_one(agent, Stage::Download).await;
    assert_eq!(t.time_limit_ms, 1_000);
    let start = Instant::now();
    // Heartbeats do not extend past the time limit.
    loop {
        let r = app.heartbeat(t.task_id, t.lease_token).await;
        if r.status() == StatusCode::CONFLICT {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "time limit never enforced");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(start.elapsed() >= Duration::from_millis(900));
    let d = app.video(v[0].id).await;
    assert_eq!(d.tasks[0].state, TaskState::Dead);
    assert!(d.tasks[0].last_error.as_deref().is_some_and(|e| e.contains("time limit")), "{:?}", d.tasks[0].last_error);
    app.stop().await;
}
