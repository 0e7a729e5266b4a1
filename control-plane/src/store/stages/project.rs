//! The project stages. Subject: the project-video, `PENDING → FILTERING → FILTERED |
//! FILTERED_EMPTY → DEDUPING → DEDUPED → DETECTING → COMPLETE` (0 frames kept by dedup ends
//! at `COMPLETE`). Filter reads the frames of the project-video's own extraction; dedup runs
//! one at a time per project (concurrency key) against the project's kept set, recorded in
//! order (`kept_seq`); detect reads the dedup output.

use dataminer_wire::{Stage, StageResult, TaskInput};
use sqlx::Row;

use super::inputs::Inputs;
use super::{enqueue_many, lock_owners, nonneg, path_ok, values_rows, Effects, LockMode, NewTask, TaskSubject, Tx};
use crate::store::machine::{self, Event, Subject};
use crate::store::{placeholders, Result, Store, StoreError};

pub(crate) fn validate(dir: &str, r: &StageResult) -> Result<()> {
    match r {
        StageResult::Filter { output_dir, frames_in, frames_kept }
        | StageResult::Dedup { output_dir, frames_in, frames_kept } => {
            path_ok("output_dir", output_dir, dir)?;
            nonneg("frames_in", *frames_in)?;
            nonneg("frames_kept", *frames_kept)?;
            if frames_kept > frames_in {
                return Err(StoreError::invalid("invalid_result", "frames_kept cannot exceed frames_in"));
            }
        }
        StageResult::Detect { output_dir, frames_in, detections } => {
            path_ok("output_dir", output_dir, dir)?;
            nonneg("frames_in", *frames_in)?;
            nonneg("detections", *detections)?;
        }
        _ => return Err(StoreError::invalid("result_stage_mismatch", "not a project-stage result")),
    }
    Ok(())
}

/// The input of a filter, dedup or detect task, and the project name (for its attempt dir).
pub(crate) fn input(inputs: &mut Inputs, t: &TaskSubject) -> Result<(TaskInput, Option<String>)> {
    let (name, config) = t
        .project_id
        .and_then(|p| inputs.projects.get(&p))
        .ok_or_else(|| StoreError::Corrupt(format!("task {} has no project", t.id)))?;
    let pv = inputs.pvs.remove(&(t.project_id.unwrap_or(0), t.video_id)).unwrap_or_default();
    let mut input = TaskInput {
        video_id: t.video_id,
        project_id: t.project_id,
        project: Some(name.clone()),
        frames_dir: pv.frames_dir,
        manifest_path: pv.manifest_path,
        ..TaskInput::default()
    };
    match t.stage {
        Stage::Filter => input.filter = Some(config.filter.clone()),
        Stage::Dedup => {
            input.dedup = Some(config.dedup.clone());
            input.filtered_dir = pv.filter_dir;
            input.prior_kept_dirs = inputs.kept.get(&t.project_id.unwrap_or(0)).cloned().unwrap_or_default();
        }
        _ => {
            let mut detect = config.detect.clone();
            if detect.prompts.is_empty() {
                detect.prompts = config.filter.positive_prompts.clone();
            }
            input.detect = Some(detect);
            input.deduped_dir = pv.dedup_dir;
        }
    }
    Ok((input, Some(name.clone())))
}

/// Enqueues filter for every PENDING project-video (with `column` — `video_id` or
/// `extraction_id`, a literal — among `ids`) whose extraction is EXTRACTED, that has no live
/// filter task, in projects that are not cancelled. The projects are locked first, so a
/// concurrent project cancel either sees these tasks or is seen. Returns how many.
pub(crate) async fn enqueue_filters(store: &Store, tx: &mut Tx, column: &str, ids: &[i64], now: i64) -> Result<usize> {
    if ids.is_empty() {
        return Ok(0);
    }
    let list = placeholders(1, ids.len());
    let sql = format!("SELECT DISTINCT project_id FROM project_videos WHERE {column} IN ({list})");
    let mut q = sqlx::query_scalar::<_, i64>(&sql);
    for id in ids {
        q = q.bind(*id);
    }
    let projects = q.fetch_all(&mut **tx).await?;
    lock_owners(store, tx, "projects", &projects, LockMode::Share).await?;
    let sql = format!(
        "SELECT pv.project_id, pv.video_id, v.priority FROM project_videos pv \
         JOIN projects p ON p.id = pv.project_id JOIN videos v ON v.id = pv.video_id \
         JOIN extractions e ON e.id = pv.extraction_id \
         WHERE pv.{column} IN ({list}) AND pv.state = 'PENDING' AND e.state = 'EXTRACTED' AND p.cancelled = 0 \
         AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.stage = 'filter' AND t.project_id = pv.project_id \
             AND t.video_id = pv.video_id AND t.state IN ('queued', 'leased'))"
    );
    let mut q = sqlx::query(&sql);
    for id in ids {
        q = q.bind(*id);
    }
    let rows = q.fetch_all(&mut **tx).await?;
    let mut tasks = Vec::with_capacity(rows.len());
    for r in &rows {
        tasks.push(NewTask {
            stage: Stage::Filter,
            video_id: r.try_get("video_id")?,
            project_id: Some(r.try_get("project_id")?),
            extraction_id: None,
            priority: r.try_get("priority")?,
            requires: None,
        });
    }
    enqueue_many(store, tx, &tasks, now).await?;
    Ok(rows.len())
}

/// The (project, video) pairs an UPDATE … RETURNING moved.
fn moved_pairs(rows: &[sqlx::any::AnyRow]) -> Result<Vec<(i64, i64)>> {
    rows.iter().map(|r| Ok((r.try_get("project_id")?, r.try_get("video_id")?))).collect()
}

pub(crate) async fn apply_filter(
    store: &Store,
    tx: &mut Tx,
    batch: &[(&TaskSubject, &StageResult)],
    now: i64,
    fx: &mut Effects,
) -> Result<()> {
    let guard = machine::guard("project_videos.state", Subject::ProjectVideo, Some(Stage::Filter), Event::Complete);
    let sql = format!(
        "UPDATE project_videos SET state = CASE WHEN v.column5 = 0 THEN 'FILTERED_EMPTY' ELSE 'FILTERED' END, \
         frames_in = v.column3, filter_dir = v.column4, frames_filtered = v.column5, updated_at = $1 \
         FROM (VALUES {}) AS v WHERE project_videos.project_id = v.column1 AND project_videos.video_id = v.column2 \
         AND {guard} RETURNING project_videos.project_id, project_videos.video_id, project_videos.frames_filtered",
        values_rows(2, batch.len(), 5)
    );
    let mut q = sqlx::query(&sql).bind(now);
    for (t, r) in batch {
        if let StageResult::Filter { output_dir, frames_in, frames_kept } = r {
            q = q
                .bind(t.project_id.unwrap_or(0))
                .bind(t.video_id)
                .bind(*frames_in)
                .bind(output_dir.as_str())
                .bind(*frames_kept);
        }
    }
    let rows = q.fetch_all(&mut **tx).await?;
    let mut next = Vec::new();
    for r in &rows {
        let kept: Option<i64> = r.try_get("frames_filtered")?;
        let key: (i64, i64) = (r.try_get("project_id")?, r.try_get("video_id")?);
        if kept.unwrap_or(0) > 0 {
            if let Some((t, _)) = batch.iter().find(|(t, _)| (t.project_id.unwrap_or(0), t.video_id) == key) {
                next.push(NewTask::after(t, Stage::Dedup));
            }
        }
    }
    if !next.is_empty() {
        enqueue_many(store, tx, &next, now).await?;
        fx.wake(Stage::Dedup);
    }
    Ok(())
}

/// Dedup results of one project must get consecutive kept_seq values; the concurrency key
/// means a batch holds at most one per project, but it is split into rounds to be sure.
pub(crate) async fn apply_dedup(
    store: &Store,
    tx: &mut Tx,
    batch: &[(&TaskSubject, &StageResult)],
    now: i64,
    fx: &mut Effects,
) -> Result<()> {
    let guard = machine::guard("project_videos.state", Subject::ProjectVideo, Some(Stage::Dedup), Event::Complete);
    let mut rest: Vec<(&TaskSubject, &StageResult)> = batch.to_vec();
    while !rest.is_empty() {
        let mut round: Vec<(&TaskSubject, &StageResult)> = Vec::new();
        let mut later = Vec::new();
        for d in rest {
            if round.iter().any(|(t, _)| t.project_id == d.0.project_id) {
                later.push(d);
            } else {
                round.push(d);
            }
        }
        rest = later;
        let sql = format!(
            "UPDATE project_videos SET state = CASE WHEN v.column4 > 0 THEN 'DEDUPED' ELSE 'COMPLETE' END, \
             dedup_dir = v.column3, frames_deduped = v.column4, updated_at = $1, \
             kept_seq = CASE WHEN v.column4 > 0 THEN (SELECT COALESCE(MAX(k.kept_seq), 0) + 1 FROM project_videos k \
                 WHERE k.project_id = v.column1) ELSE NULL END \
             FROM (VALUES {}) AS v WHERE project_videos.project_id = v.column1 AND project_videos.video_id = v.column2 \
             AND {guard} RETURNING project_videos.project_id, project_videos.video_id, project_videos.frames_deduped",
            values_rows(2, round.len(), 4)
        );
        let mut q = sqlx::query(&sql).bind(now);
        for (t, r) in &round {
            if let StageResult::Dedup { output_dir, frames_kept, .. } = r {
                q = q.bind(t.project_id.unwrap_or(0)).bind(t.video_id).bind(output_dir.as_str()).bind(*frames_kept);
            }
        }
        let rows = q.fetch_all(&mut **tx).await?;
        let mut next = Vec::new();
        for r in &rows {
            let kept: Option<i64> = r.try_get("frames_deduped")?;
            let key: (i64, i64) = (r.try_get("project_id")?, r.try_get("video_id")?);
            if kept.unwrap_or(0) > 0 {
                if let Some((t, _)) = round.iter().find(|(t, _)| (t.project_id.unwrap_or(0), t.video_id) == key) {
                    next.push(NewTask::after(t, Stage::Detect));
                }
            }
        }
        if !next.is_empty() {
            enqueue_many(store, tx, &next, now).await?;
            fx.wake(Stage::Detect);
        }
    }
    Ok(())
}

pub(crate) async fn apply_detect(tx: &mut Tx, batch: &[(&TaskSubject, &StageResult)], now: i64) -> Result<()> {
    let guard = machine::guard("project_videos.state", Subject::ProjectVideo, Some(Stage::Detect), Event::Complete);
    let sql = format!(
        "UPDATE project_videos SET state = 'COMPLETE', detections = v.column3, detect_dir = v.column4, updated_at = $1 \
         FROM (VALUES {}) AS v WHERE project_videos.project_id = v.column1 AND project_videos.video_id = v.column2 \
         AND {guard} RETURNING project_videos.project_id, project_videos.video_id",
        values_rows(2, batch.len(), 4)
    );
    let mut q = sqlx::query(&sql).bind(now);
    for (t, r) in batch {
        if let StageResult::Detect { output_dir, detections, .. } = r {
            q = q.bind(t.project_id.unwrap_or(0)).bind(t.video_id).bind(*detections).bind(output_dir.as_str());
        }
    }
    let rows = q.fetch_all(&mut **tx).await?;
    moved_pairs(&rows)?;
    Ok(())
}

/// A project-stage task died: its project-video FAILED.
pub(crate) async fn fail(tx: &mut Tx, t: &TaskSubject, error: &str, now: i64) -> Result<()> {
    let guard = machine::guard("state", Subject::ProjectVideo, Some(t.stage), Event::Die);
    sqlx::query(&format!(
        "UPDATE project_videos SET state = 'FAILED', failed_stage = $1, error = $2, updated_at = $3 \
         WHERE project_id = $4 AND video_id = $5 AND {guard}"
    ))
    .bind(t.stage.as_str())
    .bind(error)
    .bind(now)
    .bind(t.project_id.unwrap_or(0))
    .bind(t.video_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// What project-videos waited on (their video's download, or their extraction) failed:
/// those still waiting fail with the cause. `column` is `video_id` or `extraction_id`.
pub(crate) async fn fail_waiting(
    tx: &mut Tx,
    column: &str,
    id: i64,
    stage: Stage,
    error: &str,
    now: i64,
) -> Result<()> {
    let guard = machine::guard("state", Subject::ProjectVideo, None, Event::UpstreamFailed);
    sqlx::query(&format!(
        "UPDATE project_videos SET state = 'FAILED', failed_stage = $1, error = $2, updated_at = $3 \
         WHERE {column} = $4 AND {guard}"
    ))
    .bind(stage.as_str())
    .bind(error)
    .bind(now)
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A user retried the project-video's own dead or cancelled task: back to that stage's
/// waiting state.
pub(crate) async fn reopen(tx: &mut Tx, t: &TaskSubject, now: i64) -> Result<Vec<Stage>> {
    let x = machine::transition(Subject::ProjectVideo, Some(t.stage), Event::Reopen);
    let guard = machine::in_list("state", x.from);
    sqlx::query(&format!(
        "UPDATE project_videos SET state = $1, failed_stage = NULL, error = NULL, updated_at = $2 \
         WHERE project_id = $3 AND video_id = $4 AND {guard}"
    ))
    .bind(x.to[0])
    .bind(now)
    .bind(t.project_id.unwrap_or(0))
    .bind(t.video_id)
    .execute(&mut **tx)
    .await?;
    Ok(vec![t.stage])
}

/// Project-videos that FAILED or were CANCELLED because what they wait on did (no
/// project-stage task of their own died or was cancelled) go back to PENDING, in projects
/// that are not cancelled. `column` is `video_id` or `extraction_id`.
pub(crate) async fn reopen_upstream(tx: &mut Tx, column: &str, id: i64, now: i64) -> Result<u64> {
    let guard = machine::guard("state", Subject::ProjectVideo, None, Event::Reopen);
    let sql = format!(
        "UPDATE project_videos SET state = 'PENDING', failed_stage = NULL, error = NULL, updated_at = $1 \
         WHERE {column} = $2 AND {guard} \
         AND (failed_stage IS NULL OR failed_stage IN ('download', 'extract')) \
         AND project_id IN (SELECT id FROM projects WHERE cancelled = 0) \
         AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.project_id = project_videos.project_id \
             AND t.video_id = project_videos.video_id AND t.state IN ('dead', 'cancelled'))"
    );
    Ok(sqlx::query(&sql).bind(now).bind(id).execute(&mut **tx).await?.rows_affected())
}
