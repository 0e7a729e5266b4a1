//! Task routes: the agent lease protocol (lease with long poll, heartbeat, complete, batch
//! complete, fail, release) and the user's dead-task list and retry.

use std::time::Instant;

use axum::extract::State;
use axum::http::StatusCode;
use dataminer_wire::{
    BatchCompleteRequest, BatchCompleteResponse, BatchCompletion, CompleteRequest, CompleteResponse, ErrorBody,
    FailRequest, FailResponse, HeartbeatRequest, HeartbeatResponse, LeaseRequest, LeaseResponse, Page, ReleaseRequest,
    StageResult, TaskState, TaskView, MAX_LEASE_WAIT_MS,
};
use tracing::Instrument;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{AgentJson, ApiError, ApiResult, AppJson, AppPath, AppQuery};
use super::{page, page_limit, AppState, PageQuery};
use crate::store::{StoreError, MAX_BATCH};

pub fn agent_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(lease))
        .routes(routes!(heartbeat))
        .routes(routes!(fail))
        .routes(routes!(release))
}

/// The completion routes, apart: they get their own body limit (`DATAMINER_RESULT_BODY_LIMIT_BYTES`).
pub fn complete_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(complete)).routes(routes!(complete_batch))
}

pub fn user_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(dead_tasks)).routes(routes!(retry_task))
}

/// Lease up to `max_tasks` tasks of the given stages, waiting up to `wait_ms` for work.
#[utoipa::path(post, path = "/v1/leases", tag = "tasks", request_body = LeaseRequest,
    security(("agent_token" = [])),
    responses((status = 200, description = "Possibly empty when the wait ended", body = LeaseResponse),
        (status = 409, description = "Agent not registered", body = ErrorBody),
        (status = 422, body = ErrorBody)))]
async fn lease(State(s): State<AppState>, AgentJson(req): AgentJson<LeaseRequest>) -> ApiResult<LeaseResponse> {
    if req.stages.is_empty() {
        return Err(ApiError::unprocessable("invalid_lease", "stages must name at least one stage"));
    }
    if req.wait_ms > MAX_LEASE_WAIT_MS {
        return Err(ApiError::unprocessable("invalid_lease", format!("wait_ms must be at most {MAX_LEASE_WAIT_MS}")));
    }
    if !(1..=MAX_BATCH as u32).contains(&req.max_tasks) {
        return Err(ApiError::unprocessable("invalid_lease", format!("max_tasks must be between 1 and {MAX_BATCH}")));
    }
    let mut stages = req.stages.clone();
    stages.sort();
    stages.dedup();
    let wait = std::time::Duration::from_millis(req.wait_ms).min(s.http.max_lease_wait);
    let start = Instant::now();
    let store = s.store.clone();
    let tasks = s
        .store
        .wakeup()
        .wait_for(&stages, wait, s.http.poll_fallback, &s.shutdown, || {
            store.lease(req.agent_id, &stages, req.max_tasks as usize)
        })
        .instrument(tracing::info_span!("lease", agent_id = req.agent_id))
        .await?;
    if tasks.len() == req.max_tasks as usize {
        // A full batch: more may be waiting; let the next long poll try.
        s.store.wakeup().pass_baton(&stages);
    }
    let outcome = if tasks.is_empty() { "empty" } else { "leased" };
    s.metrics.lease_wait.with_label_values(&[outcome]).observe(start.elapsed().as_secs_f64());
    for t in &tasks {
        tracing::debug!(task_id = t.task_id, stage = %t.stage, token = t.lease_token, agent_id = req.agent_id, "leased");
    }
    Ok(AppJson(LeaseResponse { tasks }))
}

/// Extend the lease and report progress. `cancelled: true` means stop and drop the work.
#[utoipa::path(post, path = "/v1/tasks/{id}/heartbeat", tag = "tasks", params(("id" = i64, Path)),
    request_body = HeartbeatRequest, security(("agent_token" = [])),
    responses((status = 200, body = HeartbeatResponse),
        (status = 409, description = "Lease lost (stale token, expired and requeued, finished)", body = ErrorBody),
        (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip(s, req), fields(task_id = id))]
async fn heartbeat(
    State(s): State<AppState>,
    AppPath(id): AppPath<i64>,
    AgentJson(req): AgentJson<HeartbeatRequest>,
) -> ApiResult<HeartbeatResponse> {
    let o = s.store.heartbeat(id, req.lease_token, req.progress.as_ref()).await?;
    Ok(AppJson(HeartbeatResponse { cancelled: o.cancelled, lease_expires_in_ms: o.lease_expires_in_ms.max(0) as u64 }))
}

/// Complete a task with its stage result; its successors are enqueued in the same
/// transaction. Repeating it with the same token returns the same success.
#[utoipa::path(post, path = "/v1/tasks/{id}/complete", tag = "tasks", params(("id" = i64, Path)),
    request_body = CompleteRequest, security(("agent_token" = [])),
    responses((status = 200, body = CompleteResponse),
        (status = 409, description = "Lease lost or task cancelled", body = ErrorBody),
        (status = 422, description = "Result invalid (wrong stage, path outside the attempt directory, bad counts)", body = ErrorBody),
        (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip(s, req), fields(task_id = id, stage = %req.result.stage()))]
async fn complete(
    State(s): State<AppState>,
    AppPath(id): AppPath<i64>,
    AgentJson(req): AgentJson<CompleteRequest>,
) -> ApiResult<CompleteResponse> {
    refuse_nul(std::slice::from_ref(&req.result))?;
    let item = BatchCompletion { task_id: id, lease_token: req.lease_token, result: req.result };
    let mut out = s.store.complete_batch(std::slice::from_ref(&item)).await?;
    let o = out.pop().ok_or_else(|| ApiError::from(StoreError::Corrupt("empty completion outcome".into())))?;
    match o.error {
        None => Ok(AppJson(CompleteResponse { task_id: id, duplicate: o.duplicate })),
        Some(e) => Err(ApiError {
            status: StatusCode::from_u16(o.status).unwrap_or(StatusCode::CONFLICT),
            code: e.code,
            message: e.message,
        }),
    }
}

/// Complete up to 64 tasks in one call; each completion is accepted or refused on its own.
#[utoipa::path(post, path = "/v1/tasks/complete", tag = "tasks", request_body = BatchCompleteRequest,
    security(("agent_token" = [])),
    responses((status = 200, body = BatchCompleteResponse), (status = 422, body = ErrorBody)))]
async fn complete_batch(
    State(s): State<AppState>,
    AgentJson(req): AgentJson<BatchCompleteRequest>,
) -> ApiResult<BatchCompleteResponse> {
    if req.completions.is_empty() {
        return Err(ApiError::unprocessable("invalid_batch", "completions must not be empty"));
    }
    let results: Vec<_> = req.completions.iter().map(|c| c.result.clone()).collect();
    refuse_nul(&results)?;
    let results = s.store.complete_batch(&req.completions).await?;
    Ok(AppJson(BatchCompleteResponse { results }))
}

/// U+0000 cannot be stored as text by PostgreSQL; both backends refuse it alike (and, for a
/// batch, before any item is applied: it breaks the schema, not a task's state).
fn refuse_nul(results: &[StageResult]) -> Result<(), ApiError> {
    if results.iter().any(StageResult::has_nul) {
        return Err(ApiError::unprocessable("invalid_result", "result strings must not contain U+0000 characters"));
    }
    Ok(())
}

/// Report a failure: retryable ones are retried with backoff, fatal ones are dead.
#[utoipa::path(post, path = "/v1/tasks/{id}/fail", tag = "tasks", params(("id" = i64, Path)),
    request_body = FailRequest, security(("agent_token" = [])),
    responses((status = 200, body = FailResponse), (status = 409, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip(s, req), fields(task_id = id))]
async fn fail(
    State(s): State<AppState>,
    AppPath(id): AppPath<i64>,
    AgentJson(req): AgentJson<FailRequest>,
) -> ApiResult<FailResponse> {
    if req.error.trim().is_empty() {
        return Err(ApiError::unprocessable("invalid_failure", "error must say what went wrong"));
    }
    if req.error.contains('\0') {
        return Err(ApiError::unprocessable("invalid_failure", "error must not contain U+0000 characters"));
    }
    let o = s.store.fail(id, req.lease_token, &req.error, req.retryable).await?;
    Ok(AppJson(FailResponse {
        state: if o.dead { TaskState::Dead } else { TaskState::Queued },
        run_after_ms: o.run_after_ms,
    }))
}

/// Give a task back (shutdown): queued again at once, the attempt not counted.
#[utoipa::path(post, path = "/v1/tasks/{id}/release", tag = "tasks", params(("id" = i64, Path)),
    request_body = ReleaseRequest, security(("agent_token" = [])),
    responses((status = 204), (status = 409, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip(s, req), fields(task_id = id))]
async fn release(
    State(s): State<AppState>,
    AppPath(id): AppPath<i64>,
    AgentJson(req): AgentJson<ReleaseRequest>,
) -> Result<StatusCode, ApiError> {
    s.store.release(id, req.lease_token).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Dead tasks (fatal failure or out of attempts), oldest first.
#[utoipa::path(get, path = "/v1/tasks/dead", tag = "tasks", params(PageQuery),
    security(("user_token" = [])),
    responses((status = 200, body = Page<TaskView>)))]
async fn dead_tasks(State(s): State<AppState>, AppQuery(q): AppQuery<PageQuery>) -> ApiResult<Page<TaskView>> {
    let limit = page_limit(q.limit)?;
    let items = s.store.dead_tasks(q.after.unwrap_or(0), limit).await?;
    Ok(AppJson(page(items, limit, |t| t.id)))
}

/// Retry a dead or cancelled task with fresh attempts.
#[utoipa::path(post, path = "/v1/tasks/{id}/retry", tag = "tasks", params(("id" = i64, Path)),
    security(("user_token" = [])),
    responses((status = 200, body = TaskView), (status = 404, body = ErrorBody),
        (status = 409, description = "Task is not dead or cancelled", body = ErrorBody)))]
async fn retry_task(State(s): State<AppState>, AppPath(id): AppPath<i64>) -> ApiResult<TaskView> {
    Ok(AppJson(s.store.retry_task(id).await?))
}
