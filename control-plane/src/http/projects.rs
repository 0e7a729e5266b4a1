//! `/v1/projects`: create, list, get, update config, status, cancel, rerun, the kept frames
//! (`/frames`, users) and the kept set's pages (`/kept`, agents: what a dedup compares with).

use axum::extract::State;
use axum::http::StatusCode;
use dataminer_wire::{
    CreateProjectRequest, ErrorBody, FramePage, FrameState, KeptEntry, Page, ProjectConfig, ProjectStatus, ProjectView,
    RerunRequest, RerunResponse,
};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ApiResult, AppJson, AppPath, AppQuery};
use super::{page, page_limit, AppState, PageQuery};
use crate::store::FrameQuery;

/// A project name from the path. One with U+0000 cannot exist (and PostgreSQL cannot even
/// compare it as text), so it is not found without asking the database.
fn named(name: String) -> Result<String, ApiError> {
    if name.contains('\0') {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such project"));
    }
    Ok(name)
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_project, list_projects))
        .routes(routes!(get_project))
        .routes(routes!(update_config))
        .routes(routes!(project_status))
        .routes(routes!(cancel_project))
        .routes(routes!(rerun_project))
        .routes(routes!(frames))
}

/// What agents read of a project: its kept set.
pub fn agent_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(kept))
}

/// Create a project.
#[utoipa::path(post, path = "/v1/projects", tag = "projects", request_body = CreateProjectRequest,
    security(("user_token" = [])),
    responses(
        (status = 201, body = ProjectView),
        (status = 409, description = "A project with this name exists", body = ErrorBody),
        (status = 422, description = "Invalid name or configuration", body = ErrorBody),
    ))]
async fn create_project(
    State(s): State<AppState>,
    AppJson(req): AppJson<CreateProjectRequest>,
) -> Result<(StatusCode, AppJson<ProjectView>), ApiError> {
    let p = s.store.create_project(&req.name, &req.config).await?;
    Ok((StatusCode::CREATED, AppJson(p)))
}

/// List projects, oldest first.
#[utoipa::path(get, path = "/v1/projects", tag = "projects", params(PageQuery),
    security(("user_token" = [])),
    responses((status = 200, body = Page<ProjectView>)))]
async fn list_projects(State(s): State<AppState>, AppQuery(q): AppQuery<PageQuery>) -> ApiResult<Page<ProjectView>> {
    let limit = page_limit(q.limit)?;
    let items = s.store.list_projects(q.after.unwrap_or(0), limit).await?;
    Ok(AppJson(page(items, limit, |p| p.id)))
}

/// Get a project.
#[utoipa::path(get, path = "/v1/projects/{name}", tag = "projects", params(("name" = String, Path)),
    security(("user_token" = [])),
    responses((status = 200, body = ProjectView), (status = 404, body = ErrorBody)))]
async fn get_project(State(s): State<AppState>, AppPath(name): AppPath<String>) -> ApiResult<ProjectView> {
    let name = named(name)?;
    Ok(AppJson(s.store.get_project(&name).await?))
}

/// Replace a project's configuration (applies to tasks leased from now on).
#[utoipa::path(put, path = "/v1/projects/{name}/config", tag = "projects", params(("name" = String, Path)),
    request_body = ProjectConfig, security(("user_token" = [])),
    responses((status = 200, body = ProjectView), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn update_config(
    State(s): State<AppState>,
    AppPath(name): AppPath<String>,
    AppJson(config): AppJson<ProjectConfig>,
) -> ApiResult<ProjectView> {
    let name = named(name)?;
    Ok(AppJson(s.store.update_project_config(&name, &config).await?))
}

/// Counts per state and frames per stage; COMPLETE when every video is terminal.
#[utoipa::path(get, path = "/v1/projects/{name}/status", tag = "projects", params(("name" = String, Path)),
    security(("user_token" = [])),
    responses((status = 200, body = ProjectStatus), (status = 404, body = ErrorBody)))]
async fn project_status(State(s): State<AppState>, AppPath(name): AppPath<String>) -> ApiResult<ProjectStatus> {
    let name = named(name)?;
    Ok(AppJson(s.store.project_status(&name).await?))
}

/// Cancel a project: its tasks are cancelled and its unfinished videos become CANCELLED.
#[utoipa::path(post, path = "/v1/projects/{name}/cancel", tag = "projects", params(("name" = String, Path)),
    security(("user_token" = [])),
    responses((status = 200, body = ProjectView), (status = 404, body = ErrorBody)))]
async fn cancel_project(State(s): State<AppState>, AppPath(name): AppPath<String>) -> ApiResult<ProjectView> {
    let name = named(name)?;
    Ok(AppJson(s.store.cancel_project(&name).await?))
}

/// Re-run a project from filter or dedup after a config change: every project-video that
/// finished the stage goes back to it with a new task (its rows are replaced when that task
/// completes); from dedup the kept set is rebuilt in its recorded order.
#[utoipa::path(post, path = "/v1/projects/{name}/rerun", tag = "projects", params(("name" = String, Path)),
    request_body = RerunRequest, security(("user_token" = [])),
    responses((status = 200, body = RerunResponse), (status = 404, body = ErrorBody),
        (status = 409, description = "Project cancelled, or one of its filter/dedup/detect tasks is running", body = ErrorBody)))]
async fn rerun_project(
    State(s): State<AppState>,
    AppPath(name): AppPath<String>,
    AppJson(req): AppJson<RerunRequest>,
) -> ApiResult<RerunResponse> {
    let name = named(name)?;
    Ok(AppJson(RerunResponse { requeued: s.store.rerun_project(&name, req.from).await? }))
}

/// `/frames` query: a dedup state, a video, a keyset cursor and a page size.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FramesQuery {
    /// Only frames in this dedup state (absent: every frame the filter kept).
    pub state: Option<FrameState>,
    /// Only this video's frames.
    pub video: Option<i64>,
    /// The previous page's `next_cursor` (`<video_id>:<frame_index>`).
    #[param(pattern = "^[0-9]{1,18}:[0-9]{1,18}$")]
    pub after: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

fn cursor(after: &str) -> Result<(i64, i64), ApiError> {
    let bad = || ApiError::bad_request("invalid_query", "after must be a cursor `<video_id>:<frame_index>`");
    let (v, f) = after.split_once(':').ok_or_else(bad)?;
    let num = |x: &str| {
        if x.is_empty() || x.len() > 18 || !x.bytes().all(|b| b.is_ascii_digit()) {
            Err(bad())
        } else {
            x.parse::<i64>().map_err(|_| bad())
        }
    };
    Ok((num(v)?, num(f)?))
}

/// The frames the filter kept, with their scores and dedup decision, in (video, frame) order.
#[utoipa::path(get, path = "/v1/projects/{name}/frames", tag = "projects",
    params(("name" = String, Path), FramesQuery), security(("user_token" = [])),
    responses((status = 200, body = FramePage), (status = 404, body = ErrorBody)))]
async fn frames(
    State(s): State<AppState>,
    AppPath(name): AppPath<String>,
    AppQuery(q): AppQuery<FramesQuery>,
) -> ApiResult<FramePage> {
    let name = named(name)?;
    let limit = page_limit(q.limit)?;
    let after = q.after.as_deref().map(cursor).transpose()?;
    let items = s.store.frames_page(&name, FrameQuery { state: q.state, video_id: q.video, after, limit }).await?;
    let next_cursor = if items.len() as i64 == limit {
        items.last().map(|f| format!("{}:{}", f.video_id, f.frame_index))
    } else {
        None
    };
    Ok(AppJson(FramePage { items, next_cursor }))
}

/// `/kept` query: entries after a `kept_seq`, and a page size.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct KeptQuery {
    /// Entries with `kept_seq` above this (default 0: from the start).
    pub after_seq: Option<i64>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

/// The project's kept set in `kept_seq` order: each entry's dedup output and the embedder
/// digest it was made with. A dedup agent pages from the last entry it has cached up to its
/// task's `kept_seq_upto`; the cursor is `kept_seq`.
#[utoipa::path(get, path = "/v1/projects/{name}/kept", tag = "projects",
    params(("name" = String, Path), KeptQuery), security(("agent_token" = [])),
    responses((status = 200, body = Page<KeptEntry>), (status = 404, body = ErrorBody)))]
async fn kept(
    State(s): State<AppState>,
    AppPath(name): AppPath<String>,
    AppQuery(q): AppQuery<KeptQuery>,
) -> ApiResult<Page<KeptEntry>> {
    let name = named(name)?;
    let limit = page_limit(q.limit)?;
    let items = s.store.kept_page(&name, q.after_seq.unwrap_or(0), limit).await?;
    Ok(AppJson(page(items, limit, |k| k.kept_seq)))
}
