//! Projects: create, list, get, update config, status, cancel, and their refusals.

use dataminer_tests::*;
use dataminer_wire::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

both!(create_get_list_update, invalid_projects_are_refused, cancel_project_cancels_its_work);

async fn create_get_list_update(db: Db) {
    let app = spawn_app(db).await;
    let p = app.create_project("doors").await;
    assert_eq!(p.name, "doors");
    assert_eq!(p.config.filter.threshold, 0.25, "seed default");
    assert_eq!(p.config.extract.interval_frames, 30, "seed default");
    let got: ProjectView =
        expect_json(app.user(Method::GET, "/v1/projects/doors").send().await.expect("send"), StatusCode::OK).await;
    assert_eq!(got.id, p.id);
    app.create_project("windows").await;
    let page: Page<ProjectView> =
        expect_json(app.user(Method::GET, "/v1/projects?limit=1").send().await.expect("send"), StatusCode::OK).await;
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].name, "doors");
    let cursor = page.next_cursor.expect("a full page has a cursor");
    let page: Page<ProjectView> = expect_json(
        app.user(Method::GET, &format!("/v1/projects?limit=1&after={cursor}")).send().await.expect("send"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(page.items[0].name, "windows");
    let page: Page<ProjectView> = expect_json(
        app.user(Method::GET, &format!("/v1/projects?after={}", page.items[0].id)).send().await.expect("send"),
        StatusCode::OK,
    )
    .await;
    assert!(page.items.is_empty() && page.next_cursor.is_none());

    let mut cfg = p.config.clone();
    cfg.filter.threshold = 0.4;
    cfg.dedup.threshold = 0.8;
    let updated: ProjectView = expect_json(
        app.user(Method::PUT, "/v1/projects/doors/config").json(&cfg).send().await.expect("send"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(updated.config.filter.threshold, 0.4);
    assert_eq!(updated.config.dedup.threshold, 0.8);
    let st = app.project_status("doors").await;
    assert_eq!(st.state, ProjectState::Active);
    assert_eq!(st.videos, 0);
    app.stop().await;
}

async fn invalid_projects_are_refused(db: Db) {
    let app = spawn_app(db).await;
    app.create_project("doors").await;
    let post = |body: serde_json::Value| app.user(Method::POST, "/v1/projects").json(&body).send();
    let cfg = json!({"filter": {"positive_prompts": ["x"]}});
    expect_error(
        post(json!({"name": "doors", "config": cfg})).await.expect("send"),
        StatusCode::CONFLICT,
        "project_exists",
    )
    .await;
    for bad in ["", "Doors", "-x", "a/b", "..", &"a".repeat(64)] {
        expect_error(
            post(json!({"name": bad, "config": cfg})).await.expect("send"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_project_name",
        )
        .await;
    }
    let msg = expect_error(
        post(json!({"name": "x", "config": {"filter": {"positive_prompts": ["x"], "threshold": 7}}}))
            .await
            .expect("send"),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_config",
    )
    .await;
    assert!(msg.contains("filter.threshold"), "{msg}");
    expect_error(
        post(json!({"name": "x", "config": {}})).await.expect("send"),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_config",
    )
    .await;
    // Unknown fields, at the top and nested, are rejected rather than ignored.
    for body in [
        json!({"name": "x", "config": cfg, "colour": 1}),
        json!({"name": "x", "config": {"filter": {"positive_prompts": ["x"], "treshold": 0.3}}}),
    ] {
        expect_error(post(body).await.expect("send"), StatusCode::UNPROCESSABLE_ENTITY, "invalid_body").await;
    }
    expect_error(
        app.user(Method::GET, "/v1/projects/nope").send().await.expect("send"),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    expect_error(
        app.user(Method::PUT, "/v1/projects/doors/config")
            .json(&json!({"dedup": {"threshold": 2.0}, "filter": {"positive_prompts": ["x"]}}))
            .send()
            .await
            .expect("send"),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_config",
    )
    .await;
    // Nothing of the refused requests was stored.
    let page: Page<ProjectView> =
        expect_json(app.user(Method::GET, "/v1/projects").send().await.expect("send"), StatusCode::OK).await;
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].config.dedup.threshold, 0.9);
    app.stop().await;
}

async fn cancel_project_cancels_its_work(db: Db) {
    let app = spawn_app(db).await;
    app.create_project("a").await;
    app.create_project("b").await;
    let v = app.submit(&["https://example.com/1.mp4"], &["a", "b"]).await;
    let agent = app.register("w1", &Stage::ALL, &DEFAULT_MODELS).await;
    let t = app.lease_one(agent, Stage::Download).await;
    app.complete_ok(&t, &result_for(&t, 1, 0)).await;
    let t = app.lease_one(agent, Stage::Extract).await;
    app.complete_ok(&t, &result_for(&t, 1, 0)).await;
    // Two filter tasks, one per project; lease the one of project a.
    let filters = app.lease(agent, &[Stage::Filter], 2, 2_000).await;
    assert_eq!(filters.len(), 2);
    let fa = filters.iter().find(|t| t.input.project.as_deref() == Some("a")).expect("filter of a");
    let cancelled: ProjectView =
        expect_json(app.user(Method::POST, "/v1/projects/a/cancel").send().await.expect("send"), StatusCode::OK).await;
    assert!(cancelled.cancelled);
    // The leased task learns it from its heartbeat; completing it is refused.
    let hb: HeartbeatResponse = expect_json(app.heartbeat(fa.task_id, fa.lease_token).await, StatusCode::OK).await;
    assert!(hb.cancelled);
    expect_error(app.complete(fa, &result_for(fa, 1, 3)).await, StatusCode::CONFLICT, "task_cancelled").await;
    let st = app.project_status("a").await;
    assert_eq!(st.state, ProjectState::Cancelled);
    assert_eq!(st.by_state["CANCELLED"], 1);
    // Project b is untouched; new submissions to a are refused.
    assert_eq!(app.project_status("b").await.by_state["FILTERING"], 1);
    expect_error(
        app.user(Method::POST, "/v1/videos")
            .json(&json!({"urls": ["https://example.com/2.mp4"], "projects": ["a"]}))
            .send()
            .await
            .expect("send"),
        StatusCode::CONFLICT,
        "project_cancelled",
    )
    .await;
    assert_eq!(app.video(v[0].id).await.video.state, VideoState::Downloaded);
    app.stop().await;
}
