//! The reaper's pass and the shared tail of fail and reap: a lease that expired (by the
//! database clock, outside the grace period after a database outage) or ran past its stage's
//! hard time limit is requeued with backoff, or buried when its attempts are spent. Each row
//! is updated on the token it was read with, so several replicas reaping at once cannot
//! double-apply.

use dataminer_wire::Stage;
use tracing::instrument;

use super::{fence, refuse, task_row, FailOutcome, TaskRow, Wakes, TASK_ROW_COLS};
use crate::store::machine::Event;
use crate::store::stages::{self, Tx};
use crate::store::{placeholders, Result, Store, StoreError};

/// What one reaper pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReapReport {
    pub requeued: usize,
    pub dead: usize,
}

impl Store {
    /// Requeues (run again after a backoff, or at once when `immediate`) or buries a leased
    /// task. Fenced on the token the caller read.
    pub(crate) async fn requeue_or_bury(
        &self,
        tx: &mut Tx,
        t: &TaskRow,
        error: &str,
        retryable: bool,
        now: i64,
        immediate: bool,
    ) -> Result<(FailOutcome, Wakes)> {
        let mut wakes = Wakes::default();
        // The fence here checks token and state only: the reaper acts on expired leases.
        let fenced = fence("$4", "$5", "$3", "1");
        if retryable && t.s.attempts < t.s.max_attempts {
            let run_after = if immediate { now } else { now + self.backoff_ms(t.s.attempts) };
            let sql = format!(
                "UPDATE tasks SET state = 'queued', run_after = $1, last_error = $2, leased_by = NULL, \
                 lease_expires_at = NULL, updated_at = $3 WHERE {fenced}"
            );
            let r = sqlx::query(&sql)
                .bind(run_after)
                .bind(error)
                .bind(now)
                .bind(t.s.id)
                .bind(t.s.lease_token)
                .execute(&mut **tx)
                .await?;
            if r.rows_affected() != 1 {
                return Err(refuse(t, t.s.lease_token, now, true));
            }
            stages::move_subjects(tx, t.s.stage, &[&t.s], Event::Requeue, now).await?;
            stages::refresh_requires(tx, &[&t.s]).await?;
            // Waiters learn of it now (a freed concurrency key may let another task run) and
            // again when its backoff ends, so nobody waits for the slow poll.
            wakes.now.push(t.s.stage);
            if run_after > now {
                wakes.later.push((t.s.stage, run_after - now));
            }
            Ok((FailOutcome { dead: false, run_after_ms: Some(run_after) }, wakes))
        } else {
            let error = if retryable {
                format!("{error} (gave up after {} attempts)", t.s.attempts)
            } else {
                error.to_string()
            };
            let sql = format!(
                "UPDATE tasks SET state = 'dead', last_error = $1, finished_at = $2, updated_at = $3, \
                 lease_expires_at = NULL WHERE {fenced}"
            );
            let r = sqlx::query(&sql)
                .bind(&error)
                .bind(now)
                .bind(now)
                .bind(t.s.id)
                .bind(t.s.lease_token)
                .execute(&mut **tx)
                .await?;
            if r.rows_affected() != 1 {
                return Err(refuse(t, t.s.lease_token, now, true));
            }
            stages::fail_subject(self, tx, &t.s, &error, now).await?;
            if stages::concurrency_key(t.s.stage, t.s.project_id).is_some() {
                wakes.now.push(t.s.stage);
            }
            Ok((FailOutcome { dead: true, run_after_ms: None }, wakes))
        }
    }

    /// Requeues or buries the expired and over-time leases (of `stages`, or all), up to 256.
    pub(crate) async fn requeue_expired(
        &self,
        tx: &mut Tx,
        now: i64,
        stages: Option<&[Stage]>,
        immediate: bool,
    ) -> Result<(ReapReport, Wakes)> {
        let grace = self.lease_grace();
        // In the grace period only the hard time limit applies.
        let expiry = if grace { "" } else { "t.lease_expires_at <= $1 OR " };
        let mut sql = format!(
            "SELECT {} FROM tasks t WHERE t.state = 'leased' AND ({expiry}t.leased_at + t.time_limit_ms <= $1)",
            TASK_ROW_COLS.split(", ").map(|c| format!("t.{c}")).collect::<Vec<_>>().join(", ")
        );
        if let Some(s) = stages {
            sql.push_str(&format!(" AND t.stage IN ({})", placeholders(2, s.len())));
        }
        // Read without row locks: owners are locked first (the locking rule), then each task
        // is written on the token read; a task another replica got to first is skipped.
        sql.push_str(" ORDER BY t.id LIMIT 256");
        let mut q = sqlx::query(&sql).bind(now);
        for s in stages.unwrap_or(&[]) {
            q = q.bind(s.as_str());
        }
        let rows = q.fetch_all(&mut **tx).await?;
        let tasks: Vec<TaskRow> = rows.iter().map(task_row).collect::<Result<_>>()?;
        let subjects: Vec<&stages::TaskSubject> = tasks.iter().map(|t| &t.s).collect();
        stages::lock_task_owners(self, tx, &subjects).await?;
        let mut report = ReapReport::default();
        let mut wakes = Wakes::default();
        for t in &tasks {
            let over_time = t.leased_at.is_some_and(|at| at + t.s.time_limit_ms <= now);
            let why = if over_time {
                format!(
                    "attempt {} exceeded the {} time limit of {} s",
                    t.s.attempts,
                    t.s.stage,
                    t.s.time_limit_ms / 1000
                )
            } else {
                format!(
                    "attempt {} lost its lease (no heartbeat for {} ms)",
                    t.s.attempts,
                    t.lease_expires_at.map_or(0, |e| now - e) + self.settings().lease_ttl_ms
                )
            };
            let (o, w) = match self.requeue_or_bury(tx, t, &why, true, now, immediate && !over_time).await {
                Ok(x) => x,
                // Another replica requeued it since our read (or its agent completed it).
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            };
            self.metrics().expiries.with_label_values(&[t.s.stage.as_str()]).inc();
            if o.dead {
                report.dead += 1;
            } else {
                report.requeued += 1;
            }
            wakes.now.extend(w.now);
            wakes.later.extend(w.later);
        }
        Ok((report, wakes))
    }

    /// One reaper pass over every stage.
    #[instrument(skip(self))]
    pub async fn reap_once(&self) -> Result<ReapReport> {
        let mut tx = self.begin_write().await?;
        let now = self.now(&mut tx).await?;
        let (report, wakes) = self.requeue_expired(&mut tx, now, None, false).await?;
        self.commit_and_wake(tx, &wakes.now).await?;
        self.wake_later(&wakes.later).await;
        Ok(report)
    }
}
