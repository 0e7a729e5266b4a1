//! The HTTP surface: one router per resource, merged here behind their auth roles, with the
//! OpenAPI document generated from the same handlers (utoipa) so the spec cannot drift from
//! the code. Handlers are thin: parse, call the store, shape the answer.

mod agents;
pub mod auth;
pub mod error;
pub mod listener;
mod ops;
mod projects;
mod tasks;
mod videos;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;

use crate::metrics::Metrics;
use crate::store::Store;

/// What the handlers need besides the store.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub user_token: Option<String>,
    pub agent_token: Option<String>,
    pub max_lease_wait: Duration,
    pub poll_fallback: Duration,
    pub heartbeat_interval_ms: u64,
    pub max_urls_per_request: usize,
    pub platform_hosts: Vec<String>,
    pub allow_hosts: Vec<String>,
    pub body_limit_bytes: usize,
    /// The completion routes' own limit (per-frame results are large).
    pub result_body_limit_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct AppState {
    pub store: Store,
    pub http: Arc<HttpSettings>,
    pub metrics: Metrics,
    /// Cancelled at shutdown: long polls return at once.
    pub shutdown: CancellationToken,
}

#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "dataminer control plane",
        description = "Mines image datasets out of videos: projects, videos, the agent lease protocol and operations.",
        license(name = "Apache-2.0")
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "projects", description = "Projects and their configuration"),
        (name = "videos", description = "Video submission, state, retry and cancel"),
        (name = "tasks", description = "Dead tasks (users) and the lease protocol (agents)"),
        (name = "agents", description = "Agent registration"),
        (name = "operations", description = "Status, metrics, health")
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for name in ["user_token", "agent_token"] {
            components.add_security_scheme(name, SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
        }
    }
}

/// The refusals every route of a kind can give, declared once here rather than on each
/// handler (so none is forgotten): 401/403 on routes with a token, 400 on routes with path or
/// query parameters, and 400/413/415/422 on routes with a JSON body. A response a handler
/// declares itself is kept.
struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::ParameterIn;
        use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
        let error = |description: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build(),
                    )
                    .build(),
            )
        };
        for item in openapi.paths.paths.values_mut() {
            let ops = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
            for op in ops.into_iter().flatten() {
                let mut add = |status: &str, description: &str| {
                    op.responses.responses.entry(status.to_string()).or_insert_with(|| error(description));
                };
                let params =
                    op.parameters.as_ref().map(|p| p.iter().map(|p| p.parameter_in.clone()).collect::<Vec<_>>());
                let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
                let has_body = op.request_body.is_some();
                if secured {
                    add("401", "Missing or invalid bearer token (`unauthorized`)");
                    add("403", "The other role's token (`forbidden`)");
                }
                if has_body {
                    add("400", "Malformed JSON (`malformed_json`)");
                    add("413", "Body larger than the server's limit (`body_too_large`)");
                    add("415", "Body not sent as `application/json` (`unsupported_media_type`)");
                    add("422", "Body does not match the schema or is refused (`invalid_body`, …)");
                }
                if let Some(params) = params {
                    if params.iter().any(|p| matches!(p, ParameterIn::Path)) {
                        add("400", "Path parameter of the wrong type (`invalid_path`)");
                    }
                    if params.iter().any(|p| matches!(p, ParameterIn::Query)) {
                        add("400", "Unknown or invalid query parameter (`invalid_query`)");
                    }
                }
            }
        }
    }
}

fn user_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(projects::router())
        .merge(videos::router())
        .merge(tasks::user_router())
        .merge(agents::user_router())
        .merge(ops::user_router())
}

/// `result_limit`: the completion routes' body limit (absent when only the document is built).
fn agent_routes(result_limit: Option<usize>) -> OpenApiRouter<AppState> {
    let complete = tasks::complete_router();
    let complete = match result_limit {
        // Closer to the handler than the app-wide limit, so it replaces it on these routes.
        Some(limit) => complete.layer(DefaultBodyLimit::max(limit)),
        None => complete,
    };
    OpenApiRouter::new()
        .merge(agents::agent_router())
        .merge(tasks::agent_router())
        .merge(complete)
        .merge(projects::agent_router())
}

/// The OpenAPI document (also what `control-plane openapi` prints and the drift test checks).
pub fn openapi() -> utoipa::openapi::OpenApi {
    // The common responses are added once the routes are merged in (modifiers given to
    // `#[openapi]` run before that, on a document without paths).
    let mut api = OpenApiRouter::<AppState>::with_openapi(ApiDoc::openapi())
        .merge(user_routes())
        .merge(agent_routes(None))
        .merge(ops::open_router())
        .split_for_parts()
        .1;
    CommonResponses.modify(&mut api);
    api
}

/// The complete application router.
pub fn app(state: AppState) -> Router {
    let (router, mut api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(user_routes().route_layer(middleware::from_fn_with_state(state.clone(), auth::require_user)))
        .merge(
            agent_routes(Some(state.http.result_body_limit_bytes))
                .route_layer(middleware::from_fn_with_state(state.clone(), auth::require_agent)),
        )
        .merge(ops::open_router())
        .split_for_parts();
    CommonResponses.modify(&mut api);
    let docs = ops::docs_router(api).route_layer(middleware::from_fn_with_state(state.clone(), auth::require_any));
    router
        .merge(docs)
        .fallback(error::not_found)
        .layer(middleware::from_fn_with_state(state.clone(), track_http))
        .layer(DefaultBodyLimit::max(state.http.body_limit_bytes))
        .layer(TraceLayer::new_for_http().make_span_with(
            |req: &Request| tracing::info_span!("http", method = %req.method(), path = %req.uri().path()),
        ))
        // Outermost, so that every error any layer or the router produces has the one shape.
        .layer(middleware::from_fn(error::json_errors))
        .with_state(state)
}

/// Request duration by method, route template and status.
async fn track_http(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string());
    let method = req.method().to_string();
    let start = Instant::now();
    let resp = next.run(req).await;
    let route = route.unwrap_or_else(|| "unmatched".to_string());
    state
        .metrics
        .http_duration
        .with_label_values(&[method.as_str(), route.as_str(), resp.status().as_str()])
        .observe(start.elapsed().as_secs_f64());
    resp
}

/// Pagination shared by the list routes.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Return items with ids after this cursor (the previous page's `next_cursor`).
    pub after: Option<i64>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

pub const MAX_PAGE: i64 = 1000;

pub fn page_limit(limit: Option<i64>) -> Result<i64, error::ApiError> {
    match limit {
        None => Ok(100),
        Some(l) if (1..=MAX_PAGE).contains(&l) => Ok(l),
        Some(l) => {
            Err(error::ApiError::bad_request("invalid_query", format!("limit {l} must be between 1 and {MAX_PAGE}")))
        }
    }
}

/// A page whose cursor is the last item's id when the page is full.
pub fn page<T>(items: Vec<T>, limit: i64, id: impl Fn(&T) -> i64) -> dataminer_wire::Page<T> {
    let next_cursor = if items.len() as i64 == limit { items.last().map(id) } else { None };
    dataminer_wire::Page { items, next_cursor }
}
