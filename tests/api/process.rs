//! Starting real control-plane processes for the multi-process tests.

use std::process::Stdio;
use std::time::{Duration, Instant};

use dataminer_tests::{AGENT_TOKEN, DEFAULT_MODELS, USER_TOKEN};
use dataminer_wire::{RegisterAgentResponse, Stage, PROTOCOL_VERSION};
use reqwest::StatusCode;
use serde_json::json;

pub const TTL_MS: u64 = 400;

pub struct Proc {
    pub child: tokio::process::Child,
    pub base: String,
}

/// Starts a real control-plane process (the test crate's copy of the binary) with test
/// settings plus `extra` environment, and waits until it is ready.
pub async fn start_control_plane(db_url: Option<&str>, state_dir: &std::path::Path, extra: &[(&str, &str)]) -> Proc {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_dm-control-plane"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .env("DATAMINER_LISTEN", format!("127.0.0.1:{port}"))
        .env("DATAMINER_STATE_DIR", state_dir)
        .env("DATAMINER_USER_TOKEN", USER_TOKEN)
        .env("DATAMINER_AGENT_TOKEN", AGENT_TOKEN)
        .env("DATAMINER_LEASE_TTL_MS", TTL_MS.to_string())
        .env("DATAMINER_REAPER_INTERVAL_MS", "50")
        .env("DATAMINER_RETRY_BASE_MS", "50")
        .env("DATAMINER_POLL_FALLBACK_MS", "100")
        .env("DATAMINER_MAX_ATTEMPTS", "100")
        .env("DATAMINER_DB_MAX_CONNECTIONS", "8")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    if let Some(u) = db_url {
        cmd.env("DATABASE_URL", u);
    }
    let child = cmd.spawn().expect("start control-plane process");
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::get(format!("{base}/readyz")).await.map(|r| r.status() != StatusCode::OK).unwrap_or(true) {
        assert!(Instant::now() < deadline, "control plane on {base} did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Proc { child, base }
}

/// Registers agent `name` serving `stages` with the control plane at `base`.
/// Registers an agent holding the default models (so it is leased model tasks too).
pub async fn register_at(client: &reqwest::Client, base: &str, name: &str, stages: &[Stage]) -> RegisterAgentResponse {
    client
        .post(format!("{base}/v1/agents/register"))
        .bearer_auth(AGENT_TOKEN)
        .json(&json!({"name": name, "stages": stages, "capabilities": DEFAULT_MODELS, "version": "t",
                      "protocol_version": PROTOCOL_VERSION}))
        .send()
        .await
        .expect("register")
        .json()
        .await
        .expect("json")
}
