//! Video submission and the video / project-video views users read.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{ExtractConfig, TaskView};

/// `POST /v1/videos`: submit URLs to one or more projects.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitVideosRequest {
    #[schema(schema_with = crate::schema::urls)]
    pub urls: Vec<String>,
    #[schema(schema_with = crate::schema::project_names)]
    pub projects: Vec<String>,
    /// Higher runs first; -1000 to 1000.
    #[serde(default)]
    #[schema(minimum = -1000, maximum = 1000)]
    pub priority: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SubmitVideosResponse {
    /// One entry per submitted URL, in request order.
    pub videos: Vec<SubmittedVideo>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SubmittedVideo {
    pub id: i64,
    /// The URL with credentials and signed query values redacted.
    pub url: String,
    /// False when the normalised URL was already known (it is never downloaded again).
    pub new: bool,
    pub state: VideoState,
}

/// A video's state is its download's: frames belong to extractions (one per content and
/// extract settings, shared by the project-videos with those settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum VideoState {
    Pending,
    Downloading,
    Downloaded,
    Failed,
    Cancelled,
}

impl VideoState {
    pub const ALL: [VideoState; 5] = [
        VideoState::Pending,
        VideoState::Downloading,
        VideoState::Downloaded,
        VideoState::Failed,
        VideoState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            VideoState::Pending => "PENDING",
            VideoState::Downloading => "DOWNLOADING",
            VideoState::Downloaded => "DOWNLOADED",
            VideoState::Failed => "FAILED",
            VideoState::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// The state of one extraction (content × extract settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ExtractionState {
    /// Its extract task waits in the queue.
    Pending,
    Extracting,
    Extracted,
    Failed,
    Cancelled,
}

impl ExtractionState {
    pub const ALL: [ExtractionState; 5] = [
        ExtractionState::Pending,
        ExtractionState::Extracting,
        ExtractionState::Extracted,
        ExtractionState::Failed,
        ExtractionState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ExtractionState::Pending => "PENDING",
            ExtractionState::Extracting => "EXTRACTING",
            ExtractionState::Extracted => "EXTRACTED",
            ExtractionState::Failed => "FAILED",
            ExtractionState::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// Frames of one content (sha256) extracted with one set of extract settings. Every
/// project-video whose project asked for those settings uses it; other settings get their
/// own extraction, never another project's frames.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExtractionView {
    pub id: i64,
    pub state: ExtractionState,
    /// The video whose downloaded file is extracted (identical content is extracted once).
    pub video_id: i64,
    pub sha256: String,
    /// The extract settings (as the project gave them when the video joined it).
    pub settings: ExtractConfig,
    pub frames_dir: Option<String>,
    pub manifest_path: Option<String>,
    pub frame_count: Option<i64>,
    pub error: Option<String>,
    pub updated_at_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ProjectVideoState {
    Pending,
    Filtering,
    Filtered,
    FilteredEmpty,
    Deduping,
    Deduped,
    Detecting,
    Complete,
    Failed,
    Cancelled,
}

impl ProjectVideoState {
    pub const ALL: [ProjectVideoState; 10] = [
        ProjectVideoState::Pending,
        ProjectVideoState::Filtering,
        ProjectVideoState::Filtered,
        ProjectVideoState::FilteredEmpty,
        ProjectVideoState::Deduping,
        ProjectVideoState::Deduped,
        ProjectVideoState::Detecting,
        ProjectVideoState::Complete,
        ProjectVideoState::Failed,
        ProjectVideoState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProjectVideoState::Pending => "PENDING",
            ProjectVideoState::Filtering => "FILTERING",
            ProjectVideoState::Filtered => "FILTERED",
            ProjectVideoState::FilteredEmpty => "FILTERED_EMPTY",
            ProjectVideoState::Deduping => "DEDUPING",
            ProjectVideoState::Deduped => "DEDUPED",
            ProjectVideoState::Detecting => "DETECTING",
            ProjectVideoState::Complete => "COMPLETE",
            ProjectVideoState::Failed => "FAILED",
            ProjectVideoState::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Nothing more will happen to a project-video in a terminal state (unless retried).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            ProjectVideoState::Complete
                | ProjectVideoState::FilteredEmpty
                | ProjectVideoState::Failed
                | ProjectVideoState::Cancelled
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VideoView {
    pub id: i64,
    /// Credentials and signed query values redacted.
    pub url: String,
    /// `direct` or `platform`.
    pub source_kind: String,
    /// Where the submission came from (`api`).
    pub origin: String,
    pub state: VideoState,
    pub failed_stage: Option<String>,
    pub error: Option<String>,
    pub priority: i64,
    pub sha256: Option<String>,
    pub size_bytes: Option<i64>,
    pub duration_s: Option<f64>,
    pub fps: Option<f64>,
    pub width: Option<i64>,
    pub height: Option<i64>,
    pub codec: Option<String>,
    /// The video stream's start time, seconds.
    pub start_time_s: Option<f64>,
    /// Frames the container declares for the video stream (absent when unknown).
    pub stream_frames: Option<i64>,
    /// The duration the container claims, seconds (may exceed `duration_s`, the video
    /// stream's real duration, for a broken or hostile file).
    #[serde(default)]
    pub container_duration_s: Option<f64>,
    pub file_path: Option<String>,
    /// Set when this video's content (same sha256) is another video's: that video's file is
    /// the one extracted, once per extract settings, for both.
    pub content_of: Option<i64>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// `GET /v1/videos/{id}`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VideoDetail {
    pub video: VideoView,
    /// Each project-video names the extraction it uses.
    pub projects: Vec<ProjectVideoView>,
    /// The extractions of this video's content that its projects use.
    pub extractions: Vec<ExtractionView>,
    /// Every task of the video and its project-videos, oldest first.
    pub tasks: Vec<TaskView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProjectVideoView {
    pub project: String,
    pub video_id: i64,
    pub state: ProjectVideoState,
    pub failed_stage: Option<String>,
    pub error: Option<String>,
    pub frames_in: Option<i64>,
    pub frames_filtered: Option<i64>,
    pub frames_deduped: Option<i64>,
    pub detections: Option<i64>,
    pub filter_dir: Option<String>,
    pub dedup_dir: Option<String>,
    pub detect_dir: Option<String>,
    /// Position at which this video entered the project's kept set.
    pub kept_seq: Option<i64>,
    /// The extraction whose frames this project-video uses (absent until the video's
    /// content is known, i.e. before its download completes).
    pub extraction: Option<ExtractionView>,
}
