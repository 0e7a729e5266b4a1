//! Operations routes: `/status` (JSON, or a table for `Accept: text/plain` / `?format=text`),
//! `/metrics`, `/healthz` (process alive, no database), `/readyz` (database reachable),
//! `/openapi.json` and the interactive docs at `/docs` (Swagger UI, vendored under
//! `control-plane/assets/` and compiled in, so the docs work without internet access).

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use dataminer_wire::{ErrorBody, StatusReport};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, AppJson, AppQuery};
use super::AppState;

pub fn user_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(status))
}

pub fn open_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(healthz)).routes(routes!(readyz)).routes(routes!(metrics))
}

/// The docs page and the viewer's files, in the binary (see `assets/swagger-ui/README.md`).
const DOCS_ASSETS: [(&str, &str, &[u8]); 4] = [
    ("/docs", "text/html; charset=utf-8", include_bytes!("../../assets/docs.html")),
    ("/docs/docs-init.js", "text/javascript; charset=utf-8", include_bytes!("../../assets/docs-init.js")),
    (
        "/docs/swagger-ui-bundle.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/swagger-ui/swagger-ui-bundle.js"),
    ),
    ("/docs/swagger-ui.css", "text/css; charset=utf-8", include_bytes!("../../assets/swagger-ui/swagger-ui.css")),
];

pub fn docs_router(api: utoipa::openapi::OpenApi) -> Router<AppState> {
    let json = api.to_pretty_json().unwrap_or_default();
    let mut router = Router::new()
        .route("/openapi.json", get(move || async move { ([(header::CONTENT_TYPE, "application/json")], json) }));
    for (path, content_type, body) in DOCS_ASSETS {
        router = router.route(
            path,
            get(move || async move {
                ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "public, max-age=3600")], body)
            }),
        );
    }
    router
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct StatusQuery {
    /// `text` for a readable table (same as `Accept: text/plain`), `json` for JSON (the default).
    #[param(inline)]
    format: Option<StatusFormat>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
enum StatusFormat {
    Text,
    Json,
}

/// Counts per stage and state, per project, agents alive, oldest queued task age, and the
/// queued tasks waiting for a capability (a model, yt-dlp) no live agent serving their stage
/// advertises. JSON by default; a readable table for `?format=text` or `Accept: text/plain`.
#[utoipa::path(get, path = "/status", tag = "operations", params(StatusQuery),
    security(("user_token" = [])),
    responses((status = 200, description = "The status report (JSON) or the same as a readable table",
        content((StatusReport = "application/json"), (String = "text/plain")))))]
async fn status(
    State(s): State<AppState>,
    headers: HeaderMap,
    AppQuery(q): AppQuery<StatusQuery>,
) -> Result<Response, ApiError> {
    let text = match q.format {
        Some(StatusFormat::Text) => true,
        Some(StatusFormat::Json) => false,
        None => headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/plain") && !a.contains("application/json")),
    };
    let report = s.store.status_report().await?;
    if text {
        Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], render_text(&report)).into_response())
    } else {
        Ok(AppJson(report).into_response())
    }
}

fn age(ms: i64) -> String {
    match ms {
        m if m < 10_000 => format!("{:.1}s", m as f64 / 1000.0),
        m if m < 3_600_000 => format!("{}m{:02}s", m / 60_000, (m / 1000) % 60),
        m => format!("{}h{:02}m", m / 3_600_000, (m / 60_000) % 60),
    }
}

/// The table `curl -H 'Accept: text/plain' /status` prints.
pub fn render_text(r: &StatusReport) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "dataminer status ({} backend)\n", r.backend);
    let _ = writeln!(
        o,
        "{:<10}{:>9}{:>9}{:>11}{:>9}{:>11}  oldest queued",
        "TASKS", "queued", "leased", "succeeded", "dead", "cancelled"
    );
    let empty = std::collections::BTreeMap::new();
    for stage in dataminer_wire::Stage::ALL.map(|s| s.as_str()) {
        let per = r.tasks.get(stage).unwrap_or(&empty);
        let g = |k: &str| per.get(k).copied().unwrap_or(0);
        let oldest = r.oldest_queued_ms.get(stage).map(|m| age(*m)).unwrap_or_else(|| "-".into());
        let _ = writeln!(
            o,
            "{:<10}{:>9}{:>9}{:>11}{:>9}{:>11}  {}",
            stage,
            g("queued"),
            g("leased"),
            g("succeeded"),
            g("dead"),
            g("cancelled"),
            oldest
        );
    }
    let _ = writeln!(o, "\nWAITING FOR A CAPABILITY NO LIVE AGENT HAS");
    if r.waiting_for_capability.is_empty() {
        let _ = writeln!(o, "  (none)");
    }
    for w in &r.waiting_for_capability {
        let _ = writeln!(
            o,
            "  {:<10}{:<36}{:>7} tasks  oldest queued {}",
            w.stage.as_str(),
            w.requires,
            w.tasks,
            age(w.oldest_queued_ms)
        );
    }
    let _ = writeln!(o, "\nVIDEOS");
    for state in dataminer_wire::VideoState::ALL.map(|s| s.as_str()) {
        let n = r.videos.get(state).copied().unwrap_or(0);
        let _ = writeln!(o, "  {state:<14}{n:>8}");
    }
    let _ = writeln!(o, "\nPROJECTS");
    if r.projects.is_empty() {
        let _ = writeln!(o, "  (none)");
    }
    for p in &r.projects {
        let states: Vec<String> = p.by_state.iter().map(|(s, n)| format!("{s}={n}")).collect();
        let _ = writeln!(
            o,
            "  {:<24}{:<10} videos={:<6} {}",
            p.name,
            format!("{:?}", p.state).to_uppercase(),
            p.videos,
            states.join(" ")
        );
    }
    let _ = writeln!(o, "\nAGENTS ({} alive of {})", r.agents_alive, r.agents.len());
    for a in &r.agents {
        let stages: Vec<&str> = a.stages.iter().map(|s| s.as_str()).collect();
        let _ = writeln!(
            o,
            "  {:<28}{:<6} seen {} ago  node={}  stages={}  v{}",
            a.name,
            if a.alive { "alive" } else { "stale" },
            age((r.now_ms - a.last_seen_ms).max(0)),
            a.node.as_deref().unwrap_or("-"),
            stages.join(","),
            a.version
        );
    }
    let _ = writeln!(o, "\nRECENT VIDEOS (frames under the data root)");
    if r.recent_videos.is_empty() {
        let _ = writeln!(o, "  (none)");
    }
    for v in &r.recent_videos {
        let frames: Vec<String> = v
            .extractions
            .iter()
            .map(|e| match (&e.frames_dir, e.frame_count) {
                (Some(d), Some(n)) => format!("{n} frames in {d}/"),
                _ => format!("extraction {} {}", e.id, e.state.as_str()),
            })
            .collect();
        let what = match (&v.error, frames.is_empty()) {
            (Some(e), _) => format!("error: {}", e.chars().take(120).collect::<String>()),
            (None, false) => frames.join("; "),
            (None, true) => "-".into(),
        };
        let _ = writeln!(o, "  #{:<6}{:<12}{}  {}", v.id, v.state.as_str(), v.url, what);
    }
    o
}

/// Liveness: the process answers. Never touches the database.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = String)))]
async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: the database answers.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, body = String), (status = 503, body = ErrorBody)))]
async fn readyz(State(s): State<AppState>) -> Result<&'static str, ApiError> {
    match tokio::time::timeout(std::time::Duration::from_secs(2), s.store.ping()).await {
        Ok(Ok(())) => Ok("ready"),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness check failed");
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", "database unreachable"))
        }
        Err(_) => {
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", "database did not answer within 2 s"))
        }
    }
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, body = String, content_type = "text/plain")))]
async fn metrics(State(s): State<AppState>) -> Response {
    // Gauges come from the database at scrape time; a failed read leaves them as they were.
    match s.store.queue_snapshot().await {
        Ok((_, snap)) => {
            s.metrics.tasks.reset();
            for stage in dataminer_wire::Stage::ALL {
                for state in dataminer_wire::TaskState::ALL {
                    let n = snap
                        .counts
                        .get(&(stage.as_str().to_string(), state.as_str().to_string()))
                        .copied()
                        .unwrap_or(0);
                    s.metrics.tasks.with_label_values(&[stage.as_str(), state.as_str()]).set(n);
                }
                let oldest = snap.oldest_queued_ms.get(stage.as_str()).copied().unwrap_or(0);
                s.metrics.oldest_queued.with_label_values(&[stage.as_str()]).set(oldest / 1000);
            }
        }
        Err(e) => tracing::warn!(error = %e, "metrics: queue snapshot failed"),
    }
    if let Ok(agents) = s.store.list_agents().await {
        let alive = agents.iter().filter(|a| a.alive).count() as i64;
        s.metrics.agents.with_label_values(&["alive"]).set(alive);
        s.metrics.agents.with_label_values(&["stale"]).set(agents.len() as i64 - alive);
    }
    match s.store.waiting_for_capability(None).await {
        Ok(waits) => {
            // Reset: a (stage, capability) that stopped waiting leaves the exposition.
            s.metrics.waiting_for_capability.reset();
            for w in &waits {
                s.metrics.waiting_for_capability.with_label_values(&[w.stage.as_str(), &w.requires]).set(w.tasks);
            }
        }
        Err(e) => tracing::warn!(error = %e, "metrics: capability waits failed"),
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render()).into_response()
}
