//! `/v1/projects`: create, list, get, update config, status, cancel.

use axum::extract::State;
use axum::http::StatusCode;
use dataminer_wire::{CreateProjectRequest, ErrorBody, Page, ProjectConfig, ProjectStatus, ProjectView};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ApiResult, AppJson, AppPath, AppQuery};
use super::{page, page_limit, AppState, PageQuery};

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
