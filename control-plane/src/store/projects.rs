//! Projects: create, read, reconfigure, cancel, and the per-project status roll-up.

use std::collections::BTreeMap;

use dataminer_wire::{
    FrameCounts, ProjectConfig, ProjectState, ProjectStatus, ProjectVideoState, ProjectView, RerunFrom, Stage,
};
use sqlx::Row;
use tracing::instrument;

use super::backend::is_unique_violation;
use super::stages;
use super::{Result, Store, StoreError};

/// `[a-z0-9][a-z0-9_-]{0,62}`: safe as a path component and in URLs.
pub fn valid_project_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

fn check_config(config: &ProjectConfig) -> Result<String> {
    let problems = config.problems();
    if !problems.is_empty() {
        return Err(StoreError::invalid("invalid_config", problems.join("; ")));
    }
    serde_json::to_string(config).map_err(|e| StoreError::Corrupt(format!("config: {e}")))
}

fn project(r: &sqlx::any::AnyRow) -> Result<ProjectView> {
    let config: String = r.try_get("config")?;
    let cancelled: i64 = r.try_get("cancelled")?;
    Ok(ProjectView {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        config: serde_json::from_str(&config).map_err(|e| StoreError::Corrupt(format!("project config: {e}")))?,
        cancelled: cancelled != 0,
        created_at_ms: r.try_get("created_at")?,
        updated_at_ms: r.try_get("updated_at")?,
    })
}

const PROJECT_COLS: &str = "id, name, config, cancelled, created_at, updated_at";

impl Store {
    #[instrument(skip(self, config))]
    pub async fn create_project(&self, name: &str, config: &ProjectConfig) -> Result<ProjectView> {
        if !valid_project_name(name) {
            return Err(StoreError::invalid(
                "invalid_project_name",
                format!("project name {name:?} must match [a-z0-9][a-z0-9_-]{{0,62}}"),
            ));
        }
        let config = check_config(config)?;
        let mut tx = self.begin_write().await?;
        let now = self.now(&mut tx).await?;
        let sql = format!(
            "INSERT INTO projects (name, config, cancelled, created_at, updated_at) VALUES ($1, $2, 0, $3, $3) \
             RETURNING {PROJECT_COLS}"
        );
        let row = match sqlx::query(&sql).bind(name).bind(config).bind(now).fetch_one(&mut *tx).await {
            Ok(r) => r,
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::conflict("project_exists", format!("project {name:?} already exists")))
            }
            Err(e) => return Err(e.into()),
        };
        tx.commit().await?;
        project(&row)
    }

    pub async fn list_projects(&self, after: i64, limit: i64) -> Result<Vec<ProjectView>> {
        let sql = format!("SELECT {PROJECT_COLS} FROM projects WHERE id > $1 ORDER BY id LIMIT $2");
        let rows = sqlx::query(&sql).bind(after).bind(limit).fetch_all(self.reader()?).await?;
        rows.iter().map(project).collect()
    }

    pub async fn get_project(&self, name: &str) -> Result<ProjectView> {
        let sql = format!("SELECT {PROJECT_COLS} FROM projects WHERE name = $1");
        match sqlx::query(&sql).bind(name).fetch_optional(self.reader()?).await? {
            Some(r) => project(&r),
            None => Err(StoreError::NotFound(format!("project {name:?} not found"))),
        }
    }

    /// Replaces a project's configuration. Tasks leased from now on read the new settings;
    /// running ones keep the settings they were leased with. Extract settings apply to
    /// project-videos that join afterwards (each keeps the settings it joined with). When a
    /// stage's model changes, the project's queued tasks of that stage require the new
    /// `model:<name>` from this same transaction (leased ones keep theirs until they come
    /// back to the queue). The dedup model and embedding cannot change once the project has
    /// a kept set (409): the kept embeddings would no longer be comparable with new ones.
    #[instrument(skip(self, config))]
    pub async fn update_project_config(&self, name: &str, config: &ProjectConfig) -> Result<ProjectView> {
        let new = config;
        let config = check_config(config)?;
        let mut tx = self.begin_write().await?;
        let now = self.now(&mut tx).await?;
        let id: i64 = sqlx::query_scalar("SELECT id FROM projects WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("project {name:?} not found")))?;
        // FOR UPDATE: a dedup completion (FOR SHARE) cannot start the kept set between the
        // check and the update.
        stages::lock_owners(self, &mut tx, "projects", &[id], stages::LockMode::Update).await?;
        let old: String =
            sqlx::query_scalar("SELECT config FROM projects WHERE id = $1").bind(id).fetch_one(&mut *tx).await?;
        // The kept set's partial unique index (project_id, kept_seq) answers this.
        let kept: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM project_videos WHERE project_id = $1 AND kept_seq IS NOT NULL")
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
        let old: ProjectConfig =
            serde_json::from_str(&old).map_err(|e| StoreError::Corrupt(format!("project config: {e}")))?;
        if kept > 0 {
            if let Some(reason) = old.kept_set_conflict(new) {
                return Err(StoreError::conflict("kept_set_exists", reason));
            }
        }
        let sql = format!("UPDATE projects SET config = $1, updated_at = $2 WHERE name = $3 RETURNING {PROJECT_COLS}");
        let row = sqlx::query(&sql).bind(config).bind(now).bind(name).fetch_optional(&mut *tx).await?;
        let row = row.ok_or_else(|| StoreError::NotFound(format!("project {name:?} not found")))?;
        // Queued tasks of a stage whose model changed now require the new one; agents that
        // hold it may be waiting for exactly these, so their stage is woken.
        let mut woken = Vec::new();
        for stage in [Stage::Filter, Stage::Dedup, Stage::Detect] {
            if old.model(stage) == new.model(stage) {
                continue;
            }
            let r = sqlx::query(
                "UPDATE tasks SET requires = $1, updated_at = $2 WHERE project_id = $3 AND stage = $4 \
                 AND state = 'queued'",
            )
            .bind(new.requires(stage))
            .bind(now)
            .bind(id)
            .bind(stage.as_str())
            .execute(&mut *tx)
            .await?;
            if r.rows_affected() > 0 {
                woken.push(stage);
            }
        }
        self.commit_and_wake(tx, &woken).await?;
        project(&row)
    }

    /// Cancels a project: its queued and leased tasks are cancelled (leased ones learn it
    /// from their next heartbeat) and its unfinished project-videos become CANCELLED.
    /// Shared video work (download, extract) goes on for the other projects.
    #[instrument(skip(self))]
    pub async fn cancel_project(&self, name: &str) -> Result<ProjectView> {
        let mut tx = self.begin_write().await?;
        let now = self.now(&mut tx).await?;
        let sql =
            format!("UPDATE projects SET cancelled = 1, updated_at = $1 WHERE name = $2 RETURNING {PROJECT_COLS}");
        let row = sqlx::query(&sql).bind(now).bind(name).fetch_optional(&mut *tx).await?;
        let row = row.ok_or_else(|| StoreError::NotFound(format!("project {name:?} not found")))?;
        let id: i64 = row.try_get("id")?;
        stages::cancel_open_work(&mut tx, stages::CancelScope::Project(id), now).await?;
        tx.commit().await?;
        project(&row)
    }

    /// Re-runs a project from a stage after a config change: every project-video at rest
    /// past it (the machine's `Rerun` from-states) goes back to the stage's waiting state
    /// with a new task; queued successors that are now stale are withdrawn. From dedup, the
    /// kept set is cleared and rebuilt in the old `kept_seq` order (the dedup tasks share one
    /// priority and are inserted in that order; the concurrency key runs them one at a time,
    /// in lease order: priority, then id). Refused (409) while a project-stage task of the
    /// project is running or when the project is cancelled.
    #[instrument(skip(self))]
    pub async fn rerun_project(&self, name: &str, from: RerunFrom) -> Result<i64> {
        let stage = match from {
            RerunFrom::Filter => Stage::Filter,
            RerunFrom::Dedup => Stage::Dedup,
        };
        let mut tx = self.begin_write().await?;
        let now = self.now(&mut tx).await?;
        let row = sqlx::query("SELECT id, cancelled FROM projects WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("project {name:?} not found")))?;
        let id: i64 = row.try_get("id")?;
        stages::lock_owners(self, &mut tx, "projects", &[id], stages::LockMode::Update).await?;
        let cancelled: i64 =
            sqlx::query_scalar("SELECT cancelled FROM projects WHERE id = $1").bind(id).fetch_one(&mut *tx).await?;
        if cancelled != 0 {
            return Err(StoreError::conflict("project_cancelled", format!("project {name:?} is cancelled")));
        }
        let n = stages::project::rerun(self, &mut tx, id, stage, now).await?;
        self.commit_and_wake(tx, &[stage]).await?;
        Ok(n)
    }

    pub async fn project_status(&self, name: &str) -> Result<ProjectStatus> {
        let p = self.get_project(name).await?;
        let rows = sqlx::query(
            "SELECT state, COUNT(*) AS n, CAST(COALESCE(SUM(frames_in), 0) AS BIGINT) AS fin, \
             CAST(COALESCE(SUM(frames_filtered), 0) AS BIGINT) AS ffil, \
             CAST(COALESCE(SUM(frames_unreadable), 0) AS BIGINT) AS funr, \
             CAST(COALESCE(SUM(frames_deduped), 0) AS BIGINT) AS fded, \
             CAST(COALESCE(SUM(detections), 0) AS BIGINT) AS dets \
             FROM project_videos WHERE project_id = $1 GROUP BY state",
        )
        .bind(p.id)
        .fetch_all(self.reader()?)
        .await?;
        let mut by_state: BTreeMap<String, i64> =
            ProjectVideoState::ALL.iter().map(|s| (s.as_str().to_string(), 0)).collect();
        let mut frames = FrameCounts::default();
        let mut total = 0;
        let mut open = 0;
        for r in &rows {
            let state: String = r.try_get("state")?;
            let n: i64 = r.try_get("n")?;
            total += n;
            if !ProjectVideoState::parse(&state).is_some_and(|s| s.is_terminal()) {
                open += n;
            }
            by_state.insert(state, n);
            frames.extracted += r.try_get::<i64, _>("fin")?;
            frames.filtered += r.try_get::<i64, _>("ffil")?;
            frames.deduped += r.try_get::<i64, _>("fded")?;
            frames.detections += r.try_get::<i64, _>("dets")?;
            frames.unreadable += r.try_get::<i64, _>("funr")?;
        }
        let by_dedup = self.frame_state_counts(p.id).await?;
        frames.dedup_kept = by_dedup.get(&Some("kept".to_string())).copied().unwrap_or(0);
        frames.dedup_duplicate = by_dedup.get(&Some("duplicate".to_string())).copied().unwrap_or(0);
        let state = if p.cancelled {
            ProjectState::Cancelled
        } else if total > 0 && open == 0 {
            ProjectState::Complete
        } else {
            ProjectState::Active
        };
        let waiting_for_capability = self.waiting_for_capability(Some(p.id)).await?;
        Ok(ProjectStatus { name: p.name, state, videos: total, by_state, frames, waiting_for_capability })
    }
}

#[cfg(test)]
mod tests {
    use super::valid_project_name;

    #[test]
    fn project_names() {
        for ok in ["a", "doors", "0x", "a-b_c", &"a".repeat(63)] {
            assert!(valid_project_name(ok), "{ok}");
        }
        for bad in ["", "-a", "_a", "A", "a b", "a/b", "..", "é", &"a".repeat(64)] {
            assert!(!valid_project_name(bad), "{bad}");
        }
    }
}
