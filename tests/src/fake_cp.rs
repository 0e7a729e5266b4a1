//! A scripted stand-in for the control plane's agent API, for agent behaviour that the real
//! control plane cannot be made to show on cue: a lease answered only after the agent got
//! SIGTERM, a completion answered `409 task_cancelled`, a database outage (`503
//! database_unavailable` with `Retry-After`). It records every call with its arrival time.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use dataminer_wire::{
    CompleteResponse, ErrorBody, FailResponse, HeartbeatResponse, LeaseRequest, LeaseResponse, LeasedTask,
    RegisterAgentResponse, TaskState, PROTOCOL_VERSION,
};
use tokio::sync::watch;

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Call {
    pub path: String,
    pub body: serde_json::Value,
    pub at: Instant,
}

/// A scripted reply to a completion: status, `Retry-After` seconds, error code.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub retry_after_s: Option<u64>,
    pub code: &'static str,
}

#[derive(Debug)]
struct Inner {
    calls: Mutex<Vec<Call>>,
    tasks: Mutex<VecDeque<LeasedTask>>,
    complete_replies: Mutex<VecDeque<Reply>>,
    /// While true, lease requests wait (a long poll that has not answered yet).
    hold: watch::Sender<bool>,
}

#[derive(Debug, Clone)]
pub struct FakeControlPlane {
    pub base: String,
    inner: Arc<Inner>,
}

impl FakeControlPlane {
    /// Serves on 127.0.0.1 (random port) until the test's runtime ends.
    pub async fn start() -> Self {
        let inner = Arc::new(Inner {
            calls: Mutex::default(),
            tasks: Mutex::default(),
            complete_replies: Mutex::default(),
            hold: watch::channel(false).0,
        });
        let app = Router::new()
            .route("/v1/agents/register", post(register))
            .route("/v1/leases", post(lease))
            .route("/v1/tasks/{id}/{verb}", post(task_call))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind fake control plane");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { base, inner }
    }

    /// Hands `task` out on the next lease request.
    pub fn push_task(&self, task: LeasedTask) {
        self.inner.tasks.lock().expect("tasks").push_back(task);
    }

    /// Replies to the next completions, in order, before completions succeed again.
    pub fn script_complete(&self, replies: &[Reply]) {
        self.inner.complete_replies.lock().expect("replies").extend(replies.iter().cloned());
    }

    /// Makes lease requests wait (true) or answers them (false).
    pub fn hold_leases(&self, hold: bool) {
        self.inner.hold.send_replace(hold);
    }

    pub fn calls(&self) -> Vec<Call> {
        self.inner.calls.lock().expect("calls").clone()
    }

    /// Calls whose path ends with `suffix` (`/complete`, `/fail`, `/v1/leases`, …).
    pub fn calls_to(&self, suffix: &str) -> Vec<Call> {
        self.calls().into_iter().filter(|c| c.path.ends_with(suffix)).collect()
    }

    /// Waits until `n` calls end with `suffix`; panics with every call after `timeout`.
    pub async fn wait_for_calls(&self, suffix: &str, n: usize, timeout: Duration) -> Vec<Call> {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.calls_to(suffix);
            if c.len() >= n {
                return c;
            }
            assert!(Instant::now() < deadline, "{n} calls to {suffix} never came: {:?}", self.calls());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn record(inner: &Inner, path: String, body: serde_json::Value) {
    inner.calls.lock().expect("calls").push(Call { path, body, at: Instant::now() });
}

async fn register(State(inner): State<Arc<Inner>>, Json(body): Json<serde_json::Value>) -> Json<RegisterAgentResponse> {
    record(&inner, "/v1/agents/register".into(), body);
    Json(RegisterAgentResponse {
        agent_id: 1,
        protocol_version: PROTOCOL_VERSION,
        lease_ttl_ms: 60_000,
        heartbeat_interval_ms: 100,
        max_lease_wait_ms: 2_000,
    })
}

async fn lease(State(inner): State<Arc<Inner>>, Json(body): Json<serde_json::Value>) -> Json<LeaseResponse> {
    record(&inner, "/v1/leases".into(), body.clone());
    let mut hold = inner.hold.subscribe();
    let _ = hold.wait_for(|h| !*h).await;
    let req: Option<LeaseRequest> = serde_json::from_value(body).ok();
    let max = req.as_ref().map_or(1, |r| r.max_tasks as usize);
    let tasks: Vec<LeasedTask> = {
        let mut q = inner.tasks.lock().expect("tasks");
        let n = q.len().min(max);
        q.drain(..n).collect()
    };
    if tasks.is_empty() {
        // An empty long poll: answer after a short wait rather than spin the agent.
        let wait = req.map_or(100, |r| r.wait_ms).min(200);
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
    Json(LeaseResponse { tasks })
}

async fn task_call(
    State(inner): State<Arc<Inner>>,
    Path((id, verb)): Path<(i64, String)>,
    Json(body): Json<serde_json::Value>,
) -> Response {
    record(&inner, format!("/v1/tasks/{id}/{verb}"), body);
    match verb.as_str() {
        "heartbeat" => Json(HeartbeatResponse { cancelled: false, lease_expires_in_ms: 60_000 }).into_response(),
        "complete" => {
            let scripted = inner.complete_replies.lock().expect("replies").pop_front();
            match scripted {
                Some(r) => {
                    let mut resp =
                        (r.status, Json(ErrorBody::new(r.code, format!("scripted {}", r.code)))).into_response();
                    if let Some(s) = r.retry_after_s {
                        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
                    }
                    resp
                }
                None => Json(CompleteResponse { task_id: id, duplicate: false }).into_response(),
            }
        }
        "fail" => Json(FailResponse { state: TaskState::Queued, run_after_ms: None }).into_response(),
        "release" => StatusCode::NO_CONTENT.into_response(),
        _ => (StatusCode::NOT_FOUND, Json(ErrorBody::new("not_found", "no such route"))).into_response(),
    }
}
