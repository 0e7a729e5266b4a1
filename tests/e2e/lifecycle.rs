//! Agents dying and stopping: `kill -9` while holding leases (a second agent finishes every
//! task exactly once in effect, within lease TTL + reaper interval + first backoff), SIGTERM
//! mid-task (released at once, nothing waits a lease TTL), an unreachable control plane
//! (retries, never crashes, not ready), and a refused registration.

use std::time::{Duration, Instant};

use dataminer_tests::{media, spawn_app_with, Db};
use dataminer_wire::{Stage, TaskState, VideoDetail};
use reqwest::StatusCode;
use serde_json::json;

use crate::harness::{env, frames_dir, start_agent, Env};

both!(
    kill_9_agent_holding_leases,
    sigterm_mid_task_releases_at_once,
    user_cancel_stops_the_running_task,
    sigterm_mid_extract_kills_ffmpeg_and_releases,
    lost_lease_stops_the_task
);

const SETTLE: Duration = Duration::from_secs(90);

async fn agent_id(e: &Env, name: &str) -> i64 {
    e.app.status().await.agents.iter().find(|a| a.name == name).map(|a| a.id).expect("agent registered")
}

fn download_task(d: &VideoDetail) -> &dataminer_wire::TaskView {
    d.tasks.iter().find(|t| t.stage == Stage::Download).expect("download task")
}

/// Waits until every video's download is leased by `agent` and has received some bytes.
async fn wait_downloading(e: &Env, ids: &[i64], agent: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut ok = true;
        for id in ids {
            let d = e.app.video(*id).await;
            let t = download_task(&d);
            let bytes = t.progress.as_ref().and_then(|p| p["bytes"].as_u64()).unwrap_or(0);
            ok &= t.state == TaskState::Leased && t.leased_by == Some(agent) && bytes > 0;
        }
        if ok {
            return;
        }
        assert!(Instant::now() < deadline, "downloads did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const TTL_MS: u64 = 1_000;

async fn kill_9_agent_holding_leases(db: Db) {
    let e = env(db, |c| {
        c.lease_ttl_ms = TTL_MS;
        c.reaper_interval_ms = 100;
        c.retry_base_ms = 100;
        // A requeued task becomes leasable when its backoff ends; waiting lease requests
        // notice that on their fallback poll, kept short so it does not dominate the bound.
        c.poll_fallback_ms = 50;
    })
    .await;
    e.media.throttle("slow.mp4", 130_000);
    e.media.throttle("whole.mp4", 60_000);
    e.project("p", json!({"interval_frames": 7})).await;
    let mut a = e.agent("doomed", &[]).await;
    let ids: Vec<i64> =
        e.submit(&[e.media.url("slow.mp4"), e.media.url("whole.mp4")], "p").await.iter().map(|v| v.id).collect();
    let a_id = agent_id(&e, "doomed").await;
    wait_downloading(&e, &ids, a_id).await;
    let b = e.agent("survivor", &[]).await;
    let b_id = agent_id(&e, "survivor").await;

    a.signal("KILL");
    let killed = Instant::now();
    let _ = a.child.wait().await;
    // Every task the dead agent held is running on the survivor within TTL + reaper interval
    // + first backoff, plus 700 ms for the poll fallback and scheduling on a loaded machine.
    let bound = Duration::from_millis(TTL_MS + 100 + 100 + 700);
    loop {
        let mut moved = true;
        for id in &ids {
            let d = e.app.video(*id).await;
            let t = download_task(&d);
            moved &= t.leased_by == Some(b_id) || t.state == TaskState::Succeeded;
        }
        if moved {
            break;
        }
        assert!(killed.elapsed() < bound, "tasks of the killed agent were not re-leased within {bound:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let taken = killed.elapsed();
    let done = e.settle(&ids, SETTLE, &[&b]).await;
    let expect = |n: u64| (0..n).step_by(7).map(|f| (f, f as i64 * 100_000)).collect::<Vec<_>>();
    assert_eq!(e.frames(&done[0]), expect(80), "slow.mp4: 8 s at 10 fps");
    assert_eq!(e.frames(&done[1]), expect(50), "whole.mp4: 5 s at 10 fps");
    for (d, name) in done.iter().zip(["slow.mp4", "whole.mp4"]) {
        assert_eq!(d.video.sha256.as_deref(), Some(media::sha256_of(name).as_str()));
        let t = download_task(d);
        assert_eq!((t.state, t.leased_by), (TaskState::Succeeded, Some(b_id)));
        assert!(frames_dir(d).starts_with("frames_raw/"));
    }
    eprintln!("re-leased {taken:?} after kill -9 (bound {bound:?})");
    e.app.stop().await;
}

async fn sigterm_mid_task_releases_at_once(db: Db) {
    // A long lease TTL: anything that waited for expiry would show.
    let e = env(db, |c| c.lease_ttl_ms = 60_000).await;
    e.media.throttle("slow.mp4", 100_000);
    e.project("p", json!({"interval_frames": 7})).await;
    let mut a = e.agent("stopping", &[("DATAMINER_SHUTDOWN_GRACE_S", "1")]).await;
    let id = e.submit(&[e.media.url("slow.mp4")], "p").await[0].id;
    let a_id = agent_id(&e, "stopping").await;
    wait_downloading(&e, &[id], a_id).await;

    a.signal("TERM");
    let t0 = Instant::now();
    let status =
        tokio::time::timeout(Duration::from_secs(15), a.child.wait()).await.expect("agent exits").expect("wait");
    assert!(status.success(), "agent exit status {status:?}:\n{}", a.log_text());
    assert!(t0.elapsed() < Duration::from_secs(8), "shutdown took {:?}", t0.elapsed());
    let d = e.app.video(id).await;
    let t = download_task(&d);
    assert_eq!(t.state, TaskState::Queued, "released, not left to expire");
    assert_eq!(t.attempts, 0, "a release does not count as an attempt");
    assert!(a.log_text().contains("released on shutdown"));

    // A new agent picks it up at once and resumes the partial file.
    let b = e.agent("next", &[]).await;
    let done = e.settle(&[id], SETTLE, &[&b]).await;
    assert!(t0.elapsed() < Duration::from_secs(30), "finished {:?} after SIGTERM", t0.elapsed());
    assert_eq!(done[0].video.sha256.as_deref(), Some(media::sha256_of("slow.mp4").as_str()));
    let gets = e.media.gets("slow.mp4");
    assert_eq!(gets.len(), 2);
    assert!(gets[1].headers.contains_key("range"), "the second agent resumed the released partial download");
    e.app.stop().await;
}

async fn sigterm_mid_extract_kills_ffmpeg_and_releases(db: Db) {
    let e = env(db, |c| c.lease_ttl_ms = 60_000).await;
    // Every frame at the best quality: a few seconds of ffmpeg work.
    e.project("p", json!({"interval_frames": 1, "jpeg_quality": 100})).await;
    let mut a = e.agent("extractor", &[("DATAMINER_SHUTDOWN_GRACE_S", "0")]).await;
    let id = e.submit(&[e.media.url("heavy.mp4")], "p").await[0].id;
    let deadline = Instant::now() + Duration::from_secs(30);
    let attempt_dir = loop {
        let d = e.app.video(id).await;
        let running = d.tasks.iter().find(|t| {
            t.stage == Stage::Extract
                && t.state == TaskState::Leased
                && t.progress.as_ref().and_then(|p| p["frames"].as_u64()).unwrap_or(0) > 0
        });
        if let Some(t) = running {
            // With the data root: the other backend's copy of this test uses the same ids.
            break format!("{}/frames_raw/{id}/{}.", e.data.0.display(), t.id);
        }
        assert!(Instant::now() < deadline, "extract never ran:\n{}", a.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let ffmpeg_running = || {
        let out = std::process::Command::new("pgrep").args(["-f", &attempt_dir]).output().expect("pgrep");
        !out.stdout.is_empty()
    };
    assert!(ffmpeg_running(), "ffmpeg should be writing into {attempt_dir}");
    a.signal("TERM");
    let st = tokio::time::timeout(Duration::from_secs(15), a.child.wait()).await.expect("exits").expect("wait");
    assert!(st.success(), "{}", a.log_text());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!ffmpeg_running(), "ffmpeg survived the agent's shutdown");
    let d = e.app.video(id).await;
    let t = d.tasks.iter().find(|t| t.stage == Stage::Extract).expect("extract task");
    assert_eq!((t.state, t.attempts), (TaskState::Queued, 0), "released, not counted");
    let leftovers = std::fs::read_dir(e.data.0.join(format!("frames_raw/{id}"))).map(|d| d.count()).unwrap_or(0);
    assert_eq!(leftovers, 0, "the stopped attempt's partial frames are removed");
    e.app.stop().await;
}

async fn user_cancel_stops_the_running_task(db: Db) {
    let e = env(db, |_| {}).await;
    e.media.throttle("slow.mp4", 50_000);
    e.project("p", json!({})).await;
    let a = e.agent("a1", &[]).await;
    let id = e.submit(&[e.media.url("slow.mp4")], "p").await[0].id;
    let a_id = agent_id(&e, "a1").await;
    wait_downloading(&e, &[id], a_id).await;
    let attempt = e.app.video(id).await;
    let t = download_task(&attempt);
    let r = e.app.user(reqwest::Method::POST, &format!("/v1/videos/{id}/cancel")).send().await.expect("cancel");
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap_or_default());
    let t0 = Instant::now();
    // The next heartbeat says cancelled: the download stops and its directory goes.
    a.wait_for_metric("dataminer_agent_tasks_total{outcome=\"cancelled\",stage=\"download\"} 1").await;
    assert!(t0.elapsed() < Duration::from_secs(5));
    let dir = e.data.0.join(format!("videos/{id}"));
    let leftovers: Vec<_> =
        std::fs::read_dir(&dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(leftovers.is_empty(), "attempt directory of cancelled task {} left: {leftovers:?}", t.id);
    assert_eq!(e.app.video(id).await.video.state, dataminer_wire::VideoState::Cancelled);
    e.app.stop().await;
}

async fn lost_lease_stops_the_task(db: Db) {
    // Heartbeats slower than the lease: the reaper takes the task back, and the next
    // heartbeat's 409 stops the attempt that no longer owns it.
    let e = env(db, |c| {
        c.lease_ttl_ms = 300;
        c.reaper_interval_ms = 50;
        c.max_attempts = 2;
    })
    .await;
    e.media.throttle("slow.mp4", 50_000);
    e.project("p", json!({})).await;
    let a = e.agent("slow-heart", &[("DATAMINER_HEARTBEAT_INTERVAL_MS", "1000")]).await;
    let id = e.submit(&[e.media.url("slow.mp4")], "p").await[0].id;
    a.wait_for_metric("dataminer_agent_tasks_total{outcome=\"lease_lost\",stage=\"download\"} 2").await;
    assert!(a.log_text().contains("lease lost; stopped"));
    let d = e.app.video(id).await;
    assert_eq!(d.video.state, dataminer_wire::VideoState::Failed, "dead after its attempts expired");
    assert_eq!(download_task(&d).state, TaskState::Dead);
    e.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_control_plane_is_retried_and_reported_not_ready() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let data = dataminer_tests::ScratchDir::new();
    let mut a = start_agent(&format!("http://127.0.0.1:{port}"), &data.0, "patient", &[], false).await;
    let get = |path: &'static str| {
        let base = a.metrics.clone();
        async move { reqwest::get(format!("{base}{path}")).await.map(|r| r.status()).unwrap_or(StatusCode::BAD_GATEWAY) }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while get("/healthz").await != StatusCode::OK {
        assert!(Instant::now() < deadline, "agent did not serve /healthz");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(get("/readyz").await, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(get("/healthz").await, StatusCode::OK);
    assert!(a.child.try_wait().expect("try_wait").is_none(), "the agent must not exit");

    // The control plane appears on that port: the agent registers and becomes ready.
    let app = spawn_app_with(Db::Sqlite, |c| c.listen = format!("127.0.0.1:{port}").parse().expect("addr")).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while get("/readyz").await != StatusCode::OK {
        assert!(Instant::now() < deadline, "agent did not become ready:\n{}", a.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // It goes away again: not ready, still alive.
    app.stop().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while get("/readyz").await != StatusCode::SERVICE_UNAVAILABLE {
        assert!(Instant::now() < deadline, "agent still ready without a control plane");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(a.child.try_wait().expect("try_wait").is_none());
    a.signal("TERM");
    let st = tokio::time::timeout(Duration::from_secs(10), a.child.wait()).await.expect("exit").expect("wait");
    assert!(st.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_registration_exits_with_the_reason() {
    let app = spawn_app_with(Db::Sqlite, |_| {}).await;
    let data = dataminer_tests::ScratchDir::new();
    let mut a =
        start_agent(&app.base, &data.0, "intruder", &[("DATAMINER_AGENT_TOKEN", "wrong-token-wrong-token")], false)
            .await;
    let st = tokio::time::timeout(Duration::from_secs(20), a.child.wait()).await.expect("exit").expect("wait");
    assert!(!st.success());
    let log = a.log_text();
    assert!(log.contains("registration refused") && log.contains("401"), "{log}");
    app.stop().await;
}
