//! Model tasks reach only agents holding their model: filter, dedup and detect tasks require
//! `model:<the project's model for the stage>` (at creation, in a rerun, and again when a
//! leased or dead one comes back to the queue); a config update that changes a model moves the
//! project's queued tasks of that stage to the new one (leased ones keep theirs); model names
//! must fit a capability tag; `/status` (JSON and text), the project status and `/metrics` show
//! the tasks that wait for a capability no live agent serving their stage has.

use std::time::Duration;

use dataminer_tests::*;
use dataminer_wire::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

both!(
    model_tasks_require_the_projects_model,
    a_model_change_moves_queued_tasks_not_leased_ones,
    status_shows_tasks_waiting_for_a_capability_no_live_agent_has,
);

const MODEL_STAGES: [Stage; 3] = [Stage::Filter, Stage::Dedup, Stage::Detect];

#[test]
fn the_default_models_are_the_default_configs() {
    let c = ProjectConfig::default();
    let caps: Vec<String> = Stage::ALL.iter().filter_map(|s| c.requires(*s)).collect();
    assert_eq!(caps, DEFAULT_MODELS);
}

async fn create(app: &TestApp, name: &str, filter_model: &str, dedup_model: &str) -> StatusCode {
    let body = json!({"name": name, "config": {
        "filter": {"positive_prompts": ["a glass door"], "model": filter_model},
        "dedup": {"model": dedup_model}}});
    app.user(Method::POST, "/v1/projects").json(&body).send().await.expect("send").status()
}

async fn put_config(app: &TestApp, project: &str, config: &ProjectConfig) -> reqwest::Response {
    app.user(Method::PUT, &format!("/v1/projects/{project}/config")).json(config).send().await.expect("send")
}

/// Downloads and extracts `urls` for `project` with a CPU agent (no model), so their filter
/// tasks are queued. Returns the video ids.
async fn extracted(app: &TestApp, urls: &[&str], project: &str) -> Vec<i64> {
    let cpu = app.register("cpu", &[Stage::Download, Stage::Extract], &[]).await;
    let videos = app.submit(urls, &[project]).await;
    for i in 0..videos.len() {
        let t = app.lease_one(cpu, Stage::Download).await;
        app.complete_ok(&t, &result_for(&t, 100 + i as u64, 0)).await;
        let t = app.lease_one(cpu, Stage::Extract).await;
        app.complete_ok(&t, &result_for(&t, 0, 0)).await;
    }
    videos.iter().map(|v| v.id).collect()
}

/// The newest task of `stage` of video `v`.
async fn task_of(app: &TestApp, v: i64, stage: Stage) -> TaskView {
    let d = app.video(v).await;
    d.tasks.into_iter().rev().find(|t| t.stage == stage).unwrap_or_else(|| panic!("video {v} has no {stage} task"))
}

async fn model_tasks_require_the_projects_model(db: Db) {
    let app = spawn_app(db).await;
    assert_eq!(create(&app, "doors", "siglip2-so400m", "dinov2-small").await, StatusCode::CREATED);
    let v = extracted(&app, &["https://example.com/a.mp4"], "doors").await[0];
    assert_eq!(task_of(&app, v, Stage::Download).await.requires, None, "a direct download requires nothing");
    assert_eq!(task_of(&app, v, Stage::Filter).await.requires.as_deref(), Some("model:siglip2-so400m"));
    let bare = app.register("bare", &MODEL_STAGES, &[]).await;
    let embedder = app.register("embedder", &MODEL_STAGES, &["model:dinov2-small", "model:siglip2"]).await;
    let scorer = app.register("scorer", &MODEL_STAGES, &["gpu", "model:siglip2-so400m"]).await;
    // Neither an agent without models nor one holding others is leased the filter task.
    assert!(app.lease(bare, &MODEL_STAGES, 4, 0).await.is_empty());
    assert!(app.lease(embedder, &MODEL_STAGES, 4, 0).await.is_empty());
    let f = app.lease_one(scorer, Stage::Filter).await;
    assert_eq!(f.input.filter.as_ref().map(|c| c.model.as_str()), Some("siglip2-so400m"));
    app.complete_ok(&f, &result_for(&f, 0, 3)).await;
    // Dedup requires the dedup model.
    assert_eq!(task_of(&app, v, Stage::Dedup).await.requires.as_deref(), Some("model:dinov2-small"));
    assert!(app.lease(scorer, &MODEL_STAGES, 4, 0).await.is_empty());
    assert!(app.lease(bare, &MODEL_STAGES, 4, 0).await.is_empty());
    let d = app.lease_one(embedder, Stage::Dedup).await;
    app.complete_ok(&d, &result_for(&d, 0, 3)).await;
    // Detect requires the detector the project names (here the default).
    assert_eq!(task_of(&app, v, Stage::Detect).await.requires.as_deref(), Some("model:grounding_dino"));
    assert!(app.lease(scorer, &MODEL_STAGES, 4, 0).await.is_empty());
    let detector = app.register("detector", &[Stage::Detect], &["model:grounding_dino"]).await;
    let t = app.lease_one(detector, Stage::Detect).await;
    app.complete_ok(&t, &result_for(&t, 0, 2)).await;

    // A rerun's tasks require the model configured now.
    let mut config = app.create_project("other").await.config;
    config.filter.model = "siglip2-base".into();
    config.dedup.model = "dinov2-small".into();
    let _: ProjectView = expect_json(put_config(&app, "doors", &config).await, StatusCode::OK).await;
    let r: RerunResponse = expect_json(
        app.user(Method::POST, "/v1/projects/doors/rerun").json(&json!({"from": "filter"})).send().await.expect("send"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(r.requeued, 1);
    assert_eq!(task_of(&app, v, Stage::Filter).await.requires.as_deref(), Some("model:siglip2-base"));
    assert!(app.lease(scorer, &MODEL_STAGES, 4, 0).await.is_empty());

    // A model name must fit a capability tag (64 characters with `model:`): 58 characters.
    let fits = "m".repeat(58);
    assert_eq!(create(&app, "fits", &fits, "dino").await, StatusCode::CREATED);
    let long = "m".repeat(59);
    let r = app
        .user(Method::POST, "/v1/projects")
        .json(&json!({"name": "long", "config": {"filter": {"positive_prompts": ["x"], "model": long}}}))
        .send()
        .await
        .expect("send");
    let message = expect_error(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_config").await;
    assert!(message.contains("filter.model must be 1-58 characters"), "{message}");
    let mut too_long = config.clone();
    too_long.detect.model = long.clone();
    let message =
        expect_error(put_config(&app, "doors", &too_long).await, StatusCode::UNPROCESSABLE_ENTITY, "invalid_config")
            .await;
    assert!(message.contains("detect.model"), "{message}");
    // The agent side of it: `model:` and 58 characters is a capability tag an agent may advertise.
    app.register("fits", &[Stage::Filter], &[&format!("model:{fits}")]).await;
    app.stop().await;
}

async fn a_model_change_moves_queued_tasks_not_leased_ones(db: Db) {
    let app = spawn_app(db).await;
    let mut config = app.create_project("doors").await.config;
    let urls = ["https://example.com/a.mp4", "https://example.com/b.mp4", "https://example.com/c.mp4"];
    let v = extracted(&app, &urls, "doors").await;
    let old = app.register("old", &[Stage::Filter], &["model:siglip2"]).await;
    let leased = app.lease_one(old, Stage::Filter).await;
    let doomed = app.lease_one(old, Stage::Filter).await;
    assert_eq!((leased.input.video_id, doomed.input.video_id), (v[0], v[1]));
    assert_eq!(app.fail(doomed.task_id, doomed.lease_token, "unreadable frames", false).await.status(), StatusCode::OK);
    assert_eq!(task_of(&app, v[1], Stage::Filter).await.state, TaskState::Dead);

    // Another setting changes nothing; the filter model moves the queued task only.
    config.filter.threshold = 0.3;
    let _: ProjectView = expect_json(put_config(&app, "doors", &config).await, StatusCode::OK).await;
    assert_eq!(task_of(&app, v[2], Stage::Filter).await.requires.as_deref(), Some("model:siglip2"));
    config.filter.model = "siglip2-large".into();
    let _: ProjectView = expect_json(put_config(&app, "doors", &config).await, StatusCode::OK).await;
    assert_eq!(task_of(&app, v[2], Stage::Filter).await.requires.as_deref(), Some("model:siglip2-large"));
    let running = task_of(&app, v[0], Stage::Filter).await;
    assert_eq!((running.state, running.requires.as_deref()), (TaskState::Leased, Some("model:siglip2")));
    assert_eq!(task_of(&app, v[1], Stage::Filter).await.requires.as_deref(), Some("model:siglip2"));
    assert!(app.lease(old, &[Stage::Filter], 4, 0).await.is_empty());
    let new = app.register("new", &[Stage::Filter], &["model:siglip2-large"]).await;
    let c = app.lease_one(new, Stage::Filter).await;
    assert_eq!(c.input.video_id, v[2]);
    assert_eq!(c.input.filter.as_ref().map(|f| f.model.as_str()), Some("siglip2-large"));

    // The leased task, back in the queue, requires the model its next lease will name.
    assert_eq!(app.release(leased.task_id, leased.lease_token).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(task_of(&app, v[0], Stage::Filter).await.requires.as_deref(), Some("model:siglip2-large"));
    assert!(app.lease(old, &[Stage::Filter], 4, 0).await.is_empty());
    let a = app.lease_one(new, Stage::Filter).await;
    assert_eq!(a.input.video_id, v[0]);
    // So does the dead one when a user retries it.
    let r: TaskView = expect_json(
        app.user(Method::POST, &format!("/v1/tasks/{}/retry", doomed.task_id)).send().await.expect("send"),
        StatusCode::OK,
    )
    .await;
    assert_eq!((r.state, r.requires.as_deref()), (TaskState::Queued, Some("model:siglip2-large")));
    assert!(app.lease(old, &[Stage::Filter], 4, 0).await.is_empty());
    let b = app.lease_one(new, Stage::Filter).await;
    assert_eq!(b.input.video_id, v[1]);

    // The dedup model likewise, while the project has no kept set; each stage its own.
    app.complete_ok(&c, &result_for(&c, 0, 3)).await;
    assert_eq!(task_of(&app, v[2], Stage::Dedup).await.requires.as_deref(), Some("model:dino"));
    config.dedup.model = "dinov3".into();
    let _: ProjectView = expect_json(put_config(&app, "doors", &config).await, StatusCode::OK).await;
    assert_eq!(task_of(&app, v[2], Stage::Dedup).await.requires.as_deref(), Some("model:dinov3"));
    let leased_filter = task_of(&app, v[0], Stage::Filter).await;
    assert_eq!(leased_filter.requires.as_deref(), Some("model:siglip2-large"));
    let deduper = app.register("deduper", &[Stage::Dedup], &["model:dinov3"]).await;
    let d = app.lease_one(deduper, Stage::Dedup).await;
    app.complete_ok(&d, &result_for(&d, 0, 3)).await;
    // Once the kept set exists, the dedup model is fixed (as before), queued tasks untouched.
    app.complete_ok(&a, &result_for(&a, 0, 3)).await;
    config.dedup.model = "dino".into();
    expect_error(put_config(&app, "doors", &config).await, StatusCode::CONFLICT, "kept_set_exists").await;
    assert_eq!(task_of(&app, v[0], Stage::Dedup).await.requires.as_deref(), Some("model:dinov3"));
    app.stop().await;
}

async fn status_shows_tasks_waiting_for_a_capability_no_live_agent_has(db: Db) {
    // A short liveness window, so an agent can be seen going stale.
    let app = spawn_app_with(db, |c| c.agent_alive_ms = 3_000).await;
    app.create_project("doors").await;
    let v = extracted(&app, &["https://example.com/a.mp4"], "doors").await[0];
    let yt = app.submit(&["https://www.youtube.com/watch?v=abc"], &["doors"]).await[0].id;
    let text_status = || async {
        let r = app.user(Method::GET, "/status?format=text").send().await.expect("send");
        assert_eq!(r.status(), StatusCode::OK);
        r.text().await.expect("text")
    };
    let metrics =
        || async { app.client.get(app.url("/metrics")).send().await.expect("send").text().await.expect("text") };
    const FILTER_GAUGE: &str = "dataminer_tasks_waiting_for_capability{requires=\"model:siglip2\",stage=\"filter\"} 1";

    // The filter task needs model:siglip2 and the platform download yt-dlp; no agent has either.
    let st = app.status().await;
    let waits: Vec<(Stage, &str, i64)> =
        st.waiting_for_capability.iter().map(|w| (w.stage, w.requires.as_str(), w.tasks)).collect();
    assert_eq!(waits, [(Stage::Download, "yt-dlp", 1), (Stage::Filter, "model:siglip2", 1)]);
    assert!(st.waiting_for_capability.iter().all(|w| w.oldest_queued_ms >= 0));
    let text = text_status().await;
    let section = text.split("WAITING FOR A CAPABILITY NO LIVE AGENT HAS").nth(1).expect("section").to_string();
    let section = section.split("\n\n").next().unwrap_or_default();
    assert!(section.contains("filter") && section.contains("model:siglip2"), "{text}");
    assert!(section.contains("download") && section.contains("yt-dlp"), "{text}");
    let p = app.project_status("doors").await;
    let waits: Vec<(Stage, &str, i64)> =
        p.waiting_for_capability.iter().map(|w| (w.stage, w.requires.as_str(), w.tasks)).collect();
    assert_eq!(waits, [(Stage::Filter, "model:siglip2", 1)], "the project's own model tasks only");
    let m = metrics().await;
    assert!(m.contains(FILTER_GAUGE), "{m}");
    assert!(m.contains("dataminer_tasks_waiting_for_capability{requires=\"yt-dlp\",stage=\"download\"} 1"), "{m}");

    // An agent with the model but not the stage does not count.
    app.register("embedder", &[Stage::Dedup], &["model:siglip2"]).await;
    assert_eq!(app.status().await.waiting_for_capability.len(), 2);
    // One serving the stage with the model does: the filter task no longer waits for a capability.
    let gpu = app.register("gpu", &[Stage::Filter], &["model:siglip2"]).await;
    let st = app.status().await;
    let waits: Vec<(Stage, &str)> = st.waiting_for_capability.iter().map(|w| (w.stage, w.requires.as_str())).collect();
    assert_eq!(waits, [(Stage::Download, "yt-dlp")]);
    assert!(app.project_status("doors").await.waiting_for_capability.is_empty());
    let text = text_status().await;
    assert!(!text.contains("model:siglip2"), "{text}");
    let m = metrics().await;
    assert!(!m.contains("requires=\"model:siglip2\""), "{m}");
    let ytdlp = app.register("yt", &[Stage::Download], &["yt-dlp"]).await;
    assert!(app.status().await.waiting_for_capability.is_empty());
    let text = text_status().await;
    let section = text.split("WAITING FOR A CAPABILITY NO LIVE AGENT HAS").nth(1).expect("section").to_string();
    assert!(section.trim_start().starts_with("(none)"), "{text}");

    // An agent that goes stale no longer counts; seen again (here: registering), it does.
    app.wait_until(Duration::from_secs(15), "the gpu agent to go stale", || async {
        app.status().await.waiting_for_capability.iter().any(|w| w.requires == "model:siglip2")
    })
    .await;
    assert!(metrics().await.contains(FILTER_GAUGE));
    assert_eq!(app.register("gpu", &[Stage::Filter], &["model:siglip2"]).await, gpu);
    let st = app.status().await;
    assert!(
        !st.waiting_for_capability.iter().any(|w| w.requires == "model:siglip2"),
        "{:?}",
        st.waiting_for_capability
    );
    assert_eq!(app.lease_one(gpu, Stage::Filter).await.input.video_id, v);
    assert_eq!(app.lease_one(ytdlp, Stage::Download).await.input.video_id, yt);
    app.stop().await;
}
