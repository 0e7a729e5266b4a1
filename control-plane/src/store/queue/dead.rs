//! Dead (and cancelled) tasks: the list users read, and retry — the task queued again with
//! fresh attempts and its subject, plus whatever failed only because of it, back to waiting.

use dataminer_wire::{Stage, TaskView};
use tracing::instrument;

use super::{load_task, TaskRow};
use crate::store::stages::{self, LockMode, Tx};
use crate::store::{rows, Result, Store, StoreError};

impl Store {
    /// Dead tasks, oldest first, after the cursor.
    pub async fn dead_tasks(&self, after: i64, limit: i64) -> Result<Vec<TaskView>> {
        let sql = format!(
            "SELECT {} FROM {} WHERE t.state = 'dead' AND t.id > $1 ORDER BY t.id LIMIT $2",
            rows::TASK_COLS,
            rows::TASK_FROM
        );
        let found = sqlx::query(&sql).bind(after).bind(limit).fetch_all(self.reader()?).await?;
        found.iter().map(rows::task).collect()
    }

    /// A user retries a dead (or cancelled) task. Its project is locked first, so a
    /// concurrent project cancel either sees the requeued task or is seen (409).
    #[instrument(skip(self))]
    pub async fn retry_task(&self, task_id: i64) -> Result<TaskView> {
        let mut tx = self.begin_write().await?;
        let now = self.now(&mut tx).await?;
        let t = load_task(&mut tx, task_id).await?;
        if let Some(p) = t.s.project_id {
            stages::lock_owners(self, &mut tx, "projects", &[p], LockMode::Share).await?;
            let cancelled: i64 =
                sqlx::query_scalar("SELECT cancelled FROM projects WHERE id = $1").bind(p).fetch_one(&mut *tx).await?;
            if cancelled != 0 {
                return Err(StoreError::conflict("project_cancelled", "the task's project is cancelled"));
            }
        }
        stages::lock_task_owners(self, &mut tx, &[&t.s]).await?;
        let t = load_task(&mut tx, task_id).await?;
        if t.state != "dead" && t.state != "cancelled" {
            return Err(StoreError::conflict(
                "not_retryable",
                format!("task {task_id} is {}; only dead or cancelled tasks can be retried", t.state),
            ));
        }
        let woken = self.reopen_task(&mut tx, &t, now).await?;
        self.commit_and_wake(tx, &woken).await?;
        let sql = format!("SELECT {} FROM {} WHERE t.id = $1", rows::TASK_COLS, rows::TASK_FROM);
        let r = sqlx::query(&sql).bind(task_id).fetch_one(self.reader()?).await?;
        rows::task(&r)
    }

    /// Requeues a dead or cancelled task and reopens its subject (shared with video retry).
    /// Returns the stages with new work; refuses (409) when the task changed meanwhile.
    pub(crate) async fn reopen_task(&self, tx: &mut Tx, t: &TaskRow, now: i64) -> Result<Vec<Stage>> {
        let r = sqlx::query(
            "UPDATE tasks SET state = 'queued', attempts = 0, run_after = $1, finished_at = NULL, leased_by = NULL, \
             lease_expires_at = NULL, updated_at = $1 WHERE id = $2 AND state IN ('dead', 'cancelled')",
        )
        .bind(now)
        .bind(t.s.id)
        .execute(&mut **tx)
        .await?;
        if r.rows_affected() != 1 {
            return Err(StoreError::conflict(
                "not_retryable",
                format!("task {} is no longer dead or cancelled", t.s.id),
            ));
        }
        stages::refresh_requires(tx, &[&t.s]).await?;
        stages::reopen_subject(self, tx, &t.s, now).await
    }

    pub(crate) async fn reopen_task_by_id(&self, tx: &mut Tx, task_id: i64, now: i64) -> Result<Vec<Stage>> {
        let t = load_task(tx, task_id).await?;
        self.reopen_task(tx, &t, now).await
    }
}
