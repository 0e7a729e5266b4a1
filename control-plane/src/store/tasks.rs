//! The lease protocol on the tasks table: lease, heartbeat, complete (single and batch),
//! fail, release, the reaper's requeue of expired or over-time leases, and the dead-task
//! list. Every write to a leased task is a conditional UPDATE on (id, lease_token, state)
//! whose affected-row count decides: zero rows means the caller lost the lease and nothing
//! changed.

use std::collections::HashMap;

use dataminer_wire::{
    BatchCompleteOutcome, BatchCompletion, ErrorDetail, LeasedTask, Stage, StageResult, TaskInput, TaskView,
};
use rand::Rng;
use sqlx::{Any, Row, Transaction};
use tracing::instrument;

use super::backend::is_transient;
use super::pipeline::values_rows;
use super::pipeline::{self, TaskSubject};
use super::{clip, placeholders, rows, Result, Store, StoreError};

type Tx = Transaction<'static, Any>;

const MAX_ERROR_CHARS: usize = 4096;
const MAX_PROGRESS_BYTES: usize = 4096;
/// The most tasks one lease or batch-complete call may carry.
pub const MAX_BATCH: usize = 64;

/// The columns of a task the protocol needs.
#[derive(Debug, Clone)]
struct TaskRow {
    id: i64,
    stage: Stage,
    state: String,
    video_id: i64,
    project_id: Option<i64>,
    priority: i64,
    lease_token: i64,
    attempts: i64,
    max_attempts: i64,
    leased_at: Option<i64>,
}

impl TaskRow {
    fn subject(&self) -> TaskSubject {
        TaskSubject { stage: self.stage, video_id: self.video_id, project_id: self.project_id, priority: self.priority }
    }
}

const TASK_ROW_COLS: &str =
    "id, stage, state, video_id, project_id, priority, lease_token, attempts, max_attempts, leased_at";

fn task_row(r: &sqlx::any::AnyRow) -> Result<TaskRow> {
    Ok(TaskRow {
        id: r.try_get("id")?,
        stage: rows::parse_stage(&r.try_get::<String, _>("stage")?)?,
        state: r.try_get("state")?,
        video_id: r.try_get("video_id")?,
        project_id: r.try_get("project_id")?,
        priority: r.try_get("priority")?,
        lease_token: r.try_get("lease_token")?,
        attempts: r.try_get("attempts")?,
        max_attempts: r.try_get("max_attempts")?,
        leased_at: r.try_get("leased_at")?,
    })
}

async fn load_task(tx: &mut Tx, id: i64) -> Result<TaskRow> {
    let sql = format!("SELECT {TASK_ROW_COLS} FROM tasks WHERE id = $1");
    let row = sqlx::query(&sql).bind(id).fetch_optional(&mut **tx).await?;
    match row {
        Some(r) => task_row(&r),
        None => Err(StoreError::NotFound(format!("task {id} not found"))),
    }
}

/// Why a fenced write was refused, from the row as it is now.
fn refuse(t: &TaskRow, token: i64) -> StoreError {
    if t.state == "cancelled" && t.lease_token == token {
        StoreError::conflict("task_cancelled", format!("task {} was cancelled; drop its work", t.id))
    } else {
        StoreError::conflict(
            "lease_lost",
            format!("lease lost: task {} is {} with lease token {}, not {token}", t.id, t.state, t.lease_token),
        )
    }
}

/// What a heartbeat learned.
#[derive(Debug, Clone, Copy)]
pub struct HeartbeatOutcome {
    pub cancelled: bool,
    pub lease_expires_in_ms: i64,
}

/// The result of accepting a completion.
#[derive(Debug, Clone, Copy)]
pub struct CompleteOutcome {
    pub duplicate: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct FailOutcome {
    pub dead: bool,
    pub run_after_ms: Option<i64>,
}

/// What one reaper pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReapReport {
    pub requeued: usize,
    pub dead: usize,
}

/// Where an attempt writes, relative to the data root: one directory per (task, token), so
/// a stale attempt can never mix into accepted output.
pub(crate) fn attempt_dir(stage: Stage, video_id: i64, project: Option<&str>, task_id: i64, token: i64) -> String {
    let leaf = format!("{video_id}/{task_id}.{token}");
    match (stage, project) {
        (Stage::Download, _) => format!("videos/{leaf}"),
        (Stage::Extract, _) => format!("frames_raw/{leaf}"),
        (Stage::Filter, Some(p)) => format!("projects/{p}/frames_filtered/{leaf}"),
        (Stage::Dedup, Some(p)) => format!("projects/{p}/frames_dedup/{leaf}"),
        (Stage::Detect, Some(p)) => format!("projects/{p}/detections/{leaf}"),
        (_, None) => format!("orphan/{leaf}"),
    }
}

/// True when `path` is `dir` or lies inside it, with no `..`, `.` or empty components that
/// could walk out of it.
fn inside(path: &str, dir: &str) -> bool {
    let ok_parts = path.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
    ok_parts && (path == dir || path.strip_prefix(dir).is_some_and(|rest| rest.starts_with('/')))
}

fn validate_result(stage: Stage, dir: &str, r: &StageResult) -> Result<()> {
    if r.stage() != stage {
        return Err(StoreError::invalid(
            "result_stage_mismatch",
            format!("result is for stage {} but the task is {stage}", r.stage()),
        ));
    }
    let path_ok = |field: &str, p: &str| -> Result<()> {
        if inside(p, dir) {
            Ok(())
        } else {
            Err(StoreError::invalid(
                "output_outside_attempt_dir",
                format!("{field} {p:?} must lie inside the attempt directory {dir:?}"),
            ))
        }
    };
    let nonneg = |field: &str, v: i64| -> Result<()> {
        if v < 0 {
            Err(StoreError::invalid("invalid_result", format!("{field} must not be negative")))
        } else {
            Ok(())
        }
    };
    match r {
        StageResult::Download {
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
        } => {
            path_ok("file_path", file_path)?;
            if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                return Err(StoreError::invalid("invalid_result", "sha256 must be 64 lowercase hex digits"));
            }
            nonneg("size_bytes", *size_bytes)?;
            for (f, v) in [("duration_s", duration_s), ("fps", fps)] {
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
            if codec.as_ref().is_some_and(|c| c.len() > 64) {
                return Err(StoreError::invalid("invalid_result", "codec is longer than 64 characters"));
            }
        }
        StageResult::Extract { frames_dir, manifest_path, frame_count } => {
            path_ok("frames_dir", frames_dir)?;
            path_ok("manifest_path", manifest_path)?;
            if *frame_count < 1 {
                return Err(StoreError::invalid(
                    "invalid_result",
                    "frame_count must be at least 1 (a zero-frame extraction is a failure, not a result)",
                ));
            }
        }
        StageResult::Filter { output_dir, frames_in, frames_kept }
        | StageResult::Dedup { output_dir, frames_in, frames_kept } => {
            path_ok("output_dir", output_dir)?;
            nonneg("frames_in", *frames_in)?;
            nonneg("frames_kept", *frames_kept)?;
            if frames_kept > frames_in {
                return Err(StoreError::invalid("invalid_result", "frames_kept cannot exceed frames_in"));
            }
        }
        StageResult::Detect { output_dir, frames_in, detections } => {
            path_ok("output_dir", output_dir)?;
            nonneg("frames_in", *frames_in)?;
            nonneg("detections", *detections)?;
        }
    }
    Ok(())
}

fn output_path(r: &StageResult) -> &str {
    match r {
        StageResult::Download { file_path, .. } => file_path,
        StageResult::Extract { frames_dir, .. } => frames_dir,
        StageResult::Filter { output_dir, .. }
        | StageResult::Dedup { output_dir, .. }
        | StageResult::Detect { output_dir, .. } => output_dir,
    }
}

impl Store {
    /// Exponential backoff with jitter for the `attempts`-th failure: base·2^(n−1), capped,
    /// scaled by a random factor in [0.5, 1] so requeued tasks do not stampede together.
    fn backoff_ms(&self, attempts: i64) -> i64 {
        let s = self.settings();
        let exp = attempts.clamp(1, 30) - 1;
        let raw = s.retry_base_ms.saturating_mul(1_i64 << exp).min(s.retry_max_ms);
        let factor: f64 = rand::rng().random_range(0.5..=1.0);
        (raw as f64 * factor) as i64
    }

    /// Leases up to `max_tasks` runnable tasks of `stages` to a registered agent: priority
    /// first, then age; never two leased tasks with one concurrency key; tasks that require a
    /// capability only go to agents that advertise it. Returns at once (the long-poll wait is
    /// the caller's loop around this).
    #[instrument(skip(self, stages), fields(agent_id))]
    pub async fn lease(&self, agent_id: i64, stages: &[Stage], max_tasks: usize) -> Result<Vec<LeasedTask>> {
        let mut attempt = 0;
        loop {
            match self.try_lease(agent_id, stages, max_tasks).await {
                // Another transaction got in the way (on PostgreSQL: a deadlock, or a key
                // race caught by the unique index); ours rolled back. Try again.
                Err(StoreError::Database(e)) if is_transient(&e) && attempt < 10 => attempt += 1,
                other => return other,
            }
        }
    }

    async fn try_lease(&self, agent_id: i64, stages: &[Stage], max_tasks: usize) -> Result<Vec<LeasedTask>> {
        let mut tx = self.begin_write().await?;
        let now = self.now(&mut tx).await?;
        let agent = sqlx::query("SELECT stages, capabilities, last_seen FROM agents WHERE id = $1")
            .bind(agent_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| {
                StoreError::conflict(
                    "agent_not_registered",
                    format!("agent {agent_id} is not registered; register first"),
                )
            })?;
        // Liveness needs seconds, not milliseconds: skip the write (and its dead row version)
        // when the agent was seen in the last second.
        if agent.try_get::<i64, _>("last_seen")? < now - 1_000 {
            sqlx::query("UPDATE agents SET last_seen = $1 WHERE id = $2")
                .bind(now)
                .bind(agent_id)
                .execute(&mut *tx)
                .await?;
        }
        let registered: Vec<String> = serde_json::from_str(&agent.try_get::<String, _>("stages")?)
            .map_err(|e| StoreError::Corrupt(format!("agent stages: {e}")))?;
        let caps: Vec<String> = serde_json::from_str(&agent.try_get::<String, _>("capabilities")?)
            .map_err(|e| StoreError::Corrupt(format!("agent capabilities: {e}")))?;
        if let Some(s) = stages.iter().find(|s| !registered.iter().any(|r| r == s.as_str())) {
            return Err(StoreError::invalid(
                "stage_not_registered",
                format!("agent {agent_id} did not register stage {s}; register it first"),
            ));
        }
        // Candidates, priority then age across the requested stages. Each query is an ordered
        // scan of one stage's slice of the `tasks_queue` index (stage, priority DESC, id):
        // one query over several stages would have to sort the whole queue. With several
        // stages, an unlocked peek decides how many to take from each, so that PostgreSQL
        // locks (SKIP LOCKED) only about as many rows as it hands out.
        let mut filter = String::from("t.state = 'queued' AND t.stage = $2 AND t.run_after <= $1");
        if caps.is_empty() {
            filter.push_str(" AND t.requires IS NULL");
        } else {
            filter.push_str(&format!(" AND (t.requires IS NULL OR t.requires IN ({}))", placeholders(4, caps.len())));
        }
        filter.push_str(
            " AND (t.concurrency_key IS NULL OR NOT EXISTS (SELECT 1 FROM tasks h \
             WHERE h.concurrency_key = t.concurrency_key AND h.state = 'leased'))",
        );
        let mut take: Vec<(Stage, i64)> = Vec::new();
        if stages.len() == 1 || self.backend() == super::Backend::Sqlite {
            // SQLite takes no row locks: read n from each stage and keep the best n below.
            take.extend(stages.iter().map(|s| (*s, max_tasks as i64)));
        } else {
            let peek =
                format!("SELECT t.priority, t.id FROM tasks t WHERE {filter} ORDER BY t.priority DESC, t.id LIMIT $3");
            let mut heads: Vec<(i64, i64, Stage)> = Vec::new();
            for stage in stages {
                let mut q = sqlx::query(&peek).bind(now).bind(stage.as_str()).bind(max_tasks as i64);
                for c in &caps {
                    q = q.bind(c.as_str());
                }
                for r in q.fetch_all(&mut *tx).await? {
                    heads.push((r.try_get("priority")?, r.try_get("id")?, *stage));
                }
            }
            heads.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            heads.truncate(max_tasks);
            for stage in stages {
                let n = heads.iter().filter(|h| h.2 == *stage).count() as i64;
                if n > 0 {
                    take.push((*stage, n));
                }
            }
        }
        let pick = format!(
            "SELECT t.priority, t.id, t.concurrency_key FROM tasks t WHERE {filter} \
             ORDER BY t.priority DESC, t.id LIMIT $3{}",
            self.backend().lock_candidates()
        );
        let mut picked: Vec<(i64, i64, Option<String>)> = Vec::new();
        for (stage, n) in &take {
            let mut q = sqlx::query(&pick).bind(now).bind(stage.as_str()).bind(*n);
            for c in &caps {
                q = q.bind(c.as_str());
            }
            for r in q.fetch_all(&mut *tx).await? {
                picked.push((r.try_get("priority")?, r.try_get("id")?, r.try_get("concurrency_key")?));
            }
        }
        picked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        picked.truncate(max_tasks);
        let candidates: Vec<(i64, Option<String>)> = picked.into_iter().map(|(_, id, k)| (id, k)).collect();
        // Concurrency keys: claim them all without waiting; skip the unavailable ones.
        let mut keys: Vec<&str> = candidates.iter().filter_map(|(_, k)| k.as_deref()).collect();
        keys.sort_unstable();
        keys.dedup();
        let unavailable = self.backend().claim_keys(&mut tx, &keys).await?;
        let mut keys_taken: Vec<String> = Vec::new();
        let mut ids: Vec<i64> = Vec::with_capacity(candidates.len());
        for (id, key) in &candidates {
            if let Some(k) = key {
                if keys_taken.contains(k) || unavailable.contains(k) {
                    continue;
                }
                keys_taken.push(k.clone());
            }
            ids.push(*id);
        }
        if ids.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let ttl = self.settings().lease_ttl_ms;
        let sql = format!(
            "UPDATE tasks SET state = 'leased', lease_token = lease_token + 1, attempts = attempts + 1, \
             leased_by = $1, leased_at = $2, lease_expires_at = $3, updated_at = $2 \
             WHERE state = 'queued' AND id IN ({}) RETURNING {TASK_ROW_COLS}, time_limit_ms",
            placeholders(4, ids.len())
        );
        let mut q = sqlx::query(&sql).bind(agent_id).bind(now).bind(now + ttl);
        for id in &ids {
            q = q.bind(*id);
        }
        let leased_rows = q.fetch_all(&mut *tx).await?;
        let mut leased: Vec<(TaskRow, i64)> = Vec::with_capacity(leased_rows.len());
        for r in &leased_rows {
            leased.push((task_row(r)?, r.try_get("time_limit_ms")?));
        }
        // Hand them out in queue order.
        leased.sort_by_key(|(t, _)| ids.iter().position(|i| *i == t.id));
        for stage in Stage::ALL {
            let subjects: Vec<(i64, Option<i64>)> =
                leased.iter().filter(|(t, _)| t.stage == stage).map(|(t, _)| (t.video_id, t.project_id)).collect();
            let (waiting, running) = pipeline::subject_states(stage);
            pipeline::move_subjects(&mut tx, stage, &subjects, waiting, running, now).await?;
        }
        let out = self.build_inputs(&mut tx, &leased).await?;
        tx.commit().await?;
        for (t, _) in &leased {
            self.metrics().leases.with_label_values(&[t.stage.as_str()]).inc();
        }
        Ok(out)
    }

    /// Everything an agent needs to run each leased task, read from what the control plane
    /// recorded (never from the agent's own configuration).
    async fn build_inputs(&self, tx: &mut Tx, leased: &[(TaskRow, i64)]) -> Result<Vec<LeasedTask>> {
        let mut video_ids: Vec<i64> = leased.iter().map(|(t, _)| t.video_id).collect();
        video_ids.sort_unstable();
        video_ids.dedup();
        let sql = format!(
            "SELECT id, url, source_kind, file_path, extract_config, frames_dir, manifest_path FROM videos WHERE id IN ({})",
            placeholders(1, video_ids.len())
        );
        let mut q = sqlx::query(&sql);
        for v in &video_ids {
            q = q.bind(*v);
        }
        let videos: HashMap<i64, sqlx::any::AnyRow> = q
            .fetch_all(&mut **tx)
            .await?
            .into_iter()
            .map(|r| Ok((r.try_get::<i64, _>("id")?, r)))
            .collect::<Result<_>>()?;
        let mut project_ids: Vec<i64> = leased.iter().filter_map(|(t, _)| t.project_id).collect();
        project_ids.sort_unstable();
        project_ids.dedup();
        let mut projects: HashMap<i64, (String, dataminer_wire::ProjectConfig)> = HashMap::new();
        if !project_ids.is_empty() {
            let sql =
                format!("SELECT id, name, config FROM projects WHERE id IN ({})", placeholders(1, project_ids.len()));
            let mut q = sqlx::query(&sql);
            for p in &project_ids {
                q = q.bind(*p);
            }
            for r in q.fetch_all(&mut **tx).await? {
                let config: dataminer_wire::ProjectConfig = serde_json::from_str(&r.try_get::<String, _>("config")?)
                    .map_err(|e| StoreError::Corrupt(format!("project config: {e}")))?;
                projects.insert(r.try_get("id")?, (r.try_get("name")?, config));
            }
        }
        // Per-project-video paths of the project-stage tasks, in one query.
        let pairs: Vec<(i64, i64)> = leased
            .iter()
            .filter(|(t, _)| matches!(t.stage, Stage::Dedup | Stage::Detect))
            .map(|(t, _)| (t.project_id.unwrap_or(0), t.video_id))
            .collect();
        let mut pvs: HashMap<(i64, i64), (Option<String>, Option<String>)> = HashMap::new();
        if !pairs.is_empty() {
            let sql = format!(
                "SELECT pv.project_id, pv.video_id, pv.filter_dir, pv.dedup_dir FROM project_videos pv \
                 JOIN (VALUES {}) AS v ON pv.project_id = v.column1 AND pv.video_id = v.column2",
                values_rows(1, pairs.len(), 2)
            );
            let mut q = sqlx::query(&sql);
            for (p, v) in &pairs {
                q = q.bind(*p).bind(*v);
            }
            for r in q.fetch_all(&mut **tx).await? {
                pvs.insert(
                    (r.try_get("project_id")?, r.try_get("video_id")?),
                    (r.try_get("filter_dir")?, r.try_get("dedup_dir")?),
                );
            }
        }
        // Each dedup task gets its project's kept set so far, in the order it was built.
        let mut dedup_projects: Vec<i64> =
            leased.iter().filter(|(t, _)| t.stage == Stage::Dedup).filter_map(|(t, _)| t.project_id).collect();
        dedup_projects.sort_unstable();
        dedup_projects.dedup();
        let mut kept: HashMap<i64, Vec<String>> = HashMap::new();
        if !dedup_projects.is_empty() {
            let sql = format!(
                "SELECT project_id, dedup_dir FROM project_videos WHERE project_id IN ({}) AND kept_seq IS NOT NULL \
                 ORDER BY project_id, kept_seq",
                placeholders(1, dedup_projects.len())
            );
            let mut q = sqlx::query(&sql);
            for p in &dedup_projects {
                q = q.bind(*p);
            }
            for r in q.fetch_all(&mut **tx).await? {
                let dir: Option<String> = r.try_get("dedup_dir")?;
                kept.entry(r.try_get("project_id")?).or_default().push(dir.unwrap_or_default());
            }
        }
        let mut out = Vec::with_capacity(leased.len());
        for (t, time_limit_ms) in leased {
            let v =
                videos.get(&t.video_id).ok_or_else(|| StoreError::Corrupt(format!("task {} has no video", t.id)))?;
            let project = t.project_id.and_then(|p| projects.get(&p));
            let mut input = TaskInput { video_id: t.video_id, ..TaskInput::default() };
            match t.stage {
                Stage::Download => {
                    input.url = Some(v.try_get("url")?);
                    input.source_kind = Some(v.try_get("source_kind")?);
                }
                Stage::Extract => {
                    input.video_path = v.try_get("file_path")?;
                    let cfg: String = v.try_get("extract_config")?;
                    input.extract = Some(
                        serde_json::from_str(&cfg).map_err(|e| StoreError::Corrupt(format!("extract config: {e}")))?,
                    );
                }
                Stage::Filter | Stage::Dedup | Stage::Detect => {
                    let (name, config) =
                        project.ok_or_else(|| StoreError::Corrupt(format!("task {} has no project", t.id)))?;
                    input.project_id = t.project_id;
                    input.project = Some(name.clone());
                    input.frames_dir = v.try_get("frames_dir")?;
                    input.manifest_path = v.try_get("manifest_path")?;
                    let pv = pvs.get(&(t.project_id.unwrap_or(0), t.video_id));
                    let filter_dir = pv.and_then(|p| p.0.clone());
                    let dedup_dir = pv.and_then(|p| p.1.clone());
                    match t.stage {
                        Stage::Filter => input.filter = Some(config.filter.clone()),
                        Stage::Dedup => {
                            input.dedup = Some(config.dedup.clone());
                            input.filtered_dir = filter_dir;
                            input.prior_kept_dirs = kept.get(&t.project_id.unwrap_or(0)).cloned().unwrap_or_default();
                        }
                        _ => {
                            let mut detect = config.detect.clone();
                            if detect.prompts.is_empty() {
                                detect.prompts = config.filter.positive_prompts.clone();
                            }
                            input.detect = Some(detect);
                            input.deduped_dir = dedup_dir;
                        }
                    }
                }
            }
            out.push(LeasedTask {
                task_id: t.id,
                stage: t.stage,
                lease_token: t.lease_token,
                attempt: u32::try_from(t.attempts).unwrap_or(u32::MAX),
                max_attempts: u32::try_from(t.max_attempts).unwrap_or(u32::MAX),
                lease_ttl_ms: self.settings().lease_ttl_ms as u64,
                time_limit_ms: u64::try_from(*time_limit_ms).unwrap_or(0),
                attempt_dir: attempt_dir(t.stage, t.video_id, project.map(|(n, _)| n.as_str()), t.id, t.lease_token),
                input,
            });
        }
        Ok(out)
    }

    /// Extends a lease and records progress. A cancelled task (same token) is reported as
    /// cancelled instead of refused, so the agent knows to stop rather than to retry.
    #[instrument(skip(self, progress))]
    pub async fn heartbeat(
        &self,
        task_id: i64,
        token: i64,
        progress: Option<&serde_json::Value>,
    ) -> Result<HeartbeatOutcome> {
        let progress = match progress {
            Some(p) => {
                let s = p.to_string();
                if s.len() > MAX_PROGRESS_BYTES {
                    return Err(StoreError::invalid(
                        "progress_too_large",
                        format!("progress is larger than {MAX_PROGRESS_BYTES} bytes"),
                    ));
                }
                Some(s)
            }
            None => None,
        };
        let ttl = self.settings().lease_ttl_ms;
        let mut tx = self.begin_write().await?;
        let now = self.now(&mut tx).await?;
        let updated = sqlx::query(
            "UPDATE tasks SET lease_expires_at = $1, progress = COALESCE($2, progress), updated_at = $3 \
             WHERE id = $4 AND lease_token = $5 AND state = 'leased' RETURNING leased_by",
        )
        .bind(now + ttl)
        .bind(progress)
        .bind(now)
        .bind(task_id)
        .bind(token)
        .fetch_optional(&mut *tx)
        .await?;
        match updated {
            Some(r) => {
                let agent: Option<i64> = r.try_get("leased_by")?;
                if let Some(a) = agent {
                    sqlx::query("UPDATE agents SET last_seen = $1 WHERE id = $2")
                        .bind(now)
                        .bind(a)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(HeartbeatOutcome { cancelled: false, lease_expires_in_ms: ttl })
            }
            None => {
                let t = load_task(&mut tx, task_id).await?;
                tx.commit().await?;
                if t.state == "cancelled" && t.lease_token == token {
                    Ok(HeartbeatOutcome { cancelled: true, lease_expires_in_ms: 0 })
                } else {
                    Err(refuse(&t, token))
                }
            }
        }
    }

    /// Accepts several completions in one transaction; each is judged on its own (a refused
    /// one changes nothing), and the accepted ones commit with their successors.
    #[instrument(skip(self, items), fields(n = items.len()))]
    pub async fn complete_batch(&self, items: &[BatchCompletion]) -> Result<Vec<BatchCompleteOutcome>> {
        if items.len() > MAX_BATCH {
            return Err(StoreError::invalid("batch_too_large", format!("at most {MAX_BATCH} completions per call")));
        }
        let mut attempt = 0;
        loop {
            match self.try_complete_batch(items).await {
                Err(StoreError::Database(e)) if is_transient(&e) && attempt < 10 => attempt += 1,
                other => return other,
            }
        }
    }

    async fn try_complete_batch(&self, items: &[BatchCompletion]) -> Result<Vec<BatchCompleteOutcome>> {
        let mut tx = self.begin_write().await?;
        let now = self.now(&mut tx).await?;
        let mut ids: Vec<i64> = items.iter().map(|i| i.task_id).collect();
        ids.sort_unstable();
        ids.dedup();
        let sql = format!(
            "SELECT t.id, t.stage, t.state, t.video_id, t.project_id, t.priority, t.lease_token, t.attempts, \
             t.max_attempts, t.leased_at, p.name AS project_name FROM tasks t LEFT JOIN projects p ON p.id = t.project_id \
             WHERE t.id IN ({})",
            placeholders(1, ids.len())
        );
        let mut q = sqlx::query(&sql);
        for id in &ids {
            q = q.bind(*id);
        }
        let mut rows: HashMap<i64, (TaskRow, Option<String>)> = HashMap::new();
        for r in q.fetch_all(&mut *tx).await? {
            let t = task_row(&r)?;
            rows.insert(t.id, (t, r.try_get("project_name")?));
        }
        // Judge each completion on the rows as read; an accepted one makes a later repeat in
        // the same batch a duplicate.
        let mut verdicts: Vec<Result<bool>> = Vec::with_capacity(items.len());
        let mut accepted: Vec<usize> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let verdict = match rows.get(&item.task_id) {
                None => Err(StoreError::NotFound(format!("task {} not found", item.task_id))),
                Some((t, project)) => {
                    let earlier =
                        accepted.iter().find(|&&j| items[j].task_id == item.task_id).map(|&j| items[j].lease_token);
                    if let Some(token) = earlier {
                        if token == item.lease_token {
                            Ok(true)
                        } else {
                            Err(refuse(t, item.lease_token))
                        }
                    } else if t.state == "succeeded" && t.lease_token == item.lease_token {
                        // The agent lost our reply and asked again: same answer, no second effect.
                        Ok(true)
                    } else if t.state != "leased" || t.lease_token != item.lease_token {
                        Err(refuse(t, item.lease_token))
                    } else {
                        let dir = attempt_dir(t.stage, t.video_id, project.as_deref(), t.id, t.lease_token);
                        validate_result(t.stage, &dir, &item.result).map(|()| {
                            accepted.push(i);
                            false
                        })
                    }
                }
            };
            verdicts.push(verdict);
        }
        // One fenced UPDATE for all accepted completions; a row the fence refuses (another
        // replica requeued it since our read) is a lost lease and gets no successors.
        let mut fenced: Vec<i64> = Vec::new();
        if !accepted.is_empty() {
            let sql = format!(
                "UPDATE tasks SET state = 'succeeded', result = v.column3, output_path = v.column4, finished_at = $1, \
                 updated_at = $1, lease_expires_at = NULL FROM (VALUES {}) AS v \
                 WHERE tasks.id = v.column1 AND tasks.lease_token = v.column2 AND tasks.state = 'leased' RETURNING id",
                values_rows(2, accepted.len(), 4)
            );
            let mut q = sqlx::query(&sql).bind(now);
            for &i in &accepted {
                let item = &items[i];
                let json =
                    serde_json::to_string(&item.result).map_err(|e| StoreError::Corrupt(format!("result: {e}")))?;
                q = q.bind(item.task_id).bind(item.lease_token).bind(json).bind(output_path(&item.result).to_string());
            }
            for r in q.fetch_all(&mut *tx).await? {
                fenced.push(r.try_get("id")?);
            }
        }
        let mut applied = Vec::new();
        let mut durations = Vec::new();
        for &i in &accepted {
            let item = &items[i];
            let (t, _) = &rows[&item.task_id];
            if fenced.contains(&item.task_id) {
                applied.push((t.subject(), &item.result));
                if let Some(at) = t.leased_at {
                    durations.push((t.stage, now - at));
                }
            } else {
                verdicts[i] = Err(refuse(t, item.lease_token));
            }
        }
        // A repeat (within this batch) of a completion the fence refused is refused too.
        for (i, item) in items.iter().enumerate() {
            let repeat_of_refused = accepted.iter().any(|&j| j != i && items[j].task_id == item.task_id)
                && !fenced.contains(&item.task_id)
                && matches!(verdicts[i], Ok(true));
            if repeat_of_refused {
                let (t, _) = &rows[&item.task_id];
                verdicts[i] = Err(refuse(t, item.lease_token));
            }
        }
        let woken = pipeline::apply_results(self, &mut tx, &applied, now).await?;
        self.commit_and_wake_one(tx, &woken).await?;
        for (stage, ms) in durations {
            self.metrics().completions.with_label_values(&[stage.as_str()]).inc();
            self.metrics().task_duration.with_label_values(&[stage.as_str()]).observe(ms as f64 / 1000.0);
        }
        let mut outcomes = Vec::with_capacity(items.len());
        for (item, v) in items.iter().zip(verdicts) {
            outcomes.push(match v {
                Ok(duplicate) => BatchCompleteOutcome { task_id: item.task_id, status: 200, duplicate, error: None },
                Err(e) => {
                    let Some((status, code)) = e.client_status() else { return Err(e) };
                    BatchCompleteOutcome {
                        task_id: item.task_id,
                        status,
                        duplicate: false,
                        error: Some(ErrorDetail { code: code.to_string(), message: e.to_string() }),
                    }
                }
            });
        }
        Ok(outcomes)
    }

    /// Records a failure: retryable ones go back to the queue with backoff until the last
    /// attempt, fatal ones (and the last attempt) make the task dead and its subject FAILED.
    #[instrument(skip(self, error))]
    pub async fn fail(&self, task_id: i64, token: i64, error: &str, retryable: bool) -> Result<FailOutcome> {
        let error = clip(error, MAX_ERROR_CHARS);
        let mut tx = self.begin_write().await?;
        let now = self.now(&mut tx).await?;
        let t = load_task(&mut tx, task_id).await?;
        if t.state != "leased" || t.lease_token != token {
            return Err(refuse(&t, token));
        }
        let outcome = self.requeue_or_bury(&mut tx, &t, &error, retryable, now).await?;
        let woken: Vec<Stage> = if outcome.dead { Vec::new() } else { vec![t.stage] };
        self.commit_and_wake(tx, &woken).await?;
        let label = if outcome.dead { "dead" } else { "retry" };
        self.metrics().failures.with_label_values(&[t.stage.as_str(), label]).inc();
        Ok(outcome)
    }

    /// The shared tail of fail and reap. Fenced on the token the caller read.
    async fn requeue_or_bury(
        &self,
        tx: &mut Tx,
        t: &TaskRow,
        error: &str,
        retryable: bool,
        now: i64,
    ) -> Result<FailOutcome> {
        if retryable && t.attempts < t.max_attempts {
            let run_after = now + self.backoff_ms(t.attempts);
            let r = sqlx::query(
                "UPDATE tasks SET state = 'queued', run_after = $1, last_error = $2, leased_by = NULL, \
                 lease_expires_at = NULL, updated_at = $3 WHERE id = $4 AND lease_token = $5 AND state = 'leased'",
            )
            .bind(run_after)
            .bind(error)
            .bind(now)
            .bind(t.id)
            .bind(t.lease_token)
            .execute(&mut **tx)
            .await?;
            if r.rows_affected() != 1 {
                return Err(refuse(t, t.lease_token));
            }
            let (waiting, running) = pipeline::subject_states(t.stage);
            pipeline::move_subjects(tx, t.stage, &[(t.video_id, t.project_id)], running, waiting, now).await?;
            Ok(FailOutcome { dead: false, run_after_ms: Some(run_after) })
        } else {
            let error =
                if retryable { format!("{error} (gave up after {} attempts)", t.attempts) } else { error.to_string() };
            let r = sqlx::query(
                "UPDATE tasks SET state = 'dead', last_error = $1, finished_at = $2, updated_at = $2, \
                 lease_expires_at = NULL WHERE id = $3 AND lease_token = $4 AND state = 'leased'",
            )
            .bind(&error)
            .bind(now)
            .bind(t.id)
            .bind(t.lease_token)
            .execute(&mut **tx)
            .await?;
            if r.rows_affected() != 1 {
                return Err(refuse(t, t.lease_token));
            }
            pipeline::fail_subject(tx, &t.subject(), &error, now).await?;
            Ok(FailOutcome { dead: true, run_after_ms: None })
        }
    }

    /// Gives a task back (agent shutdown): queued again at once, the attempt not counted.
    #[instrument(skip(self))]
    pub async fn release(&self, task_id: i64, token: i64) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let now = self.now(&mut tx).await?;
        let t = load_task(&mut tx, task_id).await?;
        if t.state != "leased" || t.lease_token != token {
            return Err(refuse(&t, token));
        }
        let r = sqlx::query(
            "UPDATE tasks SET state = 'queued', run_after = $1, attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END, \
             leased_by = NULL, lease_expires_at = NULL, updated_at = $1 WHERE id = $2 AND lease_token = $3 AND state = 'leased'",
        )
        .bind(now)
        .bind(t.id)
        .bind(token)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() != 1 {
            return Err(refuse(&t, token));
        }
        let (waiting, running) = pipeline::subject_states(t.stage);
        pipeline::move_subjects(&mut tx, t.stage, &[(t.video_id, t.project_id)], running, waiting, now).await?;
        self.commit_and_wake(tx, &[t.stage]).await?;
        Ok(())
    }

    /// One reaper pass: requeues (with backoff) or buries every lease that expired or ran
    /// past its stage's hard time limit, by the database clock. Each row is updated on the
    /// token it was read with, so several replicas reaping at once cannot double-apply.
    #[instrument(skip(self))]
    pub async fn reap_once(&self) -> Result<ReapReport> {
        let mut tx = self.begin_write().await?;
        let now = self.now(&mut tx).await?;
        let sql = format!(
            "SELECT t.id, t.stage, t.state, t.video_id, t.project_id, t.priority, t.lease_token, t.attempts, \
             t.max_attempts, t.leased_at, t.lease_expires_at, t.time_limit_ms FROM tasks t \
             WHERE t.state = 'leased' AND (t.lease_expires_at <= $1 OR t.leased_at + t.time_limit_ms <= $1) \
             ORDER BY t.id LIMIT 256{}",
            self.backend().lock_candidates()
        );
        let rows = sqlx::query(&sql).bind(now).fetch_all(&mut *tx).await?;
        let mut report = ReapReport::default();
        let mut woken = Vec::new();
        for r in &rows {
            let t = task_row(r)?;
            let limit: i64 = r.try_get("time_limit_ms")?;
            let expires: Option<i64> = r.try_get("lease_expires_at")?;
            let over_time = t.leased_at.is_some_and(|at| at + limit <= now);
            let why = if over_time {
                format!("attempt {} exceeded the {} time limit of {} s", t.attempts, t.stage, limit / 1000)
            } else {
                format!(
                    "attempt {} lost its lease (no heartbeat for {} ms)",
                    t.attempts,
                    expires.map_or(0, |e| now - e) + self.settings().lease_ttl_ms
                )
            };
            let o = self.requeue_or_bury(&mut tx, &t, &why, true, now).await?;
            self.metrics().expiries.with_label_values(&[t.stage.as_str()]).inc();
            if o.dead {
                report.dead += 1;
            } else {
                report.requeued += 1;
                woken.push(t.stage);
            }
        }
        self.commit_and_wake(tx, &woken).await?;
        Ok(report)
    }

    /// Dead tasks, oldest first, after the cursor.
    pub async fn dead_tasks(&self, after: i64, limit: i64) -> Result<Vec<TaskView>> {
        let sql = format!(
            "SELECT {} FROM {} WHERE t.state = 'dead' AND t.id > $1 ORDER BY t.id LIMIT $2",
            rows::TASK_COLS,
            rows::TASK_FROM
        );
        let found = sqlx::query(&sql).bind(after).bind(limit).fetch_all(self.reader()).await?;
        found.iter().map(rows::task).collect()
    }

    /// A user retries a dead (or cancelled) task: queued again with fresh attempts, and its
    /// subject — plus whatever failed only because of it — back to waiting.
    #[instrument(skip(self))]
    pub async fn retry_task(&self, task_id: i64) -> Result<TaskView> {
        let mut tx = self.begin_write().await?;
        let now = self.now(&mut tx).await?;
        let t = load_task(&mut tx, task_id).await?;
        if t.state != "dead" && t.state != "cancelled" {
            return Err(StoreError::conflict(
                "not_retryable",
                format!("task {task_id} is {}; only dead or cancelled tasks can be retried", t.state),
            ));
        }
        if let Some(p) = t.project_id {
            let cancelled: i64 =
                sqlx::query_scalar("SELECT cancelled FROM projects WHERE id = $1").bind(p).fetch_one(&mut *tx).await?;
            if cancelled != 0 {
                return Err(StoreError::conflict("project_cancelled", "the task's project is cancelled"));
            }
        }
        self.reopen_task(&mut tx, &t, now).await?;
        self.commit_and_wake(tx, &[t.stage]).await?;
        let sql = format!("SELECT {} FROM {} WHERE t.id = $1", rows::TASK_COLS, rows::TASK_FROM);
        let r = sqlx::query(&sql).bind(task_id).fetch_one(self.reader()).await?;
        rows::task(&r)
    }

    /// Requeues a dead or cancelled task and reopens its subject (shared with video retry).
    pub(crate) async fn reopen_task_by_id(&self, tx: &mut Tx, task_id: i64, now: i64) -> Result<Stage> {
        let t = load_task(tx, task_id).await?;
        self.reopen_task(tx, &t, now).await?;
        Ok(t.stage)
    }

    async fn reopen_task(&self, tx: &mut Tx, t: &TaskRow, now: i64) -> Result<()> {
        sqlx::query(
            "UPDATE tasks SET state = 'queued', attempts = 0, run_after = $1, finished_at = NULL, leased_by = NULL, \
             lease_expires_at = NULL, updated_at = $1 WHERE id = $2 AND state IN ('dead', 'cancelled')",
        )
        .bind(now)
        .bind(t.id)
        .execute(&mut **tx)
        .await?;
        let (waiting, _) = pipeline::subject_states(t.stage);
        if t.stage.is_project_stage() {
            sqlx::query(
                "UPDATE project_videos SET state = $1, failed_stage = NULL, error = NULL, updated_at = $2 \
                 WHERE project_id = $3 AND video_id = $4",
            )
            .bind(waiting)
            .bind(now)
            .bind(t.project_id.unwrap_or(0))
            .bind(t.video_id)
            .execute(&mut **tx)
            .await?;
        } else {
            sqlx::query(
                "UPDATE videos SET state = $1, failed_stage = NULL, error = NULL, updated_at = $2 WHERE id = $3",
            )
            .bind(waiting)
            .bind(now)
            .bind(t.video_id)
            .execute(&mut **tx)
            .await?;
            // Videos that failed only because this content failed wait on it again.
            let dups = sqlx::query(
                "UPDATE videos SET state = 'DOWNLOADED', failed_stage = NULL, error = NULL, updated_at = $1 \
                 WHERE content_of = $2 AND state = 'FAILED' RETURNING id",
            )
            .bind(now)
            .bind(t.video_id)
            .fetch_all(&mut **tx)
            .await?;
            let mut ids = vec![t.video_id];
            for d in &dups {
                ids.push(d.try_get("id")?);
            }
            reopen_failed_project_videos(tx, &ids, now).await?;
        }
        Ok(())
    }
}

/// Project-videos that FAILED or were CANCELLED because their video did (no project-stage
/// task of their own ran) go back to PENDING, in projects that are not cancelled.
pub(crate) async fn reopen_failed_project_videos(tx: &mut Tx, video_ids: &[i64], now: i64) -> Result<u64> {
    let sql = format!(
        "UPDATE project_videos SET state = 'PENDING', failed_stage = NULL, error = NULL, updated_at = $1 \
         WHERE video_id IN ({}) AND state IN ('FAILED', 'CANCELLED') \
         AND (failed_stage IS NULL OR failed_stage IN ('download', 'extract')) \
         AND project_id IN (SELECT id FROM projects WHERE cancelled = 0) \
         AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.project_id = project_videos.project_id \
             AND t.video_id = project_videos.video_id AND t.state IN ('dead', 'cancelled'))",
        placeholders(2, video_ids.len())
    );
    let mut q = sqlx::query(&sql).bind(now);
    for v in video_ids {
        q = q.bind(*v);
    }
    Ok(q.execute(&mut **tx).await?.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_stay_inside_the_attempt_dir() {
        let d = "frames_raw/7/12.3";
        for (p, ok) in [
            ("frames_raw/7/12.3", true),
            ("frames_raw/7/12.3/manifest.json", true),
            ("frames_raw/7/12.30/x", false),
            ("frames_raw/7/12.3/../12.2/x", false),
            ("frames_raw/7/12.3/./x", false),
            ("frames_raw/7/12.3//x", false),
            ("/frames_raw/7/12.3/x", false),
            ("frames_raw/7/12.2/x", false),
        ] {
            assert_eq!(inside(p, d), ok, "{p}");
        }
    }

    #[test]
    fn attempt_dirs_are_per_task_and_token() {
        assert_eq!(attempt_dir(Stage::Download, 5, None, 9, 2), "videos/5/9.2");
        assert_eq!(attempt_dir(Stage::Dedup, 5, Some("doors"), 9, 2), "projects/doors/frames_dedup/5/9.2");
    }
}
