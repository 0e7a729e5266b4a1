//! The model stages' failure paths through real processes: an agent advertises the packages
//! it verified and refuses to start on a broken one; an injected out-of-memory (the agent's
//! hidden test hook) halves the batch and the result is unchanged, and at one frame the task
//! fails retryably; a cancel stops a filter within one (slowed) batch; `kill -9` in the middle
//! of a dedup, then a retry on another agent, leaves the project's kept set as one run would.

use std::time::{Duration, Instant};

use dataminer_tests::Db;
use dataminer_wire::{ProjectVideoState as S, Stage, TaskState};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::{env, start_agent, Agent, Env};
use crate::models::{create_project, frames, model_agent, model_agent_with, models_dir, wait_pv};

both!(
    agents_advertise_their_packages_and_refuse_a_broken_one,
    a_task_waits_visibly_for_an_agent_holding_its_model,
    injected_out_of_memory_halves_the_batch,
    out_of_memory_at_one_frame_fails_retryably,
    a_cancel_stops_the_filter_within_a_batch,
    kill_9_mid_dedup_then_retry_keeps_the_kept_set
);

/// The value of the metric line starting with `name` (labels included), if any.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
}

async fn agents_advertise_their_packages_and_refuse_a_broken_one(db: Db) {
    let e = env(db, |_| {}).await;
    let a = model_agent_with(&e, "adv", "filter", &[("DATAMINER_MODELS", "meancolour,thumbnail")]).await;
    let r = e.app.user(Method::GET, "/v1/agents").send().await.expect("send");
    let agents: serde_json::Value = dataminer_tests::expect_json(r, StatusCode::OK).await;
    let caps = agents[0]["capabilities"].as_array().cloned().unwrap_or_default();
    for m in ["model:meancolour", "model:thumbnail"] {
        assert!(caps.contains(&json!(m)), "{m} not advertised: {agents}");
    }
    assert!(!caps.contains(&json!("model:siglip2-tiny")), "not asked to serve siglip2-tiny: {agents}");
    drop(a);
    // A copy of the packages with one byte of the thumbnail model changed.
    let broken = e.data.0.join("broken-models");
    for name in ["meancolour", "thumbnail"] {
        std::fs::create_dir_all(broken.join(name)).expect("dir");
        for f in std::fs::read_dir(std::path::Path::new(&models_dir()).join(name)).expect("read") {
            let f = f.expect("entry");
            std::fs::copy(f.path(), broken.join(name).join(f.file_name())).expect("copy");
        }
    }
    let pt = broken.join("thumbnail/image.pt");
    let mut bytes = std::fs::read(&pt).expect("read");
    let at = bytes.len() / 3;
    bytes[at] ^= 0x55;
    std::fs::write(&pt, bytes).expect("write");
    let ld = std::env::var("LD_LIBRARY_PATH").unwrap_or_default();
    let dir = broken.to_string_lossy().into_owned();
    let env = [
        ("DATAMINER_STAGES", "filter,dedup"),
        ("DATAMINER_MODELS_DIR", dir.as_str()),
        ("DATAMINER_DEVICE", "cpu"),
        ("LD_LIBRARY_PATH", ld.as_str()),
    ];
    let mut b = start_agent(&e.app.base, &e.data.0, "broken", &env, false).await;
    let st = tokio::time::timeout(Duration::from_secs(30), b.child.wait()).await.expect("exits").expect("wait");
    assert!(!st.success());
    let log = b.log_text();
    assert!(log.contains("refusing to start") && log.contains("thumbnail") && log.contains("image.pt"), "{log}");
    e.app.stop().await;
}

/// An agent serving the filter stage without the project's package leaves the task queued
/// and `/status` names what it waits for; an agent with the package then runs it.
async fn a_task_waits_visibly_for_an_agent_holding_its_model(db: Db) {
    let e = env(db, |_| {}).await;
    let cpu = model_agent_with(&e, "cpu", "download,extract,filter", &[("DATAMINER_MODELS", "thumbnail")]).await;
    create_project(&e, filter_project("p", 4)).await;
    let id = e.submit(&[e.media.url("colours.mp4")], "p").await[0].id;
    let deadline = Instant::now() + Duration::from_secs(60);
    let waiting = loop {
        let r = e.app.user(Method::GET, "/status").send().await.expect("send");
        let st: dataminer_wire::StatusReport = dataminer_tests::expect_json(r, StatusCode::OK).await;
        if let Some(w) = st.waiting_for_capability.iter().find(|w| w.stage == Stage::Filter) {
            break w.clone();
        }
        assert!(Instant::now() < deadline, "the filter task never waited visibly: {st:?}\n{}", cpu.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((waiting.requires.as_str(), waiting.tasks), ("model:meancolour", 1), "{waiting:?}");
    let text = e.app.user(Method::GET, "/status").header("accept", "text/plain").send().await.expect("send");
    let text = text.text().await.expect("text");
    assert!(text.contains("model:meancolour"), "{text}");
    // Still queued a second later: the agent without the package never leases it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pv = e.app.video(id).await.projects[0].clone();
    assert_eq!(pv.state, S::Pending, "{pv:?}");
    let holder = model_agent_with(&e, "gpu", "filter", &[("DATAMINER_MODELS", "meancolour")]).await;
    let pv = wait_pv(&e, id, "p", &[S::Pending, S::Filtering], &[&holder, &cpu]).await;
    assert_eq!(pv.state, S::Filtered, "{pv:?}");
    let r = e.app.user(Method::GET, "/status").send().await.expect("send");
    let st: dataminer_wire::StatusReport = dataminer_tests::expect_json(r, StatusCode::OK).await;
    // The filter no longer waits; its successor (the default dedup model, which no agent
    // here holds) now does.
    let waits: Vec<(Stage, &str)> = st.waiting_for_capability.iter().map(|w| (w.stage, w.requires.as_str())).collect();
    assert_eq!(waits, [(Stage::Dedup, "model:dino")], "{st:?}");
    e.app.stop().await;
}

fn filter_project(name: &str, batch: u32) -> serde_json::Value {
    json!({"name": name, "config": {"extract": {"interval_frames": 5},
        "filter": {"model": "meancolour", "positive_prompts": ["red"], "threshold": 0.5, "batch_size": batch}}})
}

async fn injected_out_of_memory_halves_the_batch(db: Db) {
    let e = env(db, |_| {}).await;
    let agent =
        model_agent_with(&e, "oom", "download,extract,filter", &[("DATAMINER_TEST_MODEL_OOM_ABOVE", "1")]).await;
    create_project(&e, filter_project("p", 4)).await;
    let id = e.submit(&[e.media.url("colours.mp4")], "p").await[0].id;
    let pv = wait_pv(&e, id, "p", &[S::Pending, S::Filtering], &[&agent]).await;
    assert_eq!(pv.state, S::Filtered, "{pv:?}\n{}", agent.log_text());
    let kept: Vec<i64> = frames(&e, "p", "").await.items.iter().map(|f| f.frame_index).collect();
    assert_eq!(kept, [1, 2, 5, 6]);
    // Every forward pass that succeeded had one frame: six of them.
    let m = agent.metrics_text().await;
    let count = metric(&m, "dataminer_agent_model_batch_frames_count{model=\"meancolour\"}");
    let ones = metric(&m, "dataminer_agent_model_batch_frames_bucket{model=\"meancolour\",le=\"1\"}");
    assert_eq!((count, ones), (Some(6.0), Some(6.0)), "{m}");
    assert!(agent.log_text().contains("out of memory: halving the batch"), "{}", agent.log_text());
    e.app.stop().await;
}

async fn out_of_memory_at_one_frame_fails_retryably(db: Db) {
    let e = env(db, |_| {}).await;
    let agent =
        model_agent_with(&e, "oom0", "download,extract,filter", &[("DATAMINER_TEST_MODEL_OOM_ABOVE", "0")]).await;
    create_project(&e, filter_project("p", 4)).await;
    let id = e.submit(&[e.media.url("colours.mp4")], "p").await[0].id;
    let deadline = Instant::now() + Duration::from_secs(60);
    let task = loop {
        let d = e.app.video(id).await;
        if let Some(t) = d.tasks.iter().find(|t| t.stage == Stage::Filter && t.attempts >= 1 && t.last_error.is_some())
        {
            break t.clone();
        }
        assert!(Instant::now() < deadline, "no failed filter attempt: {d:?}\n{}", agent.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let err = task.last_error.clone().unwrap_or_default();
    assert!(err.contains("out of memory"), "{task:?}");
    // Retryable: queued again (with backoff) while attempts remain, never a fatal death.
    assert!(
        matches!(task.state, TaskState::Queued | TaskState::Leased) || task.attempts >= task.max_attempts,
        "{task:?}"
    );
    assert!(frames(&e, "p", "").await.items.is_empty());
    e.app.stop().await;
}

async fn a_cancel_stops_the_filter_within_a_batch(db: Db) {
    let e = env(db, |_| {}).await;
    // 300 ms per forward pass of one frame; 30 frames: 9 s unless stopped.
    let agent =
        model_agent_with(&e, "slow", "download,extract,filter", &[("DATAMINER_TEST_MODEL_DELAY_MS", "300")]).await;
    let body = json!({"name": "p", "config": {"extract": {"interval_frames": 1},
        "filter": {"model": "meancolour", "positive_prompts": ["red"], "threshold": 0.5, "batch_size": 1}}});
    create_project(&e, body).await;
    let id = e.submit(&[e.media.url("colours.mp4")], "p").await[0].id;
    let batches = "dataminer_agent_model_batch_frames_count{model=\"meancolour\"}";
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(&agent.metrics_text().await, batches).unwrap_or(0.0) < 2.0 {
        assert!(Instant::now() < deadline, "the filter never ran:\n{}", agent.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = e.app.user(Method::POST, "/v1/projects/p/cancel").send().await.expect("send");
    assert!(r.status().is_success(), "{}", r.text().await.unwrap_or_default());
    let cancelled = Instant::now();
    agent.wait_for_metric("dataminer_agent_tasks_in_flight{stage=\"filter\"} 0").await;
    let took = cancelled.elapsed();
    // The cancel reaches the agent with its next heartbeat (100 ms here); the batch running
    // then finishes (300 ms) and nothing more runs.
    assert!(took < Duration::from_millis(1500), "stopped {took:?} after the cancel");
    // The forward pass running when the task stopped may still finish; none starts after it.
    let at_stop = metric(&agent.metrics_text().await, batches).unwrap_or(0.0);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let ran = metric(&agent.metrics_text().await, batches).unwrap_or(0.0);
    assert!(ran <= at_stop + 1.0, "{ran} batches, {at_stop} when the task stopped");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(metric(&agent.metrics_text().await, batches).unwrap_or(0.0), ran, "batches ran after the stop");
    assert!(ran < 30.0, "{ran} batches: the whole video ran");
    assert_eq!(
        metric(&agent.metrics_text().await, "dataminer_agent_tasks_total{outcome=\"cancelled\",stage=\"filter\"}"),
        Some(1.0)
    );
    assert!(frames(&e, "p", "").await.items.is_empty());
    let pv = e.app.video(id).await.projects[0].clone();
    assert_eq!(pv.state, S::Cancelled, "{pv:?}");
    e.app.stop().await;
}

/// The project's kept set as (video, kept_seq) pairs.
async fn kept_set(e: &Env) -> Vec<(i64, i64)> {
    let r = e.app.agent(Method::GET, "/v1/projects/d/kept").send().await.expect("send");
    let page: dataminer_wire::Page<dataminer_wire::KeptEntry> = dataminer_tests::expect_json(r, StatusCode::OK).await;
    page.items.iter().map(|k| (k.video_id, k.kept_seq)).collect()
}

async fn kill_9_mid_dedup_then_retry_keeps_the_kept_set(db: Db) {
    let e = env(db, |c| {
        c.lease_ttl_ms = 1_000;
        c.reaper_interval_ms = 100;
    })
    .await;
    let body = json!({"name": "d", "config": {"extract": {"interval_frames": 5},
        "filter": {"model": "meancolour", "positive_prompts": ["anything"], "threshold": 0.5},
        "dedup": {"model": "thumbnail", "threshold": 0.9, "batch_size": 1}}});
    create_project(&e, body).await;
    let busy = crate::models::DEDUP_BUSY;
    let mut first_agent = model_agent(&e, "a", "download,extract,filter,dedup").await;
    let v1 = e.submit(&[e.media.url("cfr10.mp4")], "d").await[0].id;
    let a = wait_pv(&e, v1, "d", &busy, &[&first_agent]).await;
    assert_eq!((a.state, a.kept_seq), (S::Deduped, Some(1)), "{a:?}\n{}", first_agent.log_text());
    let kept_v1 = frames(&e, "d", &format!("state=kept&video={v1}")).await;
    assert_eq!(kept_set(&e).await, [(v1, 1)]);
    first_agent.signal("TERM");
    let _ = tokio::time::timeout(Duration::from_secs(15), first_agent.child.wait()).await;

    // The second video is filtered by one agent and deduplicated by a slow one, killed
    // after its first batch.
    let cpu = model_agent(&e, "cpu", "download,extract,filter").await;
    let mut slow: Agent = model_agent_with(&e, "slow", "dedup", &[("DATAMINER_TEST_MODEL_DELAY_MS", "700")]).await;
    let v2 = e.submit(&[e.media.url("colours.mp4")], "d").await[0].id;
    let batches = "dataminer_agent_model_batch_frames_count{model=\"thumbnail\"}";
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(&slow.metrics_text().await, batches).unwrap_or(0.0) < 1.0 {
        assert!(Instant::now() < deadline, "the dedup never ran:\n{}\n{}", slow.log_text(), cpu.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    slow.signal("KILL");
    let _ = slow.child.wait().await;
    let survivor = model_agent(&e, "c", "dedup").await;
    let b = wait_pv(&e, v2, "d", &busy, &[&survivor, &cpu]).await;
    // Uniform colour frames embed to zero (similar to nothing): all six are kept.
    assert_eq!((b.state, b.frames_deduped, b.kept_seq), (S::Deduped, Some(6), Some(2)), "{b:?}");
    let d = e.app.video(v2).await;
    let dedup = d.tasks.iter().find(|t| t.stage == Stage::Dedup).expect("dedup task");
    assert_eq!((dedup.state, dedup.attempts), (TaskState::Succeeded, 2), "{dedup:?}");
    // The first video's kept frames and the kept set's order are as before; the second
    // video joined once.
    assert_eq!(kept_set(&e).await, [(v1, 1), (v2, 2)]);
    let again = frames(&e, "d", &format!("state=kept&video={v1}")).await;
    assert_eq!(
        again.items.iter().map(|f| (f.frame_index, f.dedup_state)).collect::<Vec<_>>(),
        kept_v1.items.iter().map(|f| (f.frame_index, f.dedup_state)).collect::<Vec<_>>()
    );
    assert_eq!(frames(&e, "d", &format!("state=kept&video={v2}")).await.items.len(), 6);
    e.app.stop().await;
}
