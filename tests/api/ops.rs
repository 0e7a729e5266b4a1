//! Operations: `/status` in JSON and as a table, `/metrics` names and values, readiness, the
//! `/docs` page served entirely from the binary, and the committed OpenAPI document matching
//! the code.

use dataminer_tests::*;
use dataminer_wire::*;
use reqwest::{Method, StatusCode};

both!(status_json_and_text, metrics_follow_the_work, docs_are_served_from_the_binary);

async fn status_json_and_text(db: Db) {
    let app = spawn_app(db).await;
    app.create_project("doors").await;
    app.submit(&["https://example.com/a.mp4", "https://example.com/b.mp4"], &["doors"]).await;
    let agent = app.register("node-1-agent", &Stage::ALL, &["yt-dlp"]).await;
    let t = app.lease_one(agent, Stage::Download).await;
    app.complete_ok(&t, &result_for(&t, 1, 0)).await;
    let st = app.status().await;
    assert_eq!(st.backend, if db == Db::Sqlite { "sqlite" } else { "postgres" });
    assert_eq!(st.tasks["download"]["queued"], 1);
    assert_eq!(st.tasks["download"]["succeeded"], 1);
    assert_eq!(st.tasks["extract"]["queued"], 1);
    assert_eq!(st.videos["PENDING"], 1);
    assert_eq!(st.videos["DOWNLOADED"], 1);
    assert_eq!(st.agents_alive, 1);
    assert_eq!(st.projects.len(), 1);
    assert_eq!(st.projects[0].by_state["PENDING"], 2);
    assert!(st.oldest_queued_ms.contains_key("download"));
    for req in
        [app.user(Method::GET, "/status").header("accept", "text/plain"), app.user(Method::GET, "/status?format=text")]
    {
        let r = req.send().await.expect("send");
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.headers()["content-type"].to_str().expect("ascii").starts_with("text/plain"));
        let text = r.text().await.expect("text");
        for needle in ["TASKS", "download", "DOWNLOADED", "doors", "node-1-agent", "alive", "1 alive of 1"] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
    }
    expect_error(
        app.user(Method::GET, "/status?format=xml").send().await.expect("send"),
        StatusCode::BAD_REQUEST,
        "invalid_query",
    )
    .await;
    assert_eq!(app.client.get(app.url("/readyz")).send().await.expect("send").text().await.expect("t"), "ready");
    app.stop().await;
}

async fn metrics_follow_the_work(db: Db) {
    let app = spawn_app(db).await;
    app.create_project("p").await;
    app.submit(&["https://example.com/a.mp4", "https://example.com/b.mp4"], &["p"]).await;
    let agent = app.register("w1", &Stage::ALL, &DEFAULT_MODELS).await;
    let t = app.lease_one(agent, Stage::Download).await;
    app.complete_ok(&t, &result_for(&t, 1, 0)).await;
    let t = app.lease_one(agent, Stage::Download).await;
    let _ = app.fail(t.task_id, t.lease_token, "boom", false).await;
    let text = app.client.get(app.url("/metrics")).send().await.expect("send").text().await.expect("text");
    for line in [
        "dataminer_leases_total{stage=\"download\"} 2",
        "dataminer_completions_total{stage=\"download\"} 1",
        "dataminer_failures_total{outcome=\"dead\",stage=\"download\"} 1",
        "dataminer_tasks{stage=\"extract\",state=\"queued\"} 1",
        "dataminer_tasks{stage=\"download\",state=\"dead\"} 1",
        "dataminer_agents{state=\"alive\"} 1",
        "dataminer_task_duration_seconds_bucket{stage=\"download\",le=\"3600\"} 1",
        "dataminer_lease_wait_seconds_count{outcome=\"leased\"} 2",
        "dataminer_http_request_duration_seconds_count{method=\"POST\",route=\"/v1/leases\",status=\"200\"} 2",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
    app.stop().await;
}

/// The committed `openapi/openapi.json` is what the code generates. Regenerate with
/// `cargo run -p dataminer-control-plane -- openapi > openapi/openapi.json`.
#[test]
fn openapi_document_matches_the_code() {
    let generated = dataminer_control_plane::http::openapi().to_pretty_json().expect("render");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../openapi/openapi.json");
    let committed = std::fs::read_to_string(&path).expect("openapi/openapi.json exists");
    assert!(
        committed.trim_end() == generated.trim_end(),
        "openapi/openapi.json is stale: run `cargo run -p dataminer-control-plane -- openapi > openapi/openapi.json`"
    );
    for route in ["/v1/leases", "/v1/tasks/{id}/complete", "/v1/videos", "/status", "/metrics"] {
        assert!(generated.contains(&format!("\"{route}\"")), "{route} missing from the spec");
    }
}

/// `/docs` works on an air-gapped cluster: the page names only local assets, and each of them
/// is served (from the binary) with its content type.
async fn docs_are_served_from_the_binary(db: Db) {
    let app = spawn_app(db).await;
    let page = app.user(Method::GET, "/docs").send().await.expect("send");
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.headers()["content-type"].to_str().expect("ascii").starts_with("text/html"));
    let html = page.text().await.expect("text");
    assert!(!html.contains("http://") && !html.contains("https://") && !html.contains("//cdn"), "{html}");
    let mut assets = Vec::new();
    for attr in ["src=\"", "href=\""] {
        for (i, _) in html.match_indices(attr) {
            let rest = &html[i + attr.len()..];
            assets.push(rest[..rest.find('"').expect("closing quote")].to_string());
        }
    }
    assets.sort();
    assert_eq!(assets, ["/docs/docs-init.js", "/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css"], "{html}");
    for asset in &assets {
        let r = app.user(Method::GET, asset).send().await.expect("send");
        assert_eq!(r.status(), StatusCode::OK, "{asset}");
        let ct = r.headers()["content-type"].to_str().expect("ascii").to_string();
        let want = if asset.ends_with(".css") { "text/css" } else { "text/javascript" };
        assert!(ct.starts_with(want), "{asset}: {ct}");
        let body = r.text().await.expect("text");
        assert!(body.len() > 100, "{asset} is empty");
        if asset.ends_with("docs-init.js") {
            assert!(body.contains("\"/openapi.json\"") && body.contains("validatorUrl: null"), "{body}");
        }
        if asset.ends_with("bundle.js") {
            assert!(body.contains("SwaggerUIBundle"), "{asset} is not the Swagger UI bundle");
        }
    }
    // The assets need a token like the page (every route but health, readiness and metrics).
    let anon = app.client.get(app.url("/docs/swagger-ui.css")).send().await.expect("send");
    assert_eq!(anon.status(), StatusCode::UNAUTHORIZED);
    app.stop().await;
}
