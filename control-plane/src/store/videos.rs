//! Videos: batch submission (one normalised URL is one video, whatever project submits it),
//! listing, detail with tasks, retry and cancel.

use dataminer_wire::{Stage, SubmittedVideo, VideoDetail, VideoState, VideoView};
use sqlx::Row;
use tracing::instrument;

use super::pipeline::{self, NewTask};
use super::tasks::reopen_failed_project_videos;
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
    /// task; known ones are linked to the projects they are not yet in (an already extracted
    /// video gets those projects' filter tasks at once, a FAILED one makes them FAILED with
    /// its error). Refuses the whole batch, changing nothing, if a project is unknown or
    /// cancelled.
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
        let mut project_ids = Vec::with_capacity(projects.len());
        let mut extract_config = None;
        for name in projects {
            let row = found
                .iter()
                .find(|r| r.try_get::<String, _>("name").is_ok_and(|n| &n == name))
                .ok_or_else(|| StoreError::invalid("unknown_project", format!("project {name:?} does not exist")))?;
            if row.try_get::<i64, _>("cancelled")? != 0 {
                return Err(StoreError::conflict("project_cancelled", format!("project {name:?} is cancelled")));
            }
            let id: i64 = row.try_get("id")?;
            if !project_ids.contains(&id) {
                project_ids.push(id);
            }
            if extract_config.is_none() {
                // A video is extracted once for all its projects, with the settings of the
                // first project it was submitted to.
                let cfg: dataminer_wire::ProjectConfig = serde_json::from_str(&row.try_get::<String, _>("config")?)
                    .map_err(|e| StoreError::Corrupt(format!("project config: {e}")))?;
                extract_config = Some(
                    serde_json::to_string(&cfg.extract).map_err(|e| StoreError::Corrupt(format!("extract: {e}")))?,
                );
            }
        }
        let extract_config =
            extract_config.ok_or_else(|| StoreError::invalid("no_projects", "name at least one project"))?;
        let mut out = Vec::with_capacity(sources.len());
        let mut woken = Vec::new();
        for src in sources {
            let inserted: Option<i64> = sqlx::query_scalar(
                "INSERT INTO videos (url, url_key, source_kind, origin, state, priority, extract_config, created_at, updated_at) \
                 VALUES ($1, $2, $3, 'api', 'PENDING', $4, $5, $6, $6) ON CONFLICT (url_key) DO NOTHING RETURNING id",
            )
            .bind(&src.url)
            .bind(&src.key)
            .bind(src.kind.as_str())
            .bind(priority)
            .bind(&extract_config)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            let (video_id, state, failed_stage, error, new) = match inserted {
                Some(id) => {
                    let download = NewTask {
                        stage: Stage::Download,
                        video_id: id,
                        project_id: None,
                        priority,
                        requires: src.kind.requires().map(str::to_string),
                    };
                    pipeline::enqueue_many(self, &mut tx, &[download], now).await?;
                    woken.push(Stage::Download);
                    (id, "PENDING".to_string(), None, None, true)
                }
                None => {
                    let r = sqlx::query("SELECT id, state, failed_stage, error FROM videos WHERE url_key = $1")
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
            for pid in &project_ids {
                let r = sqlx::query(
                    "INSERT INTO project_videos (project_id, video_id, state, failed_stage, error, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT (project_id, video_id) DO NOTHING",
                )
                .bind(*pid)
                .bind(video_id)
                .bind(pv_state)
                .bind(pv_stage.clone())
                .bind(pv_error.clone())
                .bind(now)
                .execute(&mut *tx)
                .await?;
                joined |= r.rows_affected() > 0;
            }
            if joined && state == "EXTRACTED" && pipeline::enqueue_filters(self, &mut tx, &[video_id], now).await? > 0 {
                woken.push(Stage::Filter);
            }
            out.push(SubmittedVideo {
                id: video_id,
                url: urls::redact(&src.url),
                new,
                state: VideoState::parse(&state).ok_or_else(|| StoreError::Corrupt(format!("video state {state}")))?,
            });
        }
        self.commit_and_wake(tx, &woken).await?;
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
        let found = q.fetch_all(self.reader()).await?;
        found.iter().map(rows::video).collect()
    }

    pub async fn get_video(&self, id: i64) -> Result<VideoDetail> {
        let sql = format!("SELECT {} FROM videos v WHERE v.id = $1", rows::VIDEO_COLS);
        let v = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(self.reader())
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("video {id} not found")))?;
        let sql = format!(
            "SELECT {} FROM project_videos pv JOIN projects p ON p.id = pv.project_id WHERE pv.video_id = $1 ORDER BY p.name",
            rows::PV_COLS
        );
        let pvs = sqlx::query(&sql).bind(id).fetch_all(self.reader()).await?;
        let sql = format!("SELECT {} FROM {} WHERE t.video_id = $1 ORDER BY t.id", rows::TASK_COLS, rows::TASK_FROM);
        let tasks = sqlx::query(&sql).bind(id).fetch_all(self.reader()).await?;
        Ok(VideoDetail {
            video: rows::video(&v)?,
            projects: pvs.iter().map(rows::project_video).collect::<Result<_>>()?,
            tasks: tasks.iter().map(rows::task).collect::<Result<_>>()?,
        })
    }

    /// Retries everything that failed or was cancelled about a video: its dead or cancelled
    /// tasks (in projects that are not cancelled) are queued again, and project-videos that
    /// failed because the video did go back to PENDING. 409 when there is nothing to retry.
    #[instrument(skip(self))]
    pub async fn retry_video(&self, id: i64) -> Result<VideoDetail> {
        let mut tx = self.begin_write().await?;
        let now = self.now(&mut tx).await?;
        let state: String = sqlx::query_scalar("SELECT state FROM videos WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("video {id} not found")))?;
        let task_ids: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM tasks WHERE video_id = $1 AND state IN ('dead', 'cancelled') \
             AND (project_id IS NULL OR project_id IN (SELECT id FROM projects WHERE cancelled = 0)) ORDER BY id",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        let mut woken = Vec::new();
        let mut video_task_reopened = false;
        for t in task_ids {
            let stage = self.reopen_task_by_id(&mut tx, t, now).await?;
            video_task_reopened |= !stage.is_project_stage();
            woken.push(stage);
        }
        let mut changed = !woken.is_empty();
        if (state == "FAILED" || state == "CANCELLED") && !video_task_reopened {
            // Failed without a task of its own (its identical content failed): start over.
            let r: (String, i64) = {
                let row = sqlx::query("SELECT url_key, priority FROM videos WHERE id = $1")
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
                (row.try_get("url_key")?, row.try_get("priority")?)
            };
            sqlx::query(
                "UPDATE videos SET state = 'PENDING', content_of = NULL, failed_stage = NULL, error = NULL, \
                 updated_at = $1 WHERE id = $2",
            )
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            let requires = urls::kind_of_key(&r.0, &self.settings().platform_hosts).requires().map(str::to_string);
            let download = NewTask { stage: Stage::Download, video_id: id, project_id: None, priority: r.1, requires };
            pipeline::enqueue_many(self, &mut tx, &[download], now).await?;
            woken.push(Stage::Download);
            changed = true;
        }
        changed |= reopen_failed_project_videos(&mut tx, &[id], now).await? > 0;
        if state == "EXTRACTED" && pipeline::enqueue_filters(self, &mut tx, &[id], now).await? > 0 {
            woken.push(Stage::Filter);
            changed = true;
        }
        if !changed {
            return Err(StoreError::conflict(
                "nothing_to_retry",
                format!("video {id} has nothing failed or cancelled"),
            ));
        }
        self.commit_and_wake(tx, &woken).await?;
        self.get_video(id).await
    }

    /// Cancels a video: its queued and leased tasks (all stages, all projects) are
    /// cancelled — leased ones learn it from their next heartbeat — its unfinished
    /// project-videos become CANCELLED, and it becomes CANCELLED unless it was already
    /// extracted or failed. Videos waiting on its content get their own extract.
    #[instrument(skip(self))]
    pub async fn cancel_video(&self, id: i64) -> Result<VideoDetail> {
        let mut tx = self.begin_write().await?;
        let now = self.now(&mut tx).await?;
        let exists: Option<i64> =
            sqlx::query_scalar("SELECT id FROM videos WHERE id = $1").bind(id).fetch_optional(&mut *tx).await?;
        if exists.is_none() {
            return Err(StoreError::NotFound(format!("video {id} not found")));
        }
        pipeline::cancel_open_work(&mut tx, pipeline::CancelScope::Video(id), now).await?;
        sqlx::query(
            "UPDATE videos SET state = 'CANCELLED', updated_at = $1 WHERE id = $2 \
             AND state NOT IN ('EXTRACTED', 'FAILED', 'CANCELLED')",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let mut woken = Vec::new();
        if pipeline::unlink_waiting_duplicates(self, &mut tx, id, now).await? {
            woken.push(Stage::Extract);
        }
        self.commit_and_wake(tx, &woken).await?;
        self.get_video(id).await
    }
}
