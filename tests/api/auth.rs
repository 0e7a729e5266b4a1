//! Auth roles: user and agent tokens, neither can call the other's routes; health, readiness
//! and metrics are open; without tokens the server refuses to listen beyond loopback.

use dataminer_control_plane::startup::{Application, StartError};
use dataminer_tests::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

both!(roles_are_enforced, open_routes_need_no_token);

async fn roles_are_enforced(db: Db) {
    let app = spawn_app(db).await;
    let user_routes: &[(Method, &str)] = &[
        (Method::GET, "/v1/projects"),
        (Method::POST, "/v1/projects"),
        (Method::GET, "/v1/videos"),
        (Method::POST, "/v1/videos"),
        (Method::GET, "/v1/videos/1"),
        (Method::GET, "/v1/tasks/dead"),
        (Method::POST, "/v1/tasks/1/retry"),
        (Method::GET, "/v1/agents"),
        (Method::GET, "/status"),
    ];
    let agent_routes: &[(Method, &str)] = &[
        (Method::POST, "/v1/agents/register"),
        (Method::POST, "/v1/leases"),
        (Method::POST, "/v1/tasks/1/heartbeat"),
        (Method::POST, "/v1/tasks/1/complete"),
        (Method::POST, "/v1/tasks/complete"),
        (Method::POST, "/v1/tasks/1/fail"),
        (Method::POST, "/v1/tasks/1/release"),
    ];
    for (routes, wrong) in [(user_routes, AGENT_TOKEN), (agent_routes, USER_TOKEN)] {
        for (m, path) in routes {
            let none = app.client.request(m.clone(), app.url(path)).json(&json!({})).send().await.expect("send");
            assert!(none.headers().contains_key("www-authenticate"));
            expect_error(none, StatusCode::UNAUTHORIZED, "unauthorized").await;
            let bad =
                app.client.request(m.clone(), app.url(path)).bearer_auth("not-a-token").send().await.expect("send");
            expect_error(bad, StatusCode::UNAUTHORIZED, "unauthorized").await;
            let other = app
                .client
                .request(m.clone(), app.url(path))
                .bearer_auth(wrong)
                .json(&json!({}))
                .send()
                .await
                .expect("send");
            expect_error(other, StatusCode::FORBIDDEN, "forbidden").await;
        }
    }
    // The right token passes auth (then meets the route's own checks).
    let ok = app.user(Method::GET, "/v1/projects").send().await.expect("send");
    assert_eq!(ok.status(), StatusCode::OK);
    let docs = app.client.get(app.url("/openapi.json")).send().await.expect("send");
    assert_eq!(docs.status(), StatusCode::UNAUTHORIZED);
    let docs = app.agent(Method::GET, "/openapi.json").send().await.expect("send");
    assert_eq!(docs.status(), StatusCode::OK);
    let page = app.user(Method::GET, "/docs").send().await.expect("send");
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.expect("text").contains("<html"), "interactive docs page");
    app.stop().await;
}

async fn open_routes_need_no_token(db: Db) {
    let app = spawn_app(db).await;
    for path in ["/healthz", "/readyz", "/metrics"] {
        let r = app.client.get(app.url(path)).send().await.expect("send");
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
    app.stop().await;
}

#[tokio::test]
async fn no_tokens_means_loopback_only() {
    let dir = ScratchDir::new();
    let mut c = test_config(None, dir.0.clone());
    c.user_token = None;
    c.agent_token = None;
    c.listen = "0.0.0.0:0".parse().expect("addr");
    match Application::build(c.clone()).await {
        Err(StartError::Config(m)) => assert!(m.contains("without tokens"), "{m}"),
        other => panic!("expected a config error, got {other:?}"),
    }
    // Only one token is as bad as a typo'd deployment.
    c.user_token = Some(dataminer_control_plane::config::Secret(USER_TOKEN.into()));
    assert!(matches!(Application::build(c.clone()).await, Err(StartError::Config(_))));
    // No tokens on loopback: every route is open.
    c.user_token = None;
    c.listen = "127.0.0.1:0".parse().expect("addr");
    let app = Application::build(c).await.expect("loopback without tokens is allowed");
    let base = format!("http://{}", app.local_addr());
    let stop = app.shutdown_token();
    let h = tokio::spawn(app.run_until_stopped());
    let r = reqwest::get(format!("{base}/v1/projects")).await.expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    stop.cancel();
    let _ = h.await;
}

#[tokio::test]
async fn the_sqlite_file_serves_one_process() {
    let first = spawn_app(Db::Sqlite).await;
    let mut c = first.config.clone();
    c.listen = "127.0.0.1:0".parse().expect("addr");
    match Application::build(c).await {
        Err(e @ StartError::Store(_)) => {
            assert!(e.to_string().contains("another control-plane process"), "{e}");
        }
        other => panic!("a second process on the same SQLite file must be refused, got {other:?}"),
    }
    first.stop().await;
}
