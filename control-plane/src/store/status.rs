//! Read-only roll-ups for `/status` and the scrape-time gauges of `/metrics`.

use std::collections::BTreeMap;

use dataminer_wire::{
    AgentView, CapabilityWait, ProjectState, ProjectSummary, ProjectVideoState, RecentVideo, Stage, StatusReport,
    TaskState, VideoState,
};
use sqlx::Row;

use super::{Result, Store};

/// How many recently updated videos `/status` lists.
const RECENT_VIDEOS: i64 = 20;

/// Task counts by (stage, state) plus the oldest runnable queued task per stage.
#[derive(Debug, Clone, Default)]
pub struct QueueSnapshot {
    pub counts: BTreeMap<(String, String), i64>,
    pub oldest_queued_ms: BTreeMap<String, i64>,
}

impl Store {
    /// Queued tasks (of project `project_id`, or of all) that require a capability no live
    /// agent serving their stage advertises, by stage and capability, in stage order. Reads
    /// only queued tasks with a `requires` (the `tasks_requires` partial index).
    pub async fn waiting_for_capability(&self, project_id: Option<i64>) -> Result<Vec<CapabilityWait>> {
        let agents = self.list_agents().await?;
        self.waiting_for_capability_of(project_id, &agents).await
    }

    async fn waiting_for_capability_of(
        &self,
        project_id: Option<i64>,
        agents: &[AgentView],
    ) -> Result<Vec<CapabilityWait>> {
        let now = self.now_read().await?;
        let of_project = if project_id.is_some() { " AND project_id = $1" } else { "" };
        let sql = format!(
            "SELECT stage, requires, COUNT(*) AS n, MIN(run_after) AS oldest FROM tasks \
             WHERE state = 'queued' AND requires IS NOT NULL{of_project} GROUP BY stage, requires"
        );
        let mut q = sqlx::query(&sql);
        if let Some(p) = project_id {
            q = q.bind(p);
        }
        let mut out = Vec::new();
        for r in q.fetch_all(self.reader()?).await? {
            let stage: String = r.try_get("stage")?;
            let Some(stage) = Stage::parse(&stage) else { continue };
            let requires: String = r.try_get("requires")?;
            let served =
                agents.iter().any(|a| a.alive && a.stages.contains(&stage) && a.capabilities.contains(&requires));
            if served {
                continue;
            }
            let oldest: Option<i64> = r.try_get("oldest")?;
            out.push(CapabilityWait {
                stage,
                requires,
                tasks: r.try_get("n")?,
                oldest_queued_ms: oldest.map_or(0, |o| (now - o).max(0)),
            });
        }
        out.sort_by(|a, b| {
            let at = |s: Stage| Stage::ALL.iter().position(|x| *x == s);
            at(a.stage).cmp(&at(b.stage)).then_with(|| a.requires.cmp(&b.requires))
        });
        Ok(out)
    }

    pub async fn queue_snapshot(&self) -> Result<(i64, QueueSnapshot)> {
        let now = self.now_read().await?;
        let rows = sqlx::query("SELECT stage, state, COUNT(*) AS n FROM tasks GROUP BY stage, state")
            .fetch_all(self.reader()?)
            .await?;
        let mut snap = QueueSnapshot::default();
        for r in &rows {
            snap.counts.insert((r.try_get("stage")?, r.try_get("state")?), r.try_get("n")?);
        }
        let rows = sqlx::query(
            "SELECT stage, MIN(run_after) AS oldest FROM tasks WHERE state = 'queued' AND run_after <= $1 GROUP BY stage",
        )
        .bind(now)
        .fetch_all(self.reader()?)
        .await?;
        for r in &rows {
            let oldest: Option<i64> = r.try_get("oldest")?;
            if let Some(o) = oldest {
                snap.oldest_queued_ms.insert(r.try_get("stage")?, (now - o).max(0));
            }
        }
        Ok((now, snap))
    }

    pub async fn status_report(&self) -> Result<StatusReport> {
        let (now, snap) = self.queue_snapshot().await?;
        let mut tasks: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
        for stage in Stage::ALL {
            let per: BTreeMap<String, i64> = TaskState::ALL
                .iter()
                .map(|st| {
                    let n =
                        snap.counts.get(&(stage.as_str().to_string(), st.as_str().to_string())).copied().unwrap_or(0);
                    (st.as_str().to_string(), n)
                })
                .collect();
            tasks.insert(stage.as_str().to_string(), per);
        }
        let mut videos: BTreeMap<String, i64> = VideoState::ALL.iter().map(|s| (s.as_str().to_string(), 0)).collect();
        for r in sqlx::query("SELECT state, COUNT(*) AS n FROM videos GROUP BY state").fetch_all(self.reader()?).await?
        {
            videos.insert(r.try_get("state")?, r.try_get("n")?);
        }
        let rows = sqlx::query(
            "SELECT p.name, p.cancelled, pv.state, COUNT(pv.video_id) AS n FROM projects p \
             LEFT JOIN project_videos pv ON pv.project_id = p.id GROUP BY p.name, p.cancelled, pv.state ORDER BY p.name",
        )
        .fetch_all(self.reader()?)
        .await?;
        let mut projects: Vec<ProjectSummary> = Vec::new();
        for r in &rows {
            let name: String = r.try_get("name")?;
            let cancelled: i64 = r.try_get("cancelled")?;
            let state: Option<String> = r.try_get("state")?;
            let n: i64 = r.try_get("n")?;
            if projects.last().is_none_or(|p| p.name != name) {
                projects.push(ProjectSummary {
                    name: name.clone(),
                    state: if cancelled != 0 { ProjectState::Cancelled } else { ProjectState::Active },
                    videos: 0,
                    by_state: BTreeMap::new(),
                });
            }
            if let (Some(p), Some(s)) = (projects.last_mut(), state) {
                p.videos += n;
                p.by_state.insert(s, n);
            }
        }
        for p in &mut projects {
            let open: i64 = p
                .by_state
                .iter()
                .filter(|(s, _)| !ProjectVideoState::parse(s).is_some_and(|s| s.is_terminal()))
                .map(|(_, n)| n)
                .sum();
            if p.state == ProjectState::Active && p.videos > 0 && open == 0 {
                p.state = ProjectState::Complete;
            }
        }
        let agents = self.list_agents().await?;
        let waiting_for_capability = self.waiting_for_capability_of(None, &agents).await?;
        let recent = sqlx::query(&format!(
            "SELECT {} FROM videos v ORDER BY v.updated_at DESC, v.id DESC LIMIT {RECENT_VIDEOS}",
            super::rows::VIDEO_COLS
        ))
        .fetch_all(self.reader()?)
        .await?
        .iter()
        .map(super::rows::video)
        .collect::<Result<Vec<_>>>()?;
        let mut recent_videos = Vec::with_capacity(recent.len());
        for v in recent {
            let extractions = sqlx::query(&format!(
                "SELECT {} FROM extractions e WHERE e.id IN \
                 (SELECT extraction_id FROM project_videos WHERE video_id = $1) ORDER BY e.id",
                super::rows::EXTRACTION_COLS
            ))
            .bind(v.id)
            .fetch_all(self.reader()?)
            .await?
            .iter()
            .filter_map(|r| super::rows::extraction(r).transpose())
            .collect::<Result<Vec<_>>>()?;
            recent_videos.push(RecentVideo {
                id: v.id,
                url: v.url,
                state: v.state,
                extractions,
                error: v.error,
                updated_at_ms: v.updated_at_ms,
            });
        }
        Ok(StatusReport {
            now_ms: now,
            backend: self.backend().name().to_string(),
            tasks,
            oldest_queued_ms: snap.oldest_queued_ms,
            videos,
            projects,
            agents_alive: agents.iter().filter(|a| a.alive).count() as i64,
            agents,
            waiting_for_capability,
            recent_videos,
        })
    }
}
