//! The pipeline state machine end to end over HTTP, agents simulated: every stage's
//! transition, successors enqueued on completion, shared videos across projects, identical
//! content extracted once, and the states users read.

use dataminer_tests::*;
use dataminer_wire::*;
use reqwest::{Method, StatusCode};

both!(
    full_pipeline_reaches_complete,
    empty_filter_and_empty_dedup_are_terminal,
    dedup_order_is_recorded_and_fed_back,
    same_url_is_one_video,
    joining_after_extraction_filters_at_once,
    identical_content_is_extracted_once,
    copy_completing_while_its_content_is_extracted_is_never_stranded,
    failed_video_joining_a_project_fails_it_and_retry_recovers,
);

fn pv<'a>(d: &'a VideoDetail, project: &str) -> &'a ProjectVideoView {
    d.projects.iter().find(|p| p.project == project).expect("project-video")
}

/// The extraction a project-video uses.
fn extraction_of<'a>(d: &'a VideoDetail, project: &str) -> &'a ExtractionView {
    pv(d, project).extraction.as_ref().expect("project-video has an extraction")
}

async fn full_pipeline_reaches_complete(db: Db) {
    let app = spawn_app(db).await;
    app.create_project("doors").await;
    let v = app.submit(&["https://example.com/a.mp4"], &["doors"]).await;
    assert!(v[0].new);
    let id = v[0].id;
    assert_eq!(v[0].state, VideoState::Pending);
    let agent = app.register("w1", &Stage::ALL, &DEFAULT_MODELS).await;

    let t = app.lease_one(agent, Stage::Download).await;
    assert_eq!(t.input.url.as_deref(), Some("https://example.com/a.mp4"));
    assert_eq!(t.input.source_kind.as_deref(), Some("direct"));
    assert_eq!(t.attempt_dir, format!("videos/{id}/{}.{}", t.task_id, t.lease_token));
    assert_eq!(app.video(id).await.video.state, VideoState::Downloading);
    app.complete_ok(&t, &result_for(&t, 1, 0)).await;
    let d = app.video(id).await;
    assert_eq!(d.video.state, VideoState::Downloaded);
    assert_eq!(d.video.sha256.as_deref(), Some(format!("{:064x}", 1).as_str()));
    assert_eq!(d.video.width, Some(640));

    let t = app.lease_one(agent, Stage::Extract).await;
    assert_eq!(t.input.video_path, Some(format!("videos/{id}/{}.1/video.mp4", d.tasks[0].id)));
    assert_eq!(t.input.extract.as_ref().map(|e| e.interval_frames), Some(30));
    let d = app.video(id).await;
    assert_eq!(d.video.state, VideoState::Downloaded, "a video's state is its download's");
    assert_eq!(extraction_of(&d, "doors").state, ExtractionState::Extracting);
    assert_eq!(d.tasks[1].extraction_id, Some(extraction_of(&d, "doors").id));
    app.complete_ok(&t, &result_for(&t, 1, 0)).await;
    let d = app.video(id).await;
    assert_eq!(d.video.state, VideoState::Downloaded);
    assert_eq!(extraction_of(&d, "doors").state, ExtractionState::Extracted);
    assert_eq!(extraction_of(&d, "doors").frame_count, Some(10));
    assert_eq!(d.extractions.len(), 1);
    assert_eq!(pv(&d, "doors").state, ProjectVideoState::Pending);

    let t = app.lease_one(agent, Stage::Filter).await;
    assert_eq!(t.input.project.as_deref(), Some("doors"));
    assert_eq!(t.input.frames_dir, extraction_of(&d, "doors").frames_dir);
    assert_eq!(t.input.manifest_path, extraction_of(&d, "doors").manifest_path);
    assert_eq!(t.input.filter.as_ref().map(|f| f.positive_prompts.clone()), Some(vec!["a glass door".to_string()]));
    assert!(t.attempt_dir.starts_with(&format!("projects/doors/frames_filtered/{id}/")));
    assert_eq!(pv(&app.video(id).await, "doors").state, ProjectVideoState::Filtering);
    app.complete_ok(&t, &result_for(&t, 1, 6)).await;
    assert_eq!(pv(&app.video(id).await, "doors").state, ProjectVideoState::Filtered);

    let t = app.lease_one(agent, Stage::Dedup).await;
    assert_eq!(t.input.filtered_dir.as_deref(), pv(&app.video(id).await, "doors").filter_dir.as_deref());
    assert_eq!(t.input.kept_seq_upto, 0, "the kept set is empty");
    assert_eq!(pv(&app.video(id).await, "doors").state, ProjectVideoState::Deduping);
    app.complete_ok(&t, &dedup_result(&t, 6, 4, None)).await;
    let d = app.video(id).await;
    assert_eq!(pv(&d, "doors").state, ProjectVideoState::Deduped);
    assert_eq!(pv(&d, "doors").kept_seq, Some(1));

    let t = app.lease_one(agent, Stage::Detect).await;
    assert_eq!(t.input.deduped_dir.as_deref(), pv(&d, "doors").dedup_dir.as_deref());
    // Detect prompts default to the filter's positive prompts.
    assert_eq!(t.input.detect.as_ref().map(|x| x.prompts.clone()), Some(vec!["a glass door".to_string()]));
    assert_eq!(pv(&app.video(id).await, "doors").state, ProjectVideoState::Detecting);
    app.complete_ok(&t, &result_for(&t, 1, 7)).await;
    let d = app.video(id).await;
    let p = pv(&d, "doors");
    assert_eq!(p.state, ProjectVideoState::Complete);
    assert_eq!((p.frames_in, p.frames_filtered, p.frames_deduped, p.detections), (Some(10), Some(6), Some(4), Some(7)));
    assert_eq!(d.tasks.len(), 5);
    assert!(d.tasks.iter().all(|t| t.state == TaskState::Succeeded && t.attempts == 1));

    let st = app.project_status("doors").await;
    assert_eq!(st.state, ProjectState::Complete);
    assert_eq!(st.by_state["COMPLETE"], 1);
    assert_eq!((st.frames.extracted, st.frames.filtered, st.frames.deduped, st.frames.detections), (10, 6, 4, 7));
    // Nothing is left to lease.
    assert!(app.lease(agent, &Stage::ALL, 10, 0).await.is_empty());
    app.stop().await;
}

async fn empty_filter_and_empty_dedup_are_terminal(db: Db) {
    let app = spawn_app(db).await;
    app.create_project("p").await;
    let urls = ["https://example.com/a.mp4", "https://example.com/b.mp4", "https://example.com/c.mp4"];
    app.submit(&urls, &["p"]).await;
    let agent = app.register("w1", &Stage::ALL, &DEFAULT_MODELS).await;
    for i in 0..3 {
        let t = app.lease_one(agent, Stage::Download).await;
        app.complete_ok(&t, &result_for(&t, 10 + i, 0)).await;
        let t = app.lease_one(agent, Stage::Extract).await;
        app.complete_ok(&t, &result_for(&t, 10 + i, 0)).await;
    }
    let t = app.lease_one(agent, Stage::Filter).await;
    let empty = t.input.video_id;
    app.complete_ok(&t, &result_for(&t, 0, 0)).await; // nothing kept
    let t = app.lease_one(agent, Stage::Filter).await;
    app.complete_ok(&t, &result_for(&t, 0, 3)).await;
    let t = app.lease_one(agent, Stage::Filter).await;
    app.complete_ok(&t, &result_for(&t, 0, 3)).await;
    // The first dedup keeps everything; every frame of the second duplicates its frame 1.
    let t = app.lease_one(agent, Stage::Dedup).await;
    let kept_video = t.input.video_id;
    app.complete_ok(&t, &result_for(&t, 0, 3)).await;
    let t = app.lease_one(agent, Stage::Dedup).await;
    let dup_video = t.input.video_id;
    let prior = FrameRef { video_id: kept_video, frame_index: 1 };
    app.complete_ok(&t, &dedup_result(&t, 3, 0, Some(prior))).await; // all duplicates
    let t = app.lease_one(agent, Stage::Detect).await;
    assert_eq!(t.input.video_id, kept_video, "no detect for an empty dedup");
    app.complete_ok(&t, &result_for(&t, 0, 1)).await;
    assert!(app.lease(agent, &Stage::ALL, 10, 0).await.is_empty());
    assert_eq!(pv(&app.video(empty).await, "p").state, ProjectVideoState::FilteredEmpty);
    let d = app.video(dup_video).await;
    assert_eq!(pv(&d, "p").state, ProjectVideoState::Complete);
    assert_eq!(pv(&d, "p").kept_seq, None, "a video that kept nothing never enters the kept set");
    let st = app.project_status("p").await;
    assert_eq!(st.state, ProjectState::Complete);
    assert_eq!(st.by_state["FILTERED_EMPTY"], 1);
    assert_eq!((st.frames.filtered, st.frames.dedup_kept, st.frames.dedup_duplicate), (6, 3, 3));
    app.stop().await;
}

async fn dedup_order_is_recorded_and_fed_back(db: Db) {
    let app = spawn_app(db).await;
    app.create_project("p").await;
    let urls: Vec<String> = (0..3).map(|i| format!("https://example.com/{i}.mp4")).collect();
    let refs: Vec<&str> = urls.iter().map(String::as_str).collect();
    app.submit(&refs, &["p"]).await;
    let agent = app.register("w1", &Stage::ALL, &DEFAULT_MODELS).await;
    for i in 0..3 {
        let t = app.lease_one(agent, Stage::Download).await;
        app.complete_ok(&t, &result_for(&t, 100 + i, 0)).await;
    }
    for _ in 0..3 {
        let t = app.lease_one(agent, Stage::Extract).await;
        app.complete_ok(&t, &result_for(&t, 0, 0)).await;
    }
    let filters = app.lease(agent, &[Stage::Filter], 3, 2_000).await;
    assert_eq!(filters.len(), 3);
    for t in &filters {
        app.complete_ok(t, &result_for(t, 0, 5)).await;
    }
    // Three dedup tasks of one project are queued, but the concurrency key hands out one.
    let d1 = app.lease(agent, &[Stage::Dedup], 3, 1_000).await;
    assert_eq!(d1.len(), 1, "one dedup per project at a time");
    assert!(app.lease(agent, &[Stage::Dedup], 3, 0).await.is_empty(), "key held");
    assert_eq!(d1[0].input.kept_seq_upto, 0);
    app.complete_ok(&d1[0], &dedup_result(&d1[0], 5, 2, None)).await;
    let d2 = app.lease_one(agent, Stage::Dedup).await;
    assert_eq!(d2.input.kept_seq_upto, 1);
    app.complete_ok(&d2, &dedup_result(&d2, 5, 2, None)).await;
    let d3 = app.lease_one(agent, Stage::Dedup).await;
    assert_eq!(d3.input.kept_seq_upto, 2);
    app.complete_ok(&d3, &dedup_result(&d3, 5, 1, None)).await;
    let kept: Page<KeptEntry> =
        expect_json(app.agent(Method::GET, "/v1/projects/p/kept").send().await.expect("send"), StatusCode::OK).await;
    let dirs: Vec<(i64, &str)> = kept.items.iter().map(|k| (k.kept_seq, k.dedup_dir.as_str())).collect();
    assert_eq!(dirs, vec![(1, d1[0].attempt_dir.as_str()), (2, d2.attempt_dir.as_str()), (3, d3.attempt_dir.as_str())]);
    for (t, seq) in [(&d1[0], 1), (&d2, 2), (&d3, 3)] {
        assert_eq!(pv(&app.video(t.input.video_id).await, "p").kept_seq, Some(seq));
    }
    app.stop().await;
}

async fn same_url_is_one_video(db: Db) {
    let app = spawn_app(db).await;
    app.create_project("a").await;
    app.create_project("b").await;
    let first = app.submit(&["https://Example.com:443/v.mp4?y=2&x=1#t=3"], &["a"]).await;
    let again =
        app.submit(&["https://example.com/v.mp4?x=1&y=2", "https://example.com/v.mp4?x=1&y=2"], &["a", "b"]).await;
    assert!(first[0].new);
    assert!(again.iter().all(|v| !v.new && v.id == first[0].id), "{again:?}");
    let d = app.video(first[0].id).await;
    assert_eq!(d.tasks.len(), 1, "downloaded once");
    assert_eq!(d.projects.len(), 2);
    let st = app.status().await;
    assert_eq!(st.tasks["download"]["queued"], 1);
    assert_eq!(st.videos["PENDING"], 1);
    app.stop().await;
}

async fn joining_after_extraction_filters_at_once(db: Db) {
    let app = spawn_app(db).await;
    app.create_project("a").await;
    app.create_project("b").await;
    let v = app.submit(&["https://example.com/v.mp4"], &["a"]).await;
    let agent = app.register("w1", &Stage::ALL, &DEFAULT_MODELS).await;
    let t = app.lease_one(agent, Stage::Download).await;
    app.complete_ok(&t, &result_for(&t, 1, 0)).await;
    let t = app.lease_one(agent, Stage::Extract).await;
    app.complete_ok(&t, &result_for(&t, 1, 0)).await;
    let fa = app.lease_one(agent, Stage::Filter).await;
    assert_eq!(fa.input.project.as_deref(), Some("a"));
    let again = app.submit(&["https://example.com/v.mp4"], &["b"]).await;
    assert!(!again[0].new);
    assert_eq!(again[0].state, VideoState::Downloaded);
    let fb = app.lease_one(agent, Stage::Filter).await;
    assert_eq!(fb.input.project.as_deref(), Some("b"));
    assert_eq!(fb.input.video_id, v[0].id);
    assert_eq!(fb.input.frames_dir, fa.input.frames_dir, "shared frames");
    let d = app.video(v[0].id).await;
    assert_eq!(d.tasks.iter().filter(|t| t.stage == Stage::Download).count(), 1);
    assert_eq!(d.tasks.iter().filter(|t| t.stage == Stage::Extract).count(), 1);
    app.stop().await;
}

async fn identical_content_is_extracted_once(db: Db) {
    let app = spawn_app(db).await;
    app.create_project("p").await;
    let v = app
        .submit(
            &["https://a.example.com/v.mp4", "https://b.example.com/copy.mp4", "https://c.example.com/late.mp4"],
            &["p"],
        )
        .await;
    let agent = app.register("w1", &Stage::ALL, &DEFAULT_MODELS).await;
    let d = app.lease(agent, &[Stage::Download], 2, 1_000).await;
    assert_eq!(d.len(), 2);
    for t in &d {
        app.complete_ok(t, &result_for(t, 42, 0)).await; // same sha256
    }
    // One extract for the content; the copy waits on it, visibly.
    let ex = app.lease(agent, &[Stage::Extract], 5, 500).await;
    assert_eq!(ex.len(), 1);
    let canonical = ex[0].input.video_id;
    let copy = if canonical == v[0].id { v[1].id } else { v[0].id };
    let c = app.video(copy).await;
    assert_eq!(c.video.content_of, Some(canonical));
    assert_eq!(c.video.state, VideoState::Downloaded);
    assert_eq!(extraction_of(&c, "p").id, extraction_of(&app.video(canonical).await, "p").id, "shared");
    app.complete_ok(&ex[0], &result_for(&ex[0], 42, 0)).await;
    let c = app.video(copy).await;
    assert_eq!(extraction_of(&c, "p").state, ExtractionState::Extracted);
    assert_eq!(extraction_of(&c, "p").frames_dir, extraction_of(&app.video(canonical).await, "p").frames_dir);
    // Identical content arriving after extraction is linked and filtered at once.
    let t = app.lease_one(agent, Stage::Download).await;
    assert_eq!(t.input.video_id, v[2].id);
    app.complete_ok(&t, &result_for(&t, 42, 0)).await;
    let late = app.video(v[2].id).await;
    assert_eq!(late.video.state, VideoState::Downloaded);
    assert_eq!(extraction_of(&late, "p").state, ExtractionState::Extracted);
    assert_eq!(late.video.content_of, Some(canonical));
    let filters = app.lease(agent, &[Stage::Filter], 5, 500).await;
    assert_eq!(filters.len(), 3, "one filter per project-video");
    let st = app.status().await;
    assert_eq!(st.tasks["extract"]["succeeded"], 1, "extracted once");
    app.stop().await;
}

async fn failed_video_joining_a_project_fails_it_and_retry_recovers(db: Db) {
    let app = spawn_app(db).await;
    app.create_project("a").await;
    app.create_project("b").await;
    let v = app.submit(&["https://example.com/broken.mp4"], &["a"]).await;
    let id = v[0].id;
    let agent = app.register("w1", &Stage::ALL, &DEFAULT_MODELS).await;
    let t = app.lease_one(agent, Stage::Download).await;
    let f: FailResponse =
        expect_json(app.fail(t.task_id, t.lease_token, "HTTP 404 Not Found", false).await, StatusCode::OK).await;
    assert_eq!(f.state, TaskState::Dead);
    let d = app.video(id).await;
    assert_eq!(d.video.state, VideoState::Failed);
    assert_eq!(d.video.failed_stage.as_deref(), Some("download"));
    assert_eq!(d.video.error.as_deref(), Some("HTTP 404 Not Found"));
    assert_eq!(pv(&d, "a").state, ProjectVideoState::Failed);
    // Joining project b now makes b's project-video FAILED with the video's error.
    let again = app.submit(&["https://example.com/broken.mp4"], &["b"]).await;
    assert_eq!(again[0].state, VideoState::Failed);
    let d = app.video(id).await;
    let b = pv(&d, "b");
    assert_eq!(b.state, ProjectVideoState::Failed);
    assert!(b.error.as_deref().is_some_and(|e| e.contains("HTTP 404 Not Found")), "{:?}", b.error);
    assert_eq!(app.project_status("b").await.state, ProjectState::Complete, "terminal, not waiting forever");
    let dead: Page<TaskView> =
        expect_json(app.user(Method::GET, "/v1/tasks/dead").send().await.expect("send"), StatusCode::OK).await;
    assert_eq!(dead.items.len(), 1);
    assert_eq!(dead.items[0].last_error.as_deref(), Some("HTTP 404 Not Found"));
    // Retrying the video retries its project-videos.
    let r: VideoDetail = expect_json(
        app.user(Method::POST, &format!("/v1/videos/{id}/retry")).send().await.expect("send"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(r.video.state, VideoState::Pending);
    assert!(r.projects.iter().all(|p| p.state == ProjectVideoState::Pending), "{:?}", r.projects);
    expect_error(
        app.user(Method::POST, &format!("/v1/videos/{id}/retry")).send().await.expect("send"),
        StatusCode::CONFLICT,
        "nothing_to_retry",
    )
    .await;
    let t = app.lease_one(agent, Stage::Download).await;
    assert_eq!(t.attempt, 1, "fresh attempts");
    app.complete_ok(&t, &result_for(&t, 5, 0)).await;
    let t = app.lease_one(agent, Stage::Extract).await;
    app.complete_ok(&t, &result_for(&t, 5, 0)).await;
    let filters = app.lease(agent, &[Stage::Filter], 5, 1_000).await;
    assert_eq!(filters.len(), 2, "both projects filter the recovered video");
    app.stop().await;
}

/// The canonical video's extract and an identical copy's download complete at the same
/// moment: whichever commits first, the copy must end EXTRACTED (on PostgreSQL the two
/// transactions could miss each other before the canonical row was locked; found by the
/// end-to-end suite).
async fn copy_completing_while_its_content_is_extracted_is_never_stranded(db: Db) {
    let app = spawn_app(db).await;
    app.create_project("p").await;
    let agent = app.register("w1", &Stage::ALL, &DEFAULT_MODELS).await;
    for round in 0..25u64 {
        let urls = [format!("https://a.example.com/{round}.mp4"), format!("https://b.example.com/{round}.mp4")];
        let v = app.submit(&[urls[0].as_str(), urls[1].as_str()], &["p"]).await;
        let d = app.lease(agent, &[Stage::Download], 2, 1_000).await;
        assert_eq!(d.len(), 2);
        let (first, second) = if d[0].input.video_id == v[0].id { (&d[0], &d[1]) } else { (&d[1], &d[0]) };
        let content = 1000 + round;
        app.complete_ok(first, &result_for(first, content, 0)).await;
        let ex = app.lease_one(agent, Stage::Extract).await;
        let (extracted, downloaded) = (result_for(&ex, content, 0), result_for(second, content, 0));
        let (r1, r2) = tokio::join!(app.complete(&ex, &extracted), app.complete(second, &downloaded));
        assert_eq!((r1.status(), r2.status()), (StatusCode::OK, StatusCode::OK));
        let copy = app.video(v[1].id).await;
        let e = extraction_of(&copy, "p");
        assert_eq!(e.state, ExtractionState::Extracted, "round {round}: copy stranded: {:?}", copy.projects);
        assert_eq!(e.frames_dir, extraction_of(&app.video(v[0].id).await, "p").frames_dir);
        assert_eq!(pv(&copy, "p").state, ProjectVideoState::Pending);
    }
    app.stop().await;
}
