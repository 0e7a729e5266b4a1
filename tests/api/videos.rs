//! Video detail and cancel/retry edge cases: a cancelled video's copies do not wait forever,
//! cancelling a queued video, and the detail view showing tasks and their last errors.

use dataminer_tests::*;
use dataminer_wire::*;
use reqwest::{Method, StatusCode};

both!(cancelling_the_canonical_video_frees_its_copies, detail_shows_tasks_and_errors);

async fn cancelling_the_canonical_video_frees_its_copies(db: Db) {
    let app = spawn_app(db).await;
    app.create_project("p").await;
    let v = app.submit(&["https://a.example.com/v.mp4", "https://b.example.com/v.mp4"], &["p"]).await;
    let agent = app.register("w1", &Stage::ALL, &DEFAULT_MODELS).await;
    for t in app.lease(agent, &[Stage::Download], 2, 1_000).await {
        app.complete_ok(&t, &result_for(&t, 7, 0)).await;
    }
    let ex = app.lease_one(agent, Stage::Extract).await;
    let canonical = ex.input.video_id;
    let copy = if canonical == v[0].id { v[1].id } else { v[0].id };
    assert_eq!(app.video(copy).await.video.content_of, Some(canonical));
    let _: VideoDetail = expect_json(
        app.user(Method::POST, &format!("/v1/videos/{canonical}/cancel")).send().await.expect("send"),
        StatusCode::OK,
    )
    .await;
    // The copy no longer waits on cancelled content: the shared extraction now reads the
    // copy's own file, with a new extract task (the cancelled one never completes).
    let c = app.video(copy).await;
    assert_eq!(c.video.content_of, None);
    let e = c.projects[0].extraction.as_ref().expect("extraction");
    assert_eq!((e.video_id, e.state), (copy, ExtractionState::Pending));
    let t = app.lease_one(agent, Stage::Extract).await;
    assert_eq!(t.input.video_id, copy);
    assert_eq!(t.input.video_path, c.video.file_path);
    expect_error(app.complete(&ex, &result_for(&ex, 7, 0)).await, StatusCode::CONFLICT, "task_cancelled").await;
    app.complete_ok(&t, &result_for(&t, 7, 0)).await;
    assert_eq!(app.lease_one(agent, Stage::Filter).await.input.video_id, copy);
    app.stop().await;
}

async fn detail_shows_tasks_and_errors(db: Db) {
    let app = spawn_app(db).await;
    app.create_project("p").await;
    let v = app.submit(&["https://example.com/v.mp4"], &["p"]).await;
    let agent = app.register("w1", &Stage::ALL, &DEFAULT_MODELS).await;
    let t = app.lease_one(agent, Stage::Download).await;
    let _: FailResponse =
        expect_json(app.fail(t.task_id, t.lease_token, "HTTP 503 from origin", true).await, StatusCode::OK).await;
    let d = app.video(v[0].id).await;
    assert_eq!(d.video.state, VideoState::Pending);
    assert_eq!(d.tasks.len(), 1);
    assert_eq!(d.tasks[0].stage, Stage::Download);
    assert_eq!(d.tasks[0].state, TaskState::Queued);
    assert_eq!(d.tasks[0].attempts, 1);
    assert_eq!(d.tasks[0].last_error.as_deref(), Some("HTTP 503 from origin"));
    assert!(d.tasks[0].run_after_ms > d.tasks[0].created_at_ms);
    // Cancel while queued: nothing remains leasable, and the video reads CANCELLED.
    let d: VideoDetail = expect_json(
        app.user(Method::POST, &format!("/v1/videos/{}/cancel", v[0].id)).send().await.expect("send"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(d.video.state, VideoState::Cancelled);
    assert_eq!(d.tasks[0].state, TaskState::Cancelled);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(app.lease(agent, &Stage::ALL, 5, 0).await.is_empty());
    app.stop().await;
}
