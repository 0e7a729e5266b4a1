//! End-to-end set-up: a control plane (in-process, real HTTP, SQLite or PostgreSQL), real
//! agent processes (`dm-agent`, the agent's command line), a local media server, and
//! helpers to submit videos and wait for their final states.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use dataminer_tests::server::MediaServer;
use dataminer_tests::{expect_json, media, spawn_app_with, Db, ScratchDir, TestApp, AGENT_TOKEN};
use dataminer_wire::{ExtractionState, ExtractionView, ProjectVideoState, SubmittedVideo, VideoDetail, VideoState};
use reqwest::{Method, StatusCode};
use serde_json::json;

pub struct Env {
    pub app: TestApp,
    pub media: MediaServer,
    pub data: ScratchDir,
}

/// A control plane that may fetch from the media server (as `127.0.0.1:port`, direct, and
/// as `localhost:port`, a "platform" host downloaded with yt-dlp).
pub async fn env(db: Db, tweak: impl FnOnce(&mut dataminer_control_plane::config::Config)) -> Env {
    let media = MediaServer::start(media::fixtures().to_path_buf()).await;
    let hp = media.host_port();
    let lh = format!("localhost:{}", media.port);
    let app = spawn_app_with(db, |c| {
        c.allow_hosts = vec![hp.clone(), lh.clone()];
        c.platform_hosts = vec!["localhost".into()];
        tweak(c);
    })
    .await;
    Env { app, media, data: ScratchDir::new() }
}

pub struct Agent {
    pub child: tokio::process::Child,
    pub name: String,
    pub metrics: String,
    pub log: PathBuf,
}

impl Agent {
    pub fn pid(&self) -> i32 {
        self.child.id().map(|p| p as i32).unwrap_or(0)
    }

    pub fn signal(&self, sig: &str) {
        let st = std::process::Command::new("kill").args([&format!("-{sig}"), &self.pid().to_string()]).status();
        assert!(st.map(|s| s.success()).unwrap_or(false), "kill -{sig} failed");
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn metrics_text(&self) -> String {
        reqwest::get(format!("{}/metrics", self.metrics)).await.expect("metrics").text().await.expect("text")
    }

    /// Waits until the agent's metrics have exactly this line.
    pub async fn wait_for_metric(&self, line: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.metrics_text().await.lines().any(|l| l == line) {
            assert!(Instant::now() < deadline, "metric {line:?} never appeared:\n{}", self.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// Where yt-dlp is: the repository's `.venv` (installed by `.ci/run`) or PATH.
fn path_with_venv() -> String {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin");
    format!("{}:{}", venv.display(), std::env::var("PATH").unwrap_or_default())
}

/// Starts an agent process against `cp` with test settings plus `extra` environment;
/// `wait_ready` waits until its `/readyz` answers 200.
pub async fn start_agent(cp: &str, data_root: &Path, name: &str, extra: &[(&str, &str)], wait_ready: bool) -> Agent {
    let port = free_port();
    let log = data_root.join(format!("{name}.log"));
    std::fs::create_dir_all(data_root).expect("data root");
    let out = std::fs::File::create(&log).expect("agent log");
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_dm-agent"));
    cmd.env_clear()
        .env("PATH", path_with_venv())
        .env("RUST_LOG", "info")
        .env("DATAMINER_LOG_FORMAT", "pretty")
        .env("DATAMINER_CONTROL_PLANE", cp)
        .env("DATAMINER_AGENT_TOKEN", AGENT_TOKEN)
        .env("DATAMINER_AGENT_NAME", name)
        .env("DATAMINER_DATA_ROOT", data_root)
        .env("DATAMINER_METRICS_LISTEN", format!("127.0.0.1:{port}"))
        .env("DATAMINER_MIN_FREE_BYTES", "0")
        .env("DATAMINER_HEARTBEAT_INTERVAL_MS", "100")
        .env("DATAMINER_LEASE_WAIT_MS", "2000")
        .env("DATAMINER_RESUME_QUIET_MS", "100")
        .env("DATAMINER_SHUTDOWN_GRACE_S", "2")
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    // A `models` build of the agent finds libtorch through it (scripts/models/setup.sh).
    if let Ok(ld) = std::env::var("LD_LIBRARY_PATH") {
        cmd.env("LD_LIBRARY_PATH", ld);
    }
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("start agent process");
    let a = Agent { child, name: name.to_string(), metrics: format!("http://127.0.0.1:{port}"), log };
    if wait_ready {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = reqwest::get(format!("{}/readyz", a.metrics)).await {
                if r.status() == StatusCode::OK {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "agent {name} did not become ready:\n{}", a.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    a
}

impl Env {
    /// An agent allowed to fetch from the media server.
    pub async fn agent(&self, name: &str, extra: &[(&str, &str)]) -> Agent {
        let allow = format!("{},localhost:{}", self.media.host_port(), self.media.port);
        let mut env: Vec<(&str, &str)> =
            vec![("DATAMINER_ALLOW_HOSTS", allow.as_str()), ("DATAMINER_PLATFORM_HOSTS", "localhost")];
        env.extend_from_slice(extra);
        start_agent(&self.app.base, &self.data.0, name, &env, true).await
    }

    pub async fn project(&self, name: &str, extract: serde_json::Value) {
        let body = json!({"name": name, "config": {"extract": extract, "filter": {"positive_prompts": ["a door"]}}});
        let r = self.app.user(Method::POST, "/v1/projects").json(&body).send().await.expect("send");
        assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap_or_default());
    }

    pub async fn submit(&self, urls: &[String], project: &str) -> Vec<SubmittedVideo> {
        let r = self
            .app
            .user(Method::POST, "/v1/videos")
            .json(&json!({"urls": urls, "projects": [project]}))
            .send()
            .await
            .expect("send");
        let b: serde_json::Value = expect_json(r, StatusCode::OK).await;
        serde_json::from_value(b["videos"].clone()).expect("videos")
    }

    /// Waits until every video has settled — its download FAILED (or was cancelled), or it is
    /// downloaded and every project-video's extraction is EXTRACTED or FAILED — and returns
    /// their details.
    pub async fn settle(&self, ids: &[i64], timeout: Duration, agents: &[&Agent]) -> Vec<VideoDetail> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut all = Vec::new();
            for id in ids {
                all.push(self.app.video(*id).await);
            }
            if all.iter().all(settled) {
                return all;
            }
            if Instant::now() > deadline {
                let states: Vec<_> = all.iter().map(|v| (v.video.id, v.video.state, v.video.error.clone())).collect();
                let logs: String = agents.iter().map(|a| format!("--- {}\n{}", a.name, a.log_text())).collect();
                panic!("videos did not settle: {states:?}\n{logs}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The accepted manifest of an extracted video (its first project's extraction).
    pub fn manifest(&self, v: &VideoDetail) -> dataminer_agent::stages::extract::manifest::Manifest {
        let p = extraction(v).manifest_path.clone().expect("manifest path");
        serde_json::from_slice(&std::fs::read(self.data.0.join(p)).expect("read manifest")).expect("parse manifest")
    }

    /// (source frame, pts in µs) of every frame in the accepted manifest, after checking that
    /// the frames directory holds exactly the listed files.
    pub fn frames(&self, v: &VideoDetail) -> Vec<(u64, i64)> {
        let m = self.manifest(v);
        let dir = self.data.0.join(frames_dir(v));
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .expect("frames dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".jpg"))
            .collect();
        files.sort();
        let listed: Vec<String> =
            m.frames.iter().map(|f| f.path.rsplit('/').next().unwrap_or("").to_string()).collect();
        assert_eq!(files, listed, "frames on disk differ from the manifest");
        for (i, f) in m.frames.iter().enumerate() {
            assert_eq!(f.index as usize, i + 1);
        }
        assert_eq!(extraction(v).frame_count, Some(m.frames.len() as i64));
        m.frames.iter().map(|f| (f.source_frame, (f.pts_s * 1e6).round() as i64)).collect()
    }
}

/// Whether a video has settled (see [`E2e::settle`]).
fn settled(v: &VideoDetail) -> bool {
    match v.video.state {
        VideoState::Failed | VideoState::Cancelled => true,
        VideoState::Downloaded => v.projects.iter().all(|p| {
            p.state == ProjectVideoState::Failed
                || p.extraction
                    .as_ref()
                    .is_some_and(|e| matches!(e.state, ExtractionState::Extracted | ExtractionState::Failed))
        }),
        _ => false,
    }
}

/// The extraction a video's (first) project-video uses.
pub fn extraction(v: &VideoDetail) -> &ExtractionView {
    v.projects.first().and_then(|p| p.extraction.as_ref()).expect("the video's project-video has an extraction")
}

/// The accepted frames directory of a video's (first) project-video's extraction.
pub fn frames_dir(v: &VideoDetail) -> String {
    extraction(v).frames_dir.clone().expect("frames dir")
}
