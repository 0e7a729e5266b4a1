//! A killed agent's children die with it. Each tool (yt-dlp, ffprobe, ffmpeg) is replaced
//! by a wrapper script that records its pid, starts a grandchild in its process group and
//! one in a session of its own (`setsid`), and then waits before it would start the real
//! tool (the "starts ffmpeg 8 s late" case of issue #9). The agent is `kill -9`ed while the
//! wrapper waits; every process that was below the agent at that moment must be gone soon
//! after, and the tool must never have started.

use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

use dataminer_agent::children::{proc_stat, process_tree};
use dataminer_tests::Db;
use dataminer_wire::{Stage, TaskState};
use serde_json::json;

use crate::harness::{env, Agent, Env};

both!(kill_9_during_ytdlp_download, kill_9_during_probe, kill_9_during_extract);

/// A wrapper for `real` that answers version probes with `version` (a shell command) and
/// otherwise records its pid, starts two grandchildren (same group, own session) and waits
/// for one of them before it would exec the real tool and mark that in `<pids>.started`.
fn wrapper(dir: &Path, name: &str, real: &str, version: &str) -> (String, PathBuf) {
    let script = dir.join(format!("{name}-wrapper.sh"));
    let pids = dir.join(format!("{name}.pids"));
    let body = format!(
        r#"#!/bin/sh
for a in "$@"; do
  case "$a" in -version|--version) {version}; exit $?;; esac
done
echo $$ >> '{pids}'
setsid sleep 301 &
echo $! >> '{pids}'
sleep 300 &
echo $! >> '{pids}'
wait $!
touch '{pids}.started'
exec {real} "$@"
"#,
        pids = pids.display()
    );
    std::fs::write(&script, body).expect("write wrapper");
    let st = std::process::Command::new("chmod").arg("+x").arg(&script).status().expect("chmod");
    assert!(st.success());
    (script.to_string_lossy().into_owned(), pids)
}

/// A process counts as gone when it no longer exists or is a zombie (dead, not yet reaped
/// by whoever inherited it).
fn alive(pid: i32) -> bool {
    proc_stat(pid).is_some_and(|s| s.state != 'Z')
}

/// The three pids the wrapper recorded, once it has.
async fn wrapper_pids(pids: &Path, a: &Agent) -> Vec<i32> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v: Vec<i32> =
            std::fs::read_to_string(pids).unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()).collect();
        if v.len() == 3 {
            return v;
        }
        assert!(Instant::now() < deadline, "the wrapper never ran:\n{}", a.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Kills the agent with SIGKILL while the wrapper waits, then checks that everything that
/// was below it is gone and the wrapped tool never started.
async fn kill_and_check(e: Env, mut a: Agent, pids: &Path) {
    let recorded = wrapper_pids(pids, &a).await;
    let tree = process_tree(a.pid());
    for p in &recorded {
        assert!(alive(*p), "wrapper process {p} should be running");
        assert!(tree.contains(p), "wrapper process {p} is not below the agent: {tree:?}");
    }
    a.signal("KILL");
    let _ = a.child.wait().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let survivors: Vec<i32> = tree.iter().copied().filter(|p| alive(*p)).collect();
        if survivors.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "processes of the killed agent still running: {survivors:?} (recorded by the wrapper: {recorded:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!pids.with_extension("pids.started").exists(), "the wrapped tool started after the agent died");
    e.app.stop().await;
}

async fn kill_9_during_ytdlp_download(db: Db) {
    let e = env(db, |c| c.lease_ttl_ms = 60_000).await;
    // yt-dlp itself is never reached: the wrapper answers the version probe.
    let (script, pids) = wrapper(&e.data.0, "yt-dlp", "yt-dlp", "echo 2025.01.01");
    let a = e.agent("ytdlp", &[("DATAMINER_YTDLP", &script)]).await;
    e.project("p", json!({})).await;
    e.submit(&[format!("http://localhost:{}/cfr10.mp4", e.media.port)], "p").await;
    kill_and_check(e, a, &pids).await;
}

async fn kill_9_during_probe(db: Db) {
    let e = env(db, |c| c.lease_ttl_ms = 60_000).await;
    let (script, pids) = wrapper(&e.data.0, "ffprobe", "ffprobe", "ffprobe -version");
    let a = e.agent("probe", &[("DATAMINER_FFPROBE", &script)]).await;
    e.project("p", json!({})).await;
    e.submit(&[e.media.url("cfr10.mp4")], "p").await;
    kill_and_check(e, a, &pids).await;
}

async fn kill_9_during_extract(db: Db) {
    let e = env(db, |c| c.lease_ttl_ms = 60_000).await;
    let (script, pids) = wrapper(&e.data.0, "ffmpeg", "ffmpeg", "ffmpeg -hide_banner -version");
    let a = e.agent("extract", &[("DATAMINER_FFMPEG", &script)]).await;
    e.project("p", json!({})).await;
    let id = e.submit(&[e.media.url("cfr10.mp4")], "p").await[0].id;
    let recorded = wrapper_pids(&pids, &a).await;
    let d = e.app.video(id).await;
    let t = d.tasks.iter().find(|t| t.stage == Stage::Extract).expect("extract task");
    assert_eq!(t.state, TaskState::Leased, "the wrapper runs as the extract stage's ffmpeg ({recorded:?})");
    kill_and_check(e, a, &pids).await;
}
