//! Test harness: start the real control plane on a random port against a fresh database —
//! a new SQLite file or a new PostgreSQL database with a random name — and talk to it over
//! real HTTP as a user and as simulated agents. PostgreSQL comes from
//! `DATAMINER_TEST_PG_URL` (an admin URL) or, when unset, from the private server that
//! `scripts/test-postgres.sh` starts.

/// Generates `sqlite::<case>` and `postgres::<case>` tests for each listed case.
#[macro_export]
macro_rules! both {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(dataminer_tests::Db::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(dataminer_tests::Db::Postgres).await
                }
            )*
        }
    };
}

pub mod fake_cp;
pub mod media;
pub mod server;

use std::path::PathBuf;
use std::time::Duration;

use dataminer_control_plane::config::{Config, LogFormat, Secret};
use dataminer_control_plane::startup::Application;
use dataminer_control_plane::store::Store;
use dataminer_wire::*;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

pub const USER_TOKEN: &str = "user-token-0123456789abcdef";
pub const AGENT_TOKEN: &str = "agent-token-0123456789abcdef";

/// The capabilities of an agent holding the default model of every model stage (the models
/// of the projects [`TestApp::create_project`] makes): filter, dedup and detect tasks require
/// `model:<the project's model for the stage>`.
pub const DEFAULT_MODELS: [&str; 3] = ["model:siglip2", "model:dino", "model:grounding_dino"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

static PG_ADMIN: OnceCell<String> = OnceCell::const_new();

/// The PostgreSQL admin URL, starting the private test server if needed. Panics (the test
/// fails, never skips) when no PostgreSQL can be had.
pub async fn pg_admin_url() -> String {
    PG_ADMIN
        .get_or_init(|| async {
            if let Ok(u) = std::env::var("DATAMINER_TEST_PG_URL") {
                return u;
            }
            let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/test-postgres.sh");
            let out = tokio::process::Command::new("bash")
                .arg(&script)
                .env("DATAMINER_PG_FAST", "1")
                .output()
                .await
                .expect("run scripts/test-postgres.sh");
            assert!(
                out.status.success(),
                "could not start the test PostgreSQL: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        })
        .await
        .clone()
}

/// A fresh, uniquely named PostgreSQL database; returns its URL.
pub async fn fresh_pg_database() -> String {
    use sqlx::Connection;
    let admin = pg_admin_url().await;
    let name = format!("dm_test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&admin).await.expect("connect to the test PostgreSQL");
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.expect("create test database");
    let base = admin.rsplit_once('/').map(|(b, _)| b.to_string()).unwrap_or(admin.clone());
    format!("{base}/{name}")
}

/// Drops a test database made by [`fresh_pg_database`] (terminating leftover sessions).
pub async fn drop_pg_database(url: &str) {
    use sqlx::Connection;
    let Some(name) = url.rsplit('/').next().filter(|n| n.starts_with("dm_test_")) else { return };
    let admin = pg_admin_url().await;
    let mut conn = sqlx::PgConnection::connect(&admin).await.expect("connect to the test PostgreSQL");
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await
        .expect("drop test database");
}

/// A scratch directory removed when dropped.
#[derive(Debug)]
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    pub fn new() -> Self {
        let p = std::env::temp_dir().join(format!("dataminer-test-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&p).expect("create scratch dir");
        ScratchDir(p)
    }
}

impl Default for ScratchDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Test defaults: tokens on, random port, fast reaper, quick retries.
pub fn test_config(db_url: Option<String>, state_dir: PathBuf) -> Config {
    let mut c = Config::defaults();
    c.listen = "127.0.0.1:0".parse().expect("addr");
    c.database_url = db_url.map(Secret);
    c.state_dir = state_dir;
    c.user_token = Some(Secret(USER_TOKEN.into()));
    c.agent_token = Some(Secret(AGENT_TOKEN.into()));
    c.log_format = LogFormat::Pretty;
    c.reaper_interval_ms = 100;
    c.retry_base_ms = 100;
    c.retry_max_ms = 1_000;
    c.poll_fallback_ms = 500;
    c.db_max_connections = 8;
    c.allow_hosts = vec!["127.0.0.1:9".into()];
    c.shutdown_grace_s = 2;
    c
}

#[derive(Debug)]
pub struct TestApp {
    pub db: Db,
    pub base: String,
    pub client: reqwest::Client,
    pub store: Store,
    pub config: Config,
    shutdown: CancellationToken,
    handle: Option<tokio::task::JoinHandle<()>>,
    _dir: ScratchDir,
}

pub async fn spawn_app(db: Db) -> TestApp {
    spawn_app_with(db, |_| {}).await
}

pub async fn spawn_app_with(db: Db, tweak: impl FnOnce(&mut Config)) -> TestApp {
    let dir = ScratchDir::new();
    let url = match db {
        Db::Sqlite => None,
        Db::Postgres => Some(fresh_pg_database().await),
    };
    let mut config = test_config(url, dir.0.clone());
    tweak(&mut config);
    let app = Application::build(config.clone()).await.expect("build application");
    let base = format!("http://{}", app.local_addr());
    let store = app.store();
    let shutdown = app.shutdown_token();
    let handle = tokio::spawn(async move {
        if let Err(e) = app.run_until_stopped().await {
            eprintln!("application stopped with error: {e}");
        }
    });
    let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("client");
    TestApp { db, base, client, store, config, shutdown, handle: Some(handle), _dir: dir }
}

/// Reads a JSON body, failing the test with the body text on a wrong status.
pub async fn expect_json<T: DeserializeOwned>(resp: Response, status: StatusCode) -> T {
    let got = resp.status();
    let text = resp.text().await.expect("body");
    assert_eq!(got, status, "unexpected status; body: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("cannot parse {text}: {e}"))
}

/// Asserts an error response's status and code; returns its message.
pub async fn expect_error(resp: Response, status: StatusCode, code: &str) -> String {
    let body: ErrorBody = expect_json(resp, status).await;
    assert_eq!(body.error.code, code, "message: {}", body.error.message);
    body.error.message
}

impl TestApp {
    /// Stops the app and, on PostgreSQL, drops its database.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
        self.store.close().await;
        if let Some(url) = self.config.database_url.as_ref().map(|s| s.0.clone()) {
            drop_pg_database(&url).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn user(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path)).bearer_auth(USER_TOKEN)
    }

    pub fn agent(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path)).bearer_auth(AGENT_TOKEN)
    }

    pub async fn create_project(&self, name: &str) -> ProjectView {
        let body = json!({"name": name, "config": {"filter": {"positive_prompts": ["a glass door"]}}});
        expect_json(
            self.user(Method::POST, "/v1/projects").json(&body).send().await.expect("send"),
            StatusCode::CREATED,
        )
        .await
    }

    pub async fn submit(&self, urls: &[&str], projects: &[&str]) -> Vec<SubmittedVideo> {
        self.submit_with_priority(urls, projects, 0).await
    }

    pub async fn submit_with_priority(&self, urls: &[&str], projects: &[&str], priority: i64) -> Vec<SubmittedVideo> {
        let body = json!({"urls": urls, "projects": projects, "priority": priority});
        let r: SubmitVideosResponse =
            expect_json(self.user(Method::POST, "/v1/videos").json(&body).send().await.expect("send"), StatusCode::OK)
                .await;
        r.videos
    }

    pub async fn video(&self, id: i64) -> VideoDetail {
        expect_json(self.user(Method::GET, &format!("/v1/videos/{id}")).send().await.expect("send"), StatusCode::OK)
            .await
    }

    pub async fn project_status(&self, name: &str) -> ProjectStatus {
        expect_json(
            self.user(Method::GET, &format!("/v1/projects/{name}/status")).send().await.expect("send"),
            StatusCode::OK,
        )
        .await
    }

    pub async fn status(&self) -> StatusReport {
        expect_json(self.user(Method::GET, "/status").send().await.expect("send"), StatusCode::OK).await
    }

    pub async fn register(&self, name: &str, stages: &[Stage], caps: &[&str]) -> i64 {
        let body = json!({"name": name, "stages": stages, "capabilities": caps, "version": "test",
                          "protocol_version": PROTOCOL_VERSION});
        let r: RegisterAgentResponse = expect_json(
            self.agent(Method::POST, "/v1/agents/register").json(&body).send().await.expect("send"),
            StatusCode::OK,
        )
        .await;
        r.agent_id
    }

    pub async fn lease(&self, agent: i64, stages: &[Stage], max: u32, wait_ms: u64) -> Vec<LeasedTask> {
        let body = json!({"agent_id": agent, "stages": stages, "max_tasks": max, "wait_ms": wait_ms});
        let r: LeaseResponse =
            expect_json(self.agent(Method::POST, "/v1/leases").json(&body).send().await.expect("send"), StatusCode::OK)
                .await;
        r.tasks
    }

    /// Leases exactly one task of `stage`, failing the test if none comes within 5 s.
    pub async fn lease_one(&self, agent: i64, stage: Stage) -> LeasedTask {
        let mut t = self.lease(agent, &[stage], 1, 5_000).await;
        assert_eq!(t.len(), 1, "expected one {stage} task");
        t.remove(0)
    }

    pub async fn complete(&self, t: &LeasedTask, result: &StageResult) -> Response {
        self.complete_token(t.task_id, t.lease_token, result).await
    }

    pub async fn complete_token(&self, task: i64, token: i64, result: &StageResult) -> Response {
        self.agent(Method::POST, &format!("/v1/tasks/{task}/complete"))
            .json(&json!({"lease_token": token, "result": result}))
            .send()
            .await
            .expect("send")
    }

    pub async fn complete_ok(&self, t: &LeasedTask, result: &StageResult) -> CompleteResponse {
        expect_json(self.complete(t, result).await, StatusCode::OK).await
    }

    pub async fn heartbeat(&self, task: i64, token: i64) -> Response {
        self.agent(Method::POST, &format!("/v1/tasks/{task}/heartbeat"))
            .json(&json!({"lease_token": token, "progress": {"frames": 1}}))
            .send()
            .await
            .expect("send")
    }

    pub async fn fail(&self, task: i64, token: i64, error: &str, retryable: bool) -> Response {
        self.agent(Method::POST, &format!("/v1/tasks/{task}/fail"))
            .json(&json!({"lease_token": token, "error": error, "retryable": retryable}))
            .send()
            .await
            .expect("send")
    }

    pub async fn release(&self, task: i64, token: i64) -> Response {
        self.agent(Method::POST, &format!("/v1/tasks/{task}/release"))
            .json(&json!({"lease_token": token}))
            .send()
            .await
            .expect("send")
    }

    /// Waits until `check` holds, polling; fails the test after `timeout`.
    pub async fn wait_until<F, Fut>(&self, timeout: Duration, what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        while !check().await {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A frame the filter kept, as [`result_for`] reports it: inside the task's frames directory.
pub fn filter_frame(t: &LeasedTask, i: i64) -> FilterFrame {
    FilterFrame {
        frame_index: i,
        pts_s: i as f64 / 30.0,
        path: format!("{}/frame_{i:06}.jpg", t.input.frames_dir.as_deref().unwrap_or("frames")),
        width: 640,
        height: 360,
        best_prompt: 0,
        pos_max: 0.5 + i as f32 / 100.0,
        neg_max: None,
        junk_max: None,
    }
}

/// A filter result keeping `frames` (frame indices) of 10.
pub fn filter_result(t: &LeasedTask, frames: &[i64]) -> StageResult {
    StageResult::Filter {
        output_dir: t.attempt_dir.clone(),
        frames_in: 10,
        frames_kept: frames.len() as i64,
        frames: frames.iter().map(|&i| filter_frame(t, i)).collect(),
        frames_unreadable: 0,
        config_digest: "cfg-1".into(),
    }
}

/// A dedup result over the filter's kept frames `1..=filter_kept` (what [`result_for`]'s
/// filter keeps) that keeps the first `kept`; the others are duplicates of `dup_of` or, when
/// absent, of the video's frame 1 (which must then be kept).
pub fn dedup_result(t: &LeasedTask, filter_kept: i64, kept: i64, dup_of: Option<FrameRef>) -> StageResult {
    let target = dup_of.unwrap_or(FrameRef { video_id: t.input.video_id, frame_index: 1 });
    StageResult::Dedup {
        output_dir: t.attempt_dir.clone(),
        frames_in: filter_kept,
        frames_kept: kept,
        decisions: (1..=filter_kept)
            .map(|i| DedupDecision {
                frame_index: i,
                kept: i <= kept,
                duplicate_of: (i > kept).then_some(target),
                similarity: (i > kept).then_some(0.95),
            })
            .collect(),
        model_digest: "dino-1".into(),
    }
}

/// A plausible result for a leased task, with outputs inside its attempt directory. The
/// download's sha256 is derived from `content` so tests choose which videos are identical.
/// The filter keeps frames `1..=kept` of 10; dedup keeps every one of `kept` filter-kept
/// frames (use [`dedup_result`] to drop some).
pub fn result_for(t: &LeasedTask, content: u64, kept: i64) -> StageResult {
    let d = &t.attempt_dir;
    match t.stage {
        Stage::Download => StageResult::Download {
            file_path: format!("{d}/video.mp4"),
            sha256: format!("{content:064x}"),
            size_bytes: 1000,
            duration_s: Some(10.0),
            fps: Some(30.0),
            width: Some(640),
            height: Some(360),
            codec: Some("h264".into()),
            start_time_s: Some(0.0),
            stream_frames: Some(300),
            container_duration_s: Some(10.0),
        },
        Stage::Extract => {
            StageResult::Extract { frames_dir: d.clone(), manifest_path: format!("{d}/manifest.json"), frame_count: 10 }
        }
        Stage::Filter => filter_result(t, &(1..=kept).collect::<Vec<_>>()),
        Stage::Dedup => dedup_result(t, kept, kept, None),
        Stage::Detect => StageResult::Detect { output_dir: d.clone(), frames_in: 5, detections: kept },
    }
}
