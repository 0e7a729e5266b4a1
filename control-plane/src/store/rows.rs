//! Reading rows back into wire views. Column lists live next to their decoders so a query
//! and the code that reads it cannot drift apart.

use dataminer_wire::{
    ExtractionState, ExtractionView, ProjectVideoState, ProjectVideoView, Stage, TaskState, TaskView, VideoState,
    VideoView,
};
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{Result, StoreError};
use crate::urls;

pub(crate) const VIDEO_COLS: &str = "v.id, v.url, v.source_kind, v.origin, v.state, v.failed_stage, v.error, \
    v.priority, v.sha256, v.size_bytes, v.duration_s, v.fps, v.width, v.height, v.codec, v.start_time_s, v.stream_frames, v.container_duration_s, v.file_path, \
    v.content_of, v.created_at, v.updated_at";

pub(crate) fn video(r: &AnyRow) -> Result<VideoView> {
    let state: String = r.try_get("state")?;
    let url: String = r.try_get("url")?;
    Ok(VideoView {
        id: r.try_get("id")?,
        url: urls::redact(&url),
        source_kind: r.try_get("source_kind")?,
        origin: r.try_get("origin")?,
        state: VideoState::parse(&state).ok_or_else(|| StoreError::Corrupt(format!("video state {state}")))?,
        failed_stage: r.try_get("failed_stage")?,
        error: r.try_get("error")?,
        priority: r.try_get("priority")?,
        sha256: r.try_get("sha256")?,
        size_bytes: r.try_get("size_bytes")?,
        duration_s: r.try_get("duration_s")?,
        fps: r.try_get("fps")?,
        width: r.try_get("width")?,
        height: r.try_get("height")?,
        codec: r.try_get("codec")?,
        start_time_s: r.try_get("start_time_s")?,
        stream_frames: r.try_get("stream_frames")?,
        container_duration_s: r.try_get("container_duration_s")?,
        file_path: r.try_get("file_path")?,
        content_of: r.try_get("content_of")?,
        created_at_ms: r.try_get("created_at")?,
        updated_at_ms: r.try_get("updated_at")?,
    })
}

/// Project-video columns, with its extraction's (`e.*`, from `PV_FROM`'s LEFT JOIN).
pub(crate) const PV_COLS: &str = "p.name AS project_name, pv.video_id, pv.state, pv.failed_stage, pv.error, \
    pv.frames_in, pv.frames_filtered, pv.frames_deduped, pv.detections, pv.filter_dir, pv.dedup_dir, \
    pv.detect_dir, pv.kept_seq, e.id AS e_id, e.state AS e_state, e.video_id AS e_video_id, e.sha256 AS e_sha256, \
    e.config AS e_config, e.frames_dir AS e_frames_dir, e.manifest_path AS e_manifest_path, \
    e.frame_count AS e_frame_count, e.error AS e_error, e.updated_at AS e_updated_at";

pub(crate) const PV_FROM: &str =
    "project_videos pv JOIN projects p ON p.id = pv.project_id LEFT JOIN extractions e ON e.id = pv.extraction_id";

/// Extraction columns under the `e_` aliases [`extraction`] reads.
pub(crate) const EXTRACTION_COLS: &str = "e.id AS e_id, e.state AS e_state, e.video_id AS e_video_id, \
    e.sha256 AS e_sha256, e.config AS e_config, e.frames_dir AS e_frames_dir, e.manifest_path AS e_manifest_path, \
    e.frame_count AS e_frame_count, e.error AS e_error, e.updated_at AS e_updated_at";

/// The extraction of a row selected with the `e_` columns, if it has one.
pub(crate) fn extraction(r: &AnyRow) -> Result<Option<ExtractionView>> {
    let Some(id) = r.try_get::<Option<i64>, _>("e_id")? else { return Ok(None) };
    let state: String = r.try_get("e_state")?;
    let config: String = r.try_get("e_config")?;
    Ok(Some(ExtractionView {
        id,
        state: ExtractionState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("extraction state {state}")))?,
        video_id: r.try_get("e_video_id")?,
        sha256: r.try_get("e_sha256")?,
        settings: serde_json::from_str(&config).map_err(|e| StoreError::Corrupt(format!("extraction config: {e}")))?,
        frames_dir: r.try_get("e_frames_dir")?,
        manifest_path: r.try_get("e_manifest_path")?,
        frame_count: r.try_get("e_frame_count")?,
        error: r.try_get("e_error")?,
        updated_at_ms: r.try_get("e_updated_at")?,
    }))
}

pub(crate) fn project_video(r: &AnyRow) -> Result<ProjectVideoView> {
    let state: String = r.try_get("state")?;
    Ok(ProjectVideoView {
        project: r.try_get("project_name")?,
        video_id: r.try_get("video_id")?,
        state: ProjectVideoState::parse(&state).ok_or_else(|| StoreError::Corrupt(format!("pv state {state}")))?,
        failed_stage: r.try_get("failed_stage")?,
        error: r.try_get("error")?,
        frames_in: r.try_get("frames_in")?,
        frames_filtered: r.try_get("frames_filtered")?,
        frames_deduped: r.try_get("frames_deduped")?,
        detections: r.try_get("detections")?,
        filter_dir: r.try_get("filter_dir")?,
        dedup_dir: r.try_get("dedup_dir")?,
        detect_dir: r.try_get("detect_dir")?,
        kept_seq: r.try_get("kept_seq")?,
        extraction: extraction(r)?,
    })
}

pub(crate) const TASK_COLS: &str =
    "t.id, t.stage, t.state, t.video_id, p.name AS project_name, t.extraction_id, t.requires, t.attempts, \
    t.max_attempts, t.priority, t.run_after, t.leased_by, t.lease_expires_at, t.progress, t.last_error, \
    t.created_at, t.updated_at, t.finished_at";

pub(crate) const TASK_FROM: &str = "tasks t LEFT JOIN projects p ON p.id = t.project_id";

pub(crate) fn task(r: &AnyRow) -> Result<TaskView> {
    let stage: String = r.try_get("stage")?;
    let state: String = r.try_get("state")?;
    let progress: Option<String> = r.try_get("progress")?;
    let attempts: i64 = r.try_get("attempts")?;
    let max_attempts: i64 = r.try_get("max_attempts")?;
    Ok(TaskView {
        id: r.try_get("id")?,
        stage: parse_stage(&stage)?,
        state: TaskState::parse(&state).ok_or_else(|| StoreError::Corrupt(format!("task state {state}")))?,
        video_id: r.try_get("video_id")?,
        project: r.try_get("project_name")?,
        extraction_id: r.try_get("extraction_id")?,
        requires: r.try_get("requires")?,
        attempts: u32::try_from(attempts).unwrap_or(0),
        max_attempts: u32::try_from(max_attempts).unwrap_or(0),
        priority: r.try_get("priority")?,
        run_after_ms: r.try_get("run_after")?,
        leased_by: r.try_get("leased_by")?,
        lease_expires_at_ms: r.try_get("lease_expires_at")?,
        progress: progress.and_then(|p| serde_json::from_str(&p).ok()),
        last_error: r.try_get("last_error")?,
        created_at_ms: r.try_get("created_at")?,
        updated_at_ms: r.try_get("updated_at")?,
        finished_at_ms: r.try_get("finished_at")?,
    })
}

pub(crate) fn parse_stage(s: &str) -> Result<Stage> {
    Stage::parse(s).ok_or_else(|| StoreError::Corrupt(format!("stage {s}")))
}
