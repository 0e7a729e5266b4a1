//! Extraction is shared per (content, extract settings): projects with equal settings share
//! one extract task and its frames; a project with other settings gets its own, never
//! another project's frames — also for another URL with identical bytes, and for a project
//! that joins after the first extraction finished.

use dataminer_tests::*;
use dataminer_wire::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

both!(projects_share_extractions_only_with_equal_settings, cancelled_projects_do_not_strand_shared_content);

async fn project_with(app: &TestApp, name: &str, extract: serde_json::Value) {
    let body = json!({"name": name, "config": {"extract": extract, "filter": {"positive_prompts": ["a door"]}}});
    let _: ProjectView = expect_json(
        app.user(Method::POST, "/v1/projects").json(&body).send().await.expect("send"),
        StatusCode::CREATED,
    )
    .await;
}

fn extract_tasks(d: &VideoDetail) -> usize {
    d.tasks.iter().filter(|t| t.stage == Stage::Extract).count()
}

async fn projects_share_extractions_only_with_equal_settings(db: Db) {
    let app = spawn_app(db).await;
    project_with(&app, "a", json!({})).await;
    project_with(&app, "b", json!({"strategy": "interval_seconds", "interval_seconds": 1.0})).await;
    project_with(&app, "c", json!({"interval_frames": 30})).await;
    // Differs only in a field interval_frames does not use: same extraction as a.
    project_with(&app, "d", json!({"scene_threshold": 0.9})).await;
    let v = app.submit(&["https://example.com/x.mp4"], &["a", "b", "c", "d"]).await[0].id;
    let agent = app.register("w1", &Stage::ALL, &DEFAULT_MODELS).await;
    let t = app.lease_one(agent, Stage::Download).await;
    app.complete_ok(&t, &result_for(&t, 77, 0)).await;

    let ex = app.lease(agent, &[Stage::Extract], 10, 500).await;
    assert_eq!(ex.len(), 2, "one extract task per distinct settings: {ex:?}");
    let frames_by_strategy = |s: ExtractStrategy| {
        ex.iter().find(|t| t.input.extract.as_ref().map(|e| e.strategy) == Some(s)).expect("task of the strategy")
    };
    let frames = frames_by_strategy(ExtractStrategy::IntervalFrames);
    let seconds = frames_by_strategy(ExtractStrategy::IntervalSeconds);
    assert_eq!(seconds.input.extract.as_ref().map(|e| e.interval_seconds), Some(1.0));
    for t in &ex {
        app.complete_ok(t, &result_for(t, 77, 0)).await;
    }
    let d = app.video(v).await;
    assert_eq!(d.extractions.len(), 2);
    assert_eq!(extract_tasks(&d), 2);
    let ex_of = |p: &str| d.projects.iter().find(|x| x.project == p).and_then(|x| x.extraction.clone()).expect("ex");
    assert_eq!(ex_of("a").id, ex_of("c").id);
    assert_eq!(ex_of("a").id, ex_of("d").id);
    assert_ne!(ex_of("a").id, ex_of("b").id);
    assert_eq!(ex_of("b").settings.strategy, ExtractStrategy::IntervalSeconds);

    // Each project's filter reads its own extraction's frames.
    let filters = app.lease(agent, &[Stage::Filter], 10, 500).await;
    assert_eq!(filters.len(), 4);
    for f in &filters {
        let want = if f.input.project.as_deref() == Some("b") { &seconds.attempt_dir } else { &frames.attempt_dir };
        assert_eq!(f.input.frames_dir.as_ref(), Some(want), "{:?}", f.input.project);
    }

    // Identical bytes under another URL, for b: b's extraction is reused, nothing extracted.
    let y = app.submit(&["https://mirror.example.com/y.mp4"], &["b"]).await[0].id;
    let t = app.lease_one(agent, Stage::Download).await;
    app.complete_ok(&t, &result_for(&t, 77, 0)).await;
    let f = app.lease_one(agent, Stage::Filter).await;
    assert_eq!((f.input.video_id, f.input.frames_dir.as_ref()), (y, Some(&seconds.attempt_dir)));

    // A project with new settings joining after extraction gets its own extraction at once.
    project_with(&app, "e", json!({"jpeg_quality": 80})).await;
    app.submit(&["https://example.com/x.mp4"], &["e"]).await;
    let t = app.lease_one(agent, Stage::Extract).await;
    assert_eq!(t.input.extract.as_ref().map(|e| e.jpeg_quality), Some(80));
    assert_eq!(t.input.video_id, v);
    assert!(app.lease(agent, &[Stage::Filter], 10, 0).await.is_empty(), "e waits for its own frames");
    app.complete_ok(&t, &result_for(&t, 77, 0)).await;
    let f = app.lease_one(agent, Stage::Filter).await;
    assert_eq!((f.input.project.as_deref(), f.input.frames_dir.as_ref()), (Some("e"), Some(&t.attempt_dir)));
    let st = app.status().await;
    assert_eq!(st.tasks["extract"]["succeeded"], 3, "exactly one extract task per distinct settings");
    assert_eq!(extract_tasks(&app.video(v).await), 3);
    app.stop().await;
}

/// Content first met by a project that is then cancelled: its extraction still serves a
/// project that joins later with equal settings, and one that was never made (the project
/// was cancelled before the download finished) is made for the joining project.
async fn cancelled_projects_do_not_strand_shared_content(db: Db) {
    let app = spawn_app(db).await;
    project_with(&app, "a", json!({})).await;
    project_with(&app, "b", json!({})).await;
    let agent = app.register("w1", &Stage::ALL, &DEFAULT_MODELS).await;
    // x: a is cancelled while x's extraction runs; b joins afterwards.
    let x = app.submit(&["https://example.com/x.mp4"], &["a"]).await[0].id;
    let t = app.lease_one(agent, Stage::Download).await;
    app.complete_ok(&t, &result_for(&t, 1, 0)).await;
    let ex = app.lease_one(agent, Stage::Extract).await;
    let _: ProjectView =
        expect_json(app.user(Method::POST, "/v1/projects/a/cancel").send().await.expect("send"), StatusCode::OK).await;
    app.complete_ok(&ex, &result_for(&ex, 1, 0)).await;
    assert!(app.lease(agent, &[Stage::Filter], 5, 0).await.is_empty(), "no filter for a cancelled project");
    app.submit(&["https://example.com/x.mp4"], &["b"]).await;
    let f = app.lease_one(agent, Stage::Filter).await;
    assert_eq!((f.input.project.as_deref(), f.input.frames_dir.as_ref()), (Some("b"), Some(&ex.attempt_dir)));
    // y: c is cancelled before y's download finishes, so no extraction is made; b joins.
    project_with(&app, "c", json!({"interval_frames": 5})).await;
    let y = app.submit(&["https://example.com/y.mp4"], &["c"]).await[0].id;
    let _: ProjectView =
        expect_json(app.user(Method::POST, "/v1/projects/c/cancel").send().await.expect("send"), StatusCode::OK).await;
    let t = app.lease_one(agent, Stage::Download).await;
    app.complete_ok(&t, &result_for(&t, 2, 0)).await;
    assert!(app.lease(agent, &[Stage::Extract], 5, 0).await.is_empty(), "nothing to extract for a cancelled project");
    assert!(app.video(y).await.extractions.is_empty());
    app.submit(&["https://example.com/y.mp4"], &["b"]).await;
    let ex = app.lease_one(agent, Stage::Extract).await;
    assert_eq!((ex.input.video_id, ex.input.extract.as_ref().map(|e| e.interval_frames)), (y, Some(30)));
    app.complete_ok(&ex, &result_for(&ex, 2, 0)).await;
    assert_eq!(app.lease_one(agent, Stage::Filter).await.input.video_id, y);
    assert_eq!(app.video(x).await.extractions.len(), 1);
    app.stop().await;
}
