//! Agent registration and the agent listing shown in `/status`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::Stage;

/// The longest capability tag an agent may advertise, in characters.
pub const MAX_CAPABILITY_CHARS: usize = 64;

/// The prefix of a model package's capability tag: an agent that serves package `name`
/// advertises `model:<name>`, and a filter, dedup or detect task requires the tag of the model
/// its project configures for the stage, so it only reaches an agent holding that model.
pub const MODEL_CAPABILITY_PREFIX: &str = "model:";

/// The capability tag of model package `name` (`model:<name>`).
pub fn model_capability(name: &str) -> String {
    format!("{MODEL_CAPABILITY_PREFIX}{name}")
}

/// `POST /v1/agents/register`. Registering again under the same name updates the record
/// (an agent restarted on the same node keeps its identity). Unknown fields are ignored
/// (a newer agent may advertise more; see `tasks`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RegisterAgentRequest {
    /// Unique agent name (default on the agent: the hostname).
    #[schema(min_length = 1, max_length = 253, pattern = "^[A-Za-z0-9._:-]+$")]
    pub name: String,
    /// Kubernetes node (downward API `NODE_NAME`), if any.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 253, pattern = "^[A-Za-z0-9._:-]+$")]
    pub node: Option<String>,
    /// Stages this agent can serve; at least one.
    #[schema(min_items = 1)]
    pub stages: Vec<Stage>,
    #[serde(default)]
    #[schema(schema_with = crate::schema::capabilities)]
    pub capabilities: Vec<String>,
    /// Agent software version (free text, shown in `/status`).
    #[schema(max_length = 128, pattern = "^[^\\u0000]*$")]
    pub version: String,
    /// Must equal the control plane's `PROTOCOL_VERSION` (400 otherwise).
    #[schema(minimum = 2, maximum = 2)]
    pub protocol_version: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RegisterAgentResponse {
    pub agent_id: i64,
    pub protocol_version: u32,
    /// A lease lasts this long unless extended by a heartbeat.
    pub lease_ttl_ms: u64,
    /// Suggested heartbeat period (a third of the TTL).
    pub heartbeat_interval_ms: u64,
    /// The longest `wait_ms` a lease request may ask for.
    pub max_lease_wait_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AgentView {
    pub id: i64,
    pub name: String,
    pub node: Option<String>,
    pub stages: Vec<Stage>,
    pub capabilities: Vec<String>,
    pub version: String,
    pub registered_at_ms: i64,
    pub last_seen_ms: i64,
    /// Seen within the control plane's agent liveness window.
    pub alive: bool,
}
