//! The control plane's agent API over HTTP: register, lease (long poll), heartbeat,
//! complete, fail, release. Errors say whether the control plane could not be reached or
//! could not serve (connection errors, 5xx such as 503 `database_unavailable`, 429: retry
//! with backoff, after the `Retry-After` it asked for), refused the lease token (the task is
//! no longer ours), cancelled the task (a user stopped it: drop the work, report nothing), or
//! refused the request for another reason (a bug or a version mismatch; retrying will not
//! help).

use std::time::Duration;

use dataminer_wire::{
    CompleteRequest, CompleteResponse, ErrorBody, FailRequest, FailResponse, HeartbeatRequest, HeartbeatResponse,
    LeaseRequest, LeaseResponse, RegisterAgentRequest, RegisterAgentResponse, ReleaseRequest, StageResult,
};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::backoff::Backoff;
use crate::error::error_chain;

/// The longest `Retry-After` honoured: a control plane asking for more is retried sooner,
/// so that an agent notices its return within this bound.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connection refused, reset, timed out, a 5xx (503 `database_unavailable` while its
    /// database is down) or a 429: the control plane may be back soon. `retry_after` is what
    /// it asked for, capped at [`MAX_RETRY_AFTER`].
    #[error("control plane unreachable: {message}")]
    Unreachable { message: String, retry_after: Option<Duration> },
    /// 409 `lease_lost`: the lease token is stale; the task belongs to someone else now.
    #[error("lease lost: {0}")]
    LeaseLost(String),
    /// 409 `task_cancelled`: a user cancelled the task; its work is dropped, not reported.
    #[error("task cancelled: {0}")]
    Cancelled(String),
    /// Any other refusal (4xx), with the control plane's code and message.
    #[error("control plane refused the request ({status} {code}): {message}")]
    Refused { status: u16, code: String, message: String },
}

impl ClientError {
    pub fn unreachable(message: impl Into<String>) -> Self {
        ClientError::Unreachable { message: message.into(), retry_after: None }
    }

    /// How long to wait before retrying an unreachable control plane: what it asked for in
    /// `Retry-After`, else the next backoff delay.
    pub fn retry_delay(&self, backoff: &mut Backoff) -> Duration {
        let next = backoff.next_delay();
        match self {
            ClientError::Unreachable { retry_after: Some(d), .. } => *d,
            _ => next,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ControlPlane {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl ControlPlane {
    /// `request_timeout` bounds every call except the lease long-poll, which gets its wait on top.
    pub fn new(base: &str, token: Option<String>, request_timeout: Duration) -> Result<Self, ClientError> {
        // No proxy from the environment: the control plane is cluster-internal, and an
        // HTTP_PROXY meant for something else must not see the agent token.
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .timeout(request_timeout)
            .build()
            .map_err(|e| ClientError::unreachable(format!("cannot build HTTP client: {e}")))?;
        Ok(Self { http, base: base.trim_end_matches('/').to_string(), token })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn call<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        extra_timeout: Option<Duration>,
    ) -> Result<Option<R>, ClientError> {
        let mut req = self.http.request(Method::POST, format!("{}{path}", self.base)).json(body);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(extra) = extra_timeout {
            req = req.timeout(extra + Duration::from_secs(10));
        }
        let resp = req.send().await.map_err(|e| ClientError::unreachable(error_chain(&e)))?;
        let status = resp.status();
        if status == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        if status.is_success() {
            return resp.json::<R>().await.map(Some).map_err(|e| ClientError::unreachable(error_chain(&e)));
        }
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            let retry_after = retry_after(resp.headers());
            let code = resp.json::<ErrorBody>().await.map(|b| format!(" {}", b.error.code)).unwrap_or_default();
            return Err(ClientError::Unreachable { message: format!("{path}: HTTP {status}{code}"), retry_after });
        }
        let (code, message) = match resp.json::<ErrorBody>().await {
            Ok(b) => (b.error.code, b.error.message),
            Err(_) => ("unknown".to_string(), format!("HTTP {status}")),
        };
        match (status, code.as_str()) {
            // An expired lease is as lost as a taken one: stop, report nothing.
            (StatusCode::CONFLICT, "lease_lost" | "lease_expired") => Err(ClientError::LeaseLost(message)),
            (StatusCode::CONFLICT, "task_cancelled") => Err(ClientError::Cancelled(message)),
            _ => Err(ClientError::Refused { status: status.as_u16(), code, message }),
        }
    }

    async fn call_json<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        extra: Option<Duration>,
    ) -> Result<R, ClientError> {
        self.call(path, body, extra)
            .await?
            .ok_or_else(|| ClientError::unreachable(format!("{path}: empty response where a body was expected")))
    }

    /// A page of a project's kept set (what a dedup compares with), after `after_seq`.
    pub async fn kept_page(
        &self,
        project: &str,
        after_seq: i64,
        limit: i64,
    ) -> Result<dataminer_wire::Page<dataminer_wire::KeptEntry>, ClientError> {
        let path = format!("/v1/projects/{project}/kept?after_seq={after_seq}&limit={limit}");
        let mut req = self.http.request(Method::GET, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| ClientError::unreachable(error_chain(&e)))?;
        let status = resp.status();
        if status.is_success() {
            return resp.json().await.map_err(|e| ClientError::unreachable(error_chain(&e)));
        }
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            let retry_after = retry_after(resp.headers());
            return Err(ClientError::Unreachable { message: format!("{path}: HTTP {status}"), retry_after });
        }
        let (code, message) = match resp.json::<ErrorBody>().await {
            Ok(b) => (b.error.code, b.error.message),
            Err(_) => ("unknown".to_string(), format!("HTTP {status}")),
        };
        Err(ClientError::Refused { status: status.as_u16(), code, message })
    }

    pub async fn register(&self, req: &RegisterAgentRequest) -> Result<RegisterAgentResponse, ClientError> {
        self.call_json("/v1/agents/register", req, None).await
    }

    pub async fn lease(&self, req: &LeaseRequest) -> Result<LeaseResponse, ClientError> {
        self.call_json("/v1/leases", req, Some(Duration::from_millis(req.wait_ms))).await
    }

    pub async fn heartbeat(
        &self,
        task_id: i64,
        lease_token: i64,
        progress: Option<serde_json::Value>,
    ) -> Result<HeartbeatResponse, ClientError> {
        let body = HeartbeatRequest { lease_token, progress };
        self.call_json(&format!("/v1/tasks/{task_id}/heartbeat"), &body, None).await
    }

    pub async fn complete(
        &self,
        task_id: i64,
        lease_token: i64,
        result: StageResult,
    ) -> Result<CompleteResponse, ClientError> {
        let body = CompleteRequest { lease_token, result };
        self.call_json(&format!("/v1/tasks/{task_id}/complete"), &body, None).await
    }

    pub async fn fail(
        &self,
        task_id: i64,
        lease_token: i64,
        error: String,
        retryable: bool,
    ) -> Result<FailResponse, ClientError> {
        let body = FailRequest { lease_token, error, retryable };
        self.call_json(&format!("/v1/tasks/{task_id}/fail"), &body, None).await
    }

    pub async fn release(&self, task_id: i64, lease_token: i64) -> Result<(), ClientError> {
        let body = ReleaseRequest { lease_token };
        self.call::<_, serde_json::Value>(&format!("/v1/tasks/{task_id}/release"), &body, None).await.map(|_| ())
    }
}

/// `Retry-After` in seconds (the form the control plane sends; an HTTP date is not worth
/// parsing for a bound this short), capped at [`MAX_RETRY_AFTER`].
fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    let secs: u64 = h.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_honoured_within_a_bound() {
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(reqwest::header::RETRY_AFTER, "2".parse().expect("header"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert(reqwest::header::RETRY_AFTER, "3600".parse().expect("header"));
        assert_eq!(retry_after(&h), Some(MAX_RETRY_AFTER));
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(100));
        let e = ClientError::Unreachable { message: "x".into(), retry_after: Some(Duration::from_secs(2)) };
        assert_eq!(e.retry_delay(&mut b), Duration::from_secs(2));
        assert!(ClientError::unreachable("x").retry_delay(&mut b) <= Duration::from_millis(100));
    }
}
