//! Wire types shared by the control plane and the agent: every JSON body that crosses the
//! HTTP boundary, with serde derives for the wire format and utoipa schemas for the OpenAPI
//! document. Nothing here touches a database or a model; internal types of either binary
//! never derive serde, so a refactor inside one of them cannot silently change the protocol.

pub mod agents;
pub mod config;
pub mod error;
pub mod net;
pub mod projects;
pub mod schema;
pub mod status;
pub mod tasks;
pub mod videos;

pub use agents::*;
pub use config::*;
pub use error::*;
pub use projects::*;
pub use status::*;
pub use tasks::*;
pub use videos::*;

/// Version of the agent ↔ control-plane protocol. Bumped only for incompatible changes;
/// additive changes (new optional fields, new routes) keep it, so rolling upgrades work.
/// 2: dedup's `prior_kept_dirs` replaced by `kept_seq_upto` and the `/kept` pages.
pub const PROTOCOL_VERSION: u32 = 2;

/// PostgreSQL cannot store U+0000 in text, so the API refuses it in every string it stores or
/// looks up as text, on both backends alike; the schema declares it with this pattern.
pub const NO_NUL_PATTERN: &str = "^[^\\u0000]*$";

/// A page of results with an opaque cursor for the next one (`None` on the last page).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `after` to get the next page; absent on the last page.
    pub next_cursor: Option<i64>,
}
