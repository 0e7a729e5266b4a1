//! The process edge: SIGTERM ends a control plane promptly and cleanly even with a long poll
//! in flight, and spans are exported over OTLP/HTTP when an endpoint is configured.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataminer_tests::*;
use dataminer_wire::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::process::{register_at, start_control_plane};

both!(sigterm_stops_cleanly_and_spans_reach_the_collector);

/// A minimal OTLP/HTTP collector: counts `POST /v1/traces` requests with a body.
async fn fake_collector() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let c = c.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let Ok(n) = sock.read(&mut chunk).await else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            if text.starts_with("POST /v1/traces") && len > 0 {
                                c.fetch_add(1, Ordering::SeqCst);
                            }
                            let _ = sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
                            buf.clear();
                        }
                    }
                }
            });
        }
    });
    (format!("http://{addr}"), count)
}

async fn sigterm_stops_cleanly_and_spans_reach_the_collector(db: Db) {
    let dir = ScratchDir::new();
    let url = match db {
        Db::Postgres => Some(fresh_pg_database().await),
        Db::Sqlite => None,
    };
    let (collector, exported) = fake_collector().await;
    let mut p = start_control_plane(
        url.as_deref(),
        &dir.0,
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", collector.as_str()), ("DATAMINER_MAX_LEASE_WAIT_MS", "60000")],
    )
    .await;
    let client = reqwest::Client::new();
    let reg = register_at(&client, &p.base, "w", &[Stage::Download]).await;
    // A long poll that would wait a minute.
    let poll = {
        let client = client.clone();
        let base = p.base.clone();
        tokio::spawn(async move {
            client
                .post(format!("{base}/v1/leases"))
                .bearer_auth(AGENT_TOKEN)
                .json(&json!({"agent_id": reg.agent_id, "stages": ["download"], "wait_ms": 60000}))
                .send()
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = p.child.id().expect("pid");
    let start = Instant::now();
    let kill = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill");
    assert!(kill.success());
    let status =
        tokio::time::timeout(Duration::from_secs(10), p.child.wait()).await.expect("exits within 10 s").expect("wait");
    assert!(status.success(), "exit status {status:?}");
    assert!(start.elapsed() < Duration::from_secs(5), "SIGTERM took {:?}", start.elapsed());
    // The long poll was answered (empty), not cut off.
    let r = poll.await.expect("join").expect("the long poll got an answer");
    let body: LeaseResponse = r.json().await.expect("json");
    assert!(body.tasks.is_empty());
    // Spans were flushed to the collector at shutdown.
    assert!(exported.load(Ordering::SeqCst) > 0, "no OTLP export reached the collector");
    if let Some(u) = &url {
        drop_pg_database(u).await;
    }
}

/// `control-plane migrate` applies the migrations and exits; running it again is a no-op.
#[tokio::test]
async fn migrate_subcommand_is_idempotent() {
    let dir = ScratchDir::new();
    for _ in 0..2 {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_dm-control-plane"))
            .arg("migrate")
            .env_clear()
            .env("DATAMINER_STATE_DIR", &dir.0)
            .env("DATAMINER_LOG_FORMAT", "json")
            .output()
            .await
            .expect("run migrate");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let log = String::from_utf8_lossy(&out.stdout);
        assert!(log.contains("migrations applied"), "{log}");
    }
    assert!(dir.0.join("dataminer.db").exists());
}

/// PostgreSQL replicas wake each other: an agent long-polling replica B gets a task that
/// replica A enqueued within a fraction of the fallback poll (20 s), through LISTEN/NOTIFY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replicas_wake_each_others_long_polls() {
    let dir = ScratchDir::new();
    let url = fresh_pg_database().await;
    let slow_poll = [("DATAMINER_POLL_FALLBACK_MS", "20000")];
    let a = start_control_plane(Some(&url), &dir.0, &slow_poll).await;
    let b = start_control_plane(Some(&url), &dir.0, &slow_poll).await;
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{}/v1/projects", a.base))
        .bearer_auth(USER_TOKEN)
        .json(&json!({"name": "p", "config": {"filter": {"positive_prompts": ["x"]}}}))
        .send()
        .await
        .expect("send");
    assert!(r.status().is_success());
    let reg = register_at(&client, &b.base, "w", &[Stage::Download]).await;
    for i in 0..3 {
        let poll = {
            let client = client.clone();
            let base = b.base.clone();
            tokio::spawn(async move {
                let r = client
                    .post(format!("{base}/v1/leases"))
                    .bearer_auth(AGENT_TOKEN)
                    .json(&json!({"agent_id": reg.agent_id, "stages": ["download"], "wait_ms": 15000}))
                    .send()
                    .await
                    .expect("send");
                let l: LeaseResponse = r.json().await.expect("json");
                (l.tasks.len(), Instant::now())
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let sent = Instant::now();
        let r = client
            .post(format!("{}/v1/videos", a.base))
            .bearer_auth(USER_TOKEN)
            .json(&json!({"urls": [format!("https://example.com/{i}.mp4")], "projects": ["p"]}))
            .send()
            .await
            .expect("send");
        assert!(r.status().is_success());
        let (n, at) = poll.await.expect("join");
        assert_eq!(n, 1);
        let latency = at.duration_since(sent);
        assert!(latency < Duration::from_secs(2), "replica B woke after {latency:?}");
    }
    drop_pg_database(&url).await;
}
