//! Leasing: hand an agent up to N runnable tasks of its stages — priority first, then age;
//! never two leased tasks with one concurrency key; tasks that require a capability only to
//! agents that advertise it — moving each task's subject to its running state and reading
//! its inputs from what the control plane recorded. Expired leases of the asked stages are
//! taken over on the spot.

use dataminer_wire::{LeasedTask, Stage};
use sqlx::Row;
use tracing::instrument;

use super::{task_row, TASK_ROW_COLS};
use crate::store::backend::is_transient;
use crate::store::machine::Event;
use crate::store::stages::{self, TaskSubject};
use crate::store::{placeholders, Result, Store, StoreError};

impl Store {
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
        let grace = self.lease_grace();
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
        // An expired lease is taken over at once (not only when the reaper next runs).
        if !grace {
            self.requeue_expired(&mut tx, now, Some(stages), true).await?;
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
        if stages.len() == 1 || self.backend() == crate::store::Backend::Sqlite {
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
             WHERE state = 'queued' AND id IN ({}) RETURNING {TASK_ROW_COLS}",
            placeholders(4, ids.len())
        );
        let mut q = sqlx::query(&sql).bind(agent_id).bind(now).bind(now + ttl);
        for id in &ids {
            q = q.bind(*id);
        }
        let leased_rows = q.fetch_all(&mut *tx).await?;
        let mut leased: Vec<TaskSubject> = Vec::with_capacity(leased_rows.len());
        for r in &leased_rows {
            leased.push(task_row(r)?.s);
        }
        // Hand them out in queue order.
        leased.sort_by_key(|t| ids.iter().position(|i| *i == t.id));
        for stage in Stage::ALL {
            let subjects: Vec<&TaskSubject> = leased.iter().filter(|t| t.stage == stage).collect();
            stages::move_subjects(&mut tx, stage, &subjects, Event::Lease, now).await?;
        }
        let out = stages::build_inputs(self, &mut tx, &leased).await?;
        tx.commit().await?;
        for t in &leased {
            self.metrics().leases.with_label_values(&[t.stage.as_str()]).inc();
        }
        Ok(out)
    }
}
