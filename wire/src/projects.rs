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
}
