//! The task and lease protocol: stages, task states, and the bodies of lease, heartbeat,
//! complete, fail and release. Every write to a leased task carries its `lease_token`
//! (the fencing token); a stale token is refused with 409 and changes nothing.
//!
//! Agent request bodies ignore unknown fields (the control plane logs them): during a rolling
//! upgrade a newer agent may send fields this control plane does not know yet, and the
//! protocol promises that additive changes keep working. User-facing bodies (projects,
//! videos) still refuse unknown fields, so a typo is an error there.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{DedupConfig, DetectConfig, ExtractConfig, FilterConfig};

/// A pipeline stage. download and extract are per video; filter, dedup and detect are per
/// (project, video).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Download,
    Extract,
    Filter,
    Dedup,
    Detect,
}

impl Stage {
    pub const ALL: [Stage; 5] = [Stage::Download, Stage::Extract, Stage::Filter, Stage::Dedup, Stage::Detect];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Download => "download",
            Stage::Extract => "extract",
            Stage::Filter => "filter",
            Stage::Dedup => "dedup",
            Stage::Detect => "detect",
        }
    }

    pub fn parse(s: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether the stage works on a (project, video) pair rather than a video.
    pub fn is_project_stage(self) -> bool {
        matches!(self, Stage::Filter | Stage::Dedup | Stage::Detect)
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `queued → leased → succeeded`; `leased → queued` on a retryable failure, an expired lease
/// or a release; `dead` after a fatal failure or the last attempt; `cancelled` by a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Queued,
    Leased,
    Succeeded,
    Dead,
    Cancelled,
}

impl TaskState {
    pub const ALL: [TaskState; 5] =
        [TaskState::Queued, TaskState::Leased, TaskState::Succeeded, TaskState::Dead, TaskState::Cancelled];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Leased => "leased",
            TaskState::Succeeded => "succeeded",
            TaskState::Dead => "dead",
            TaskState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<TaskState> {
        TaskState::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// `POST /v1/leases`: ask for up to `max_tasks` tasks of `stages`, waiting up to `wait_ms`
/// for one to become available (long poll).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LeaseRequest {
    pub agent_id: i64,
    /// At least one; each registered by the agent.
    #[schema(min_items = 1)]
    pub stages: Vec<Stage>,
    /// 1 to 64.
    #[serde(default = "one")]
    #[schema(minimum = 1, maximum = 64)]
    pub max_tasks: u32,
    /// 0 returns at once; capped by the control plane's `max_lease_wait_ms`. At most
    /// 120000 (the longest wait any control plane can be configured for).
    #[serde(default)]
    #[schema(maximum = 120000)]
    pub wait_ms: u64,
}

fn one() -> u32 {
    1
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// A frame the filter kept, as reported in its completion (relative path inside the
/// extraction's frames, scores of the best prompts).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FilterFrame {
    /// The frame's index in the extraction manifest (1-based there); unique per result.
    #[schema(minimum = 0)]
    pub frame_index: i64,
    pub pts_s: f64,
    /// The frame file, relative to the data root.
    #[schema(min_length = 1, max_length = 1024, pattern = "^[^\\u0000]*$")]
    pub path: String,
    #[schema(minimum = 0)]
    pub width: i64,
    #[schema(minimum = 0)]
    pub height: i64,
    /// Index into the filter config's `positive_prompts` of the best-scoring prompt.
    #[schema(minimum = 0)]
    pub best_prompt: i64,
    /// Best positive score.
    pub pos_max: f32,
    /// Best negative score; absent without negative prompts.
    #[serde(default)]
    pub neg_max: Option<f32>,
    /// Best junk score; absent without junk prompts.
    #[serde(default)]
    pub junk_max: Option<f32>,
}

/// A frame of the project: one video's frame index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FrameRef {
    pub video_id: i64,
    #[schema(minimum = 0)]
    pub frame_index: i64,
}

/// Dedup's decision for one of the video's filter-kept frames.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DedupDecision {
    #[schema(minimum = 0)]
    pub frame_index: i64,
    /// False: a duplicate of `duplicate_of`.
    pub kept: bool,
    /// For a duplicate: its most similar kept frame (of an earlier video of the kept set, or
    /// an earlier kept frame of this video).
    #[serde(default)]
    pub duplicate_of: Option<FrameRef>,
    /// For a duplicate: the cosine similarity to `duplicate_of`, in [-1, 1].
    #[serde(default)]
    #[schema(minimum = -1, maximum = 1)]
    pub similarity: Option<f32>,
}

/// An entry of a project's kept set (`GET /v1/projects/{name}/kept`), in `kept_seq` order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct KeptEntry {
    pub kept_seq: i64,
    pub video_id: i64,
    /// The accepted dedup output of that project-video (embeddings of its kept frames).
    pub dedup_dir: String,
    /// The model package digest that dedup ran with.
    pub model_digest: String,
}

/// The longest `wait_ms` a lease request may name (and the longest wait a control plane may
/// be configured for).
pub const MAX_LEASE_WAIT_MS: u64 = 120_000;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LeaseResponse {
    pub tasks: Vec<LeasedTask>,
}

/// A task handed to an agent, with everything it needs to run it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LeasedTask {
    pub task_id: i64,
    pub stage: Stage,
    /// Fencing token: present it on every heartbeat, complete, fail and release.
    pub lease_token: i64,
    /// 1-based attempt number.
    pub attempt: u32,
    pub max_attempts: u32,
    /// The lease ends this long after it was granted unless a heartbeat extends it.
    pub lease_ttl_ms: u64,
    /// Hard run-time limit of the attempt, whatever the heartbeats say.
    pub time_limit_ms: u64,
    /// The directory (relative to the data root) this attempt must write its outputs into.
    /// Output paths in the completion must lie inside it.
    pub attempt_dir: String,
    pub input: TaskInput,
}

/// Stage inputs. Paths are relative to the shared data root and come from what the control
/// plane recorded, never from an agent's local configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct TaskInput {
    pub video_id: i64,
    /// download: the source URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// download: `direct` (streamed over HTTP) or `platform` (yt-dlp).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_kind: Option<String>,
    /// extract: the downloaded file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub video_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extract: Option<ExtractConfig>,
    /// filter: the extracted frames and their manifest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frames_dir: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter: Option<FilterConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dedup: Option<DedupConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detect: Option<DetectConfig>,
    /// dedup: this video's filter output.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filtered_dir: Option<String>,
    /// dedup: the kept set this dedup must compare against is every project-video with
    /// `kept_seq <= kept_seq_upto` (0: none), in `kept_seq` order — replaying that order
    /// reproduces the project's result. The agent pages what its cache lacks from
    /// `GET /v1/projects/{name}/kept?after_seq=`. (Replaces protocol 1's `prior_kept_dirs`,
    /// which grew with the project.)
    #[serde(default, skip_serializing_if = "is_zero")]
    #[schema(minimum = 0)]
    pub kept_seq_upto: i64,
    /// detect: this video's dedup output.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deduped_dir: Option<String>,
}

/// `POST /v1/tasks/{id}/heartbeat`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HeartbeatRequest {
    pub lease_token: i64,
    /// Free-form progress (bytes, frames, percent), shown on the task.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub progress: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HeartbeatResponse {
    /// True when a user cancelled the task: stop working on it and do not complete it.
    pub cancelled: bool,
    /// Remaining lease after this heartbeat (0 when cancelled).
    pub lease_expires_in_ms: u64,
}

/// A stage's result, reported on completion. The variant must match the task's stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
/// Unknown fields are ignored, not refused: a newer agent may report more than this control
/// plane knows (rolling upgrades keep the protocol additive), and refusing its result would
/// make the task dead.
#[serde(tag = "stage", rename_all = "snake_case")]
pub enum StageResult {
    Download {
        /// The downloaded file, inside the attempt directory.
        #[schema(pattern = "^[^\\u0000]*$")]
        file_path: String,
        /// Lowercase hex SHA-256 of the file.
        #[schema(pattern = "^[0-9a-f]{64}$")]
        sha256: String,
        #[schema(minimum = 0)]
        size_bytes: i64,
        #[schema(minimum = 0)]
        duration_s: Option<f64>,
        #[schema(minimum = 0)]
        fps: Option<f64>,
        #[schema(minimum = 0)]
        width: Option<i64>,
        #[schema(minimum = 0)]
        height: Option<i64>,
        #[schema(max_length = 64, pattern = "^[^\\u0000]*$")]
        codec: Option<String>,
        /// The video stream's start time, seconds (ffprobe).
        #[serde(default)]
        start_time_s: Option<f64>,
        /// Frames in the video stream as the container declares them; absent when unknown.
        #[serde(default)]
        #[schema(minimum = 0)]
        stream_frames: Option<i64>,
        /// The duration the container claims (ffprobe's format duration), seconds, when it
        /// differs from the stream's: `duration_s` is the video stream's real duration.
        #[serde(default)]
        #[schema(minimum = 0)]
        container_duration_s: Option<f64>,
    },
    Extract {
        #[schema(pattern = "^[^\\u0000]*$")]
        frames_dir: String,
        #[schema(pattern = "^[^\\u0000]*$")]
        manifest_path: String,
        /// At least 1: a zero-frame extraction is a failure, not a result.
        #[schema(minimum = 1)]
        frame_count: i64,
    },
    Filter {
        #[schema(pattern = "^[^\\u0000]*$")]
        output_dir: String,
        #[schema(minimum = 0)]
        frames_in: i64,
        /// Equals the number of `frames`; `frames_kept + frames_unreadable <= frames_in`.
        #[schema(minimum = 0)]
        frames_kept: i64,
        /// The kept frames only (dropped ones live in the attempt's `scores.npy`); frame
        /// indices unique.
        #[serde(default)]
        frames: Vec<FilterFrame>,
        /// Frames that could not be decoded (never kept).
        #[serde(default)]
        #[schema(minimum = 0)]
        frames_unreadable: i64,
        /// Digest of the filter config and model package the filter ran with.
        #[serde(default)]
        #[schema(max_length = 128, pattern = "^[^\\u0000]*$")]
        config_digest: String,
    },
    Dedup {
        #[schema(pattern = "^[^\\u0000]*$")]
        output_dir: String,
        /// The video's filter-kept frames (= the number of `decisions`).
        #[schema(minimum = 0)]
        frames_in: i64,
        /// The decisions with `kept: true`.
        #[schema(minimum = 0)]
        frames_kept: i64,
        /// One per filter-kept frame of the video, exactly.
        #[serde(default)]
        decisions: Vec<DedupDecision>,
        /// Digest of the embedder package; every kept-set entry must share it.
        #[serde(default)]
        #[schema(max_length = 128, pattern = "^[^\\u0000]*$")]
        model_digest: String,
    },
    Detect {
        #[schema(pattern = "^[^\\u0000]*$")]
        output_dir: String,
        #[schema(minimum = 0)]
        frames_in: i64,
        #[schema(minimum = 0)]
        detections: i64,
    },
}

impl StageResult {
    /// Whether a string of the result contains U+0000 (refused: see [`crate::NO_NUL_PATTERN`]).
    pub fn has_nul(&self) -> bool {
        let nul = |s: &str| s.contains('\0');
        match self {
            StageResult::Download { file_path, sha256, codec, .. } => {
                nul(file_path) || nul(sha256) || codec.as_deref().is_some_and(nul)
            }
            StageResult::Extract { frames_dir, manifest_path, .. } => nul(frames_dir) || nul(manifest_path),
            StageResult::Filter { output_dir, frames, config_digest, .. } => {
                nul(output_dir) || nul(config_digest) || frames.iter().any(|f| nul(&f.path))
            }
            StageResult::Dedup { output_dir, model_digest, .. } => nul(output_dir) || nul(model_digest),
            StageResult::Detect { output_dir, .. } => nul(output_dir),
        }
    }

    pub fn stage(&self) -> Stage {
        match self {
            StageResult::Download { .. } => Stage::Download,
            StageResult::Extract { .. } => Stage::Extract,
            StageResult::Filter { .. } => Stage::Filter,
            StageResult::Dedup { .. } => Stage::Dedup,
            StageResult::Detect { .. } => Stage::Detect,
        }
    }
}

/// `POST /v1/tasks/{id}/complete`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CompleteRequest {
    pub lease_token: i64,
    pub result: StageResult,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CompleteResponse {
    pub task_id: i64,
    /// True when this completion had already been accepted (a retried request).
    pub duplicate: bool,
}

/// `POST /v1/tasks/complete`: several completions in one round trip (at most 64).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchCompleteRequest {
    #[schema(min_items = 1, max_items = 64)]
    pub completions: Vec<BatchCompletion>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchCompletion {
    pub task_id: i64,
    pub lease_token: i64,
    pub result: StageResult,
}

/// One outcome per completion, in request order; each is accepted or refused on its own.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchCompleteResponse {
    pub results: Vec<BatchCompleteOutcome>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchCompleteOutcome {
    pub task_id: i64,
    /// HTTP status the single-task call would have returned (200, 409, 422, 404).
    pub status: u16,
    pub duplicate: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<crate::ErrorDetail>,
}

/// `POST /v1/tasks/{id}/fail`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FailRequest {
    pub lease_token: i64,
    #[schema(schema_with = crate::schema::failure_message)]
    pub error: String,
    /// Retryable failures are requeued with backoff until max_attempts; fatal ones are dead.
    pub retryable: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FailResponse {
    /// `queued` (will be retried) or `dead`.
    pub state: TaskState,
    /// When queued: the earliest time it may run again (epoch ms, database clock).
    pub run_after_ms: Option<i64>,
}

/// `POST /v1/tasks/{id}/release`: give a task back on shutdown; the attempt is not counted.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReleaseRequest {
    pub lease_token: i64,
}

/// A task as users see it (video detail, dead-task list).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TaskView {
    pub id: i64,
    pub stage: Stage,
    pub state: TaskState,
    pub video_id: i64,
    pub project: Option<String>,
    /// Extract tasks: the extraction (content × settings) they produce.
    #[serde(default)]
    pub extraction_id: Option<i64>,
    /// The capability an agent must advertise to lease it: `model:<name>` for filter, dedup
    /// and detect (the project's model for the stage), `yt-dlp` for a platform download.
    #[serde(default)]
    pub requires: Option<String>,
    pub attempts: u32,
    pub max_attempts: u32,
    pub priority: i64,
    pub run_after_ms: i64,
    pub leased_by: Option<i64>,
    pub lease_expires_at_ms: Option<i64>,
    #[schema(value_type = Option<Object>)]
    pub progress: Option<serde_json::Value>,
    pub last_error: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub finished_at_ms: Option<i64>,
}
