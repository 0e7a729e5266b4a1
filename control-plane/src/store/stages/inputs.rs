//! The rows a lease's inputs are read from, loaded once per lease with one query per kind
//! (videos, extractions, projects, project-videos, dedup kept-set lengths), whatever the batch.

use std::collections::HashMap;

use dataminer_wire::{ExtractConfig, ProjectConfig, Stage};
use sqlx::Row;

use super::{values_rows, TaskSubject, Tx};
use crate::store::{placeholders, Result, StoreError};

#[derive(Debug)]
pub(crate) struct VideoRow {
    pub url: String,
    pub source_kind: String,
}

#[derive(Debug)]
pub(crate) struct ExtractionRow {
    pub video_path: Option<String>,
    pub config: ExtractConfig,
}

#[derive(Debug, Default)]
pub(crate) struct PvRow {
    pub frames_dir: Option<String>,
    pub manifest_path: Option<String>,
    pub filter_dir: Option<String>,
    pub dedup_dir: Option<String>,
}

#[derive(Debug, Default)]
pub(crate) struct Inputs {
    pub videos: HashMap<i64, VideoRow>,
    pub extractions: HashMap<i64, ExtractionRow>,
    pub projects: HashMap<i64, (String, ProjectConfig)>,
    pub pvs: HashMap<(i64, i64), PvRow>,
    /// Per project with a dedup task: the last `kept_seq` of its kept set (the agent pages
    /// the entries it lacks from `/kept`, so the lease stays the same size as the project grows).
    pub kept_upto: HashMap<i64, i64>,
}

fn ids(it: impl Iterator<Item = i64>) -> Vec<i64> {
    let mut v: Vec<i64> = it.collect();
    v.sort_unstable();
    v.dedup();
    v
}

async fn rows_in(tx: &mut Tx, sql_head: &str, ids: &[i64]) -> Result<Vec<sqlx::any::AnyRow>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!("{sql_head} IN ({})", placeholders(1, ids.len()));
    let mut q = sqlx::query(&sql);
    for id in ids {
        q = q.bind(*id);
    }
    Ok(q.fetch_all(&mut **tx).await?)
}

impl Inputs {
    pub(crate) async fn load(tx: &mut Tx, leased: &[TaskSubject]) -> Result<Inputs> {
        let mut i = Inputs::default();
        let video_ids = ids(leased.iter().filter(|t| t.stage == Stage::Download).map(|t| t.video_id));
        for r in rows_in(tx, "SELECT id, url, source_kind FROM videos WHERE id", &video_ids).await? {
            i.videos
                .insert(r.try_get("id")?, VideoRow { url: r.try_get("url")?, source_kind: r.try_get("source_kind")? });
        }
        let extraction_ids = ids(leased.iter().filter_map(|t| t.extraction_id));
        for r in rows_in(
            tx,
            "SELECT e.id, e.config, v.file_path FROM extractions e JOIN videos v ON v.id = e.video_id WHERE e.id",
            &extraction_ids,
        )
        .await?
        {
            let config: String = r.try_get("config")?;
            i.extractions.insert(
                r.try_get("id")?,
                ExtractionRow {
                    video_path: r.try_get("file_path")?,
                    config: serde_json::from_str(&config)
                        .map_err(|e| StoreError::Corrupt(format!("extraction config: {e}")))?,
                },
            );
        }
        let project_ids = ids(leased.iter().filter_map(|t| t.project_id));
        for r in rows_in(tx, "SELECT id, name, config FROM projects WHERE id", &project_ids).await? {
            let config: ProjectConfig = serde_json::from_str(&r.try_get::<String, _>("config")?)
                .map_err(|e| StoreError::Corrupt(format!("project config: {e}")))?;
            i.projects.insert(r.try_get("id")?, (r.try_get("name")?, config));
        }
        // Per-project-video paths, with the frames of the extraction each one uses.
        let pairs: Vec<(i64, i64)> = leased
            .iter()
            .filter(|t| t.stage.is_project_stage())
            .map(|t| (t.project_id.unwrap_or(0), t.video_id))
            .collect();
        if !pairs.is_empty() {
            let sql = format!(
                "SELECT pv.project_id, pv.video_id, pv.filter_dir, pv.dedup_dir, e.frames_dir, e.manifest_path \
                 FROM project_videos pv JOIN (VALUES {}) AS v ON pv.project_id = v.column1 AND pv.video_id = v.column2 \
                 LEFT JOIN extractions e ON e.id = pv.extraction_id",
                values_rows(1, pairs.len(), 2)
            );
            let mut q = sqlx::query(&sql);
            for (p, v) in &pairs {
                q = q.bind(*p).bind(*v);
            }
            for r in q.fetch_all(&mut **tx).await? {
                i.pvs.insert(
                    (r.try_get("project_id")?, r.try_get("video_id")?),
                    PvRow {
                        frames_dir: r.try_get("frames_dir")?,
                        manifest_path: r.try_get("manifest_path")?,
                        filter_dir: r.try_get("filter_dir")?,
                        dedup_dir: r.try_get("dedup_dir")?,
                    },
                );
            }
        }
        // Each dedup task gets the length of its project's kept set so far.
        let dedup_projects = ids(leased.iter().filter(|t| t.stage == Stage::Dedup).filter_map(|t| t.project_id));
        if !dedup_projects.is_empty() {
            let sql = format!(
                "SELECT project_id, CAST(MAX(kept_seq) AS BIGINT) AS upto FROM project_videos \
                 WHERE project_id IN ({}) AND kept_seq IS NOT NULL GROUP BY project_id",
                placeholders(1, dedup_projects.len())
            );
            let mut q = sqlx::query(&sql);
            for p in &dedup_projects {
                q = q.bind(*p);
            }
            for r in q.fetch_all(&mut **tx).await? {
                i.kept_upto.insert(r.try_get("project_id")?, r.try_get("upto")?);
            }
        }
        Ok(i)
    }
}
