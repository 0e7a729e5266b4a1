//! Per-frame results of filter and dedup over HTTP, agents simulated: the new config fields
//! and their validation, the dedup model lock once a kept set exists, frame rows written by
//! accepted completions only (every inconsistent result is a 422 that changes nothing, a
//! stale token a 409 that changes nothing, a retry replaces), `/frames` and `/kept` pages,
//! reruns from filter and from dedup (in the recorded order), the protocol version bump and
//! the completion routes' own body limit.

use dataminer_tests::*;
use dataminer_wire::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

both!(
    config_defaults_validation_and_the_kept_set_lock,
    filter_and_dedup_record_frames_and_pages,
    inconsistent_results_are_refused_and_change_nothing,
    stale_tokens_and_repeats_change_nothing_and_reruns_replace,
    rerun_from_dedup_replays_the_recorded_order,
    old_protocol_agents_are_refused,
    completions_have_their_own_body_limit,
);

/// Creates project `p` with two negative and one junk prompt, submits `n` videos and takes
/// each through download and extract. Returns the agent.
async fn up_to_filter(app: &TestApp, n: usize) -> i64 {
    let body = json!({"name": "p", "config": {"filter": {"positive_prompts": ["a door", "a gate"],
        "negative_prompts": ["a wall"], "junk_prompts": ["blur"]}}});
    let r = app.user(Method::POST, "/v1/projects").json(&body).send().await.expect("send");
    expect_json::<ProjectView>(r, StatusCode::CREATED).await;
    let urls: Vec<String> = (0..n).map(|i| format!("https://example.com/{i}.mp4")).collect();
    let refs: Vec<&str> = urls.iter().map(String::as_str).collect();
    app.submit(&refs, &["p"]).await;
    let agent = app.register("w1", &Stage::ALL, &DEFAULT_MODELS).await;
    for i in 0..n {
        let t = app.lease_one(agent, Stage::Download).await;
        app.complete_ok(&t, &result_for(&t, 500 + i as u64, 0)).await;
        let t = app.lease_one(agent, Stage::Extract).await;
        app.complete_ok(&t, &result_for(&t, 0, 0)).await;
    }
    agent
}

async fn frames(app: &TestApp, query: &str) -> FramePage {
    let r = app.user(Method::GET, &format!("/v1/projects/p/frames{query}")).send().await.expect("send");
    expect_json(r, StatusCode::OK).await
}

/// (video, frame, dedup state) of every filter row of the project.
async fn rows(app: &TestApp) -> Vec<(i64, i64, Option<FrameState>)> {
    frames(app, "?limit=1000").await.items.iter().map(|f| (f.video_id, f.frame_index, f.dedup_state)).collect()
}

fn with_filter(
    mut r: StageResult,
    edit: impl FnOnce(&mut i64, &mut i64, &mut Vec<FilterFrame>, &mut i64),
) -> StageResult {
    if let StageResult::Filter { frames_in, frames_kept, frames, frames_unreadable, .. } = &mut r {
        edit(frames_in, frames_kept, frames, frames_unreadable);
    }
    r
}

fn with_dedup(mut r: StageResult, edit: impl FnOnce(&mut i64, &mut i64, &mut Vec<DedupDecision>)) -> StageResult {
    if let StageResult::Dedup { frames_in, frames_kept, decisions, .. } = &mut r {
        edit(frames_in, frames_kept, decisions);
    }
    r
}

async fn put_config(app: &TestApp, config: &ProjectConfig) -> reqwest::Response {
    app.user(Method::PUT, "/v1/projects/p/config").json(config).send().await.expect("send")
}

async fn config_defaults_validation_and_the_kept_set_lock(db: Db) {
    let app = spawn_app(db).await;
    let agent = up_to_filter(&app, 1).await;
    let p: ProjectView =
        expect_json(app.user(Method::GET, "/v1/projects/p").send().await.expect("send"), StatusCode::OK).await;
    let f = &p.config.filter;
    assert_eq!((f.negative_threshold, f.junk_threshold, f.junk_margin_threshold), (0.25, 0.3, 0.05));
    assert_eq!(f.junk_prompts, vec!["blur".to_string()]);
    assert_eq!(p.config.dedup.embedding, DedupEmbedding::Pooler);
    for (field, value) in [
        ("negative_threshold", json!(1.5)),
        ("junk_threshold", json!(-2)),
        ("junk_margin_threshold", json!(2.5)),
        ("junk_prompts", json!(["  "])),
    ] {
        let mut filter = serde_json::to_value(f).expect("json");
        filter[field] = value;
        let r =
            app.user(Method::PUT, "/v1/projects/p/config").json(&json!({"filter": filter})).send().await.expect("send");
        let msg = expect_error(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_config").await;
        assert!(msg.contains(&format!("filter.{field}")), "{msg}");
    }
    let r = app
        .user(Method::PUT, "/v1/projects/p/config")
        .json(&json!({"filter": {"positive_prompts": ["x"]}, "dedup": {"embedding": "cls"}}))
        .send()
        .await
        .expect("send");
    expect_error(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body").await;
    // Before a kept set exists the dedup model may change (and back).
    let mut c = p.config.clone();
    c.dedup.model = "dinov3".into();
    c.dedup.embedding = DedupEmbedding::HiddenMean;
    expect_json::<ProjectView>(put_config(&app, &c).await, StatusCode::OK).await;
    expect_json::<ProjectView>(put_config(&app, &p.config).await, StatusCode::OK).await;
    let t = app.lease_one(agent, Stage::Filter).await;
    app.complete_ok(&t, &result_for(&t, 0, 2)).await;
    let t = app.lease_one(agent, Stage::Dedup).await;
    app.complete_ok(&t, &result_for(&t, 0, 2)).await;
    let mut c = p.config.clone();
    c.dedup.model = "dinov3".into();
    let msg = expect_error(put_config(&app, &c).await, StatusCode::CONFLICT, "kept_set_exists").await;
    assert!(msg.contains("dedup.model"), "{msg}");
    let mut c = p.config.clone();
    c.dedup.embedding = DedupEmbedding::HiddenCls;
    let msg = expect_error(put_config(&app, &c).await, StatusCode::CONFLICT, "kept_set_exists").await;
    assert!(msg.contains("dedup.embedding"), "{msg}");
    let got: ProjectView =
        expect_json(app.user(Method::GET, "/v1/projects/p").send().await.expect("send"), StatusCode::OK).await;
    assert_eq!(got.config, p.config, "a refused update changes nothing");
    // Other fields still change, k_neighbors included (accepted, ignored).
    let mut c = p.config.clone();
    c.dedup.threshold = 0.8;
    c.dedup.k_neighbors = 7;
    c.filter.junk_threshold = 0.4;
    let got: ProjectView = expect_json(put_config(&app, &c).await, StatusCode::OK).await;
    assert_eq!(got.config, c);
    app.stop().await;
}

async fn filter_and_dedup_record_frames_and_pages(db: Db) {
    let app = spawn_app(db).await;
    let agent = up_to_filter(&app, 2).await;
    let fa = app.lease_one(agent, Stage::Filter).await;
    let fb = app.lease_one(agent, Stage::Filter).await;
    let (a, b) = (fa.input.video_id, fb.input.video_id);
    let ra = with_filter(filter_result(&fa, &[2, 4, 6]), |_, _, frames, unreadable| {
        frames[1].best_prompt = 1;
        frames[1].neg_max = Some(0.125);
        frames[1].junk_max = Some(0.25);
        *unreadable = 2;
    });
    app.complete_ok(&fa, &ra).await;
    app.complete_ok(&fb, &filter_result(&fb, &[1, 3])).await;
    assert_eq!(rows(&app).await, vec![(a, 2, None), (a, 4, None), (a, 6, None), (b, 1, None), (b, 3, None)]);
    let f4 = frames(&app, &format!("?video={a}&limit=2")).await;
    assert_eq!(f4.items[1].frame_index, 4);
    assert_eq!((f4.items[1].best_prompt, f4.items[1].neg_max, f4.items[1].junk_max), (1, Some(0.125), Some(0.25)));
    assert_eq!(f4.items[1].path, format!("{}/frame_000004.jpg", fa.input.frames_dir.as_deref().expect("dir")));
    assert_eq!((f4.items[1].width, f4.items[1].height), (640, 360));
    assert_eq!(f4.next_cursor, Some(format!("{a}:4")));

    // Video a first: keeps 2 and 4, drops 6 as a duplicate of its own frame 2.
    let da = app.lease_one(agent, Stage::Dedup).await;
    assert_eq!(da.input.video_id, a);
    assert_eq!(da.input.kept_seq_upto, 0);
    let dec = |i, kept, of: Option<(i64, i64)>, sim| DedupDecision {
        frame_index: i,
        kept,
        duplicate_of: of.map(|(video_id, frame_index)| FrameRef { video_id, frame_index }),
        similarity: sim,
    };
    let res_a = StageResult::Dedup {
        output_dir: da.attempt_dir.clone(),
        frames_in: 3,
        frames_kept: 2,
        decisions: vec![dec(2, true, None, None), dec(4, true, None, None), dec(6, false, Some((a, 2)), Some(0.97))],
        model_digest: "dino-1".into(),
    };
    app.complete_ok(&da, &res_a).await;
    // Video b: frame 1 duplicates a's frame 4, frame 3 is kept.
    let db_ = app.lease_one(agent, Stage::Dedup).await;
    assert_eq!(db_.input.kept_seq_upto, 1);
    let res_b = StageResult::Dedup {
        output_dir: db_.attempt_dir.clone(),
        frames_in: 2,
        frames_kept: 1,
        decisions: vec![dec(1, false, Some((a, 4)), Some(0.9)), dec(3, true, None, None)],
        model_digest: "dino-1".into(),
    };
    app.complete_ok(&db_, &res_b).await;

    use FrameState::*;
    assert_eq!(
        rows(&app).await,
        vec![
            (a, 2, Some(Kept)),
            (a, 4, Some(Kept)),
            (a, 6, Some(Duplicate)),
            (b, 1, Some(Duplicate)),
            (b, 3, Some(Kept))
        ]
    );
    let kept = frames(&app, "?state=kept").await;
    assert_eq!(
        kept.items.iter().map(|f| (f.video_id, f.frame_index)).collect::<Vec<_>>(),
        vec![(a, 2), (a, 4), (b, 3)]
    );
    assert_eq!(kept.next_cursor, None);
    let dups = frames(&app, "?state=duplicate").await;
    assert_eq!(
        dups.items
            .iter()
            .map(|f| (f.frame_index, f.duplicate_of, f.similarity.map(|s| (s * 100.0).round())))
            .collect::<Vec<_>>(),
        vec![
            (6, Some(FrameRef { video_id: a, frame_index: 2 }), Some(97.0)),
            (1, Some(FrameRef { video_id: a, frame_index: 4 }), Some(90.0))
        ]
    );
    // Keyset pages: two at a time, in order, then the end.
    let p1 = frames(&app, "?state=kept&limit=2").await;
    assert_eq!(p1.items.len(), 2);
    let cursor = p1.next_cursor.expect("a full page has a cursor");
    let p2 = frames(&app, &format!("?state=kept&limit=2&after={cursor}")).await;
    assert_eq!(p2.items.iter().map(|f| (f.video_id, f.frame_index)).collect::<Vec<_>>(), vec![(b, 3)]);
    assert_eq!(p2.next_cursor, None);
    let only_b = frames(&app, &format!("?video={b}&state=kept")).await;
    assert_eq!(only_b.items.len(), 1);
    for bad in ["?after=x", "?after=1:", "?state=maybe", "?limit=0"] {
        let r = app.user(Method::GET, &format!("/v1/projects/p/frames{bad}")).send().await.expect("send");
        expect_error(r, StatusCode::BAD_REQUEST, "invalid_query").await;
    }
    let r = app.user(Method::GET, "/v1/projects/nope/frames").send().await.expect("send");
    expect_error(r, StatusCode::NOT_FOUND, "not_found").await;
    let r = app.agent(Method::GET, "/v1/projects/p/frames").send().await.expect("send");
    expect_error(r, StatusCode::FORBIDDEN, "forbidden").await;

    // The kept set, paged by kept_seq (agents only).
    let shared = &app;
    let page = |q: &'static str| async move {
        let r = shared.agent(Method::GET, &format!("/v1/projects/p/kept{q}")).send().await.expect("send");
        expect_json::<Page<KeptEntry>>(r, StatusCode::OK).await
    };
    let k1 = page("?limit=1").await;
    assert_eq!(
        k1.items,
        vec![KeptEntry { kept_seq: 1, video_id: a, dedup_dir: da.attempt_dir.clone(), model_digest: "dino-1".into() }]
    );
    assert_eq!(k1.next_cursor, Some(1));
    let k2 = page("?after_seq=1&limit=1").await;
    assert_eq!((k2.items[0].kept_seq, k2.items[0].video_id), (2, b));
    assert!(page("?after_seq=2").await.items.is_empty());
    let r = app.user(Method::GET, "/v1/projects/p/kept").send().await.expect("send");
    expect_error(r, StatusCode::FORBIDDEN, "forbidden").await;

    let st = app.project_status("p").await;
    assert_eq!(
        (st.frames.filtered, st.frames.deduped, st.frames.dedup_kept, st.frames.dedup_duplicate, st.frames.unreadable),
        (5, 3, 3, 2, 2)
    );
    let d = app.video(a).await;
    assert!(d.tasks.iter().all(|t| t.state == TaskState::Succeeded || t.stage == Stage::Detect));
    app.stop().await;
}

async fn inconsistent_results_are_refused_and_change_nothing(db: Db) {
    let app = spawn_app(db).await;
    let agent = up_to_filter(&app, 2).await;
    let fa = app.lease_one(agent, Stage::Filter).await;
    let a = fa.input.video_id;
    let good = filter_result(&fa, &[1, 2, 3]);
    let outside = fa.attempt_dir.clone();
    let bad_filters: Vec<(&str, StageResult)> = vec![
        ("count", with_filter(good.clone(), |_, kept, _, _| *kept = 2)),
        ("twice", with_filter(good.clone(), |_, _, f, _| f[1].frame_index = 1)),
        ("negative", with_filter(good.clone(), |_, _, f, _| f[0].frame_index = -1)),
        ("unreadable", with_filter(good.clone(), |_, _, _, u| *u = 8)),
        ("prompt", with_filter(good.clone(), |_, _, f, _| f[2].best_prompt = 2)),
        ("path", with_filter(good.clone(), |_, _, f, _| f[0].path = format!("{outside}/frame_000001.jpg"))),
        ("escape", with_filter(good.clone(), |_, _, f, _| f[0].path = "frames_raw/../etc/passwd".into())),
    ];
    for (what, bad) in &bad_filters {
        let r = app.complete(&fa, bad).await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{what}: {}", r.text().await.unwrap_or_default());
    }
    assert!(rows(&app).await.is_empty(), "no refused filter wrote a row");
    assert_eq!(app.video(a).await.projects[0].state, ProjectVideoState::Filtering);
    app.complete_ok(&fa, &good).await;

    // A batch: one refused item does not hold back the other.
    let fb = app.lease_one(agent, Stage::Filter).await;
    let da = app.lease_one(agent, Stage::Dedup).await;
    let b = fb.input.video_id;
    let body = json!({"completions": [
        {"task_id": da.task_id, "lease_token": da.lease_token, "result": dedup_result(&da, 2, 2, None)},
        {"task_id": fb.task_id, "lease_token": fb.lease_token, "result": filter_result(&fb, &[5, 7])},
    ]});
    let r: BatchCompleteResponse = expect_json(
        app.agent(Method::POST, "/v1/tasks/complete").json(&body).send().await.expect("send"),
        StatusCode::OK,
    )
    .await;
    assert_eq!((r.results[0].status, r.results[1].status), (422, 200), "{r:?}");
    assert_eq!(r.results[0].error.as_ref().map(|e| e.code.as_str()), Some("invalid_result"));
    assert_eq!(rows(&app).await, vec![(a, 1, None), (a, 2, None), (a, 3, None), (b, 5, None), (b, 7, None)]);

    let good = dedup_result(&da, 3, 2, None);
    let bad_dedups: Vec<(&str, StageResult)> = vec![
        ("missing", dedup_result(&da, 2, 2, None)),
        ("extra", dedup_result(&da, 4, 4, None)),
        ("not filter-kept", with_dedup(good.clone(), |_, _, d| d[2].frame_index = 9)),
        ("frames_kept", with_dedup(good.clone(), |_, k, _| *k = 3)),
        (
            "later same-video",
            with_dedup(good.clone(), |_, _, d| {
                d[0].kept = false;
                d[0].duplicate_of = Some(FrameRef { video_id: a, frame_index: 2 });
                d[0].similarity = Some(0.9);
                d[2].kept = true;
                d[2].duplicate_of = None;
                d[2].similarity = None;
            }),
        ),
        (
            "unknown other frame",
            with_dedup(good.clone(), |_, _, d| d[2].duplicate_of = Some(FrameRef { video_id: b, frame_index: 5 })),
        ),
        ("similarity", with_dedup(good.clone(), |_, _, d| d[2].similarity = Some(1.5))),
        ("no duplicate_of", with_dedup(good.clone(), |_, _, d| d[2].duplicate_of = None)),
    ];
    for (what, bad) in &bad_dedups {
        let r = app.complete(&da, bad).await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{what}: {}", r.text().await.unwrap_or_default());
    }
    assert!(rows(&app).await.iter().all(|r| r.2.is_none()), "no refused dedup wrote a decision");
    assert_eq!(app.video(a).await.projects[0].kept_seq, None);
    app.complete_ok(&da, &good).await;
    // b's dedup may name a's kept frames but not its duplicate (frame 3).
    let db_ = app.lease_one(agent, Stage::Dedup).await;
    let dup_of_dup = dedup_result(&db_, 2, 0, Some(FrameRef { video_id: a, frame_index: 3 }));
    let fixed = |r: StageResult| {
        with_dedup(r, |_, _, d| {
            for x in d.iter_mut() {
                x.frame_index += 4; // b's filter kept 5 and 7
            }
            d[1].frame_index = 7;
        })
    };
    let r = app.complete(&db_, &fixed(dup_of_dup)).await;
    expect_error(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_result").await;
    app.complete_ok(&db_, &fixed(dedup_result(&db_, 2, 0, Some(FrameRef { video_id: a, frame_index: 2 })))).await;
    assert_eq!(app.project_status("p").await.frames.dedup_duplicate, 3);
    app.stop().await;
}

async fn stale_tokens_and_repeats_change_nothing_and_reruns_replace(db: Db) {
    let app = spawn_app(db).await;
    let agent = up_to_filter(&app, 1).await;
    let t1 = app.lease_one(agent, Stage::Filter).await;
    let v = t1.input.video_id;
    let r = app.fail(t1.task_id, t1.lease_token, "flaky", true).await;
    assert_eq!(r.status(), StatusCode::OK);
    let t2 = app.lease(agent, &[Stage::Filter], 1, 5_000).await.pop().expect("filter again after backoff");
    let r = app.complete(&t1, &filter_result(&t1, &[1, 2])).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert!(rows(&app).await.is_empty(), "a stale attempt writes no rows");
    app.complete_ok(&t2, &filter_result(&t2, &[3, 4])).await;
    // Repeating the accepted completion (lost reply) with other rows changes nothing.
    let again = app.complete_ok(&t2, &filter_result(&t2, &[9])).await;
    assert!(again.duplicate);
    assert_eq!(rows(&app).await, vec![(v, 3, None), (v, 4, None)]);
    let d = app.lease_one(agent, Stage::Dedup).await;
    app.complete_ok(
        &d,
        &with_dedup(dedup_result(&d, 2, 2, None), |_, _, x| {
            x[0].frame_index = 3;
            x[1].frame_index = 4;
        }),
    )
    .await;
    let t = app.lease_one(agent, Stage::Detect).await;
    // A rerun while a project-stage task runs is refused.
    let shared = &app;
    let rerun = |from: &'static str| async move {
        shared.user(Method::POST, "/v1/projects/p/rerun").json(&json!({"from": from})).send().await.expect("send")
    };
    expect_error(rerun("filter").await, StatusCode::CONFLICT, "project_busy").await;
    app.complete_ok(&t, &result_for(&t, 0, 1)).await;
    let r: RerunResponse = expect_json(rerun("filter").await, StatusCode::OK).await;
    assert_eq!(r.requeued, 1);
    let pvv = &app.video(v).await.projects[0];
    assert_eq!((pvv.state, pvv.kept_seq, pvv.frames_filtered), (ProjectVideoState::Pending, None, None));
    assert_eq!(rows(&app).await, vec![(v, 3, None), (v, 4, None)], "rows stay until the rerun completes");
    let t3 = app.lease_one(agent, Stage::Filter).await;
    app.complete_ok(&t3, &filter_result(&t3, &[5])).await;
    assert_eq!(rows(&app).await, vec![(v, 5, None)], "the rerun's rows replace the old ones");
    let r = app.user(Method::POST, "/v1/projects/p/rerun").json(&json!({"from": "detect"})).send().await.expect("send");
    expect_error(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body").await;
    let r =
        app.user(Method::POST, "/v1/projects/nope/rerun").json(&json!({"from": "dedup"})).send().await.expect("send");
    expect_error(r, StatusCode::NOT_FOUND, "not_found").await;
    app.stop().await;
}

async fn rerun_from_dedup_replays_the_recorded_order(db: Db) {
    let app = spawn_app(db).await;
    let agent = up_to_filter(&app, 3).await;
    let filters = app.lease(agent, &[Stage::Filter], 3, 2_000).await;
    assert_eq!(filters.len(), 3);
    // Completed in reverse, so the kept order differs from video-id order and replaying it
    // is a real check.
    for t in filters.iter().rev() {
        app.complete_ok(t, &result_for(t, 0, 2)).await;
    }
    let mut order = Vec::new();
    for _ in 0..3 {
        let d = app.lease_one(agent, Stage::Dedup).await;
        order.push(d.input.video_id);
        app.complete_ok(&d, &result_for(&d, 0, 2)).await;
        let t = app.lease_one(agent, Stage::Detect).await;
        app.complete_ok(&t, &result_for(&t, 0, 1)).await;
    }
    let mut by_id = order.clone();
    by_id.sort_unstable();
    assert_ne!(order, by_id, "the kept order is not the video-id order");
    let r: RerunResponse = expect_json(
        app.user(Method::POST, "/v1/projects/p/rerun").json(&json!({"from": "dedup"})).send().await.expect("send"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(r.requeued, 3);
    let st = app.project_status("p").await;
    assert_eq!((st.by_state["FILTERED"], st.frames.dedup_kept), (3, 0), "kept set cleared");
    assert!(frames(&app, "?state=kept").await.items.is_empty());
    let mut replay = Vec::new();
    for upto in 0..3 {
        let d = app.lease_one(agent, Stage::Dedup).await;
        assert!(app.lease(agent, &[Stage::Dedup], 1, 0).await.is_empty(), "one dedup per project at a time");
        assert_eq!(d.input.kept_seq_upto, upto);
        replay.push(d.input.video_id);
        app.complete_ok(&d, &result_for(&d, 0, 2)).await;
    }
    assert_eq!(replay, order, "dedup reruns in the recorded kept_seq order");
    for (seq, v) in order.iter().enumerate() {
        assert_eq!(app.video(*v).await.projects[0].kept_seq, Some(seq as i64 + 1));
    }
    assert_eq!(app.project_status("p").await.frames.dedup_kept, 6);
    app.stop().await;
}

async fn old_protocol_agents_are_refused(db: Db) {
    let app = spawn_app(db).await;
    let body = json!({"name": "old", "stages": ["dedup"], "version": "0.1", "protocol_version": PROTOCOL_VERSION - 1});
    let r = app.agent(Method::POST, "/v1/agents/register").json(&body).send().await.expect("send");
    let msg = expect_error(r, StatusCode::BAD_REQUEST, "protocol_version_unsupported").await;
    assert!(msg.contains(&format!("protocol {}", PROTOCOL_VERSION - 1)) && msg.contains("upgrade"), "{msg}");
    let agents: Vec<AgentView> =
        expect_json(app.user(Method::GET, "/v1/agents").send().await.expect("send"), StatusCode::OK).await;
    assert!(agents.is_empty(), "a refused agent is not registered");
    app.stop().await;
}

async fn completions_have_their_own_body_limit(db: Db) {
    let app = spawn_app_with(db, |c| {
        c.body_limit_bytes = 4096;
        c.result_body_limit_bytes = 64 * 1024;
    })
    .await;
    let agent = up_to_filter(&app, 2).await;
    let t = app.lease_one(agent, Stage::Filter).await;
    let many: Vec<i64> = (1..=150).collect();
    let big = with_filter(filter_result(&t, &many), |frames_in, _, _, _| *frames_in = 150);
    assert!(serde_json::to_vec(&big).expect("json").len() > 4096);
    app.complete_ok(&t, &big).await;
    assert_eq!(frames(&app, "?limit=1000").await.items.len(), 150);
    let t = app.lease_one(agent, Stage::Filter).await;
    let many: Vec<i64> = (1..=1000).collect();
    let huge = with_filter(filter_result(&t, &many), |frames_in, _, _, _| *frames_in = 1000);
    let r = app.complete(&t, &huge).await;
    expect_error(r, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large").await;
    // Other routes keep the general limit.
    let r = app
        .user(Method::POST, "/v1/projects")
        .json(&json!({"name": "x", "config": {"filter": {"positive_prompts": ["a".repeat(5000)]}}}))
        .send()
        .await
        .expect("send");
    expect_error(r, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large").await;
    app.stop().await;
}
