//! The project stages. Subject: the project-video, `PENDING → FILTERING → FILTERED |
//! FILTERED_EMPTY → DEDUPING → DEDUPED → DETECTING → COMPLETE` (0 frames kept by dedup ends
//! at `COMPLETE`). Filter reads the frames of the project-video's own extraction; dedup runs
//! one at a time per project (concurrency key) against the project's kept set, recorded in
//! order (`kept_seq`); detect reads the dedup output.

use std::collections::HashMap;

use dataminer_wire::{ProjectConfig, Stage, StageResult, TaskInput};
use sqlx::Row;

use super::inputs::Inputs;
use super::{enqueue_many, lock_owners, nonneg, path_ok, values_rows, Effects, LockMode, NewTask, TaskSubject, Tx};
use crate::store::frames;
use crate::store::machine::{self, Event, Subject};
use crate::store::{placeholders, Result, Store, StoreError};

/// The checks a result passes on its own (the database-aware ones run in the completing
/// transaction: [`crate::store::frames::validate_in_tx`]).
pub(crate) fn validate(t: &TaskSubject, dir: &str, r: &StageResult) -> Result<()> {
    match r {
        StageResult::Filter { output_dir, frames_in, frames_kept, frames, frames_unreadable, config_digest } => {
            counts(dir, output_dir, *frames_in, *frames_kept)?;
            frames::check_filter(*frames_in, *frames_kept, frames, *frames_unreadable, config_digest)?;
        }
        StageResult::Dedup { output_dir, frames_in, frames_kept, decisions, model_digest } => {
            counts(dir, output_dir, *frames_in, *frames_kept)?;
            frames::check_dedup(t.video_id, *frames_in, *frames_kept, decisions, model_digest)?;
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

fn counts(dir: &str, output_dir: &str, frames_in: i64, frames_kept: i64) -> Result<()> {
    path_ok("output_dir", output_dir, dir)?;
    nonneg("frames_in", frames_in)?;
    nonneg("frames_kept", frames_kept)?;
    if frames_kept > frames_in {
        return Err(StoreError::invalid("invalid_result", "frames_kept cannot exceed frames_in"));
    }
    Ok(())
}

/// The configurations of the projects `ids`, by id.
pub(crate) async fn configs(tx: &mut Tx, ids: &[i64]) -> Result<HashMap<i64, ProjectConfig>> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let mut out = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(256) {
        let sql = format!("SELECT id, config FROM projects WHERE id IN ({})", placeholders(1, chunk.len()));
        let mut q = sqlx::query(&sql);
        for id in chunk {
            q = q.bind(*id);
        }
        for r in q.fetch_all(&mut **tx).await? {
            let config: ProjectConfig = serde_json::from_str(&r.try_get::<String, _>("config")?)
                .map_err(|e| StoreError::Corrupt(format!("project config: {e}")))?;
            out.insert(r.try_get("id")?, config);
        }
    }
    Ok(out)
}

/// Brings the `requires` of queued project-stage tasks up to date with their project's
/// model for the stage (`model:<name>`). A config update rewrites the queued tasks only, so
/// a task that was leased meanwhile comes back (requeued, released, or retried by a user)
/// still requiring the model it was leased for; this runs where it comes back, in the same
/// transaction, so it only ever reaches an agent holding the model its next lease names.
pub(crate) async fn refresh_requires(tx: &mut Tx, tasks: &[&TaskSubject]) -> Result<()> {
    let tasks: Vec<&TaskSubject> =
        tasks.iter().copied().filter(|t| t.stage.is_project_stage() && t.project_id.is_some()).collect();
    if tasks.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = tasks.iter().filter_map(|t| t.project_id).collect();
    let configs = configs(tx, &ids).await?;
    for t in tasks {
        let Some(requires) = t.project_id.and_then(|p| configs.get(&p)).and_then(|c| c.requires(t.stage)) else {
            continue;
        };
        // Written only when it differs (no new row version for nothing).
        sqlx::query(
            "UPDATE tasks SET requires = $1 WHERE id = $2 AND state = 'queued' \
             AND (requires IS NULL OR requires <> $1)",
        )
        .bind(requires)
        .bind(t.id)
        .execute(&mut **tx)
        .await?;
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
            input.kept_seq_upto = inputs.kept_upto.get(&t.project_id.unwrap_or(0)).copied().unwrap_or(0);
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
         frames_in = v.column3, filter_dir = v.column4, frames_filtered = v.column5, frames_unreadable = v.column6, \
         filter_digest = v.column7, updated_at = $1 \
         FROM (VALUES {}) AS v WHERE project_videos.project_id = v.column1 AND project_videos.video_id = v.column2 \
         AND {guard} RETURNING project_videos.project_id, project_videos.video_id, project_videos.frames_filtered",
        values_rows(2, batch.len(), 7)
    );
    let mut q = sqlx::query(&sql).bind(now);
    for (t, r) in batch {
        if let StageResult::Filter { output_dir, frames_in, frames_kept, frames_unreadable, config_digest, .. } = r {
            q = q
                .bind(t.project_id.unwrap_or(0))
                .bind(t.video_id)
                .bind(*frames_in)
                .bind(output_dir.as_str())
                .bind(*frames_kept)
                .bind(*frames_unreadable)
                .bind(config_digest.as_str());
        }
    }
    let rows = q.fetch_all(&mut **tx).await?;
    // Only the project-videos the guard moved get rows (a cancelled one keeps none).
    let mut replaced = Vec::with_capacity(rows.len());
    for r in &rows {
        let key: (i64, i64) = (r.try_get("project_id")?, r.try_get("video_id")?);
        for (t, res) in batch {
            if let StageResult::Filter { frames, .. } = res {
                if (t.project_id.unwrap_or(0), t.video_id) == key {
                    replaced.push((key.0, key.1, frames.as_slice()));
                }
            }
        }
    }
    frames::replace_filter_rows(tx, &replaced).await?;
    enqueue_successors(store, tx, &rows, "frames_filtered", batch, Stage::Dedup, now, fx).await
}

/// Enqueues `next` for the project-videos an UPDATE … RETURNING moved whose `kept_col` is
/// above zero (a guarded UPDATE returns nothing for a cancelled one: no successor).
#[allow(clippy::too_many_arguments)]
async fn enqueue_successors(
    store: &Store,
    tx: &mut Tx,
    rows: &[sqlx::any::AnyRow],
    kept_col: &str,
    batch: &[(&TaskSubject, &StageResult)],
    next: Stage,
    now: i64,
    fx: &mut Effects,
) -> Result<()> {
    let mut tasks = Vec::new();
    for r in rows {
        let kept: Option<i64> = r.try_get(kept_col)?;
        let key: (i64, i64) = (r.try_get("project_id")?, r.try_get("video_id")?);
        if kept.unwrap_or(0) > 0 {
            if let Some((t, _)) = batch.iter().find(|(t, _)| (t.project_id.unwrap_or(0), t.video_id) == key) {
                tasks.push(NewTask::after(t, next));
            }
        }
    }
    if !tasks.is_empty() {
        enqueue_many(store, tx, &tasks, now).await?;
        fx.wake(next);
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
             dedup_dir = v.column3, frames_deduped = v.column4, dedup_digest = v.column5, updated_at = $1, \
             kept_seq = CASE WHEN v.column4 > 0 THEN (SELECT COALESCE(MAX(k.kept_seq), 0) + 1 FROM project_videos k \
                 WHERE k.project_id = v.column1) ELSE NULL END \
             FROM (VALUES {}) AS v WHERE project_videos.project_id = v.column1 AND project_videos.video_id = v.column2 \
             AND {guard} RETURNING project_videos.project_id, project_videos.video_id, project_videos.frames_deduped",
            values_rows(2, round.len(), 5)
        );
        let mut q = sqlx::query(&sql).bind(now);
        for (t, r) in &round {
            if let StageResult::Dedup { output_dir, frames_kept, model_digest, .. } = r {
                q = q
                    .bind(t.project_id.unwrap_or(0))
                    .bind(t.video_id)
                    .bind(output_dir.as_str())
                    .bind(*frames_kept)
                    .bind(model_digest.as_str());
            }
        }
        let rows = q.fetch_all(&mut **tx).await?;
        for r in &rows {
            let key: (i64, i64) = (r.try_get("project_id")?, r.try_get("video_id")?);
            for (t, res) in &round {
                if let StageResult::Dedup { decisions, .. } = res {
                    if (t.project_id.unwrap_or(0), t.video_id) == key {
                        frames::record_decisions(tx, key.0, key.1, decisions).await?;
                    }
                }
            }
        }
        enqueue_successors(store, tx, &rows, "frames_deduped", &round, Stage::Detect, now, fx).await?;
    }
    Ok(())
}

pub(crate) async fn apply_detect(tx: &mut Tx, batch: &[(&TaskSubject, &StageResult)], now: i64) -> Result<()> {
    let guard = machine::guard("project_videos.state", Subject::ProjectVideo, Some(Stage::Detect), Event::Complete);
    let sql = format!(
        "UPDATE project_videos SET state = 'COMPLETE', detections = v.column3, detect_dir = v.column4, updated_at = $1 \
         FROM (VALUES {}) AS v WHERE project_videos.project_id = v.column1 AND project_videos.video_id = v.column2 \
         AND {guard}",
        values_rows(2, batch.len(), 4)
    );
    let mut q = sqlx::query(&sql).bind(now);
    for (t, r) in batch {
        if let StageResult::Detect { output_dir, detections, .. } = r {
            q = q.bind(t.project_id.unwrap_or(0)).bind(t.video_id).bind(*detections).bind(output_dir.as_str());
        }
    }
    q.execute(&mut **tx).await?;
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

/// A rerun of project `project_id` from `stage` (filter or dedup); the caller has locked the
/// project `FOR UPDATE` and checked it is not cancelled. Returns how many project-videos got
/// a new task. See `Store::rerun_project`.
pub(crate) async fn rerun(store: &Store, tx: &mut Tx, project_id: i64, stage: Stage, now: i64) -> Result<i64> {
    let busy: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM tasks WHERE project_id = $1 AND state = 'leased' \
         AND stage IN ('filter', 'dedup', 'detect')",
    )
    .bind(project_id)
    .fetch_one(&mut **tx)
    .await?;
    if busy > 0 {
        return Err(StoreError::conflict(
            "project_busy",
            format!("{busy} filter/dedup/detect tasks of the project are running; rerun once they finish"),
        ));
    }
    let x = machine::transition(Subject::ProjectVideo, Some(stage), Event::Rerun);
    let guard = machine::in_list("pv.state", x.from);
    // From dedup: only videos the filter kept frames of; in the old kept-set order first,
    // then those that never entered it (by video id), so replaying reproduces the order.
    let with_frames = if stage == Stage::Dedup { " AND pv.frames_filtered > 0" } else { "" };
    let sql = format!(
        "SELECT pv.video_id, v.priority FROM project_videos pv JOIN videos v ON v.id = pv.video_id \
         WHERE pv.project_id = $1 AND {guard}{with_frames} \
         ORDER BY CASE WHEN pv.kept_seq IS NULL THEN 1 ELSE 0 END, pv.kept_seq, pv.video_id"
    );
    let rows = sqlx::query(&sql).bind(project_id).fetch_all(&mut **tx).await?;
    let mut videos = Vec::with_capacity(rows.len());
    let mut priority = i64::MIN;
    for r in &rows {
        videos.push(r.try_get::<i64, _>("video_id")?);
        priority = priority.max(r.try_get::<i64, _>("priority")?);
    }
    if videos.is_empty() {
        return Ok(0);
    }
    let stale = match stage {
        Stage::Filter => "'filter', 'dedup', 'detect'",
        _ => "'dedup', 'detect'",
    };
    let reset = match stage {
        Stage::Filter => {
            "frames_in = NULL, frames_filtered = NULL, frames_unreadable = NULL, filter_dir = NULL, \
             filter_digest = NULL, "
        }
        _ => "",
    };
    for chunk in videos.chunks(256) {
        let list = placeholders(2, chunk.len());
        // Queued successors computed from the old results never ran: they are withdrawn, not
        // cancelled, so no retry can bring them back behind the rerun's tasks.
        let withdraw = format!(
            "DELETE FROM tasks WHERE project_id = $1 AND state = 'queued' AND stage IN ({stale}) \
             AND video_id IN ({list})"
        );
        let mut q = sqlx::query(&withdraw).bind(project_id);
        for v in chunk {
            q = q.bind(*v);
        }
        q.execute(&mut **tx).await?;
        let guard = machine::in_list("state", x.from);
        let update = format!(
            "UPDATE project_videos SET state = '{}', {reset}frames_deduped = NULL, dedup_dir = NULL, \
             dedup_digest = NULL, kept_seq = NULL, detections = NULL, detect_dir = NULL, failed_stage = NULL, \
             error = NULL, updated_at = ${} WHERE project_id = $1 AND video_id IN ({list}) AND {guard}",
            x.to[0],
            chunk.len() + 2
        );
        let mut q = sqlx::query(&update).bind(project_id);
        for v in chunk {
            q = q.bind(*v);
        }
        q.bind(now).execute(&mut **tx).await?;
    }
    frames::clear_decisions(tx, project_id, &videos).await?;
    // One statement per task so ids follow the order (lease order is priority, then id), and
    // one priority for all, so no video of the old order overtakes another.
    let priority = if stage == Stage::Dedup { Some(priority) } else { None };
    for (v, r) in videos.iter().zip(&rows) {
        let task = NewTask {
            stage,
            video_id: *v,
            project_id: Some(project_id),
            extraction_id: None,
            priority: priority.map_or_else(|| r.try_get("priority"), Ok)?,
            requires: None,
        };
        enqueue_many(store, tx, std::slice::from_ref(&task), now).await?;
    }
    Ok(videos.len() as i64)
}
