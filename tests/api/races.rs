//! Interleavings on PostgreSQL, stepped with a second connection: the test holds a row lock
//! that parks one transaction at a known point, starts the other, and then lets the first go.
//! Each case is one the locking rule in `store/stages/mod.rs` closes (owners locked before a
//! subject is decided or work is enqueued; every subject update guarded): without it the
//! second transaction commits in between and work is stranded or resurrected.

use std::time::Duration;

use dataminer_tests::*;
use dataminer_wire::*;
use reqwest::{Method, StatusCode};
use sqlx::{Connection, PgConnection};

/// The test's own connection to the app's database.
async fn connect(app: &TestApp) -> (PgConnection, String) {
    let url = app.config.database_url.as_ref().map(|s| s.0.clone()).expect("postgres url");
    let name = url.rsplit('/').next().expect("db name").to_string();
    (PgConnection::connect(&url).await.expect("connect"), name)
}

/// Backends of this database waiting on a lock.
async fn lock_waiters(admin: &mut PgConnection, db: &str) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'")
        .bind(db)
        .fetch_one(admin)
        .await
        .expect("pg_stat_activity")
}

/// Waits (bounded) until at least `n` backends wait on locks; returns whether they did.
async fn until_waiters(admin: &mut PgConnection, db: &str, n: i64, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if lock_waiters(admin, db).await >= n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// The step that lets the parked transaction go: once a second backend waits on a lock (with
/// the locking rule the other transaction waits for the parked one) or after 2 s (without it,
/// the other one commits in between and nothing else waits), the test's connection rolls back.
async fn release_when_second_waits(admin: &mut PgConnection, db: &str, hold: &mut PgConnection) {
    until_waiters(admin, db, 2, Duration::from_secs(2)).await;
    sqlx::query("ROLLBACK").execute(hold).await.expect("release");
}

/// Parks a join on the second URL of its batch (`z.mp4`): the test's connection inserts that
/// video in an open transaction, so the join's insert waits for it.
async fn hold_second_url(hold: &mut PgConnection) {
    sqlx::query("BEGIN").execute(&mut *hold).await.expect("begin");
    sqlx::query(
        "INSERT INTO videos (url, url_key, source_kind, origin, state, priority, extract_config, created_at, updated_at) \
         VALUES ('https://example.com/z.mp4', 'https://example.com/z.mp4', 'direct', 'api', 'PENDING', 0, '{}', 0, 0)",
    )
    .execute(hold)
    .await
    .expect("hold");
}

async fn setup(stages_done: &[Stage]) -> (TestApp, i64, i64) {
    let app = spawn_app(Db::Postgres).await;
    app.create_project("p").await;
    let v = app.submit(&["https://example.com/a.mp4"], &["p"]).await[0].id;
    let agent = app.register("w1", &Stage::ALL, &DEFAULT_MODELS).await;
    for s in stages_done {
        let t = app.lease_one(agent, *s).await;
        app.complete_ok(&t, &result_for(&t, 1, 3)).await;
    }
    (app, v, agent)
}

/// Cancel vs completion: the project cancel has cancelled the project's tasks but not yet
/// its project-videos when an extract completion enqueues a filter for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_project_vs_extract_completion() {
    let (app, v, agent) = setup(&[Stage::Download]).await;
    let ex = app.lease_one(agent, Stage::Extract).await;
    let (mut hold, db) = connect(&app).await;
    let (mut admin, _) = connect(&app).await;
    sqlx::query("BEGIN").execute(&mut hold).await.expect("begin");
    sqlx::query("SELECT 1 FROM project_videos WHERE video_id = $1 FOR UPDATE")
        .bind(v)
        .execute(&mut hold)
        .await
        .expect("hold");
    let cancel = app.user(Method::POST, "/v1/projects/p/cancel").send();
    let steps = async {
        assert!(until_waiters(&mut admin, &db, 1, Duration::from_secs(10)).await, "cancel parked");
        let result = result_for(&ex, 1, 0);
        let done = app.complete(&ex, &result);
        let release = release_when_second_waits(&mut admin, &db, &mut hold);
        let (r, ()) = tokio::join!(done, release);
        r
    };
    let (c, r) = tokio::join!(cancel, steps);
    assert_eq!(c.expect("cancel").status(), StatusCode::OK);
    assert_eq!(r.status(), StatusCode::OK);
    let st = app.status().await;
    assert_eq!(
        (st.tasks["filter"]["queued"], st.tasks["filter"]["leased"]),
        (0, 0),
        "work enqueued for a cancelled project"
    );
    assert_eq!(app.video(v).await.projects[0].state, ProjectVideoState::Cancelled);
    assert!(app.lease(agent, &[Stage::Filter], 5, 0).await.is_empty());
    app.stop().await;
}

/// Join vs extract completion: a project joins the video (its project-video attached to the
/// extraction, not yet committed) while that extraction completes. The join is parked on a
/// second URL of its batch that the test's connection is inserting; the completion must wait
/// for it and enqueue the joining project-video's filter too, or it waits forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_vs_extract_completion() {
    let (app, v, agent) = setup(&[Stage::Download]).await;
    app.create_project("b").await;
    let ex = app.lease_one(agent, Stage::Extract).await;
    let (mut hold, db) = connect(&app).await;
    let (mut admin, _) = connect(&app).await;
    hold_second_url(&mut hold).await;
    let body =
        serde_json::json!({"urls": ["https://example.com/a.mp4", "https://example.com/z.mp4"], "projects": ["b"]});
    let join = app.user(Method::POST, "/v1/videos").json(&body).send();
    let steps = async {
        assert!(until_waiters(&mut admin, &db, 1, Duration::from_secs(10)).await, "join parked");
        let result = result_for(&ex, 1, 0);
        let done = app.complete(&ex, &result);
        let release = release_when_second_waits(&mut admin, &db, &mut hold);
        let (r, ()) = tokio::join!(done, release);
        r
    };
    let (j, r) = tokio::join!(join, steps);
    assert_eq!((r.status(), j.expect("join").status()), (StatusCode::OK, StatusCode::OK));
    let filters = app.lease(agent, &[Stage::Filter], 5, 1_000).await;
    let mut projects: Vec<_> = filters.iter().filter_map(|f| f.input.project.clone()).collect();
    projects.sort();
    assert_eq!(projects, ["b", "p"], "the joining project-video was stranded: {:?}", app.video(v).await.projects);
    app.stop().await;
}

/// Retry vs cancel: a user retries a dead filter task while another cancels its project;
/// the retried task must not run in the cancelled project.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_task_vs_cancel_project() {
    let (app, _v, agent) = setup(&[Stage::Download, Stage::Extract]).await;
    let f = app.lease_one(agent, Stage::Filter).await;
    let _: FailResponse =
        expect_json(app.fail(f.task_id, f.lease_token, "bad frames", false).await, StatusCode::OK).await;
    let (mut hold, db) = connect(&app).await;
    let (mut admin, _) = connect(&app).await;
    // Parks the retry after it checked the project, before it requeues the task.
    sqlx::query("BEGIN").execute(&mut hold).await.expect("begin");
    sqlx::query("SELECT 1 FROM tasks WHERE id = $1 FOR UPDATE").bind(f.task_id).execute(&mut hold).await.expect("hold");
    let retry = app.user(Method::POST, &format!("/v1/tasks/{}/retry", f.task_id)).send();
    let steps = async {
        assert!(until_waiters(&mut admin, &db, 1, Duration::from_secs(10)).await, "retry parked");
        let cancel = app.user(Method::POST, "/v1/projects/p/cancel").send();
        let release = release_when_second_waits(&mut admin, &db, &mut hold);
        let (c, ()) = tokio::join!(cancel, release);
        c
    };
    let (r, c) = tokio::join!(retry, steps);
    assert_eq!(c.expect("cancel").status(), StatusCode::OK);
    let r = r.expect("retry");
    assert!(matches!(r.status(), StatusCode::OK | StatusCode::CONFLICT), "{}", r.status());
    let st = app.status().await;
    assert_eq!(
        (st.tasks["filter"]["queued"], st.tasks["filter"]["leased"]),
        (0, 0),
        "a task runs in a cancelled project"
    );
    assert!(app.lease(agent, &[Stage::Filter], 5, 0).await.is_empty());
    app.stop().await;
}

/// Join vs download failure: a project joins the video (its project-video inserted, not yet
/// committed) while the video's download dies. The join is parked on a second URL of its
/// batch that the test's connection is inserting; the failure must wait for the join and fail
/// its project-video too, never leave it waiting forever on a FAILED video.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_vs_download_failure() {
    let (app, v, agent) = setup(&[]).await;
    app.create_project("b").await;
    let dl = app.lease_one(agent, Stage::Download).await;
    let (mut hold, db) = connect(&app).await;
    let (mut admin, _) = connect(&app).await;
    hold_second_url(&mut hold).await;
    let body =
        serde_json::json!({"urls": ["https://example.com/a.mp4", "https://example.com/z.mp4"], "projects": ["b"]});
    let join = app.user(Method::POST, "/v1/videos").json(&body).send();
    let steps = async {
        assert!(until_waiters(&mut admin, &db, 1, Duration::from_secs(10)).await, "join parked");
        let failed = app.fail(dl.task_id, dl.lease_token, "HTTP 404 Not Found", false);
        let release = release_when_second_waits(&mut admin, &db, &mut hold);
        let (f, ()) = tokio::join!(failed, release);
        f
    };
    let (j, f) = tokio::join!(join, steps);
    assert_eq!((f.status(), j.expect("join").status()), (StatusCode::OK, StatusCode::OK));
    let d = app.video(v).await;
    assert_eq!(d.video.state, VideoState::Failed);
    for p in &d.projects {
        assert_eq!(p.state, ProjectVideoState::Failed, "{} waits forever on a failed video: {p:?}", p.project);
        assert!(p.error.as_deref().is_some_and(|e| e.contains("HTTP 404")), "{p:?}");
    }
    app.stop().await;
}
