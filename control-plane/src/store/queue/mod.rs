//! The task queue and its lease protocol, stage-agnostic: lease (`lease.rs`), heartbeat,
//! complete, fail and release (`report.rs`), the reaper (`reap.rs`), dead tasks and retry
//! (`dead.rs`). What a stage means — its subject, inputs, results, successors — is asked of
//! `stages/`. Every write to a leased task is a conditional UPDATE on (id, lease_token,
//! state = 'leased', lease not expired) whose affected-row count decides: zero rows means
//! the caller lost the lease and nothing changed.

mod dead;
mod lease;
mod reap;
mod report;

use dataminer_wire::Stage;
use rand::Rng;
use sqlx::Row;

pub use reap::ReapReport;
pub use report::{CompleteOutcome, FailOutcome, HeartbeatOutcome};

use super::stages::{TaskSubject, Tx};
use super::{rows, Result, Store, StoreError};

pub(crate) const MAX_ERROR_CHARS: usize = 4096;
pub(crate) const MAX_PROGRESS_BYTES: usize = 4096;
/// The most tasks one lease or batch-complete call may carry.
pub const MAX_BATCH: usize = 64;

/// The columns of a task the protocol needs.
#[derive(Debug, Clone)]
pub(crate) struct TaskRow {
    pub s: TaskSubject,
    pub state: String,
    pub leased_at: Option<i64>,
    pub lease_expires_at: Option<i64>,
}

pub(crate) const TASK_ROW_COLS: &str = "id, stage, state, video_id, project_id, extraction_id, priority, lease_token, \
    attempts, max_attempts, leased_at, lease_expires_at, time_limit_ms";

pub(crate) fn task_row(r: &sqlx::any::AnyRow) -> Result<TaskRow> {
    Ok(TaskRow {
        s: TaskSubject {
            id: r.try_get("id")?,
            stage: rows::parse_stage(&r.try_get::<String, _>("stage")?)?,
            video_id: r.try_get("video_id")?,
            project_id: r.try_get("project_id")?,
            extraction_id: r.try_get("extraction_id")?,
            priority: r.try_get("priority")?,
            lease_token: r.try_get("lease_token")?,
            attempts: r.try_get("attempts")?,
            max_attempts: r.try_get("max_attempts")?,
            time_limit_ms: r.try_get("time_limit_ms")?,
        },
        state: r.try_get("state")?,
        leased_at: r.try_get("leased_at")?,
        lease_expires_at: r.try_get("lease_expires_at")?,
    })
}

pub(crate) async fn load_task(tx: &mut Tx, id: i64) -> Result<TaskRow> {
    let sql = format!("SELECT {TASK_ROW_COLS} FROM tasks WHERE id = $1");
    let row = sqlx::query(&sql).bind(id).fetch_optional(&mut **tx).await?;
    match row {
        Some(r) => task_row(&r),
        None => Err(StoreError::NotFound(format!("task {id} not found"))),
    }
}

/// The fence every write to a leased task carries (placeholders `$tok`, `$now`, `$grace`
/// bound by the caller): the caller's token, still leased, lease not expired by the database
/// clock (unless the leases are in their grace period after a database outage).
pub(crate) fn fence(id: &str, token: &str, now: &str, grace: &str) -> String {
    format!(
        "tasks.id = {id} AND tasks.lease_token = {token} AND tasks.state = 'leased' \
         AND (tasks.lease_expires_at > {now} OR {grace} = 1)"
    )
}

/// Why a fenced write was refused, from the row as it is now, in words a person reads.
pub(crate) fn refuse(t: &TaskRow, token: i64, now: i64, grace: bool) -> StoreError {
    let id = t.s.id;
    if t.state == "cancelled" && t.s.lease_token == token {
        return StoreError::conflict("task_cancelled", format!("task {id} was cancelled; drop its work"));
    }
    if t.state == "leased" && t.s.lease_token == token && !grace {
        if let Some(at) = t.lease_expires_at.filter(|at| *at <= now) {
            return StoreError::conflict(
                "lease_expired",
                format!(
                    "task {id}'s lease expired {} ms ago (no heartbeat in time); your lease token {token} is no longer valid",
                    now - at
                ),
            );
        }
    }
    let what = if t.state == "leased" {
        format!("task {id} is leased with lease token {}", t.s.lease_token)
    } else {
        format!("task {id} is {}", t.state)
    };
    StoreError::conflict("lease_lost", format!("{what}; your lease token {token} is no longer valid"))
}

impl Store {
    /// Exponential backoff with jitter for the `attempts`-th failure: base·2^(n−1), capped,
    /// scaled by a random factor in [0.5, 1] so requeued tasks do not stampede together.
    pub(crate) fn backoff_ms(&self, attempts: i64) -> i64 {
        let s = self.settings();
        let exp = attempts.clamp(1, 30) - 1;
        let raw = s.retry_base_ms.saturating_mul(1_i64 << exp).min(s.retry_max_ms);
        let factor: f64 = rand::rng().random_range(0.5..=1.0);
        (raw as f64 * factor) as i64
    }
}

/// Stages in `woken` plus, for a requeue into the future, when to wake them again.
#[derive(Debug, Default)]
pub(crate) struct Wakes {
    pub now: Vec<Stage>,
    pub later: Vec<(Stage, i64)>,
}
