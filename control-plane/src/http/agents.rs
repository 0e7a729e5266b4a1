//! `/v1/agents`: registration (agent token) and the agent list (user token).

use axum::extract::State;
use dataminer_wire::{
    AgentView, ErrorBody, RegisterAgentRequest, RegisterAgentResponse, MAX_CAPABILITY_CHARS, PROTOCOL_VERSION,
};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{AgentJson, ApiError, ApiResult, AppJson};
use super::AppState;

pub fn agent_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(register))
}

pub fn user_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_agents))
}

const MAX_NAME: usize = 253;

/// Register an agent (again: same name, same id). Refused when the protocol differs.
#[utoipa::path(post, path = "/v1/agents/register", tag = "agents", request_body = RegisterAgentRequest,
    security(("agent_token" = [])),
    responses((status = 200, body = RegisterAgentResponse),
        (status = 400, description = "Incompatible protocol version", body = ErrorBody),
        (status = 422, body = ErrorBody)))]
async fn register(
    State(s): State<AppState>,
    AgentJson(req): AgentJson<RegisterAgentRequest>,
) -> ApiResult<RegisterAgentResponse> {
    if req.protocol_version != PROTOCOL_VERSION {
        return Err(ApiError::bad_request(
            "protocol_version_unsupported",
            format!(
                "agent speaks protocol {}, this control plane speaks {PROTOCOL_VERSION}; upgrade the agent",
                req.protocol_version
            ),
        ));
    }
    let name_ok = |n: &str| {
        !n.is_empty() && n.len() <= MAX_NAME && n.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
    };
    if !name_ok(&req.name) || req.node.as_deref().is_some_and(|n| !name_ok(n)) {
        return Err(ApiError::unprocessable(
            "invalid_agent",
            format!("name and node must be 1-{MAX_NAME} characters of [A-Za-z0-9-_.:]"),
        ));
    }
    if req.stages.is_empty() {
        return Err(ApiError::unprocessable("invalid_agent", "stages must name at least one stage"));
    }
    // Lengths in characters, as the schema's maxLength counts them.
    let chars = |s: &str| s.chars().count();
    if req.capabilities.len() > 64
        || req.capabilities.iter().any(|c| c.is_empty() || chars(c) > MAX_CAPABILITY_CHARS || c.contains('\0'))
        || chars(&req.version) > 128
        || req.version.contains('\0')
    {
        return Err(ApiError::unprocessable(
            "invalid_agent",
            "at most 64 capabilities of 1-64 characters; version at most 128; no U+0000 characters",
        ));
    }
    let id = s.store.register_agent(&req).await?;
    let ttl = s.store.settings().lease_ttl_ms as u64;
    Ok(AppJson(RegisterAgentResponse {
        agent_id: id,
        protocol_version: PROTOCOL_VERSION,
        lease_ttl_ms: ttl,
        heartbeat_interval_ms: s.http.heartbeat_interval_ms,
        max_lease_wait_ms: s.http.max_lease_wait.as_millis() as u64,
    }))
}

/// Registered agents and whether they were seen recently.
#[utoipa::path(get, path = "/v1/agents", tag = "agents", security(("user_token" = [])),
    responses((status = 200, body = Vec<AgentView>)))]
async fn list_agents(State(s): State<AppState>) -> ApiResult<Vec<AgentView>> {
    Ok(AppJson(s.store.list_agents().await?))
}
