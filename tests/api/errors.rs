//! Bad input gets a clear error in the one error shape and changes nothing: malformed JSON,
//! unknown fields, oversized bodies, invalid and forbidden URLs, credentials, bad paging;
//! errors from outside the handlers (no route, wrong method, what hyper refuses itself) have
//! the same shape. Agent bodies ignore unknown fields (rolling upgrades), user bodies refuse them.

use dataminer_tests::*;
use dataminer_wire::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

both!(
    malformed_requests,
    url_validation_refuses_the_whole_batch,
    paging_limits,
    errors_outside_the_handlers_have_the_one_shape,
    agent_bodies_ignore_unknown_fields,
    nul_characters_are_refused_alike_on_both_backends
);

async fn malformed_requests(db: Db) {
    let app = spawn_app_with(db, |c| c.body_limit_bytes = 4096).await;
    let raw = |body: &'static str| {
        app.user(Method::POST, "/v1/projects").header("content-type", "application/json").body(body).send()
    };
    expect_error(raw("{\"name\": ").await.expect("send"), StatusCode::BAD_REQUEST, "malformed_json").await;
    expect_error(raw("[1,2]").await.expect("send"), StatusCode::UNPROCESSABLE_ENTITY, "invalid_body").await;
    let r = app.user(Method::POST, "/v1/projects").body("{}").send().await.expect("send");
    expect_error(r, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type").await;
    let big = json!({"name": "x", "config": {"filter": {"positive_prompts": ["a".repeat(5000)]}}});
    let r = app.user(Method::POST, "/v1/projects").json(&big).send().await.expect("send");
    expect_error(r, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large").await;
    let urls: Vec<String> = (0..200).map(|i| format!("https://example.com/{i}.mp4")).collect();
    let r = app
        .user(Method::POST, "/v1/videos")
        .json(&json!({"urls": urls, "projects": ["x"]}))
        .send()
        .await
        .expect("send");
    expect_error(r, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large").await;
    expect_error(
        app.user(Method::GET, "/v1/videos/abc").send().await.expect("send"),
        StatusCode::BAD_REQUEST,
        "invalid_path",
    )
    .await;
    expect_error(
        app.user(Method::GET, "/v1/videos/12345").send().await.expect("send"),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    expect_error(
        app.user(Method::POST, "/v1/videos/12345/cancel").send().await.expect("send"),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let st = app.status().await;
    assert!(st.projects.is_empty() && st.videos.values().all(|n| *n == 0), "nothing was stored");
    app.stop().await;
}

async fn url_validation_refuses_the_whole_batch(db: Db) {
    let app = spawn_app_with(db, |c| c.max_urls_per_request = 5).await;
    app.create_project("p").await;
    let submit = |urls: Vec<&str>, projects: Vec<&str>| {
        app.user(Method::POST, "/v1/videos").json(&json!({"urls": urls, "projects": projects})).send()
    };
    let good = "https://example.com/ok.mp4";
    let long = format!("https://example.com/{}", "a".repeat(2100));
    for (bad, needle) in [
        ("ftp://example.com/v.mp4", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
        ("javascript:alert(1)", "only http and https"),
        ("not a url", "not a valid URL"),
        ("https://user:secret@example.com/v.mp4", "credentials"),
        (long.as_str(), "longer than"),
        ("http://127.0.0.1/v.mp4", "not a globally routable"),
        ("http://2130706433/v.mp4", "not a globally routable"),
        ("http://0x7f000001/v.mp4", "not a globally routable"),
        ("http://0177.0.0.1/v.mp4", "not a globally routable"),
        ("http://169.254.169.254/latest/meta-data", "not a globally routable"),
        ("http://[::ffff:10.0.0.1]/v.mp4", "not a globally routable"),
        ("http://localhost/v.mp4", "not a globally routable"),
        ("http://metadata.google.internal/x", "not a globally routable"),
    ] {
        let msg = expect_error(
            submit(vec![good, bad], vec!["p"]).await.expect("send"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_url",
        )
        .await;
        assert!(msg.contains(needle) && msg.contains("urls[1]"), "{bad}: {msg}");
        assert!(!msg.contains("secret"), "credentials echoed: {msg}");
    }
    // The allow-list names exact host:port pairs.
    assert_eq!(submit(vec!["http://127.0.0.1:9/ok.mp4"], vec!["p"]).await.expect("send").status(), StatusCode::OK);
    expect_error(
        submit(vec!["http://127.0.0.1:10/ok.mp4"], vec!["p"]).await.expect("send"),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_url",
    )
    .await;
    expect_error(
        submit(vec![good], vec!["nope"]).await.expect("send"),
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown_project",
    )
    .await;
    expect_error(submit(vec![good], vec![]).await.expect("send"), StatusCode::UNPROCESSABLE_ENTITY, "no_projects")
        .await;
    expect_error(submit(vec![], vec!["p"]).await.expect("send"), StatusCode::UNPROCESSABLE_ENTITY, "no_urls").await;
    expect_error(
        submit(vec![good; 6], vec!["p"]).await.expect("send"),
        StatusCode::UNPROCESSABLE_ENTITY,
        "too_many_urls",
    )
    .await;
    let r = app
        .user(Method::POST, "/v1/videos")
        .json(&json!({"urls": [good], "projects": ["p"], "priority": 5000}))
        .send()
        .await
        .expect("send");
    expect_error(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_priority").await;
    let r = app
        .user(Method::POST, "/v1/videos")
        .json(&json!({"urls": [good], "projects": ["p"], "prio": 1}))
        .send()
        .await
        .expect("send");
    expect_error(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body").await;
    // Only the allow-listed one was stored.
    let page: Page<VideoView> =
        expect_json(app.user(Method::GET, "/v1/videos").send().await.expect("send"), StatusCode::OK).await;
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].url, "http://127.0.0.1:9/ok.mp4");
    // Signed query values are stored (to download) but never shown.
    let v = app.submit(&["https://bucket.example.com/v.mp4?X-Amz-Signature=deadbeef&part=2"], &["p"]).await;
    assert!(!v[0].url.contains("deadbeef") && v[0].url.contains("part=2"), "{}", v[0].url);
    assert!(!app.video(v[0].id).await.video.url.contains("deadbeef"));
    let agent = app.register("w1", &Stage::ALL, &DEFAULT_MODELS).await;
    let leased = app.lease(agent, &[Stage::Download], 5, 0).await;
    assert!(
        leased.iter().any(|t| t.input.url.as_deref().is_some_and(|u| u.contains("deadbeef"))),
        "the agent gets the real URL"
    );
    app.stop().await;
}

async fn paging_limits(db: Db) {
    let app = spawn_app(db).await;
    app.create_project("p").await;
    let urls: Vec<String> = (0..5).map(|i| format!("https://example.com/{i}.mp4")).collect();
    let refs: Vec<&str> = urls.iter().map(String::as_str).collect();
    app.submit(&refs, &["p"]).await;
    for q in ["limit=0", "limit=1001", "limit=x", "state=NOPE", "colour=red"] {
        expect_error(
            app.user(Method::GET, &format!("/v1/videos?{q}")).send().await.expect("send"),
            StatusCode::BAD_REQUEST,
            "invalid_query",
        )
        .await;
    }
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let page: Page<VideoView> = expect_json(
            app.user(Method::GET, &format!("/v1/videos?limit=2&after={after}&project=p&state=PENDING"))
                .send()
                .await
                .expect("send"),
            StatusCode::OK,
        )
        .await;
        seen.extend(page.items.iter().map(|v| v.id));
        match page.next_cursor {
            Some(c) => after = c,
            None => break,
        }
    }
    assert_eq!(seen.len(), 5);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
    let none: Page<VideoView> =
        expect_json(app.user(Method::GET, "/v1/videos?state=DOWNLOADED").send().await.expect("send"), StatusCode::OK)
            .await;
    assert!(none.items.is_empty());
    let other: Page<VideoView> =
        expect_json(app.user(Method::GET, "/v1/videos?project=zzz").send().await.expect("send"), StatusCode::OK).await;
    assert!(other.items.is_empty());
    app.stop().await;
}

async fn errors_outside_the_handlers_have_the_one_shape(db: Db) {
    let app = spawn_app(db).await;
    // No route: with and without a token.
    let msg =
        expect_error(app.user(Method::GET, "/nope").send().await.expect("send"), StatusCode::NOT_FOUND, "not_found")
            .await;
    assert!(msg.contains("/nope"), "{msg}");
    expect_error(app.client.get(app.url("/v1/nope")).send().await.expect("send"), StatusCode::NOT_FOUND, "not_found")
        .await;
    // Wrong method: the Allow header survives.
    let r = app.user(Method::DELETE, "/v1/projects").send().await.expect("send");
    let allow = r.headers().get("allow").map(|v| v.to_str().expect("ascii").to_string()).unwrap_or_default();
    assert!(allow.contains("GET") && allow.contains("POST"), "allow: {allow:?}");
    let msg = expect_error(r, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;
    assert!(msg.contains("DELETE"), "{msg}");
    // A 100 KB query string: hyper refuses the request line itself (414) before any router.
    // (Sent by hand: reqwest refuses to build such a URI.)
    let long = format!("/v1/videos?project={}", "a".repeat(100 * 1024));
    let (status, body) = raw_get(&app, &long).await;
    assert_eq!(status, 414, "{body}");
    let body: ErrorBody = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(body.error.code, "uri_too_long", "{}", body.error.message);
    // More headers than hyper parses (100): 431, also from hyper itself.
    let mut req = app.user(Method::GET, "/v1/projects");
    for i in 0..120 {
        req = req.header(format!("x-filler-{i}"), "x");
    }
    expect_error(req.send().await.expect("send"), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "headers_too_large")
        .await;
    // The server still answers normally afterwards.
    assert_eq!(app.user(Method::GET, "/v1/projects").send().await.expect("send").status(), StatusCode::OK);
    app.stop().await;
}

async fn agent_bodies_ignore_unknown_fields(db: Db) {
    let app = spawn_app(db).await;
    app.create_project("p").await;
    let vid = app.submit(&["https://example.com/a.mp4"], &["p"]).await[0].id;
    let reg = json!({"name": "w1", "stages": ["download"], "version": "next", "protocol_version": PROTOCOL_VERSION,
                     "gpu_memory_mb": 8000});
    let agent: RegisterAgentResponse = expect_json(
        app.agent(Method::POST, "/v1/agents/register").json(&reg).send().await.expect("send"),
        StatusCode::OK,
    )
    .await;
    let t = app.lease_one(agent.agent_id, Stage::Download).await;
    // A newer agent reports a result field this control plane does not know.
    let mut result = serde_json::to_value(result_for(&t, 1, 0)).expect("result");
    result["audio_codec"] = json!("aac");
    let body = json!({"lease_token": t.lease_token, "result": result, "trace_id": "abc"});
    let done: CompleteResponse = expect_json(
        app.agent(Method::POST, &format!("/v1/tasks/{}/complete", t.task_id)).json(&body).send().await.expect("send"),
        StatusCode::OK,
    )
    .await;
    assert!(!done.duplicate);
    let v = app.video(vid).await;
    assert_eq!(v.video.state, VideoState::Downloaded);
    assert_eq!(v.tasks[0].state, TaskState::Succeeded);
    // A wrong type is still refused.
    let mut bad = serde_json::to_value(result_for(&t, 1, 0)).expect("result");
    bad["size_bytes"] = json!("big");
    let r = app
        .agent(Method::POST, &format!("/v1/tasks/{}/complete", t.task_id))
        .json(&json!({"lease_token": t.lease_token, "result": bad}))
        .send()
        .await
        .expect("send");
    let msg = expect_error(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body").await;
    assert!(msg.contains("result") && msg.contains("\"big\""), "{msg}");
    // User bodies still refuse unknown fields.
    let r = app
        .user(Method::POST, "/v1/projects")
        .json(&json!({"name": "q", "config": {"filter": {"positive_prompts": ["x"]}}, "colour": "red"}))
        .send()
        .await
        .expect("send");
    expect_error(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body").await;
    app.stop().await;
}

/// GET over a raw TCP connection (for requests an HTTP client library refuses to send);
/// returns the status and the body.
async fn raw_get(app: &TestApp, target: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = app.base.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "GET {target} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {USER_TOKEN}\r\nconnection: close\r\n\r\n"
    );
    conn.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    conn.read_to_end(&mut out).await.expect("read");
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no head in {text:?}"));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("status in {head:?}"));
    (status, body.to_string())
}

/// PostgreSQL cannot store or compare U+0000 as text (found by Schemathesis as 500s); both
/// backends now answer the same client error, and the schema declares it.
async fn nul_characters_are_refused_alike_on_both_backends(db: Db) {
    let app = spawn_app(db).await;
    app.create_project("p").await;
    let post = |path: &str, body: serde_json::Value, agent: bool| {
        let m = Method::POST;
        if agent { app.agent(m, path) } else { app.user(m, path) }.json(&body).send()
    };
    let r = post("/v1/videos", json!({"urls": ["https://example.com/a\u{0}b.mp4"], "projects": ["p"]}), false);
    expect_error(r.await.expect("send"), StatusCode::UNPROCESSABLE_ENTITY, "invalid_url").await;
    let r = post("/v1/videos", json!({"urls": ["https://example.com/a.mp4"], "projects": ["p\u{0}"]}), false);
    expect_error(r.await.expect("send"), StatusCode::UNPROCESSABLE_ENTITY, "unknown_project").await;
    expect_error(
        app.user(Method::GET, "/v1/projects/p%00").send().await.expect("send"),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let none: Page<VideoView> =
        expect_json(app.user(Method::GET, "/v1/videos?project=p%00").send().await.expect("send"), StatusCode::OK).await;
    assert!(none.items.is_empty());
    for body in [
        json!({"name": "w", "stages": ["download"], "version": "1\u{0}", "protocol_version": PROTOCOL_VERSION}),
        json!({"name": "w", "stages": ["download"], "capabilities": ["gpu\u{0}"], "version": "1",
               "protocol_version": PROTOCOL_VERSION}),
    ] {
        expect_error(
            post("/v1/agents/register", body, true).await.expect("send"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_agent",
        )
        .await;
    }
    app.submit(&["https://example.com/a.mp4"], &["p"]).await;
    let agent = app.register("w1", &Stage::ALL, &DEFAULT_MODELS).await;
    let t = app.lease_one(agent, Stage::Download).await;
    let r = app.fail(t.task_id, t.lease_token, "boom\u{0}", true).await;
    expect_error(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_failure").await;
    let mut result = result_for(&t, 1, 0);
    if let StageResult::Download { codec, .. } = &mut result {
        *codec = Some("h264\u{0}".into());
    }
    expect_error(app.complete(&t, &result).await, StatusCode::UNPROCESSABLE_ENTITY, "invalid_result").await;
    let batch = json!({"completions": [{"task_id": t.task_id, "lease_token": t.lease_token, "result": result}]});
    expect_error(
        post("/v1/tasks/complete", batch, true).await.expect("send"),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_result",
    )
    .await;
    // Nothing was recorded; the task is still leased and completes normally.
    app.complete_ok(&t, &result_for(&t, 1, 0)).await;
    app.stop().await;
}
