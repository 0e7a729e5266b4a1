//! Bad input gets a clear error in the one error shape and changes nothing: malformed JSON,
//! unknown fields, oversized bodies, invalid and forbidden URLs, credentials, bad paging.

use dataminer_tests::*;
use dataminer_wire::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

both!(malformed_requests, url_validation_refuses_the_whole_batch, paging_limits);

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
    let agent = app.register("w1", &Stage::ALL, &[]).await;
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
