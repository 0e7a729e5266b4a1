//! `GET /status`: the operator's one-page summary.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{AgentView, ExtractionView, ProjectState, VideoState};

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
    /// The most recently updated videos (at most 20), with where their frames are.
    #[serde(default)]
    pub recent_videos: Vec<RecentVideo>,
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
