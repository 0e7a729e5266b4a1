//! Per-frame results of the model stages (`project_frames`): the frames the filter kept, with
//! their scores, and dedup's decision on each. Only a completion the queue accepts (fenced)
//! writes them, in its own transaction, and it *replaces* the rows of its (project, video,
//! stage): a retried attempt replaces, never adds. A result is checked twice before anything
//! is written: on its own ([`check_filter`], [`check_dedup`]: counts agree, indices unique,
//! scores finite) and against the database inside the completing transaction
//! ([`validate_in_tx`]: prompt indices, frame paths, dedup coverage, `duplicate_of` targets),
//! so an inconsistent result is a 422 that changes nothing.

use std::collections::{BTreeSet, HashMap, HashSet};

use dataminer_wire::{
    DedupDecision, FilterFrame, FrameRef, FrameState, FrameView, KeptEntry, ProjectConfig, StageResult,
};
use sqlx::Row;
use tracing::instrument;

use super::stages::{inside, values_rows, TaskSubject, Tx};
use super::{Result, Store, StoreError};

/// Longest digest string a result may carry.
const MAX_DIGEST_CHARS: usize = 128;
/// Longest frame path a result may carry.
const MAX_PATH_CHARS: usize = 1024;
/// Rows per INSERT / UPDATE statement (well under both backends' bind-parameter limits).
const ROWS_PER_STATEMENT: usize = 500;

/// `(…), (…)` for `rows` rows of placeholders from `$start`, each column cast to its type when
/// one is given. Typed placeholders matter on PostgreSQL: sqlx's `Any` driver sends a NULL
/// `f64` as a float4 parameter (and a present one as float8), so a statement cached from a
/// row with NULL would refuse the next one's numbers ("incorrect binary data format").
/// Nullable floats are therefore bound as text ([`float_text`]) and cast here.
fn typed_rows(start: usize, rows: usize, casts: &[Option<&str>]) -> String {
    let mut s = String::with_capacity(rows * casts.len() * 12);
    for r in 0..rows {
        if r > 0 {
            s.push_str(", ");
        }
        s.push('(');
        for (c, cast) in casts.iter().enumerate() {
            if c > 0 {
                s.push_str(", ");
            }
            let n = start + r * casts.len() + c;
            match cast {
                Some(ty) => s.push_str(&format!("CAST(${n} AS {ty})")),
                None => s.push_str(&format!("${n}")),
            }
        }
        s.push(')');
    }
    s
}

/// A nullable float as text (Rust's shortest round-trip form), cast back in SQL.
fn float_text(v: Option<f32>) -> Option<String> {
    v.map(|x| f64::from(x).to_string())
}

const DOUBLE: Option<&str> = Some("DOUBLE PRECISION");
const BIGINT: Option<&str> = Some("BIGINT");
const TEXT: Option<&str> = Some("TEXT");

fn invalid(message: impl Into<String>) -> StoreError {
    StoreError::invalid("invalid_result", message)
}

fn finite(field: &str, v: f32) -> Result<()> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(invalid(format!("{field} must be a finite number")))
    }
}

fn digest_ok(field: &str, d: &str) -> Result<()> {
    if d.chars().count() > MAX_DIGEST_CHARS {
        return Err(invalid(format!("{field} must be at most {MAX_DIGEST_CHARS} characters")));
    }
    Ok(())
}

/// A filter result on its own: counts agree with the rows, indices are unique and not
/// negative, numbers are finite.
pub(crate) fn check_filter(
    frames_in: i64,
    frames_kept: i64,
    frames: &[FilterFrame],
    frames_unreadable: i64,
    config_digest: &str,
) -> Result<()> {
    if frames_unreadable < 0 {
        return Err(invalid("frames_unreadable must not be negative"));
    }
    if frames.len() as i64 != frames_kept {
        return Err(invalid(format!("frames_kept is {frames_kept} but the result lists {} kept frames", frames.len())));
    }
    if frames_kept.saturating_add(frames_unreadable) > frames_in {
        return Err(invalid("frames_kept + frames_unreadable cannot exceed frames_in"));
    }
    digest_ok("config_digest", config_digest)?;
    let mut seen = HashSet::with_capacity(frames.len());
    for f in frames {
        let i = f.frame_index;
        if i < 0 {
            return Err(invalid(format!("frame_index {i} must not be negative")));
        }
        if !seen.insert(i) {
            return Err(invalid(format!("frame_index {i} is listed twice")));
        }
        if f.width < 0 || f.height < 0 || f.best_prompt < 0 {
            return Err(invalid(format!("frame {i}: width, height and best_prompt must not be negative")));
        }
        if !f.pts_s.is_finite() {
            return Err(invalid(format!("frame {i}: pts_s must be a finite number")));
        }
        finite("pos_max", f.pos_max)?;
        if let Some(v) = f.neg_max {
            finite("neg_max", v)?;
        }
        if let Some(v) = f.junk_max {
            finite("junk_max", v)?;
        }
        if f.path.is_empty() || f.path.chars().count() > MAX_PATH_CHARS {
            return Err(invalid(format!("frame {i}: path must be 1-{MAX_PATH_CHARS} characters")));
        }
    }
    Ok(())
}

/// A dedup result on its own: one decision per frame, counts agree, a duplicate names a kept
/// frame and a similarity in [-1, 1], a kept frame names neither, and a duplicate of this
/// same video names an earlier frame this result keeps.
pub(crate) fn check_dedup(
    video_id: i64,
    frames_in: i64,
    frames_kept: i64,
    decisions: &[DedupDecision],
    model_digest: &str,
) -> Result<()> {
    if decisions.len() as i64 != frames_in {
        return Err(invalid(format!("frames_in is {frames_in} but the result has {} decisions", decisions.len())));
    }
    let kept = decisions.iter().filter(|d| d.kept).count() as i64;
    if kept != frames_kept {
        return Err(invalid(format!("frames_kept is {frames_kept} but {kept} decisions keep their frame")));
    }
    digest_ok("model_digest", model_digest)?;
    let mut seen = HashSet::with_capacity(decisions.len());
    let kept_here: HashSet<i64> = decisions.iter().filter(|d| d.kept).map(|d| d.frame_index).collect();
    for d in decisions {
        let i = d.frame_index;
        if i < 0 {
            return Err(invalid(format!("frame_index {i} must not be negative")));
        }
        if !seen.insert(i) {
            return Err(invalid(format!("frame_index {i} has two decisions")));
        }
        if let Some(s) = d.similarity {
            if !s.is_finite() || !(-1.0..=1.0).contains(&s) {
                return Err(invalid(format!("frame {i}: similarity must be a finite number in [-1, 1]")));
            }
        }
        match (d.kept, d.duplicate_of) {
            (true, Some(_)) => return Err(invalid(format!("frame {i} is kept but names a duplicate_of"))),
            (true, None) => {}
            (false, None) => return Err(invalid(format!("duplicate frame {i} must name duplicate_of"))),
            (false, Some(r)) => {
                if d.similarity.is_none() {
                    return Err(invalid(format!("duplicate frame {i} must carry its similarity")));
                }
                if r.video_id == video_id && !(r.frame_index < i && kept_here.contains(&r.frame_index)) {
                    return Err(invalid(format!(
                        "frame {i}: duplicate_of frame {} of the same video must be an earlier frame this result keeps",
                        r.frame_index
                    )));
                }
            }
        }
    }
    Ok(())
}

/// The checks that need the database, inside the completing transaction and before the
/// fenced update (so a refusal changes nothing): filter prompt indices against the project's
/// positive prompts and frame paths inside the project-video's extraction; dedup decisions
/// covering exactly the video's filter-kept frames, and `duplicate_of` naming kept frames of
/// the project's other videos.
pub(crate) async fn validate_in_tx(tx: &mut Tx, t: &TaskSubject, r: &StageResult) -> Result<()> {
    let project_id = t.project_id.unwrap_or(0);
    match r {
        StageResult::Filter { frames, .. } => {
            let row = sqlx::query(
                "SELECT p.config, e.frames_dir FROM project_videos pv JOIN projects p ON p.id = pv.project_id \
                 LEFT JOIN extractions e ON e.id = pv.extraction_id WHERE pv.project_id = $1 AND pv.video_id = $2",
            )
            .bind(project_id)
            .bind(t.video_id)
            .fetch_optional(&mut **tx)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("task {} has no project-video", t.id)))?;
            let config: ProjectConfig = serde_json::from_str(&row.try_get::<String, _>("config")?)
                .map_err(|e| StoreError::Corrupt(format!("project config: {e}")))?;
            let frames_dir: Option<String> = row.try_get("frames_dir")?;
            let prompts = config.filter.positive_prompts.len() as i64;
            for f in frames {
                if f.best_prompt >= prompts {
                    return Err(invalid(format!(
                        "frame {}: best_prompt {} is out of range (the project has {prompts} positive prompts)",
                        f.frame_index, f.best_prompt
                    )));
                }
                if !frames_dir.as_deref().is_some_and(|d| inside(&f.path, d)) {
                    return Err(StoreError::invalid(
                        "output_outside_attempt_dir",
                        format!("frame {}: path {:?} must lie inside the extraction's frames", f.frame_index, f.path),
                    ));
                }
            }
            Ok(())
        }
        StageResult::Dedup { decisions, .. } => {
            let filtered: BTreeSet<i64> = sqlx::query_scalar::<_, i64>(
                "SELECT frame_index FROM project_frames WHERE project_id = $1 AND video_id = $2",
            )
            .bind(project_id)
            .bind(t.video_id)
            .fetch_all(&mut **tx)
            .await?
            .into_iter()
            .collect();
            let decided: BTreeSet<i64> = decisions.iter().map(|d| d.frame_index).collect();
            if filtered != decided {
                let missing = filtered.difference(&decided).count();
                let extra = decided.difference(&filtered).count();
                return Err(invalid(format!(
                    "decisions must cover exactly the video's {} filter-kept frames ({missing} missing, {extra} not \
                     kept by the filter)",
                    filtered.len()
                )));
            }
            let others: BTreeSet<(i64, i64)> = decisions
                .iter()
                .filter_map(|d| d.duplicate_of)
                .filter(|r| r.video_id != t.video_id)
                .map(|r| (r.video_id, r.frame_index))
                .collect();
            let others: Vec<(i64, i64)> = others.into_iter().collect();
            for chunk in others.chunks(ROWS_PER_STATEMENT) {
                let sql = format!(
                    "SELECT COUNT(*) FROM project_frames WHERE project_id = $1 AND dedup_state = 'kept' \
                     AND (video_id, frame_index) IN (VALUES {})",
                    values_rows(2, chunk.len(), 2)
                );
                let mut q = sqlx::query_scalar::<_, i64>(&sql).bind(project_id);
                for (v, f) in chunk {
                    q = q.bind(*v).bind(*f);
                }
                let found = q.fetch_one(&mut **tx).await?;
                if found != chunk.len() as i64 {
                    return Err(invalid(format!(
                        "{} duplicate_of frames are not kept frames of the project",
                        chunk.len() as i64 - found
                    )));
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Replaces the filter rows of each (project, video) with the frames its accepted result kept.
pub(crate) async fn replace_filter_rows(tx: &mut Tx, rows: &[(i64, i64, &[FilterFrame])]) -> Result<()> {
    for (project_id, video_id, frames) in rows {
        sqlx::query("DELETE FROM project_frames WHERE project_id = $1 AND video_id = $2")
            .bind(*project_id)
            .bind(*video_id)
            .execute(&mut **tx)
            .await?;
        for chunk in frames.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO project_frames (project_id, video_id, frame_index, pts_s, path, width, height, \
                 best_prompt, pos_max, neg_max, junk_max) VALUES {}",
                typed_rows(1, chunk.len(), &[None, None, None, None, None, None, None, None, None, DOUBLE, DOUBLE])
            );
            let mut q = sqlx::query(&sql);
            for f in chunk.iter() {
                q = q
                    .bind(*project_id)
                    .bind(*video_id)
                    .bind(f.frame_index)
                    .bind(f.pts_s)
                    .bind(f.path.as_str())
                    .bind(f.width)
                    .bind(f.height)
                    .bind(f.best_prompt)
                    .bind(f64::from(f.pos_max))
                    .bind(float_text(f.neg_max))
                    .bind(float_text(f.junk_max));
            }
            q.execute(&mut **tx).await?;
        }
    }
    Ok(())
}

/// Records dedup's decisions on the video's filter rows. The decisions cover every row (checked
/// before), so this replaces whatever an earlier dedup of the video recorded.
pub(crate) async fn record_decisions(
    tx: &mut Tx,
    project_id: i64,
    video_id: i64,
    decisions: &[DedupDecision],
) -> Result<()> {
    for chunk in decisions.chunks(ROWS_PER_STATEMENT) {
        let values = typed_rows(3, chunk.len(), &[BIGINT, TEXT, BIGINT, BIGINT, DOUBLE]);
        let sql = format!(
            "UPDATE project_frames SET dedup_state = v.column2, duplicate_of_video = v.column3, \
             duplicate_of_frame = v.column4, similarity = v.column5 FROM (VALUES {values}) AS v \
             WHERE project_frames.project_id = $1 AND project_frames.video_id = $2 \
             AND project_frames.frame_index = v.column1"
        );
        let mut q = sqlx::query(&sql).bind(project_id).bind(video_id);
        for d in chunk {
            let state = if d.kept { FrameState::Kept } else { FrameState::Duplicate };
            q = q
                .bind(d.frame_index)
                .bind(state.as_str())
                .bind(d.duplicate_of.map(|r| r.video_id))
                .bind(d.duplicate_of.map(|r| r.frame_index))
                .bind(float_text(d.similarity));
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Forgets the dedup decisions of some of a project's videos (a rerun), so they are not part
/// of the kept set until their dedup runs again.
pub(crate) async fn clear_decisions(tx: &mut Tx, project_id: i64, video_ids: &[i64]) -> Result<()> {
    for chunk in video_ids.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "UPDATE project_frames SET dedup_state = NULL, duplicate_of_video = NULL, duplicate_of_frame = NULL, \
             similarity = NULL WHERE project_id = $1 AND video_id IN ({})",
            super::placeholders(2, chunk.len())
        );
        let mut q = sqlx::query(&sql).bind(project_id);
        for v in chunk {
            q = q.bind(*v);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// What `/frames` filters on.
#[derive(Debug, Clone, Copy, Default)]
pub struct FrameQuery {
    pub state: Option<FrameState>,
    pub video_id: Option<i64>,
    /// Keyset cursor: frames after this (video_id, frame_index).
    pub after: Option<(i64, i64)>,
    pub limit: i64,
}

fn frame_view(r: &sqlx::any::AnyRow) -> Result<FrameView> {
    let state: Option<String> = r.try_get("dedup_state")?;
    let dup_video: Option<i64> = r.try_get("duplicate_of_video")?;
    let dup_frame: Option<i64> = r.try_get("duplicate_of_frame")?;
    Ok(FrameView {
        video_id: r.try_get("video_id")?,
        frame_index: r.try_get("frame_index")?,
        pts_s: r.try_get("pts_s")?,
        path: r.try_get("path")?,
        width: r.try_get("width")?,
        height: r.try_get("height")?,
        best_prompt: r.try_get("best_prompt")?,
        pos_max: r.try_get("pos_max")?,
        neg_max: r.try_get("neg_max")?,
        junk_max: r.try_get("junk_max")?,
        dedup_state: match state {
            None => None,
            Some(s) => Some(FrameState::parse(&s).ok_or_else(|| StoreError::Corrupt(format!("dedup_state {s:?}")))?),
        },
        duplicate_of: dup_video.zip(dup_frame).map(|(video_id, frame_index)| FrameRef { video_id, frame_index }),
        similarity: r.try_get("similarity")?,
    })
}

impl Store {
    /// The project's id by name (404 when there is none).
    async fn project_id(&self, name: &str) -> Result<i64> {
        sqlx::query_scalar::<_, i64>("SELECT id FROM projects WHERE name = $1")
            .bind(name)
            .fetch_optional(self.reader()?)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("project {name:?} not found")))
    }

    /// A page of the project's filter-kept frames in (video_id, frame_index) order.
    #[instrument(skip(self))]
    pub async fn frames_page(&self, name: &str, q: FrameQuery) -> Result<Vec<FrameView>> {
        let project_id = self.project_id(name).await?;
        let mut sql = String::from(
            "SELECT video_id, frame_index, pts_s, path, width, height, best_prompt, pos_max, neg_max, junk_max, \
             dedup_state, duplicate_of_video, duplicate_of_frame, similarity FROM project_frames WHERE project_id = $1",
        );
        let mut n = 1;
        let mut next = || {
            n += 1;
            format!("${n}")
        };
        if q.state.is_some() {
            sql.push_str(&format!(" AND dedup_state = {}", next()));
        }
        if q.video_id.is_some() {
            sql.push_str(&format!(" AND video_id = {}", next()));
        }
        if q.after.is_some() {
            let (a, b, c) = (next(), next(), next());
            sql.push_str(&format!(" AND (video_id > {a} OR (video_id = {b} AND frame_index > {c}))"));
        }
        sql.push_str(&format!(" ORDER BY video_id, frame_index LIMIT {}", next()));
        let mut query = sqlx::query(&sql).bind(project_id);
        if let Some(s) = q.state {
            query = query.bind(s.as_str());
        }
        if let Some(v) = q.video_id {
            query = query.bind(v);
        }
        if let Some((v, f)) = q.after {
            query = query.bind(v).bind(v).bind(f);
        }
        let rows = query.bind(q.limit).fetch_all(self.reader()?).await?;
        rows.iter().map(frame_view).collect()
    }

    /// A page of the project's kept set in `kept_seq` order, after `after_seq`.
    #[instrument(skip(self))]
    pub async fn kept_page(&self, name: &str, after_seq: i64, limit: i64) -> Result<Vec<KeptEntry>> {
        let project_id = self.project_id(name).await?;
        let rows = sqlx::query(
            "SELECT kept_seq, video_id, dedup_dir, dedup_digest FROM project_videos \
             WHERE project_id = $1 AND kept_seq IS NOT NULL AND kept_seq > $2 ORDER BY kept_seq LIMIT $3",
        )
        .bind(project_id)
        .bind(after_seq)
        .bind(limit)
        .fetch_all(self.reader()?)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(KeptEntry {
                    kept_seq: r.try_get("kept_seq")?,
                    video_id: r.try_get("video_id")?,
                    dedup_dir: r.try_get::<Option<String>, _>("dedup_dir")?.unwrap_or_default(),
                    model_digest: r.try_get::<Option<String>, _>("dedup_digest")?.unwrap_or_default(),
                })
            })
            .collect()
    }

    /// Counts of the project's filter rows by dedup state (`None`: not deduplicated yet).
    pub(crate) async fn frame_state_counts(&self, project_id: i64) -> Result<HashMap<Option<String>, i64>> {
        let rows = sqlx::query(
            "SELECT dedup_state, COUNT(*) AS n FROM project_frames WHERE project_id = $1 GROUP BY dedup_state",
        )
        .bind(project_id)
        .fetch_all(self.reader()?)
        .await?;
        let mut out = HashMap::new();
        for r in &rows {
            out.insert(r.try_get::<Option<String>, _>("dedup_state")?, r.try_get::<i64, _>("n")?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(i: i64) -> FilterFrame {
        FilterFrame {
            frame_index: i,
            pts_s: i as f64,
            path: format!("frames_raw/1/2.1/frame_{i:06}.jpg"),
            width: 64,
            height: 48,
            best_prompt: 0,
            pos_max: 0.9,
            neg_max: None,
            junk_max: None,
        }
    }

    fn keep(i: i64) -> DedupDecision {
        DedupDecision { frame_index: i, kept: true, duplicate_of: None, similarity: None }
    }

    fn dup(i: i64, video_id: i64, frame_index: i64) -> DedupDecision {
        DedupDecision {
            frame_index: i,
            kept: false,
            duplicate_of: Some(FrameRef { video_id, frame_index }),
            similarity: Some(0.95),
        }
    }

    #[test]
    fn filter_counts_and_indices() {
        assert!(check_filter(10, 2, &[frame(1), frame(2)], 3, "d").is_ok());
        assert!(check_filter(10, 3, &[frame(1), frame(2)], 0, "d").is_err(), "count disagrees");
        assert!(check_filter(4, 2, &[frame(1), frame(2)], 3, "d").is_err(), "more than frames_in");
        assert!(check_filter(10, 2, &[frame(1), frame(1)], 0, "d").is_err(), "index twice");
        assert!(check_filter(10, 1, &[frame(-1)], 0, "d").is_err(), "negative index");
        assert!(check_filter(10, 0, &[], -1, "d").is_err(), "negative unreadable");
        let mut nan = frame(1);
        nan.pos_max = f32::NAN;
        assert!(check_filter(10, 1, &[nan], 0, "d").is_err(), "NaN score");
        assert!(check_filter(10, 0, &[], 0, &"x".repeat(129)).is_err(), "long digest");
    }

    #[test]
    fn dedup_decisions() {
        assert!(check_dedup(7, 3, 2, &[keep(1), dup(2, 7, 1), keep(3)], "d").is_ok());
        assert!(check_dedup(7, 2, 1, &[keep(1), dup(2, 5, 9)], "d").is_ok(), "other video checked in the db");
        assert!(check_dedup(7, 3, 2, &[keep(1), keep(2)], "d").is_err(), "frames_in disagrees");
        assert!(check_dedup(7, 2, 2, &[keep(1), dup(2, 7, 1)], "d").is_err(), "frames_kept disagrees");
        assert!(check_dedup(7, 2, 1, &[dup(1, 7, 2), keep(2)], "d").is_err(), "later frame of the same video");
        assert!(check_dedup(7, 2, 0, &[dup(1, 5, 1), dup(2, 7, 1)], "d").is_err(), "same-video target not kept");
        assert!(check_dedup(7, 2, 2, &[keep(1), keep(1)], "d").is_err(), "two decisions for a frame");
        let mut d = dup(2, 5, 1);
        d.similarity = Some(1.5);
        assert!(check_dedup(7, 2, 1, &[keep(1), d.clone()], "d").is_err(), "similarity out of range");
        d.similarity = None;
        assert!(check_dedup(7, 2, 1, &[keep(1), d], "d").is_err(), "duplicate without similarity");
        let mut k = keep(1);
        k.duplicate_of = Some(FrameRef { video_id: 5, frame_index: 1 });
        assert!(check_dedup(7, 1, 1, &[k], "d").is_err(), "kept frame naming a duplicate_of");
        let mut n = dup(1, 5, 1);
        n.duplicate_of = None;
        assert!(check_dedup(7, 1, 0, &[n], "d").is_err(), "duplicate without duplicate_of");
    }
}
