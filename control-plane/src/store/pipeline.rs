//! The pipeline state machine: which state a task's subject (a video, or a project-video)
//! is in while the task waits, runs, fails; and which successors a completed stage enqueues.
//! Every function here runs inside the caller's transaction, so a completion and its
//! successors commit together or not at all.
//!
//! download → extract (per video) → filter → dedup → detect (per project-video):
//! video `PENDING → DOWNLOADING → DOWNLOADED → EXTRACTING → EXTRACTED`, project-video
//! `PENDING → FILTERING → FILTERED | FILTERED_EMPTY → DEDUPING → DEDUPED → DETECTING → COMPLETE`.

use dataminer_wire::{Stage, StageResult};
use sqlx::{Any, Row, Transaction};

use super::{placeholders, Result, Store};

type Tx = Transaction<'static, Any>;

/// (waiting, running) subject states of a stage.
pub(crate) fn subject_states(stage: Stage) -> (&'static str, &'static str) {
    match stage {
        Stage::Download => ("PENDING", "DOWNLOADING"),
        Stage::Extract => ("DOWNLOADED", "EXTRACTING"),
        Stage::Filter => ("PENDING", "FILTERING"),
        Stage::Dedup => ("FILTERED", "DEDUPING"),
        Stage::Detect => ("DEDUPED", "DETECTING"),
    }
}

/// The concurrency key of a new task: dedup tasks of one project run one at a time, which
/// keeps the project's kept set consistent without locks.
pub(crate) fn concurrency_key(stage: Stage, project_id: Option<i64>) -> Option<String> {
    match (stage, project_id) {
        (Stage::Dedup, Some(p)) => Some(format!("dedup:{p}")),
        _ => None,
    }
}

/// Moves the subjects of `stage` tasks from state `from` to `to` (only those still in
/// `from`, so a concurrent cancel is never overwritten).
pub(crate) async fn move_subjects(
    tx: &mut Tx,
    stage: Stage,
    subjects: &[(i64, Option<i64>)],
    from: &str,
    to: &str,
    now: i64,
) -> Result<()> {
    if subjects.is_empty() {
        return Ok(());
    }
    if stage.is_project_stage() {
        let pairs: Vec<String> = (0..subjects.len()).map(|i| format!("(${}, ${})", 4 + 2 * i, 5 + 2 * i)).collect();
        let sql = format!(
            "UPDATE project_videos SET state = $1, updated_at = $2 WHERE state = $3 \
             AND (project_id, video_id) IN (VALUES {})",
            pairs.join(", ")
        );
        let mut q = sqlx::query(&sql).bind(to).bind(now).bind(from);
        for (video, project) in subjects {
            q = q.bind(project.unwrap_or(0)).bind(*video);
        }
        q.execute(&mut **tx).await?;
    } else {
        let sql = format!(
            "UPDATE videos SET state = $1, updated_at = $2 WHERE state = $3 AND id IN ({})",
            placeholders(4, subjects.len())
        );
        let mut q = sqlx::query(&sql).bind(to).bind(now).bind(from);
        for (video, _) in subjects {
            q = q.bind(*video);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// A task about to be inserted.
#[derive(Debug, Clone)]
pub(crate) struct NewTask {
    pub stage: Stage,
    pub video_id: i64,
    pub project_id: Option<i64>,
    pub priority: i64,
    pub requires: Option<String>,
}

pub(crate) async fn enqueue(store: &Store, tx: &mut Tx, t: NewTask, now: i64) -> Result<i64> {
    let s = store.settings();
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO tasks (stage, video_id, project_id, state, max_attempts, priority, run_after, \
         concurrency_key, requires, time_limit_ms, created_at, updated_at) \
         VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7, $8, $9, $6, $6) RETURNING id",
    )
    .bind(t.stage.as_str())
    .bind(t.video_id)
    .bind(t.project_id)
    .bind(s.max_attempts)
    .bind(t.priority)
    .bind(now)
    .bind(concurrency_key(t.stage, t.project_id))
    .bind(t.requires)
    .bind(s.time_limit_ms.get(t.stage))
    .fetch_one(&mut **tx)
    .await?;
    Ok(id)
}

/// Enqueues filter for every PENDING project-video of these (extracted) videos that has no
/// live filter task, in projects that are not cancelled. Returns how many were enqueued.
pub(crate) async fn enqueue_filters(store: &Store, tx: &mut Tx, video_ids: &[i64], now: i64) -> Result<usize> {
    if video_ids.is_empty() {
        return Ok(0);
    }
    let sql = format!(
        "SELECT pv.project_id, pv.video_id, v.priority FROM project_videos pv \
         JOIN projects p ON p.id = pv.project_id JOIN videos v ON v.id = pv.video_id \
         WHERE pv.video_id IN ({}) AND pv.state = 'PENDING' AND p.cancelled = 0 \
         AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.stage = 'filter' AND t.project_id = pv.project_id \
             AND t.video_id = pv.video_id AND t.state IN ('queued', 'leased'))",
        placeholders(1, video_ids.len())
    );
    let mut q = sqlx::query(&sql);
    for v in video_ids {
        q = q.bind(*v);
    }
    let rows = q.fetch_all(&mut **tx).await?;
    for r in &rows {
        let project_id: i64 = r.try_get("project_id")?;
        let video_id: i64 = r.try_get("video_id")?;
        let priority: i64 = r.try_get("priority")?;
        enqueue(
            store,
            tx,
            NewTask { stage: Stage::Filter, video_id, project_id: Some(project_id), priority, requires: None },
            now,
        )
        .await?;
    }
    Ok(rows.len())
}

/// The facts of a task row the pipeline needs.
#[derive(Debug, Clone)]
pub(crate) struct TaskSubject {
    pub stage: Stage,
    pub video_id: i64,
    pub project_id: Option<i64>,
    pub priority: i64,
}

/// Records a stage's result on its subject and enqueues the successors. Returns the stages
/// that got new queued work (to wake their long-polls after commit).
pub(crate) async fn apply_result(
    store: &Store,
    tx: &mut Tx,
    t: &TaskSubject,
    result: &StageResult,
    now: i64,
) -> Result<Vec<Stage>> {
    let mut woken = Vec::new();
    match result {
        StageResult::Download { file_path, sha256, size_bytes, duration_s, fps, width, height, codec } => {
            sqlx::query(
                "UPDATE videos SET sha256 = $1, size_bytes = $2, duration_s = $3, fps = $4, width = $5, \
                 height = $6, codec = $7, file_path = $8, updated_at = $9 WHERE id = $10",
            )
            .bind(sha256)
            .bind(size_bytes)
            .bind(duration_s)
            .bind(fps)
            .bind(width)
            .bind(height)
            .bind(codec)
            .bind(file_path)
            .bind(now)
            .bind(t.video_id)
            .execute(&mut **tx)
            .await?;
            // Identical content under another URL: link to it so the content is extracted once.
            let canonical = sqlx::query(
                "SELECT id, state, frames_dir, manifest_path, frame_count FROM videos \
                 WHERE sha256 = $1 AND id <> $2 AND content_of IS NULL AND state NOT IN ('FAILED', 'CANCELLED') \
                 ORDER BY id LIMIT 1",
            )
            .bind(sha256)
            .bind(t.video_id)
            .fetch_optional(&mut **tx)
            .await?;
            match canonical {
                Some(c) => {
                    let cid: i64 = c.try_get("id")?;
                    let cstate: String = c.try_get("state")?;
                    if cstate == "EXTRACTED" {
                        let frames_dir: Option<String> = c.try_get("frames_dir")?;
                        let manifest: Option<String> = c.try_get("manifest_path")?;
                        let count: Option<i64> = c.try_get("frame_count")?;
                        sqlx::query(
                            "UPDATE videos SET content_of = $1, state = 'EXTRACTED', frames_dir = $2, \
                             manifest_path = $3, frame_count = $4, updated_at = $5 WHERE id = $6",
                        )
                        .bind(cid)
                        .bind(frames_dir)
                        .bind(manifest)
                        .bind(count)
                        .bind(now)
                        .bind(t.video_id)
                        .execute(&mut **tx)
                        .await?;
                        if enqueue_filters(store, tx, &[t.video_id], now).await? > 0 {
                            woken.push(Stage::Filter);
                        }
                    } else {
                        // Waits (visibly: content_of) for the canonical video's extract task.
                        sqlx::query(
                            "UPDATE videos SET content_of = $1, state = 'DOWNLOADED', updated_at = $2 WHERE id = $3",
                        )
                        .bind(cid)
                        .bind(now)
                        .bind(t.video_id)
                        .execute(&mut **tx)
                        .await?;
                    }
                }
                None => {
                    sqlx::query("UPDATE videos SET state = 'DOWNLOADED', updated_at = $1 WHERE id = $2")
                        .bind(now)
                        .bind(t.video_id)
                        .execute(&mut **tx)
                        .await?;
                    enqueue(
                        store,
                        tx,
                        NewTask {
                            stage: Stage::Extract,
                            video_id: t.video_id,
                            project_id: None,
                            priority: t.priority,
                            requires: None,
                        },
                        now,
                    )
                    .await?;
                    woken.push(Stage::Extract);
                }
            }
        }
        StageResult::Extract { frames_dir, manifest_path, frame_count } => {
            let rows = sqlx::query(
                "UPDATE videos SET state = 'EXTRACTED', frames_dir = $1, manifest_path = $2, frame_count = $3, \
                 updated_at = $4 WHERE id = $5 OR (content_of = $5 AND state = 'DOWNLOADED') RETURNING id",
            )
            .bind(frames_dir)
            .bind(manifest_path)
            .bind(frame_count)
            .bind(now)
            .bind(t.video_id)
            .fetch_all(&mut **tx)
            .await?;
            let ids: Vec<i64> = rows.iter().map(|r| r.try_get("id")).collect::<Result<_, _>>()?;
            if enqueue_filters(store, tx, &ids, now).await? > 0 {
                woken.push(Stage::Filter);
            }
        }
        StageResult::Filter { output_dir, frames_in, frames_kept } => {
            let state = if *frames_kept == 0 { "FILTERED_EMPTY" } else { "FILTERED" };
            sqlx::query(
                "UPDATE project_videos SET state = $1, frames_in = $2, frames_filtered = $3, filter_dir = $4, \
                 updated_at = $5 WHERE project_id = $6 AND video_id = $7",
            )
            .bind(state)
            .bind(frames_in)
            .bind(frames_kept)
            .bind(output_dir)
            .bind(now)
            .bind(t.project_id.unwrap_or(0))
            .bind(t.video_id)
            .execute(&mut **tx)
            .await?;
            if *frames_kept > 0 {
                enqueue(
                    store,
                    tx,
                    NewTask {
                        stage: Stage::Dedup,
                        video_id: t.video_id,
                        project_id: t.project_id,
                        priority: t.priority,
                        requires: None,
                    },
                    now,
                )
                .await?;
                woken.push(Stage::Dedup);
            }
        }
        StageResult::Dedup { output_dir, frames_in: _, frames_kept } => {
            if *frames_kept > 0 {
                // Record the order in which videos enter the project's kept set; the dedup
                // concurrency key makes this the only writer of the project's sequence.
                sqlx::query(
                    "UPDATE project_videos SET state = 'DEDUPED', frames_deduped = $1, dedup_dir = $2, \
                     updated_at = $3, kept_seq = (SELECT COALESCE(MAX(k.kept_seq), 0) + 1 FROM project_videos k \
                     WHERE k.project_id = $4) WHERE project_id = $4 AND video_id = $5",
                )
                .bind(frames_kept)
                .bind(output_dir)
                .bind(now)
                .bind(t.project_id.unwrap_or(0))
                .bind(t.video_id)
                .execute(&mut **tx)
                .await?;
                enqueue(
                    store,
                    tx,
                    NewTask {
                        stage: Stage::Detect,
                        video_id: t.video_id,
                        project_id: t.project_id,
                        priority: t.priority,
                        requires: None,
                    },
                    now,
                )
                .await?;
                woken.push(Stage::Detect);
            } else {
                update_pv(tx, t, "frames_deduped = $2, dedup_dir = $3", "COMPLETE", *frames_kept, output_dir, now)
                    .await?;
            }
        }
        StageResult::Detect { output_dir, frames_in: _, detections } => {
            update_pv(tx, t, "detections = $2, detect_dir = $3", "COMPLETE", *detections, output_dir, now).await?;
        }
    }
    Ok(woken)
}

async fn update_pv(
    tx: &mut Tx,
    t: &TaskSubject,
    set: &str,
    state: &str,
    count: i64,
    dir: &str,
    now: i64,
) -> Result<()> {
    // `set` is one of a few literals in this file, never input.
    let sql =
        format!("UPDATE project_videos SET state = $1, {set}, updated_at = $4 WHERE project_id = $5 AND video_id = $6");
    sqlx::query(&sql)
        .bind(state)
        .bind(count)
        .bind(dir)
        .bind(now)
        .bind(t.project_id.unwrap_or(0))
        .bind(t.video_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Marks a task's subject FAILED after its task died. A failed video fails its waiting
/// project-videos and the videos waiting on its content, each with the cause.
pub(crate) async fn fail_subject(tx: &mut Tx, t: &TaskSubject, error: &str, now: i64) -> Result<()> {
    if t.stage.is_project_stage() {
        sqlx::query(
            "UPDATE project_videos SET state = 'FAILED', failed_stage = $1, error = $2, updated_at = $3 \
             WHERE project_id = $4 AND video_id = $5",
        )
        .bind(t.stage.as_str())
        .bind(error)
        .bind(now)
        .bind(t.project_id.unwrap_or(0))
        .bind(t.video_id)
        .execute(&mut **tx)
        .await?;
        return Ok(());
    }
    sqlx::query("UPDATE videos SET state = 'FAILED', failed_stage = $1, error = $2, updated_at = $3 WHERE id = $4")
        .bind(t.stage.as_str())
        .bind(error)
        .bind(now)
        .bind(t.video_id)
        .execute(&mut **tx)
        .await?;
    let dups = sqlx::query(
        "UPDATE videos SET state = 'FAILED', failed_stage = $1, error = $2, updated_at = $3 \
         WHERE content_of = $4 AND state = 'DOWNLOADED' RETURNING id",
    )
    .bind(t.stage.as_str())
    .bind(format!("identical content (video {}) failed at {}: {error}", t.video_id, t.stage))
    .bind(now)
    .bind(t.video_id)
    .fetch_all(&mut **tx)
    .await?;
    let mut ids = vec![t.video_id];
    for d in &dups {
        ids.push(d.try_get("id")?);
    }
    let sql = format!(
        "UPDATE project_videos SET state = 'FAILED', failed_stage = $1, error = $2, updated_at = $3 \
         WHERE state = 'PENDING' AND video_id IN ({})",
        placeholders(4, ids.len())
    );
    let mut q =
        sqlx::query(&sql).bind(t.stage.as_str()).bind(format!("video failed at {}: {error}", t.stage)).bind(now);
    for id in &ids {
        q = q.bind(*id);
    }
    q.execute(&mut **tx).await?;
    Ok(())
}

/// Videos that waited on `video_id`'s content while it was cancelled get their own extract
/// (their own download is on disk), so they never wait forever.
pub(crate) async fn unlink_waiting_duplicates(store: &Store, tx: &mut Tx, video_id: i64, now: i64) -> Result<bool> {
    let rows = sqlx::query(
        "UPDATE videos SET content_of = NULL, updated_at = $1 WHERE content_of = $2 AND state = 'DOWNLOADED' \
         RETURNING id, priority",
    )
    .bind(now)
    .bind(video_id)
    .fetch_all(&mut **tx)
    .await?;
    for r in &rows {
        let id: i64 = r.try_get("id")?;
        let priority: i64 = r.try_get("priority")?;
        enqueue(
            store,
            tx,
            NewTask { stage: Stage::Extract, video_id: id, project_id: None, priority, requires: None },
            now,
        )
        .await?;
    }
    Ok(!rows.is_empty())
}
