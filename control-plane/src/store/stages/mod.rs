//! One place per stage: what its task works on (its subject and the states it moves it
//! through, from `machine.rs`), where its attempts write, its concurrency key, the inputs a
//! lease hands out, how its result is validated and recorded, and which successors it
//! enqueues — all inside the caller's transaction, so a completion and its successors commit
//! together or not at all. The queue (`store/queue/`) knows no stage: it calls the
//! dispatchers below.
//!
//! Locking rule (PostgreSQL; SQLite's single writer serialises everything anyway): a
//! transaction that decides from a subject's state, or enqueues work for it, first locks the
//! row that owns it — the project (`FOR SHARE` for progress, `FOR UPDATE` by a cancel), the
//! video, or the extraction — and every subject UPDATE is guarded by the states the machine
//! allows. Two transactions touching the same subject therefore serialise on its owner and
//! the second one sees the first one's rows.

pub(crate) mod download;
pub(crate) mod extract;
pub(crate) mod project;

use std::collections::HashMap;

use dataminer_wire::{LeasedTask, Stage, StageResult};
use sqlx::{Any, Transaction};

use super::machine::{self, Event, Subject};
use super::{placeholders, Result, Store, StoreError};

pub(crate) type Tx = Transaction<'static, Any>;

/// The facts of a task row a stage needs.
#[derive(Debug, Clone)]
pub(crate) struct TaskSubject {
    pub id: i64,
    pub stage: Stage,
    pub video_id: i64,
    pub project_id: Option<i64>,
    pub extraction_id: Option<i64>,
    pub priority: i64,
    pub lease_token: i64,
    pub attempts: i64,
    pub max_attempts: i64,
    pub time_limit_ms: i64,
}

/// A task about to be inserted.
#[derive(Debug, Clone)]
pub(crate) struct NewTask {
    pub stage: Stage,
    pub video_id: i64,
    pub project_id: Option<i64>,
    pub extraction_id: Option<i64>,
    pub priority: i64,
    /// The capability an agent needs to lease it (`yt-dlp` for a platform download). For a
    /// filter, dedup or detect task, `None` means its project's model for the stage
    /// (`model:<name>`), which [`enqueue_many`] reads from the project's configuration.
    pub requires: Option<String>,
}

impl NewTask {
    /// A video's download (platform URLs require the yt-dlp capability).
    pub(crate) fn download(video_id: i64, priority: i64, requires: Option<String>) -> NewTask {
        NewTask { stage: Stage::Download, video_id, project_id: None, extraction_id: None, priority, requires }
    }

    pub(crate) fn after(t: &TaskSubject, stage: Stage) -> NewTask {
        NewTask {
            stage,
            video_id: t.video_id,
            project_id: t.project_id,
            extraction_id: None,
            priority: t.priority,
            requires: None,
        }
    }
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

/// The concurrency key of a new task: dedup tasks of one project run one at a time, which
/// keeps the project's kept set consistent without locks.
pub(crate) fn concurrency_key(stage: Stage, project_id: Option<i64>) -> Option<String> {
    match (stage, project_id) {
        (Stage::Dedup, Some(p)) => Some(format!("dedup:{p}")),
        _ => None,
    }
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

/// Inserts queued tasks, many per statement. A project-stage task without an explicit
/// `requires` requires its project's model for the stage (the configuration as it is in this
/// transaction; a later config update rewrites queued tasks in its own).
pub(crate) async fn enqueue_many(store: &Store, tx: &mut Tx, tasks: &[NewTask], now: i64) -> Result<()> {
    let s = store.settings();
    let projects: Vec<i64> = tasks
        .iter()
        .filter(|t| t.stage.is_project_stage() && t.requires.is_none())
        .filter_map(|t| t.project_id)
        .collect();
    let configs = if projects.is_empty() { HashMap::new() } else { project::configs(tx, &projects).await? };
    let requires = |t: &NewTask| match &t.requires {
        Some(r) => Some(r.clone()),
        None => t.project_id.and_then(|p| configs.get(&p)).and_then(|c| c.requires(t.stage)),
    };
    for chunk in tasks.chunks(256) {
        let sql = format!(
            "INSERT INTO tasks (stage, video_id, project_id, extraction_id, max_attempts, priority, concurrency_key, \
             requires, time_limit_ms, state, run_after, created_at, updated_at) \
             SELECT v.column1, v.column2, v.column3, v.column4, v.column5, v.column6, v.column7, v.column8, v.column9, \
             'queued', $1, $1, $1 FROM (VALUES {}) AS v",
            values_rows(2, chunk.len(), 9)
        );
        let mut q = sqlx::query(&sql).bind(now);
        for t in chunk {
            q = q
                .bind(t.stage.as_str())
                .bind(t.video_id)
                .bind(t.project_id)
                .bind(t.extraction_id)
                .bind(s.max_attempts)
                .bind(t.priority)
                .bind(concurrency_key(t.stage, t.project_id))
                .bind(requires(t))
                .bind(s.time_limit_ms.get(t.stage));
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// How strongly [`lock_owners`] locks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LockMode {
    /// Progress (completions, failures, joins): many may hold it at once.
    Share,
    /// A user's cancel or retry of the whole owner.
    Update,
}

/// Locks owner rows (`table` is `projects`, `videos` or `extractions`, a literal) in id
/// order, so two transactions never wait on each other in opposite orders. No-op on SQLite,
/// whose single writer already serialises write transactions.
pub(crate) async fn lock_owners(store: &Store, tx: &mut Tx, table: &str, ids: &[i64], mode: LockMode) -> Result<()> {
    if store.backend() == super::Backend::Sqlite || ids.is_empty() {
        return Ok(());
    }
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let lock = match mode {
        LockMode::Share => "FOR SHARE",
        LockMode::Update => "FOR UPDATE",
    };
    let sql = format!("SELECT id FROM {table} WHERE id IN ({}) ORDER BY id {lock}", placeholders(1, ids.len()));
    let mut q = sqlx::query(&sql);
    for id in &ids {
        q = q.bind(*id);
    }
    q.fetch_all(&mut **tx).await?;
    Ok(())
}

/// Locks what the tasks' subjects belong to before the queue writes the tasks: the projects
/// of project-stage tasks (`FOR SHARE`: completions never update a project row, so the lock
/// is never upgraded), then the videos and extractions (`FOR UPDATE`: completions and
/// failures update them, and a shared lock upgraded later would deadlock two of them).
/// Always projects → videos → extractions → tasks, each in id order.
pub(crate) async fn lock_task_owners(store: &Store, tx: &mut Tx, tasks: &[&TaskSubject]) -> Result<()> {
    let projects: Vec<i64> = tasks.iter().filter_map(|t| t.project_id).collect();
    lock_owners(store, tx, "projects", &projects, LockMode::Share).await?;
    let videos: Vec<i64> = tasks.iter().map(|t| t.video_id).collect();
    lock_owners(store, tx, "videos", &videos, LockMode::Update).await?;
    let extractions: Vec<i64> = tasks.iter().filter_map(|t| t.extraction_id).collect();
    lock_owners(store, tx, "extractions", &extractions, LockMode::Update).await
}

/// Moves the subjects of `stage` tasks along `event` (lease or requeue), guarded by the
/// machine's from-states so a concurrent cancel is never overwritten.
pub(crate) async fn move_subjects(
    tx: &mut Tx,
    stage: Stage,
    tasks: &[&TaskSubject],
    event: Event,
    now: i64,
) -> Result<()> {
    if tasks.is_empty() {
        return Ok(());
    }
    let subject = machine::subject_of(stage);
    let to = machine::target(subject, Some(stage), event);
    let guard = machine::guard("state", subject, Some(stage), event);
    match subject {
        Subject::ProjectVideo => {
            let sql = format!(
                "UPDATE project_videos SET state = $1, updated_at = $2 WHERE {guard} \
                 AND (project_id, video_id) IN (VALUES {})",
                values_rows(3, tasks.len(), 2)
            );
            let mut q = sqlx::query(&sql).bind(to).bind(now);
            for t in tasks {
                q = q.bind(t.project_id.unwrap_or(0)).bind(t.video_id);
            }
            q.execute(&mut **tx).await?;
        }
        Subject::Video | Subject::Extraction => {
            let sql = format!(
                "UPDATE {} SET state = $1, updated_at = $2 WHERE {guard} AND id IN ({})",
                subject.table(),
                placeholders(3, tasks.len())
            );
            let mut q = sqlx::query(&sql).bind(to).bind(now);
            for t in tasks {
                q = q.bind(if subject == Subject::Video { t.video_id } else { t.extraction_id.unwrap_or(0) });
            }
            q.execute(&mut **tx).await?;
        }
    }
    Ok(())
}

/// Checks a completion's result against the task it completes.
pub(crate) fn validate_result(t: &TaskSubject, dir: &str, r: &StageResult) -> Result<()> {
    let stage = t.stage;
    if r.stage() != stage {
        return Err(StoreError::invalid(
            "result_stage_mismatch",
            format!("result is for stage {} but the task is {stage}", r.stage()),
        ));
    }
    match stage {
        Stage::Download => download::validate(dir, r),
        Stage::Extract => extract::validate(dir, r),
        Stage::Filter | Stage::Dedup | Stage::Detect => project::validate(t, dir, r),
    }
}

/// The checks of a result that need the database, run in the completing transaction after
/// the owners are locked and before the fenced update, so a refused result changes nothing
/// and the other completions of a batch go on.
pub(crate) async fn validate_in_tx(tx: &mut Tx, t: &TaskSubject, r: &StageResult) -> Result<()> {
    match t.stage {
        Stage::Filter | Stage::Dedup => super::frames::validate_in_tx(tx, t, r).await,
        _ => Ok(()),
    }
}

/// The result as the task row keeps it: without the per-frame rows, which live in
/// `project_frames` (a task row stays small whatever the video's length).
pub(crate) fn stored_result(r: &StageResult) -> std::borrow::Cow<'_, StageResult> {
    match r {
        StageResult::Filter { frames, .. } if !frames.is_empty() => {
            let mut c = r.clone();
            if let StageResult::Filter { frames, .. } = &mut c {
                frames.clear();
            }
            std::borrow::Cow::Owned(c)
        }
        StageResult::Dedup { decisions, .. } if !decisions.is_empty() => {
            let mut c = r.clone();
            if let StageResult::Dedup { decisions, .. } = &mut c {
                decisions.clear();
            }
            std::borrow::Cow::Owned(c)
        }
        _ => std::borrow::Cow::Borrowed(r),
    }
}

/// The path a completion records as the task's accepted output.
pub(crate) fn output_path(r: &StageResult) -> &str {
    match r {
        StageResult::Download { file_path, .. } => file_path,
        StageResult::Extract { frames_dir, .. } => frames_dir,
        StageResult::Filter { output_dir, .. }
        | StageResult::Dedup { output_dir, .. }
        | StageResult::Detect { output_dir, .. } => output_dir,
    }
}

/// True when `path` is `dir` or lies inside it, with no `..`, `.` or empty components that
/// could walk out of it.
pub(crate) fn inside(path: &str, dir: &str) -> bool {
    let ok_parts = path.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
    ok_parts && (path == dir || path.strip_prefix(dir).is_some_and(|rest| rest.starts_with('/')))
}

pub(crate) fn path_ok(field: &str, p: &str, dir: &str) -> Result<()> {
    if inside(p, dir) {
        Ok(())
    } else {
        Err(StoreError::invalid(
            "output_outside_attempt_dir",
            format!("{field} {p:?} must lie inside the attempt directory {dir:?}"),
        ))
    }
}

pub(crate) fn nonneg(field: &str, v: i64) -> Result<()> {
    if v < 0 {
        Err(StoreError::invalid("invalid_result", format!("{field} must not be negative")))
    } else {
        Ok(())
    }
}

/// What applying a batch of results asks the caller to do after commit.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    /// Stages that got new queued work.
    pub woken: Vec<Stage>,
}

impl Effects {
    pub(crate) fn wake(&mut self, s: Stage) {
        if !self.woken.contains(&s) {
            self.woken.push(s);
        }
    }
}

/// Records accepted completions on their subjects and enqueues successors, a few set-based
/// statements per stage whatever the batch size.
pub(crate) async fn apply_results(
    store: &Store,
    tx: &mut Tx,
    items: &[(TaskSubject, &StageResult)],
    now: i64,
) -> Result<Effects> {
    let mut fx = Effects::default();
    let mut by_stage: HashMap<Stage, Vec<(&TaskSubject, &StageResult)>> = HashMap::new();
    for (t, r) in items {
        by_stage.entry(t.stage).or_default().push((t, *r));
    }
    for stage in Stage::ALL {
        let Some(batch) = by_stage.get(&stage) else { continue };
        match stage {
            Stage::Download => download::apply(store, tx, batch, now, &mut fx).await?,
            Stage::Extract => extract::apply(store, tx, batch, now, &mut fx).await?,
            Stage::Filter => project::apply_filter(store, tx, batch, now, &mut fx).await?,
            Stage::Dedup => project::apply_dedup(store, tx, batch, now, &mut fx).await?,
            Stage::Detect => project::apply_detect(tx, batch, now).await?,
        }
        // A finished task frees its concurrency key: the next task with it can run now.
        if concurrency_key(stage, Some(0)).is_some() {
            fx.wake(stage);
        }
    }
    Ok(fx)
}

/// Marks a task's subject FAILED after its task died, and what waited on it.
pub(crate) async fn fail_subject(store: &Store, tx: &mut Tx, t: &TaskSubject, error: &str, now: i64) -> Result<()> {
    match t.stage {
        Stage::Download => download::fail(store, tx, t, error, now).await,
        Stage::Extract => extract::fail(store, tx, t, error, now).await,
        Stage::Filter | Stage::Dedup | Stage::Detect => project::fail(tx, t, error, now).await,
    }
}

/// Reopens the subject of a dead or cancelled task a user retries (the task itself is
/// requeued by the caller). Returns stages with new work.
pub(crate) async fn reopen_subject(store: &Store, tx: &mut Tx, t: &TaskSubject, now: i64) -> Result<Vec<Stage>> {
    match t.stage {
        Stage::Download => download::reopen(tx, t, now).await,
        Stage::Extract => extract::reopen(store, tx, t, now).await,
        Stage::Filter | Stage::Dedup | Stage::Detect => project::reopen(tx, t, now).await,
    }
}

/// Brings the `requires` of tasks that are queued again (after a lease, or a user's retry)
/// up to date with what their stage needs now (see [`project::refresh_requires`]).
pub(crate) async fn refresh_requires(tx: &mut Tx, tasks: &[&TaskSubject]) -> Result<()> {
    project::refresh_requires(tx, tasks).await
}

/// Everything an agent needs to run each leased task, read from what the control plane
/// recorded (never from the agent's own configuration).
pub(crate) async fn build_inputs(store: &Store, tx: &mut Tx, leased: &[TaskSubject]) -> Result<Vec<LeasedTask>> {
    let mut inputs = inputs::Inputs::load(tx, leased).await?;
    let mut out = Vec::with_capacity(leased.len());
    for t in leased {
        let (input, project) = match t.stage {
            Stage::Download => (download::input(&inputs, t)?, None),
            Stage::Extract => (extract::input(&inputs, t)?, None),
            Stage::Filter | Stage::Dedup | Stage::Detect => project::input(&mut inputs, t)?,
        };
        out.push(LeasedTask {
            task_id: t.id,
            stage: t.stage,
            lease_token: t.lease_token,
            attempt: u32::try_from(t.attempts).unwrap_or(u32::MAX),
            max_attempts: u32::try_from(t.max_attempts).unwrap_or(u32::MAX),
            lease_ttl_ms: store.settings().lease_ttl_ms as u64,
            time_limit_ms: u64::try_from(t.time_limit_ms).unwrap_or(0),
            attempt_dir: attempt_dir(t.stage, t.video_id, project.as_deref(), t.id, t.lease_token),
            input,
        });
    }
    Ok(out)
}

pub(crate) mod inputs;

/// What a cancellation covers: everything of a project, or everything of a video.
#[derive(Debug, Clone, Copy)]
pub(crate) enum CancelScope {
    Project(i64),
    Video(i64),
}

/// Cancels the queued and leased tasks in scope (leased ones learn it from their next
/// heartbeat) and its unfinished project-videos. The caller has locked the owner (project or
/// video) `FOR UPDATE`, so no completion can add successors in scope between the two
/// statements.
pub(crate) async fn cancel_open_work(tx: &mut Tx, scope: CancelScope, now: i64) -> Result<()> {
    let (column, id) = match scope {
        CancelScope::Project(id) => ("project_id", id),
        CancelScope::Video(id) => ("video_id", id),
    };
    let pv_guard = machine::guard("state", Subject::ProjectVideo, None, Event::Cancel);
    // `column` is one of the two literals above, never input; extract tasks of a video are
    // handled by `extract::cancel_for_video` (they may serve other videos' projects).
    for sql in [
        format!(
            "UPDATE tasks SET state = 'cancelled', finished_at = $1, updated_at = $1 \
             WHERE {column} = $2 AND state IN ('queued', 'leased') AND stage <> 'extract'"
        ),
        format!("UPDATE project_videos SET state = 'CANCELLED', updated_at = $1 WHERE {column} = $2 AND {pv_guard}"),
    ] {
        sqlx::query(&sql).bind(now).bind(id).execute(&mut **tx).await?;
    }
    Ok(())
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
