//! Leases after expiry, errors that carry secrets, and database outages: an expired lease
//! never comes back to life (heartbeat and complete get 409 `lease_expired`, a lease request
//! takes the task over at once), the heartbeat reports the real time left, stored errors
//! never show a URL's secrets, and with PostgreSQL down the API answers 503 fast while the
//! agents' running tasks survive the outage (one TTL of grace once it is back).

use std::time::{Duration, Instant};

use dataminer_tests::*;
use dataminer_wire::*;
use reqwest::{Method, StatusCode};
use sqlx::Connection;

both!(
    expired_lease_is_refused_and_taken_over,
    heartbeat_reports_the_sooner_of_lease_and_time_limit,
    stored_errors_never_show_url_secrets
);

async fn expired_lease_is_refused_and_taken_over(db: Db) {
    let app = spawn_app_with(db, |c| {
        c.lease_ttl_ms = 1_000;
        c.reaper_interval_ms = 60_000;
    })
    .await;
    app.create_project("p").await;
    app.submit(&["https://example.com/a.mp4"], &["p"]).await;
    let a = app.register("a", &[Stage::Download], &[]).await;
    let b = app.register("b", &[Stage::Download], &[]).await;
    let t = app.lease_one(a, Stage::Download).await;
    // Past the lease (and the start-up grace, which is one TTL too), with no reaper running.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let m = expect_error(app.heartbeat(t.task_id, t.lease_token).await, StatusCode::CONFLICT, "lease_expired").await;
    assert!(m.contains(&format!("your lease token {} is no longer valid", t.lease_token)), "{m}");
    expect_error(app.complete(&t, &result_for(&t, 1, 0)).await, StatusCode::CONFLICT, "lease_expired").await;
    expect_error(app.fail(t.task_id, t.lease_token, "x", true).await, StatusCode::CONFLICT, "lease_expired").await;
    // Another agent takes it over at once, without waiting for the reaper.
    let started = Instant::now();
    let t2 = app.lease_one(b, Stage::Download).await;
    assert!(started.elapsed() < Duration::from_secs(1), "taken over at once");
    assert_eq!((t2.task_id, t2.lease_token, t2.attempt), (t.task_id, t.lease_token + 1, 2));
    let m = expect_error(app.heartbeat(t.task_id, t.lease_token).await, StatusCode::CONFLICT, "lease_lost").await;
    assert_eq!(
        m,
        format!(
            "task {} is leased with lease token {}; your lease token {} is no longer valid",
            t.task_id, t2.lease_token, t.lease_token
        )
    );
    app.complete_ok(&t2, &result_for(&t2, 1, 0)).await;
    app.stop().await;
}

async fn heartbeat_reports_the_sooner_of_lease_and_time_limit(db: Db) {
    let app = spawn_app_with(db, |c| {
        c.lease_ttl_ms = 30_000;
        c.time_limit_download_s = 2;
    })
    .await;
    app.create_project("p").await;
    app.submit(&["https://example.com/a.mp4"], &["p"]).await;
    let a = app.register("a", &[Stage::Download], &[]).await;
    let t = app.lease_one(a, Stage::Download).await;
    let hb: HeartbeatResponse = expect_json(app.heartbeat(t.task_id, t.lease_token).await, StatusCode::OK).await;
    assert!(hb.lease_expires_in_ms <= 2_000 && hb.lease_expires_in_ms > 1_000, "{hb:?}");
    app.stop().await;
}

async fn stored_errors_never_show_url_secrets(db: Db) {
    let app = spawn_app(db).await;
    app.create_project("p").await;
    let v = app.submit(&["https://example.com/a.mp4"], &["p"]).await[0].id;
    let a = app.register("a", &[Stage::Download], &[]).await;
    let t = app.lease_one(a, Stage::Download).await;
    let err = "GET https://h/v.mp4?X-Amz-Signature=SIGSECRET123&part=1 returned 403 (via https://u:PASSWORD@h/x)";
    let _: FailResponse = expect_json(app.fail(t.task_id, t.lease_token, err, false).await, StatusCode::OK).await;
    let mut seen = Vec::new();
    for path in ["/status", "/status?format=text", &format!("/v1/videos/{v}"), "/v1/videos", "/v1/tasks/dead"] {
        let body = app.user(Method::GET, path).send().await.expect("send").text().await.expect("body");
        assert!(!body.contains("SIGSECRET123") && !body.contains("PASSWORD"), "{path} leaks: {body}");
        assert!(!body.contains("%E2%80%A6"), "{path}: the mark is encoded: {body}");
        seen.push(body);
    }
    assert!(seen[2].contains("X-Amz-Signature=…&part=1 returned 403"), "{}", seen[2]);
    app.stop().await;
}

/// PostgreSQL stops accepting connections for longer than the lease TTL: requests get 503
/// `database_unavailable` with Retry-After quickly, and once it is back the agent's running
/// task is still its own (the leases get one TTL of grace).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_answers_503_and_running_tasks_survive() {
    let app = spawn_app_with(Db::Postgres, |c| {
        c.lease_ttl_ms = 1_000;
        c.reaper_interval_ms = 100;
    })
    .await;
    app.create_project("p").await;
    app.submit(&["https://example.com/a.mp4"], &["p"]).await;
    let a = app.register("a", &[Stage::Download], &[]).await;
    let t = app.lease_one(a, Stage::Download).await;
    let url = app.config.database_url.as_ref().map(|s| s.0.clone()).expect("pg url");
    let name = url.rsplit('/').next().expect("db name").to_string();
    let mut admin = sqlx::PgConnection::connect(&pg_admin_url().await).await.expect("admin");
    let set_allowed = |allowed: bool| format!("ALTER DATABASE {name} WITH ALLOW_CONNECTIONS {allowed}");
    sqlx::query(&set_allowed(false)).execute(&mut admin).await.expect("block");
    sqlx::query(&format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
        .execute(&mut admin)
        .await
        .expect("terminate");
    let down = Instant::now();
    for _ in 0..3 {
        let started = Instant::now();
        let r = app.user(Method::GET, "/v1/videos").send().await.expect("send");
        let retry_after = r.headers().get("retry-after").map(|v| v.to_str().unwrap_or("").to_string());
        let status = r.status();
        let body = r.text().await.expect("body");
        assert_eq!((status, retry_after.as_deref()), (StatusCode::SERVICE_UNAVAILABLE, Some("1")), "{body}");
        let r = app.user(Method::GET, "/v1/videos").send().await.expect("send");
        expect_error(r, StatusCode::SERVICE_UNAVAILABLE, "database_unavailable").await;
        assert!(started.elapsed() < Duration::from_secs(3), "answered in {:?}", started.elapsed());
        let r = app.heartbeat(t.task_id, t.lease_token).await;
        expect_error(r, StatusCode::SERVICE_UNAVAILABLE, "database_unavailable").await;
    }
    // Down for longer than the TTL.
    tokio::time::sleep(Duration::from_millis(1_500).saturating_sub(down.elapsed())).await;
    sqlx::query(&set_allowed(true)).execute(&mut admin).await.expect("unblock");
    app.wait_until(Duration::from_secs(10), "readyz green", || async {
        app.client.get(app.url("/readyz")).send().await.is_ok_and(|r| r.status() == StatusCode::OK)
    })
    .await;
    let hb: HeartbeatResponse = expect_json(app.heartbeat(t.task_id, t.lease_token).await, StatusCode::OK).await;
    assert!(!hb.cancelled);
    app.complete_ok(&t, &result_for(&t, 1, 0)).await;
    assert_eq!(app.video(t.input.video_id).await.video.state, VideoState::Downloaded);
    app.stop().await;
}
