//! Videos: batch submission (one normalised URL is one video, whatever project submits it),
//! listing, detail with its project-videos, extractions and tasks, retry and cancel.

use dataminer_wire::{ProjectConfig, Stage, SubmittedVideo, VideoDetail, VideoState, VideoView};
use sqlx::Row;
use tracing::instrument;

use super::machine::{self, Event, Subject};
use super::stages::{self, extract, project, Effects, LockMode, NewTask};
use super::{placeholders, rows, Result, Store, StoreError};
use crate::urls::{self, SourceUrl};

/// Filters of the video list.
#[derive(Debug, Clone, Default)]
pub struct VideoFilter {
    pub state: Option<VideoState>,
    pub project: Option<String>,
    pub after: i64,
    pub limit: i64,
}

impl Store {
    /// Submits URLs to projects in one transaction: new URLs get a video and a download
    /// task; known ones are linked to the projects they are not yet in. Each project-video
    /// records its project's extract settings; once the video is downloaded it gets the
    /// extraction of those settings (shared with every project that has the same settings,
    /// never another's frames). A FAILED video makes the new project-videos FAILED with its
    /// error. Refuses the whole batch, changing nothing, if a project is unknown or cancelled.
    #[instrument(skip(self, sources, projects), fields(n = sources.len()))]
    pub async fn submit_videos(
        &self,
        sources: &[SourceUrl],
        projects: &[String],
        priority: i64,
    ) -> Result<Vec<SubmittedVideo>> {
        let mut tx = self.begin_write().await?;
        let now = self.now(&mut tx).await?;
        let sql = format!(
            "SELECT id, name, config, cancelled FROM projects WHERE name IN ({})",
            placeholders(1, projects.len())
        );
        let mut q = sqlx::query(&sql);
        for p in projects {
            q = q.bind(p.as_str());
        }
        let found = q.fetch_all(&mut *tx).await?;
        // (project id, its extract settings as JSON)
        let mut joins: Vec<(i64, String)> = Vec::with_capacity(projects.len());
        for name in projects {
            let row = found
                .iter()
                .find(|r| r.try_get::<String, _>("name").is_ok_and(|n| &n == name))
                .ok_or_else(|| StoreError::invalid("unknown_project", format!("project {name:?} does not exist")))?;
            let id: i64 = row.try_get("id")?;
            if joins.iter().any(|(p, _)| *p == id) {
                continue;
            }
            let cfg: ProjectConfig = serde_json::from_str(&row.try_get::<String, _>("config")?)
                .map_err(|e| StoreError::Corrupt(format!("project config: {e}")))?;
            joins.push((
                id,
                serde_json::to_string(&cfg.extract).map_err(|e| StoreError::Corrupt(format!("extract: {e}")))?,
            ));
        }
        if joins.is_empty() {
            return Err(StoreError::invalid("no_projects", "name at least one project"));
        }
        // The projects are locked (shared) so a concurrent cancel of one of them either
        // happens before (and is refused here) or sees these project-videos.
        let ids: Vec<i64> = joins.iter().map(|(p, _)| *p).collect();
        stages::lock_owners(self, &mut tx, "projects", &ids, LockMode::Share).await?;
        let cancelled: Vec<String> = {
            let sql =
                format!("SELECT name FROM projects WHERE cancelled <> 0 AND id IN ({})", placeholders(1, ids.len()));
            let mut q = sqlx::query_scalar(&sql);
            for id in &ids {
                q = q.bind(*id);
            }
            q.fetch_all(&mut *tx).await?
        };
        if let Some(name) = cancelled.first() {
            return Err(StoreError::conflict("project_cancelled", format!("project {name:?} is cancelled")));
        }
        // The first project's settings are kept on the video for reference only.
        let first_extract = joins[0].1.clone();
        let mut out = Vec::with_capacity(sources.len());
        let mut fx = Effects::default();
        for src in sources {
            let inserted: Option<i64> = sqlx::query_scalar(
                "INSERT INTO videos (url, url_key, source_kind, origin, state, priority, extract_config, created_at, updated_at) \
                 VALUES ($1, $2, $3, 'api', 'PENDING', $4, $5, $6, $6) ON CONFLICT (url_key) DO NOTHING RETURNING id",
            )
            .bind(&src.url)
            .bind(&src.key)
            .bind(src.kind.as_str())
            .bind(priority)
            .bind(&first_extract)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            let (video_id, state, failed_stage, error, new) = match inserted {
                Some(id) => {
                    let download = NewTask {
                        stage: Stage::Download,
                        video_id: id,
                        project_id: None,
                        extraction_id: None,
                        priority,
                        requires: src.kind.requires().map(str::to_string),
                    };
                    stages::enqueue_many(self, &mut tx, &[download], now).await?;
                    fx.wake(Stage::Download);
                    (id, "PENDING".to_string(), None, None, true)
                }
                None => {
                    // Locked (shared) so a concurrent download completion or failure of this
                    // video and this join see each other.
                    let r = sqlx::query(&format!(
                        "SELECT id, state, failed_stage, error FROM videos WHERE url_key = $1{}",
                        self.backend().share_rows()
                    ))
                    .bind(&src.key)
                    .fetch_one(&mut *tx)
                    .await?;
                    let failed_stage: Option<String> = r.try_get("failed_stage")?;
                    let error: Option<String> = r.try_get("error")?;
                    (r.try_get("id")?, r.try_get::<String, _>("state")?, failed_stage, error, false)
                }
            };
            let (pv_state, pv_stage, pv_error) = match state.as_str() {
                "FAILED" => (
                    "FAILED",
                    failed_stage.clone(),
                    Some(format!(
                        "video failed at {}: {}",
                        failed_stage.as_deref().unwrap_or("unknown stage"),
                        error.as_deref().unwrap_or("no error recorded")
                    )),
                ),
                "CANCELLED" => {
                    ("CANCELLED", None, Some("video was cancelled; retry the video to process it".to_string()))
                }
                _ => ("PENDING", None, None),
            };
            let mut joined = false;
            for (pid, extract_config) in &joins {
                let r = sqlx::query(
                    "INSERT INTO project_videos (project_id, video_id, state, failed_stage, error, extract_config, \
                     created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7) \
                     ON CONFLICT (project_id, video_id) DO NOTHING",
                )
                .bind(*pid)
                .bind(video_id)
                .bind(pv_state)
                .bind(pv_stage.clone())
                .bind(pv_error.clone())
                .bind(extract_config)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                joined |= r.rows_affected() > 0;
            }
            if joined && state == "DOWNLOADED" {
                extract::attach(self, &mut tx, &[video_id], now, &mut fx).await?;
            }
            out.push(SubmittedVideo {
                id: video_id,
                url: urls::redact(&src.url),
                new,
                state: VideoState::parse(&state).ok_or_else(|| StoreError::Corrupt(format!("video state {state}")))?,
            });
        }
        self.commit_and_wake(tx, &fx.woken).await?;
        Ok(out)
    }

    pub async fn list_videos(&self, f: &VideoFilter) -> Result<Vec<VideoView>> {
        let mut sql = format!("SELECT {} FROM videos v", rows::VIDEO_COLS);
        let mut n = 3;
        if f.project.is_some() {
            sql.push_str(&format!(
                " JOIN project_videos pv ON pv.video_id = v.id JOIN projects p ON p.id = pv.project_id AND p.name = ${n}"
            ));
            n += 1;
        }
        sql.push_str(" WHERE v.id > $1");
        if f.state.is_some() {
            sql.push_str(&format!(" AND v.state = ${n}"));
        }
        sql.push_str(" ORDER BY v.id LIMIT $2");
        let mut q = sqlx::query(&sql).bind(f.after).bind(f.limit);
        if let Some(p) = &f.project {
            q = q.bind(p.as_str());
        }
        if let Some(s) = f.state {
            q = q.bind(s.as_str());
        }
        let found = q.fetch_all(self.reader()?).await?;
        found.iter().map(rows::video).collect()
    }

    pub async fn get_video(&self, id: i64) -> Result<VideoDetail> {
        let sql = format!("SELECT {} FROM videos v WHERE v.id = $1", rows::VIDEO_COLS);
        let v = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(self.reader()?)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("video {id} not found")))?;
        let sql = format!("SELECT {} FROM {} WHERE pv.video_id = $1 ORDER BY p.name", rows::PV_COLS, rows::PV_FROM);
        let pvs = sqlx::query(&sql).bind(id).fetch_all(self.reader()?).await?;
        let projects: Vec<_> = pvs.iter().map(rows::project_video).collect::<Result<_>>()?;
        let mut extractions = Vec::new();
        for e in projects.iter().filter_map(|p| p.extraction.clone()) {
            if !extractions.iter().any(|x: &dataminer_wire::ExtractionView| x.id == e.id) {
                extractions.push(e);
            }
        }
        extractions.sort_by_key(|e| e.id);
        let sql = format!(
            "SELECT {} FROM {} WHERE t.video_id = $1 OR t.extraction_id IN \
             (SELECT extraction_id FROM project_videos WHERE video_id = $1) ORDER BY t.id",
            rows::TASK_COLS,
            rows::TASK_FROM
        );
        let tasks = sqlx::query(&sql).bind(id).fetch_all(self.reader()?).await?;
        Ok(VideoDetail {
            video: rows::video(&v)?,
            projects,
            extractions,
            tasks: tasks.iter().map(rows::task).collect::<Result<_>>()?,
        })
    }

    /// Retries everything that failed or was cancelled about a video: its dead or cancelled
    /// tasks and those of the extractions its projects use (in projects that are not
    /// cancelled) are queued again, and project-videos that failed because the video did go
    /// back to PENDING. 409 when there is nothing to retry.
    #[instrument(skip(self))]
    pub async fn retry_video(&self, id: i64) -> Result<VideoDetail> {
        let mut tx = self.begin_write().await?;
        let now = self.now(&mut tx).await?;
        let projects: Vec<i64> = sqlx::query_scalar("SELECT project_id FROM project_videos WHERE video_id = $1")
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
        stages::lock_owners(self, &mut tx, "projects", &projects, LockMode::Share).await?;
        stages::lock_owners(self, &mut tx, "videos", &[id], LockMode::Update).await?;
        let state: String = sqlx::query_scalar("SELECT state FROM videos WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("video {id} not found")))?;
        let task_ids: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM tasks WHERE (video_id = $1 OR extraction_id IN \
                 (SELECT extraction_id FROM project_videos WHERE video_id = $1)) \
             AND state IN ('dead', 'cancelled') \
             AND (project_id IS NULL OR project_id IN (SELECT id FROM projects WHERE cancelled = 0)) ORDER BY id",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        let mut fx = Effects::default();
        let mut download_reopened = false;
        for t in task_ids {
            let stage = self.reopen_task_by_id(&mut tx, t, now).await?;
            download_reopened |= stage.contains(&Stage::Download);
            for s in stage {
                fx.wake(s);
            }
        }
        let mut changed = !fx.woken.is_empty();
        if (state == "FAILED" || state == "CANCELLED") && !download_reopened {
            // Failed or cancelled without a dead download of its own: download again.
            let r =
                sqlx::query("SELECT url_key, priority FROM videos WHERE id = $1").bind(id).fetch_one(&mut *tx).await?;
            let (key, priority): (String, i64) = (r.try_get("url_key")?, r.try_get("priority")?);
            let guard = machine::guard("state", Subject::Video, None, Event::Reopen);
            sqlx::query(&format!(
                "UPDATE videos SET state = 'PENDING', content_of = NULL, failed_stage = NULL, error = NULL, \
                 updated_at = $1 WHERE id = $2 AND {guard}"
            ))
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            let requires = urls::kind_of_key(&key, &self.settings().platform_hosts).requires().map(str::to_string);
            let download = NewTask {
                stage: Stage::Download,
                video_id: id,
                project_id: None,
                extraction_id: None,
                priority,
                requires,
            };
            stages::enqueue_many(self, &mut tx, &[download], now).await?;
            fx.wake(Stage::Download);
            changed = true;
        }
        changed |= project::reopen_upstream(&mut tx, "video_id", id, now).await? > 0;
        if state == "DOWNLOADED" {
            let before = fx.woken.len();
            extract::attach(self, &mut tx, &[id], now, &mut fx).await?;
            if project::enqueue_filters(self, &mut tx, "video_id", &[id], now).await? > 0 {
                fx.wake(Stage::Filter);
            }
            changed |= fx.woken.len() > before;
        }
        if !changed {
            return Err(StoreError::conflict(
                "nothing_to_retry",
                format!("video {id} has nothing failed or cancelled"),
            ));
        }
        self.commit_and_wake(tx, &fx.woken).await?;
        self.get_video(id).await
    }

    /// Cancels a video: its queued and leased tasks (all stages, all projects) are
    /// cancelled — leased ones learn it from their next heartbeat — its unfinished
    /// project-videos become CANCELLED, and it becomes CANCELLED unless its download already
    /// finished or failed. An unfinished extraction that reads its file moves to another
    /// downloaded copy that still needs it, or is cancelled.
    #[instrument(skip(self))]
    pub async fn cancel_video(&self, id: i64) -> Result<VideoDetail> {
        let mut tx = self.begin_write().await?;
        let now = self.now(&mut tx).await?;
        let exists: Option<i64> =
            sqlx::query_scalar("SELECT id FROM videos WHERE id = $1").bind(id).fetch_optional(&mut *tx).await?;
        if exists.is_none() {
            return Err(StoreError::NotFound(format!("video {id} not found")));
        }
        stages::lock_owners(self, &mut tx, "videos", &[id], LockMode::Update).await?;
        stages::cancel_open_work(&mut tx, stages::CancelScope::Video(id), now).await?;
        let guard = machine::guard("state", Subject::Video, None, Event::Cancel);
        sqlx::query(&format!("UPDATE videos SET state = 'CANCELLED', updated_at = $1 WHERE id = $2 AND {guard}"))
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let mut woken = Vec::new();
        if extract::cancel_for_video(self, &mut tx, id, now).await? {
            woken.push(Stage::Extract);
        }
        self.commit_and_wake(tx, &woken).await?;
        self.get_video(id).await
    }
}
