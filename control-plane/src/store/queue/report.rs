//! What an agent reports about a leased task: heartbeat (extend the lease, record progress,
//! learn of a cancel), complete (single and batch; a repeat with the token that succeeded
//! gets the same success), fail (requeue with backoff or bury) and release (shutdown: queued
//! again, the attempt not counted). Each is fenced on the lease token and expiry.

use std::collections::HashMap;

use dataminer_wire::{BatchCompleteOutcome, BatchCompletion, ErrorDetail};
use sqlx::Row;
use tracing::instrument;

use super::{fence, load_task, refuse, task_row, TaskRow, MAX_BATCH, MAX_ERROR_CHARS, MAX_PROGRESS_BYTES};
use crate::store::backend::is_transient;
use crate::store::machine::Event;
use crate::store::stages::{self, values_rows, TaskSubject};
use crate::store::{clip, placeholders, Result, Store, StoreError};

/// What a heartbeat learned.
#[derive(Debug, Clone, Copy)]
pub struct HeartbeatOutcome {
    pub cancelled: bool,
    /// Until the lease ends or the stage's hard time limit, whichever is sooner.
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

impl Store {
    /// Extends a lease and records progress. A cancelled task (same token) is reported as
    /// cancelled instead of refused, so the agent knows to stop rather than to retry; an
    /// expired lease is refused (`lease_expired`) and stays expired.
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
        let grace = self.lease_grace();
        let mut tx = self.begin_write().await?;
        let now = self.now(&mut tx).await?;
        let sql = format!(
            "UPDATE tasks SET lease_expires_at = $1, progress = COALESCE($2, progress), updated_at = $3 \
             WHERE {} RETURNING leased_by, leased_at, time_limit_ms",
            fence("$4", "$5", "$3", "$6")
        );
        let updated = sqlx::query(&sql)
            .bind(now + ttl)
            .bind(progress)
            .bind(now)
            .bind(task_id)
            .bind(token)
            .bind(i64::from(grace))
            .fetch_optional(&mut *tx)
            .await?;
        match updated {
            Some(r) => {
                let agent: Option<i64> = r.try_get("leased_by")?;
                let leased_at: Option<i64> = r.try_get("leased_at")?;
                let limit: i64 = r.try_get("time_limit_ms")?;
                if let Some(a) = agent {
                    sqlx::query("UPDATE agents SET last_seen = $1 WHERE id = $2")
                        .bind(now)
                        .bind(a)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                let left = leased_at.map_or(ttl, |at| (at + limit - now).max(0));
                Ok(HeartbeatOutcome { cancelled: false, lease_expires_in_ms: ttl.min(left) })
            }
            None => {
                let t = load_task(&mut tx, task_id).await?;
                tx.commit().await?;
                if t.state == "cancelled" && t.s.lease_token == token {
                    Ok(HeartbeatOutcome { cancelled: true, lease_expires_in_ms: 0 })
                } else {
                    Err(refuse(&t, token, now, grace))
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
        let grace = self.lease_grace();
        let mut tx = self.begin_write().await?;
        let now = self.now(&mut tx).await?;
        let mut ids: Vec<i64> = items.iter().map(|i| i.task_id).collect();
        ids.sort_unstable();
        ids.dedup();
        let sql = format!(
            "SELECT t.id, t.stage, t.state, t.video_id, t.project_id, t.extraction_id, t.priority, t.lease_token, \
             t.attempts, t.max_attempts, t.leased_at, t.lease_expires_at, t.time_limit_ms, p.name AS project_name \
             FROM tasks t LEFT JOIN projects p ON p.id = t.project_id WHERE t.id IN ({})",
            placeholders(1, ids.len())
        );
        let mut q = sqlx::query(&sql);
        for id in &ids {
            q = q.bind(*id);
        }
        let mut rows: HashMap<i64, (TaskRow, Option<String>)> = HashMap::new();
        for r in q.fetch_all(&mut *tx).await? {
            let t = task_row(&r)?;
            rows.insert(t.s.id, (t, r.try_get("project_name")?));
        }
        let live = |t: &TaskRow| grace || t.lease_expires_at.is_some_and(|at| at > now);
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
                            Err(refuse(t, item.lease_token, now, grace))
                        }
                    } else if t.state == "succeeded" && t.s.lease_token == item.lease_token {
                        // The agent lost our reply and asked again: same answer, no second effect.
                        Ok(true)
                    } else if t.state != "leased" || t.s.lease_token != item.lease_token || !live(t) {
                        Err(refuse(t, item.lease_token, now, grace))
                    } else {
                        let dir =
                            stages::attempt_dir(t.s.stage, t.s.video_id, project.as_deref(), t.s.id, t.s.lease_token);
                        stages::validate_result(&t.s, &dir, &item.result).map(|()| {
                            accepted.push(i);
                            false
                        })
                    }
                }
            };
            verdicts.push(verdict);
        }
        // Owners first (the locking rule in stages/mod.rs), then one fenced UPDATE for all
        // accepted completions; a row the fence refuses (another replica requeued it since
        // our read) is a lost lease and gets no successors.
        let subjects: Vec<&TaskSubject> = accepted.iter().map(|&i| &rows[&items[i].task_id].0.s).collect();
        stages::lock_task_owners(self, &mut tx, &subjects).await?;
        // What only the database can check (dedup covers the filter-kept frames, …): a
        // refusal is this item's 422 and takes it out of the batch before anything is written.
        let mut checked = Vec::with_capacity(accepted.len());
        for &i in &accepted {
            let item = &items[i];
            match stages::validate_in_tx(&mut tx, &rows[&item.task_id].0.s, &item.result).await {
                Ok(()) => checked.push(i),
                Err(e @ StoreError::Invalid { .. }) => verdicts[i] = Err(e),
                Err(e) => return Err(e),
            }
        }
        // `accepted` keeps every item judged acceptable before this check, so a repeat of a
        // refused one within the batch is refused too (below).
        let mut fenced: Vec<i64> = Vec::new();
        if !checked.is_empty() {
            let sql = format!(
                "UPDATE tasks SET state = 'succeeded', result = v.column3, output_path = v.column4, finished_at = $1, \
                 updated_at = $1, lease_expires_at = NULL FROM (VALUES {}) AS v \
                 WHERE {} RETURNING tasks.id",
                values_rows(3, checked.len(), 4),
                fence("v.column1", "v.column2", "$1", "$2")
            );
            let mut q = sqlx::query(&sql).bind(now).bind(i64::from(grace));
            for &i in &checked {
                let item = &items[i];
                let json = serde_json::to_string(&stages::stored_result(&item.result))
                    .map_err(|e| StoreError::Corrupt(format!("result: {e}")))?;
                q = q
                    .bind(item.task_id)
                    .bind(item.lease_token)
                    .bind(json)
                    .bind(stages::output_path(&item.result).to_string());
            }
            for r in q.fetch_all(&mut *tx).await? {
                fenced.push(r.try_get("id")?);
            }
        }
        let mut applied = Vec::new();
        let mut durations = Vec::new();
        for &i in &checked {
            let item = &items[i];
            let (t, _) = &rows[&item.task_id];
            if fenced.contains(&item.task_id) {
                applied.push((t.s.clone(), &item.result));
                if let Some(at) = t.leased_at {
                    durations.push((t.s.stage, now - at));
                }
            } else {
                verdicts[i] = Err(refuse(t, item.lease_token, now, grace));
            }
        }
        // A repeat (within this batch) of a completion the fence refused is refused too.
        for (i, item) in items.iter().enumerate() {
            let repeat_of_refused = accepted.iter().any(|&j| j != i && items[j].task_id == item.task_id)
                && !fenced.contains(&item.task_id)
                && matches!(verdicts[i], Ok(true));
            if repeat_of_refused {
                let (t, _) = &rows[&item.task_id];
                // A repeat of a result the database check refused gets the same 422.
                let invalid = accepted.iter().find_map(|&j| match &verdicts[j] {
                    Err(StoreError::Invalid { code, message }) if j != i && items[j].task_id == item.task_id => {
                        Some(StoreError::invalid(code, message.clone()))
                    }
                    _ => None,
                });
                verdicts[i] = Err(invalid.unwrap_or_else(|| refuse(t, item.lease_token, now, grace)));
            }
        }
        let fx = stages::apply_results(self, &mut tx, &applied, now).await?;
        self.commit_and_wake_one(tx, &fx.woken).await?;
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
    /// URLs' secrets in the error text are redacted before it is stored.
    #[instrument(skip(self, error))]
    pub async fn fail(&self, task_id: i64, token: i64, error: &str, retryable: bool) -> Result<FailOutcome> {
        let error = clip(&crate::urls::redact_text(error), MAX_ERROR_CHARS);
        let grace = self.lease_grace();
        let mut tx = self.begin_write().await?;
        let now = self.now(&mut tx).await?;
        let t = load_task(&mut tx, task_id).await?;
        let live = grace || t.lease_expires_at.is_some_and(|at| at > now);
        if t.state != "leased" || t.s.lease_token != token || !live {
            return Err(refuse(&t, token, now, grace));
        }
        stages::lock_task_owners(self, &mut tx, &[&t.s]).await?;
        let (outcome, wakes) = self.requeue_or_bury(&mut tx, &t, &error, retryable, now, false).await?;
        self.commit_and_wake(tx, &wakes.now).await?;
        self.wake_later(&wakes.later).await;
        let label = if outcome.dead { "dead" } else { "retry" };
        self.metrics().failures.with_label_values(&[t.s.stage.as_str(), label]).inc();
        Ok(outcome)
    }

    /// Gives a task back (agent shutdown): queued again at once, the attempt not counted.
    #[instrument(skip(self))]
    pub async fn release(&self, task_id: i64, token: i64) -> Result<()> {
        let grace = self.lease_grace();
        let mut tx = self.begin_write().await?;
        let now = self.now(&mut tx).await?;
        let t = load_task(&mut tx, task_id).await?;
        stages::lock_task_owners(self, &mut tx, &[&t.s]).await?;
        let sql = format!(
            "UPDATE tasks SET state = 'queued', run_after = $1, \
             attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END, \
             leased_by = NULL, lease_expires_at = NULL, updated_at = $1 WHERE {}",
            fence("$2", "$3", "$1", "$4")
        );
        let r = sqlx::query(&sql).bind(now).bind(t.s.id).bind(token).bind(i64::from(grace)).execute(&mut *tx).await?;
        if r.rows_affected() != 1 {
            return Err(refuse(&t, token, now, grace));
        }
        stages::move_subjects(&mut tx, t.s.stage, &[&t.s], Event::Requeue, now).await?;
        stages::refresh_requires(&mut tx, &[&t.s]).await?;
        // Wakes every waiter of the stage: the task is runnable again, and a concurrency key
        // it held is free.
        self.commit_and_wake(tx, &[t.s.stage]).await?;
        Ok(())
    }
}
