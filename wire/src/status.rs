//! `GET /status`: the operator's one-page summary.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{AgentView, ExtractionView, ProjectState, Stage, VideoState};

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StatusReport {
    /// Database clock, epoch ms.
    pub now_ms: i64,
    /// `sqlite` or `postgres`.
    pub backend: String,
    /// Task counts: stage → state → count (every stage and state present).
    pub tasks: BTreeMap<String, BTreeMap<String, i64>>,
    /// Age of the oldest runnable queued task per stage (ms); absent when none is queued.
    pub oldest_queued_ms: BTreeMap<String, i64>,
    /// Video counts by state.
    pub videos: BTreeMap<String, i64>,
    pub projects: Vec<ProjectSummary>,
    pub agents_alive: i64,
    pub agents: Vec<AgentView>,
    /// Queued tasks that wait for a capability (a model, yt-dlp) that no live agent serving
    /// their stage advertises, by stage and capability; empty when none waits.
    #[serde(default)]
    pub waiting_for_capability: Vec<CapabilityWait>,
    /// The most recently updated videos (at most 20), with where their frames are.
    #[serde(default)]
    pub recent_videos: Vec<RecentVideo>,
}

/// Queued tasks of one stage that require a capability no live agent serving the stage
/// advertises (a live agent is one seen within the control plane's liveness window, as
/// `agents[].alive`). They wait, visibly, until such an agent registers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CapabilityWait {
    pub stage: Stage,
    /// The capability, e.g. `model:siglip2` or `yt-dlp`.
    pub requires: String,
    /// How many queued tasks of the stage require it.
    pub tasks: i64,
    /// How long the oldest of them has been runnable (ms; 0 while every one is in backoff).
    pub oldest_queued_ms: i64,
}

/// A video in `/status`: its state and, once extracted, its frames (relative to the data root).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RecentVideo {
    pub id: i64,
    /// Redacted (no credentials or query values).
    pub url: String,
    pub state: VideoState,
    /// The extractions of its content its projects use, each with its frames.
    #[serde(default)]
    pub extractions: Vec<ExtractionView>,
    pub error: Option<String>,
    pub updated_at_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProjectSummary {
    pub name: String,
    pub state: ProjectState,
    pub videos: i64,
    /// Project-video counts by state (only states with videos).
    pub by_state: BTreeMap<String, i64>,
}
