//! Project bodies: create, view, config update and status.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ProjectConfig;

/// `POST /v1/projects`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProjectRequest {
    /// `[a-z0-9][a-z0-9_-]{0,62}`; used in storage paths.
    #[schema(min_length = 1, max_length = 63, pattern = "^[a-z0-9][a-z0-9_-]*$")]
    pub name: String,
    /// Required in practice: `filter.positive_prompts` has no default.
    #[serde(default)]
    #[schema(required = true)]
    pub config: ProjectConfig,
}

/// What a project name looks like (the control plane refuses any other).
pub const PROJECT_NAME_PATTERN: &str = "^[a-z0-9][a-z0-9_-]{0,62}$";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ProjectState {
    /// Work remains (or no video yet).
    Active,
    /// Every video of the project is in a terminal state.
    Complete,
    Cancelled,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProjectView {
    pub id: i64,
    pub name: String,
    pub config: ProjectConfig,
    pub cancelled: bool,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// `GET /v1/projects/{name}/status`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProjectStatus {
    pub name: String,
    pub state: ProjectState,
    pub videos: i64,
    /// Project-video counts by state (every state present, zeros included).
    pub by_state: BTreeMap<String, i64>,
    pub frames: FrameCounts,
    /// The project's queued tasks that wait for a capability (its model) that no live agent
    /// serving their stage advertises; empty when none waits.
    #[serde(default)]
    pub waiting_for_capability: Vec<crate::CapabilityWait>,
}

/// Frames in and kept per stage, summed over the project's videos that reached the stage.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct FrameCounts {
    /// Frames extracted (input of filter).
    pub extracted: i64,
    /// Frames kept by filter.
    pub filtered: i64,
    /// Frames kept by dedup.
    pub deduped: i64,
    pub detections: i64,
    /// Frames the filter could not decode (never kept).
    #[serde(default)]
    pub unreadable: i64,
    /// Filter-kept frames whose current dedup state is `kept` (rows of `/frames`).
    #[serde(default)]
    pub dedup_kept: i64,
    /// Filter-kept frames whose current dedup state is `duplicate`.
    #[serde(default)]
    pub dedup_duplicate: i64,
}

/// A filter-kept frame's dedup state; absent until its video's dedup ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FrameState {
    Kept,
    Duplicate,
}

impl FrameState {
    pub fn as_str(self) -> &'static str {
        match self {
            FrameState::Kept => "kept",
            FrameState::Duplicate => "duplicate",
        }
    }

    pub fn parse(s: &str) -> Option<FrameState> {
        [FrameState::Kept, FrameState::Duplicate].into_iter().find(|x| x.as_str() == s)
    }
}

/// A frame the filter kept (`GET /v1/projects/{name}/frames`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FrameView {
    pub video_id: i64,
    pub frame_index: i64,
    pub pts_s: f64,
    /// The frame file, relative to the data root.
    pub path: String,
    pub width: i64,
    pub height: i64,
    /// Index into the filter's `positive_prompts`.
    pub best_prompt: i64,
    pub pos_max: f64,
    pub neg_max: Option<f64>,
    pub junk_max: Option<f64>,
    pub dedup_state: Option<FrameState>,
    /// For a duplicate: the kept frame it duplicates.
    pub duplicate_of: Option<crate::FrameRef>,
    pub similarity: Option<f64>,
}

/// A page of frames, ordered by (video_id, frame_index).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FramePage {
    pub items: Vec<FrameView>,
    /// `<video_id>:<frame_index>` of the last item; pass as `after` for the next page.
    /// Absent on the last page.
    pub next_cursor: Option<String>,
}

/// Where a rerun starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RerunFrom {
    Filter,
    Dedup,
}

/// `POST /v1/projects/{name}/rerun`: run a stage again (after a config change) for every
/// project-video that has finished it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RerunRequest {
    pub from: RerunFrom,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RerunResponse {
    /// Project-videos sent back, each with a new task.
    pub requeued: i64,
}
