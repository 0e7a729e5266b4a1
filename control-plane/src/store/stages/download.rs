//! The download stage. Subject: the video (`PENDING → DOWNLOADING → DOWNLOADED`). Its result
//! records the file and its stream facts; its successors are the extractions its projects
//! need (shared per content and settings, see `extract.rs`). A dead download fails the video
//! and the project-videos waiting on it.

use dataminer_wire::{Stage, StageResult, TaskInput};
use sqlx::Row;

use super::inputs::Inputs;
use super::{extract, nonneg, path_ok, project, values_rows, Effects, TaskSubject, Tx};
use crate::store::machine::{self, Event, Subject};
use crate::store::{Result, Store, StoreError};

const DL: Option<Stage> = Some(Stage::Download);

pub(crate) fn validate(dir: &str, r: &StageResult) -> Result<()> {
    let StageResult::Download {
        file_path,
        sha256,
        size_bytes,
        duration_s,
        fps,
        width,
        height,
        codec,
        start_time_s,
        stream_frames,
        container_duration_s,
    } = r
    else {
        return Err(StoreError::invalid("result_stage_mismatch", "not a download result"));
    };
    path_ok("file_path", file_path, dir)?;
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(StoreError::invalid("invalid_result", "sha256 must be 64 lowercase hex digits"));
    }
    nonneg("size_bytes", *size_bytes)?;
    for (f, v) in [("duration_s", duration_s), ("fps", fps), ("container_duration_s", container_duration_s)] {
        if v.is_some_and(|x| !x.is_finite() || x < 0.0) {
            return Err(StoreError::invalid("invalid_result", format!("{f} must be a non-negative number")));
        }
    }
    for (f, v) in [("width", width), ("height", height)] {
        if let Some(v) = v {
            nonneg(f, *v)?;
        }
    }
    if start_time_s.is_some_and(|x| !x.is_finite()) {
        return Err(StoreError::invalid("invalid_result", "start_time_s must be a finite number"));
    }
    if let Some(n) = stream_frames {
        nonneg("stream_frames", *n)?;
    }
    if codec.as_ref().is_some_and(|c| c.chars().count() > 64) {
        return Err(StoreError::invalid("invalid_result", "codec is longer than 64 characters"));
    }
    Ok(())
}

pub(crate) fn input(inputs: &Inputs, t: &TaskSubject) -> Result<TaskInput> {
    let v = inputs.videos.get(&t.video_id).ok_or_else(|| StoreError::Corrupt(format!("task {} has no video", t.id)))?;
    Ok(TaskInput {
        video_id: t.video_id,
        url: Some(v.url.clone()),
        source_kind: Some(v.source_kind.clone()),
        ..TaskInput::default()
    })
}

/// Records the downloads, then gives each video's project-videos their extractions.
pub(crate) async fn apply(
    store: &Store,
    tx: &mut Tx,
    batch: &[(&TaskSubject, &StageResult)],
    now: i64,
    fx: &mut Effects,
) -> Result<()> {
    let mut batch = batch.to_vec();
    batch.sort_by_key(|(t, _)| t.video_id);
    let guard = machine::guard("videos.state", Subject::Video, DL, Event::Complete);
    let to = machine::target(Subject::Video, DL, Event::Complete);
    let sql = format!(
        "UPDATE videos SET state = '{to}', sha256 = v.column2, size_bytes = v.column3, duration_s = v.column4, \
         fps = v.column5, width = v.column6, height = v.column7, codec = v.column8, file_path = v.column9, \
         start_time_s = v.column10, stream_frames = v.column11, container_duration_s = v.column12, updated_at = $1 \
         FROM (VALUES {}) AS v WHERE videos.id = v.column1 AND {guard} RETURNING videos.id",
        values_rows(2, batch.len(), 12)
    );
    let mut q = sqlx::query(&sql).bind(now);
    for (t, r) in &batch {
        if let StageResult::Download {
            file_path,
            sha256,
            size_bytes,
            duration_s,
            fps,
            width,
            height,
            codec,
            start_time_s,
            stream_frames,
            container_duration_s,
        } = r
        {
            q = q
                .bind(t.video_id)
                .bind(sha256.as_str())
                .bind(*size_bytes)
                .bind(*duration_s)
                .bind(*fps)
                .bind(*width)
                .bind(*height)
                .bind(codec.clone())
                .bind(file_path.as_str())
                .bind(*start_time_s)
                .bind(*stream_frames)
                .bind(*container_duration_s);
        }
    }
    let mut moved: Vec<i64> = Vec::new();
    for r in q.fetch_all(&mut **tx).await? {
        moved.push(r.try_get("id")?);
    }
    if moved.is_empty() {
        return Ok(());
    }
    // Say which earlier video has the same content (informational: extractions are shared
    // by sha256 whatever this says).
    let sql = format!(
        "UPDATE videos SET content_of = (SELECT MIN(o.id) FROM videos o WHERE o.sha256 = videos.sha256 \
         AND o.id < videos.id AND o.content_of IS NULL AND o.state = 'DOWNLOADED') \
         WHERE id IN ({})",
        crate::store::placeholders(1, moved.len())
    );
    let mut q = sqlx::query(&sql);
    for id in &moved {
        q = q.bind(*id);
    }
    q.execute(&mut **tx).await?;
    extract::attach(store, tx, &moved, now, fx).await
}

/// The download died: the video FAILED, and its project-videos that waited on it too.
pub(crate) async fn fail(_store: &Store, tx: &mut Tx, t: &TaskSubject, error: &str, now: i64) -> Result<()> {
    let guard = machine::guard("state", Subject::Video, DL, Event::Die);
    sqlx::query(&format!(
        "UPDATE videos SET state = 'FAILED', failed_stage = $1, error = $2, updated_at = $3 WHERE id = $4 AND {guard}"
    ))
    .bind(t.stage.as_str())
    .bind(error)
    .bind(now)
    .bind(t.video_id)
    .execute(&mut **tx)
    .await?;
    project::fail_waiting(tx, "video_id", t.video_id, t.stage, &format!("video failed at {}: {error}", t.stage), now)
        .await
}

/// A user retried the dead or cancelled download: the video waits for it again, with the
/// project-videos that failed only because of it.
pub(crate) async fn reopen(tx: &mut Tx, t: &TaskSubject, now: i64) -> Result<Vec<Stage>> {
    let guard = machine::guard("state", Subject::Video, None, Event::Reopen);
    sqlx::query(&format!(
        "UPDATE videos SET state = 'PENDING', failed_stage = NULL, error = NULL, updated_at = $1 WHERE id = $2 AND {guard}"
    ))
    .bind(now)
    .bind(t.video_id)
    .execute(&mut **tx)
    .await?;
    project::reopen_upstream(tx, "video_id", t.video_id, now).await?;
    Ok(vec![Stage::Download])
}
