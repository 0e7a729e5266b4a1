//! `/v1/videos`: submit a batch, list, get with tasks, retry, cancel.

use axum::extract::State;
use dataminer_wire::{ErrorBody, Page, SubmitVideosRequest, SubmitVideosResponse, VideoDetail, VideoState, VideoView};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ApiResult, AppJson, AppPath, AppQuery};
use super::{page, page_limit, AppState};
use crate::store::VideoFilter;
use crate::urls;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(submit_videos, list_videos))
        .routes(routes!(get_video))
        .routes(routes!(retry_video))
        .routes(routes!(cancel_video))
}

/// Submit URLs to projects. Every URL is checked first; one bad URL or unknown project
/// refuses the whole batch and changes nothing.
#[utoipa::path(post, path = "/v1/videos", tag = "videos", request_body = SubmitVideosRequest,
    security(("user_token" = [])),
    responses(
        (status = 200, body = SubmitVideosResponse),
        (status = 409, description = "A project is cancelled", body = ErrorBody),
        (status = 422, description = "A URL is invalid or forbidden, or a project unknown", body = ErrorBody),
    ))]
async fn submit_videos(
    State(s): State<AppState>,
    AppJson(req): AppJson<SubmitVideosRequest>,
) -> ApiResult<SubmitVideosResponse> {
    if req.urls.is_empty() {
        return Err(ApiError::unprocessable("no_urls", "urls must name at least one URL"));
    }
    if req.urls.len() > s.http.max_urls_per_request {
        return Err(ApiError::unprocessable(
            "too_many_urls",
            format!("at most {} URLs per request; split the batch", s.http.max_urls_per_request),
        ));
    }
    if req.projects.is_empty() {
        return Err(ApiError::unprocessable("no_projects", "projects must name at least one project"));
    }
    if let Some(p) = req.projects.iter().find(|p| p.contains('\0')) {
        // No project name has U+0000 (and PostgreSQL cannot compare it as text).
        return Err(ApiError::unprocessable("unknown_project", format!("project {p:?} does not exist")));
    }
    if !(-1000..=1000).contains(&req.priority) {
        return Err(ApiError::unprocessable("invalid_priority", "priority must be between -1000 and 1000"));
    }
    let mut sources = Vec::with_capacity(req.urls.len());
    for (i, u) in req.urls.iter().enumerate() {
        // The submitted text is stored as well as its normal form; PostgreSQL cannot store U+0000.
        if u.contains('\0') {
            return Err(ApiError::unprocessable(
                "invalid_url",
                format!("urls[{i}] ({}): contains U+0000", urls::redact(&u.replace('\0', ""))),
            ));
        }
        match urls::parse_source(u, &s.http.platform_hosts, &s.http.allow_hosts) {
            Ok(src) => sources.push(src),
            Err(e) => {
                return Err(ApiError::unprocessable("invalid_url", format!("urls[{i}] ({}): {e}", urls::redact(u))))
            }
        }
    }
    let videos = s.store.submit_videos(&sources, &req.projects, req.priority).await?;
    Ok(AppJson(SubmitVideosResponse { videos }))
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct VideoListQuery {
    /// Only videos in this state.
    #[param(inline)]
    state: Option<VideoState>,
    /// Only videos of this project.
    project: Option<String>,
    /// Return videos with ids after this cursor (the previous page's `next_cursor`).
    after: Option<i64>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// List videos, oldest first.
#[utoipa::path(get, path = "/v1/videos", tag = "videos", params(VideoListQuery),
    security(("user_token" = [])),
    responses((status = 200, body = Page<VideoView>), (status = 400, body = ErrorBody)))]
async fn list_videos(State(s): State<AppState>, AppQuery(q): AppQuery<VideoListQuery>) -> ApiResult<Page<VideoView>> {
    let limit = page_limit(q.limit)?;
    if q.project.as_deref().is_some_and(|p| p.contains('\0')) {
        // No project name has U+0000 (and PostgreSQL cannot compare it as text).
        return Ok(AppJson(page(Vec::new(), limit, |v: &VideoView| v.id)));
    }
    let f = VideoFilter { state: q.state, project: q.project, after: q.after.unwrap_or(0), limit };
    let items = s.store.list_videos(&f).await?;
    Ok(AppJson(page(items, limit, |v| v.id)))
}

/// A video with its project-videos and every task (states, attempts, last errors).
#[utoipa::path(get, path = "/v1/videos/{id}", tag = "videos", params(("id" = i64, Path)),
    security(("user_token" = [])),
    responses((status = 200, body = VideoDetail), (status = 404, body = ErrorBody)))]
async fn get_video(State(s): State<AppState>, AppPath(id): AppPath<i64>) -> ApiResult<VideoDetail> {
    Ok(AppJson(s.store.get_video(id).await?))
}

/// Retry what failed or was cancelled about a video (and its project-videos).
#[utoipa::path(post, path = "/v1/videos/{id}/retry", tag = "videos", params(("id" = i64, Path)),
    security(("user_token" = [])),
    responses((status = 200, body = VideoDetail), (status = 404, body = ErrorBody),
        (status = 409, description = "Nothing to retry", body = ErrorBody)))]
async fn retry_video(State(s): State<AppState>, AppPath(id): AppPath<i64>) -> ApiResult<VideoDetail> {
    Ok(AppJson(s.store.retry_video(id).await?))
}

/// Cancel a video; agents working on it learn it from their next heartbeat.
#[utoipa::path(post, path = "/v1/videos/{id}/cancel", tag = "videos", params(("id" = i64, Path)),
    security(("user_token" = [])),
    responses((status = 200, body = VideoDetail), (status = 404, body = ErrorBody)))]
async fn cancel_video(State(s): State<AppState>, AppPath(id): AppPath<i64>) -> ApiResult<VideoDetail> {
    Ok(AppJson(s.store.cancel_video(id).await?))
}
