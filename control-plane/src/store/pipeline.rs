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
    let mut tasks = Vec::with_capacity(rows.len());
    for r in &rows {
        tasks.push(NewTask {
            stage: Stage::Filter,
            video_id: r.try_get("video_id")?,
            project_id: Some(r.try_get("project_id")?),
            priority: r.try_get("priority")?,
            requires: None,
        });
    }
    enqueue_many(store, tx, &tasks, now).await?;
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

/// `($a, $a+1, …), (…), …` for `rows` rows of `cols` placeholders starting at `$start`.
pub(crate) fn values_rows(start: usize, rows: usize, cols: usize) -> String {
    let mut s = String::with_capacity(rows * cols * 5);
    for r in 0..rows {
        if r > 0 {
            s.push_str(", ");
        }
        s.push('(');
        for c in 0..cols {
            if c > 0 {
                s.push_str(", ");
            }
            s.push('$');
            s.push_str(&(start + r * cols + c).to_string());
        }
        s.push(')');
    }
    s
}

/// Inserts queued tasks, many per statement.
pub(crate) async fn enqueue_many(store: &Store, tx: &mut Tx, tasks: &[NewTask], now: i64) -> Result<()> {
    let s = store.settings();
    for chunk in tasks.chunks(256) {
        let sql = format!(
            "INSERT INTO tasks (stage, video_id, project_id, max_attempts, priority, concurrency_key, requires, \
             time_limit_ms, state, run_after, created_at, updated_at) \
             SELECT v.column1, v.column2, v.column3, v.column4, v.column5, v.column6, v.column7, v.column8, \
             'queued', $1, $1, $1 FROM (VALUES {}) AS v",
            values_rows(2, chunk.len(), 8)
        );
        let mut q = sqlx::query(&sql).bind(now);
        for t in chunk {
            q = q
                .bind(t.stage.as_str())
                .bind(t.video_id)
                .bind(t.project_id)
                .bind(s.max_attempts)
                .bind(t.priority)
                .bind(concurrency_key(t.stage, t.project_id))
                .bind(t.requires.clone())
                .bind(s.time_limit_ms.get(t.stage));
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Records the results of accepted completions on their subjects and enqueues successors,
/// a few set-based statements per stage whatever the batch size. Returns the stages that
/// got new queued work (to wake their long polls after commit).
pub(crate) async fn apply_results(
    store: &Store,
    tx: &mut Tx,
    items: &[(TaskSubject, &StageResult)],
    now: i64,
) -> Result<Vec<Stage>> {
    let mut woken = Vec::new();
    let mut downloads = Vec::new();
    let mut extracts = Vec::new();
    let mut filters = Vec::new();
    let mut dedups = Vec::new();
    let mut detects = Vec::new();
    for (t, r) in items {
        match r {
            StageResult::Download { .. } => downloads.push((t, *r)),
            StageResult::Extract { .. } => extracts.push((t, *r)),
            StageResult::Filter { .. } => filters.push((t, *r)),
            StageResult::Dedup { .. } => dedups.push((t, *r)),
            StageResult::Detect { .. } => detects.push((t, *r)),
        }
    }
    if !downloads.is_empty() && apply_downloads(store, tx, &mut downloads, now, &mut woken).await? {
        woken.push(Stage::Extract);
    }
    if !extracts.is_empty() {
        let sql = format!(
            "UPDATE videos SET state = 'EXTRACTED', frames_dir = v.column2, manifest_path = v.column3, \
             frame_count = v.column4, updated_at = $1 FROM (VALUES {}) AS v WHERE videos.id = v.column1",
            values_rows(2, extracts.len(), 4)
        );
        let mut q = sqlx::query(&sql).bind(now);
        for (t, r) in &extracts {
            if let StageResult::Extract { frames_dir, manifest_path, frame_count } = r {
                q = q.bind(t.video_id).bind(frames_dir.as_str()).bind(manifest_path.as_str()).bind(*frame_count);
            }
        }
        q.execute(&mut **tx).await?;
        // Videos with identical content that waited on these get the same frames.
        let sql = format!(
            "UPDATE videos SET state = 'EXTRACTED', frames_dir = v.column2, manifest_path = v.column3, \
             frame_count = v.column4, updated_at = $1 FROM (VALUES {}) AS v \
             WHERE videos.content_of = v.column1 AND videos.state = 'DOWNLOADED' RETURNING id",
            values_rows(2, extracts.len(), 4)
        );
        let mut q = sqlx::query(&sql).bind(now);
        for (t, r) in &extracts {
            if let StageResult::Extract { frames_dir, manifest_path, frame_count } = r {
                q = q.bind(t.video_id).bind(frames_dir.as_str()).bind(manifest_path.as_str()).bind(*frame_count);
            }
        }
        let mut ids: Vec<i64> = extracts.iter().map(|(t, _)| t.video_id).collect();
        for r in q.fetch_all(&mut **tx).await? {
            ids.push(r.try_get("id")?);
        }
        if enqueue_filters(store, tx, &ids, now).await? > 0 {
            woken.push(Stage::Filter);
        }
    }
    if !filters.is_empty() {
        let sql = format!(
            "UPDATE project_videos SET state = CASE WHEN v.column5 = 0 THEN 'FILTERED_EMPTY' ELSE 'FILTERED' END, \
             frames_in = v.column3, filter_dir = v.column4, frames_filtered = v.column5, updated_at = $1 \
             FROM (VALUES {}) AS v WHERE project_videos.project_id = v.column1 AND project_videos.video_id = v.column2",
            values_rows(2, filters.len(), 5)
        );
        let mut q = sqlx::query(&sql).bind(now);
        let mut next = Vec::new();
        for (t, r) in &filters {
            if let StageResult::Filter { output_dir, frames_in, frames_kept } = r {
                q = q
                    .bind(t.project_id.unwrap_or(0))
                    .bind(t.video_id)
                    .bind(*frames_in)
                    .bind(output_dir.as_str())
                    .bind(*frames_kept);
                if *frames_kept > 0 {
                    next.push(successor(t, Stage::Dedup));
                }
            }
        }
        q.execute(&mut **tx).await?;
        if !next.is_empty() {
            enqueue_many(store, tx, &next, now).await?;
            woken.push(Stage::Dedup);
        }
    }
    // Dedup results of one project must get consecutive kept_seq values; the concurrency
    // key means a batch holds at most one per project, but split into rounds to be sure.
    while !dedups.is_empty() {
        let mut round = Vec::new();
        let mut rest = Vec::new();
        for d in dedups {
            if round.iter().any(|(t, _): &(&TaskSubject, &StageResult)| t.project_id == d.0.project_id) {
                rest.push(d);
            } else {
                round.push(d);
            }
        }
        dedups = rest;
        let sql = format!(
            "UPDATE project_videos SET state = CASE WHEN v.column4 > 0 THEN 'DEDUPED' ELSE 'COMPLETE' END, \
             dedup_dir = v.column3, frames_deduped = v.column4, updated_at = $1, \
             kept_seq = CASE WHEN v.column4 > 0 THEN (SELECT COALESCE(MAX(k.kept_seq), 0) + 1 FROM project_videos k \
                 WHERE k.project_id = v.column1) ELSE NULL END \
             FROM (VALUES {}) AS v WHERE project_videos.project_id = v.column1 AND project_videos.video_id = v.column2",
            values_rows(2, round.len(), 4)
        );
        let mut q = sqlx::query(&sql).bind(now);
        let mut next = Vec::new();
        for (t, r) in &round {
            if let StageResult::Dedup { output_dir, frames_kept, .. } = r {
                q = q.bind(t.project_id.unwrap_or(0)).bind(t.video_id).bind(output_dir.as_str()).bind(*frames_kept);
                if *frames_kept > 0 {
                    next.push(successor(t, Stage::Detect));
                }
            }
        }
        q.execute(&mut **tx).await?;
        if !next.is_empty() {
            enqueue_many(store, tx, &next, now).await?;
            woken.push(Stage::Detect);
        }
    }
    if !detects.is_empty() {
        let sql = format!(
            "UPDATE project_videos SET state = 'COMPLETE', detections = v.column3, detect_dir = v.column4, updated_at = $1 \
             FROM (VALUES {}) AS v WHERE project_videos.project_id = v.column1 AND project_videos.video_id = v.column2",
            values_rows(2, detects.len(), 4)
        );
        let mut q = sqlx::query(&sql).bind(now);
        for (t, r) in &detects {
            if let StageResult::Detect { output_dir, detections, .. } = r {
                q = q.bind(t.project_id.unwrap_or(0)).bind(t.video_id).bind(*detections).bind(output_dir.as_str());
            }
        }
        q.execute(&mut **tx).await?;
    }
    Ok(woken)
}

fn successor(t: &TaskSubject, stage: Stage) -> NewTask {
    NewTask { stage, video_id: t.video_id, project_id: t.project_id, priority: t.priority, requires: None }
}

/// Download results: record metadata, then per video either link it to earlier identical
/// content (by sha256; extracted once) or enqueue its extract. Returns whether extracts
/// were enqueued.
async fn apply_downloads(
    store: &Store,
    tx: &mut Tx,
    downloads: &mut [(&TaskSubject, &StageResult)],
    now: i64,
    woken: &mut Vec<Stage>,
) -> Result<bool> {
    downloads.sort_by_key(|(t, _)| t.video_id);
    let sql = format!(
        "UPDATE videos SET sha256 = v.column2, size_bytes = v.column3, duration_s = v.column4, fps = v.column5, \
         width = v.column6, height = v.column7, codec = v.column8, file_path = v.column9, \
         start_time_s = v.column10, stream_frames = v.column11, updated_at = $1 \
         FROM (VALUES {}) AS v WHERE videos.id = v.column1",
        values_rows(2, downloads.len(), 11)
    );
    let mut q = sqlx::query(&sql).bind(now);
    let mut shas: Vec<&str> = Vec::new();
    for (t, r) in downloads.iter() {
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
                .bind(*stream_frames);
            shas.push(sha256);
        }
    }
    q.execute(&mut **tx).await?;
    let sql = format!(
        "SELECT id, sha256, state, frames_dir, manifest_path, frame_count FROM videos \
         WHERE sha256 IN ({}) AND content_of IS NULL AND state NOT IN ('FAILED', 'CANCELLED') ORDER BY id{}",
        placeholders(1, shas.len()),
        store.backend().lock_rows()
    );
    let mut q = sqlx::query(&sql);
    for s in &shas {
        q = q.bind(*s);
    }
    let known = q.fetch_all(&mut **tx).await?;
    let in_batch: Vec<i64> = downloads.iter().map(|(t, _)| t.video_id).collect();
    let mut canonical_in_batch: Vec<i64> = Vec::new();
    let mut extract = Vec::new();
    for (t, r) in downloads.iter() {
        let StageResult::Download { sha256, .. } = r else { continue };
        // The oldest other video with this content that is not itself waiting; videos of
        // this batch count only once they have been decided (in id order), so two new
        // copies never wait on each other.
        let mut canonical = None;
        for k in &known {
            let id: i64 = k.try_get("id")?;
            let sha: String = k.try_get("sha256")?;
            if id != t.video_id && &sha == sha256 && (!in_batch.contains(&id) || canonical_in_batch.contains(&id)) {
                canonical = Some(k);
                break;
            }
        }
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
                canonical_in_batch.push(t.video_id);
                extract.push(successor(t, Stage::Extract));
            }
        }
    }
    if extract.is_empty() {
        return Ok(false);
    }
    let sql = format!(
        "UPDATE videos SET state = 'DOWNLOADED', updated_at = $1 WHERE id IN ({})",
        placeholders(2, extract.len())
    );
    let mut q = sqlx::query(&sql).bind(now);
    for t in &extract {
        q = q.bind(t.video_id);
    }
    q.execute(&mut **tx).await?;
    enqueue_many(store, tx, &extract, now).await?;
    Ok(true)
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

/// What a cancellation covers: everything of a project, or everything of a video.
#[derive(Debug, Clone, Copy)]
pub(crate) enum CancelScope {
    Project(i64),
    Video(i64),
}

/// Cancels the queued and leased tasks in scope (leased ones learn it from their next
/// heartbeat) and makes its unfinished project-videos CANCELLED.
pub(crate) async fn cancel_open_work(tx: &mut Tx, scope: CancelScope, now: i64) -> Result<()> {
    let (column, id) = match scope {
        CancelScope::Project(id) => ("project_id", id),
        CancelScope::Video(id) => ("video_id", id),
    };
    // `column` is one of the two literals above, never input.
    for sql in [
        format!(
            "UPDATE tasks SET state = 'cancelled', finished_at = $1, updated_at = $1 \
             WHERE {column} = $2 AND state IN ('queued', 'leased')"
        ),
        format!(
            "UPDATE project_videos SET state = 'CANCELLED', updated_at = $1 WHERE {column} = $2 \
             AND state NOT IN ('COMPLETE', 'FILTERED_EMPTY', 'FAILED', 'CANCELLED')"
        ),
    ] {
        sqlx::query(&sql).bind(now).bind(id).execute(&mut **tx).await?;
    }
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
    let mut extracts = Vec::with_capacity(rows.len());
    for r in &rows {
        extracts.push(NewTask {
            stage: Stage::Extract,
            video_id: r.try_get("id")?,
            project_id: None,
            priority: r.try_get("priority")?,
            requires: None,
        });
    }
    enqueue_many(store, tx, &extracts, now).await?;
    Ok(!rows.is_empty())
}
