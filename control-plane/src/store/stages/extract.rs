//! The extract stage. Subject: an extraction — one content (sha256) × one set of extract
//! settings (`ExtractConfig::settings_key`), `PENDING → EXTRACTING → EXTRACTED` — shared by
//! every project-video whose project gave those settings when the video joined it. Projects
//! with equal settings share one extract task; other settings get their own. Its source is
//! one downloaded video with that content; its successors are the filters of the
//! project-videos that use it.

use std::collections::BTreeMap;

use dataminer_wire::{ExtractConfig, Stage, StageResult, TaskInput};
use sqlx::Row;

use super::inputs::Inputs;
use super::{enqueue_many, path_ok, project, values_rows, Effects, NewTask, TaskSubject, Tx};
use crate::store::machine::{self, Event, Subject};
use crate::store::{placeholders, Result, Store, StoreError};

const EX: Option<Stage> = Some(Stage::Extract);

pub(crate) fn validate(dir: &str, r: &StageResult) -> Result<()> {
    let StageResult::Extract { frames_dir, manifest_path, frame_count } = r else {
        return Err(StoreError::invalid("result_stage_mismatch", "not an extract result"));
    };
    path_ok("frames_dir", frames_dir, dir)?;
    path_ok("manifest_path", manifest_path, dir)?;
    if *frame_count < 1 {
        return Err(StoreError::invalid(
            "invalid_result",
            "frame_count must be at least 1 (a zero-frame extraction is a failure, not a result)",
        ));
    }
    Ok(())
}

pub(crate) fn input(inputs: &Inputs, t: &TaskSubject) -> Result<TaskInput> {
    let e = t
        .extraction_id
        .and_then(|id| inputs.extractions.get(&id))
        .ok_or_else(|| StoreError::Corrupt(format!("extract task {} has no extraction", t.id)))?;
    Ok(TaskInput {
        video_id: t.video_id,
        video_path: e.video_path.clone(),
        extract: Some(e.config.clone()),
        ..TaskInput::default()
    })
}

/// Gives the waiting project-videos of these downloaded videos the extraction of their
/// settings: an existing one (extracted: their filters start now; pending: they wait on it;
/// failed: they fail with its error; cancelled: it is reopened) or a new one with its extract
/// task. Each extraction row is locked while decided, so a concurrent completion or failure
/// of it and this attachment see each other.
pub(crate) async fn attach(store: &Store, tx: &mut Tx, video_ids: &[i64], now: i64, fx: &mut Effects) -> Result<()> {
    if video_ids.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "SELECT pv.project_id, pv.video_id, pv.extract_config, v.sha256, v.priority FROM project_videos pv \
         JOIN videos v ON v.id = pv.video_id JOIN projects p ON p.id = pv.project_id \
         WHERE pv.video_id IN ({}) AND pv.state = 'PENDING' AND pv.extraction_id IS NULL AND p.cancelled = 0 \
         AND v.state = 'DOWNLOADED' AND v.sha256 IS NOT NULL ORDER BY pv.video_id, pv.project_id",
        placeholders(1, video_ids.len())
    );
    let mut q = sqlx::query(&sql);
    for v in video_ids {
        q = q.bind(*v);
    }
    // (sha256, settings key) → (config, source video, priority, members)
    type Group = (ExtractConfig, i64, i64, Vec<(i64, i64)>);
    let mut groups: BTreeMap<(String, String), Group> = BTreeMap::new();
    for r in q.fetch_all(&mut **tx).await? {
        let cfg: Option<String> = r.try_get("extract_config")?;
        let cfg: ExtractConfig = match cfg {
            Some(c) => serde_json::from_str(&c).map_err(|e| StoreError::Corrupt(format!("extract config: {e}")))?,
            None => ExtractConfig::default(),
        };
        let sha: String = r.try_get("sha256")?;
        let video: i64 = r.try_get("video_id")?;
        let priority: i64 = r.try_get("priority")?;
        let g = groups.entry((sha, cfg.settings_key())).or_insert_with(|| (cfg, video, priority, Vec::new()));
        g.2 = g.2.max(priority);
        g.3.push((r.try_get("project_id")?, video));
    }
    let mut ready: Vec<i64> = Vec::new();
    let mut tasks: Vec<NewTask> = Vec::new();
    for ((sha, key), (cfg, source, priority, members)) in &groups {
        let config = serde_json::to_string(cfg).map_err(|e| StoreError::Corrupt(format!("extract config: {e}")))?;
        let inserted: Option<i64> = sqlx::query_scalar(
            "INSERT INTO extractions (sha256, settings_key, config, video_id, state, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, 'PENDING', $5, $5) ON CONFLICT (sha256, settings_key) DO NOTHING RETURNING id",
        )
        .bind(sha)
        .bind(key)
        .bind(&config)
        .bind(*source)
        .bind(now)
        .fetch_optional(&mut **tx)
        .await?;
        let id = match inserted {
            Some(id) => {
                tasks.push(extract_task(id, *source, *priority));
                id
            }
            None => {
                let row = sqlx::query(&format!(
                    "SELECT id, state, error FROM extractions WHERE sha256 = $1 AND settings_key = $2{}",
                    store.backend().lock_rows()
                ))
                .bind(sha)
                .bind(key)
                .fetch_one(&mut **tx)
                .await?;
                let id: i64 = row.try_get("id")?;
                let state: String = row.try_get("state")?;
                match state.as_str() {
                    "EXTRACTED" => ready.push(id),
                    "FAILED" => {
                        let error: Option<String> = row.try_get("error")?;
                        set_extraction(tx, members, id, now).await?;
                        fail_members(tx, members, id, error.as_deref().unwrap_or("no error recorded"), now).await?;
                        continue;
                    }
                    "CANCELLED" => {
                        // It was cancelled with the video it read; this video needs it now.
                        let guard = machine::guard("state", Subject::Extraction, None, Event::Reopen);
                        sqlx::query(&format!(
                            "UPDATE extractions SET state = 'PENDING', video_id = $1, error = NULL, updated_at = $2 \
                             WHERE id = $3 AND {guard}"
                        ))
                        .bind(*source)
                        .bind(now)
                        .bind(id)
                        .execute(&mut **tx)
                        .await?;
                        tasks.push(extract_task(id, *source, *priority));
                    }
                    _ => {}
                }
                id
            }
        };
        set_extraction(tx, members, id, now).await?;
    }
    if !tasks.is_empty() {
        enqueue_many(store, tx, &tasks, now).await?;
        fx.wake(Stage::Extract);
    }
    if project::enqueue_filters(store, tx, "extraction_id", &ready, now).await? > 0 {
        fx.wake(Stage::Filter);
    }
    Ok(())
}

fn extract_task(extraction_id: i64, video_id: i64, priority: i64) -> NewTask {
    NewTask {
        stage: Stage::Extract,
        video_id,
        project_id: None,
        extraction_id: Some(extraction_id),
        priority,
        requires: None,
    }
}

async fn set_extraction(tx: &mut Tx, members: &[(i64, i64)], id: i64, now: i64) -> Result<()> {
    let sql = format!(
        "UPDATE project_videos SET extraction_id = $1, updated_at = $2 WHERE (project_id, video_id) IN (VALUES {})",
        values_rows(3, members.len(), 2)
    );
    let mut q = sqlx::query(&sql).bind(id).bind(now);
    for (p, v) in members {
        q = q.bind(*p).bind(*v);
    }
    q.execute(&mut **tx).await?;
    Ok(())
}

async fn fail_members(tx: &mut Tx, members: &[(i64, i64)], id: i64, error: &str, now: i64) -> Result<()> {
    let guard = machine::guard("state", Subject::ProjectVideo, None, Event::UpstreamFailed);
    let sql = format!(
        "UPDATE project_videos SET state = 'FAILED', failed_stage = 'extract', error = $1, updated_at = $2 \
         WHERE {guard} AND (project_id, video_id) IN (VALUES {})",
        values_rows(3, members.len(), 2)
    );
    let mut q = sqlx::query(&sql).bind(format!("extraction {id} failed: {error}")).bind(now);
    for (p, v) in members {
        q = q.bind(*p).bind(*v);
    }
    q.execute(&mut **tx).await?;
    Ok(())
}

/// Records the frames; the project-videos using these extractions get their filters.
pub(crate) async fn apply(
    store: &Store,
    tx: &mut Tx,
    batch: &[(&TaskSubject, &StageResult)],
    now: i64,
    fx: &mut Effects,
) -> Result<()> {
    let guard = machine::guard("extractions.state", Subject::Extraction, EX, Event::Complete);
    let to = machine::target(Subject::Extraction, EX, Event::Complete);
    let sql = format!(
        "UPDATE extractions SET state = '{to}', frames_dir = v.column2, manifest_path = v.column3, \
         frame_count = v.column4, error = NULL, updated_at = $1 FROM (VALUES {}) AS v \
         WHERE extractions.id = v.column1 AND {guard} RETURNING extractions.id",
        values_rows(2, batch.len(), 4)
    );
    let mut q = sqlx::query(&sql).bind(now);
    for (t, r) in batch {
        if let StageResult::Extract { frames_dir, manifest_path, frame_count } = r {
            q = q
                .bind(t.extraction_id.unwrap_or(0))
                .bind(frames_dir.as_str())
                .bind(manifest_path.as_str())
                .bind(*frame_count);
        }
    }
    let mut done = Vec::new();
    for r in q.fetch_all(&mut **tx).await? {
        done.push(r.try_get::<i64, _>("id")?);
    }
    if project::enqueue_filters(store, tx, "extraction_id", &done, now).await? > 0 {
        fx.wake(Stage::Filter);
    }
    Ok(())
}

/// The extraction died: it is FAILED, and so are the project-videos waiting on it.
pub(crate) async fn fail(_store: &Store, tx: &mut Tx, t: &TaskSubject, error: &str, now: i64) -> Result<()> {
    let id = t.extraction_id.unwrap_or(0);
    let guard = machine::guard("state", Subject::Extraction, EX, Event::Die);
    sqlx::query(&format!(
        "UPDATE extractions SET state = 'FAILED', error = $1, updated_at = $2 WHERE id = $3 AND {guard}"
    ))
    .bind(error)
    .bind(now)
    .bind(id)
    .execute(&mut **tx)
    .await?;
    project::fail_waiting(tx, "extraction_id", id, Stage::Extract, &format!("extraction {id} failed: {error}"), now)
        .await
}

/// A user retried the dead or cancelled extract task: the extraction and the project-videos
/// that failed because of it wait for it again.
pub(crate) async fn reopen(_store: &Store, tx: &mut Tx, t: &TaskSubject, now: i64) -> Result<Vec<Stage>> {
    let id = t.extraction_id.unwrap_or(0);
    let guard = machine::guard("state", Subject::Extraction, None, Event::Reopen);
    sqlx::query(&format!(
        "UPDATE extractions SET state = 'PENDING', error = NULL, updated_at = $1 WHERE id = $2 AND {guard}"
    ))
    .bind(now)
    .bind(id)
    .execute(&mut **tx)
    .await?;
    project::reopen_upstream(tx, "extraction_id", id, now).await?;
    Ok(vec![Stage::Extract])
}

/// A user cancels video `video_id`: each unfinished extraction that reads its file moves to
/// another downloaded video with the same content whose projects still need it (a new
/// extract task), or is cancelled when none does. Returns whether extracts were enqueued.
pub(crate) async fn cancel_for_video(store: &Store, tx: &mut Tx, video_id: i64, now: i64) -> Result<bool> {
    let open = machine::guard("state", Subject::Extraction, None, Event::Cancel);
    let ids: Vec<i64> = sqlx::query_scalar(&format!(
        "SELECT id FROM extractions WHERE video_id = $1 AND {open} ORDER BY id{}",
        store.backend().lock_rows()
    ))
    .bind(video_id)
    .fetch_all(&mut **tx)
    .await?;
    let mut tasks = Vec::new();
    for id in ids {
        sqlx::query(
            "UPDATE tasks SET state = 'cancelled', finished_at = $1, updated_at = $1 \
             WHERE extraction_id = $2 AND state IN ('queued', 'leased')",
        )
        .bind(now)
        .bind(id)
        .execute(&mut **tx)
        .await?;
        let other: Option<(i64, i64)> = sqlx::query(
            "SELECT pv.video_id, v.priority FROM project_videos pv JOIN projects p ON p.id = pv.project_id \
             JOIN videos v ON v.id = pv.video_id WHERE pv.extraction_id = $1 AND pv.video_id <> $2 \
             AND pv.state = 'PENDING' AND p.cancelled = 0 AND v.state = 'DOWNLOADED' ORDER BY pv.video_id LIMIT 1",
        )
        .bind(id)
        .bind(video_id)
        .fetch_optional(&mut **tx)
        .await?
        .map(|r| Ok::<_, sqlx::Error>((r.try_get("video_id")?, r.try_get("priority")?)))
        .transpose()?;
        match other {
            Some((source, priority)) => {
                // The copies no longer depend on the cancelled video's file.
                sqlx::query("UPDATE videos SET content_of = NULL, updated_at = $1 WHERE content_of = $2")
                    .bind(now)
                    .bind(video_id)
                    .execute(&mut **tx)
                    .await?;
                sqlx::query("UPDATE extractions SET state = 'PENDING', video_id = $1, updated_at = $2 WHERE id = $3")
                    .bind(source)
                    .bind(now)
                    .bind(id)
                    .execute(&mut **tx)
                    .await?;
                tasks.push(extract_task(id, source, priority));
            }
            None => {
                sqlx::query(&format!(
                    "UPDATE extractions SET state = 'CANCELLED', updated_at = $1 WHERE id = $2 AND {open}"
                ))
                .bind(now)
                .bind(id)
                .execute(&mut **tx)
                .await?;
            }
        }
    }
    if tasks.is_empty() {
        return Ok(false);
    }
    enqueue_many(store, tx, &tasks, now).await?;
    Ok(true)
}

/// Migration 0004 carried existing extractions over with `legacy:<config>` keys (SQL cannot
/// compute the canonical form); give them their canonical keys, so new projects with equal
/// settings share them. Idempotent; one that would collide with an existing key keeps its
/// legacy key (its project-videos still use it by id).
pub(crate) async fn rekey_legacy(store: &Store) -> Result<u64> {
    let mut tx = store.begin_write().await?;
    let rows = sqlx::query("SELECT id, config FROM extractions WHERE settings_key LIKE 'legacy:%' ORDER BY id")
        .fetch_all(&mut *tx)
        .await?;
    let mut done = 0;
    for r in &rows {
        let id: i64 = r.try_get("id")?;
        let config: String = r.try_get("config")?;
        let cfg: ExtractConfig =
            serde_json::from_str(&config).map_err(|e| StoreError::Corrupt(format!("extraction {id} config: {e}")))?;
        done += sqlx::query(
            "UPDATE extractions SET settings_key = $1 WHERE id = $2 AND NOT EXISTS \
             (SELECT 1 FROM extractions o WHERE o.sha256 = extractions.sha256 AND o.settings_key = $1)",
        )
        .bind(cfg.settings_key())
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    }
    tx.commit().await?;
    Ok(done)
}
