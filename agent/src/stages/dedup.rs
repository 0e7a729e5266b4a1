//! The dedup stage (`models` build): embeds the frames the project-video's filter kept and
//! drops each one whose cosine with a frame already in the project's kept set — earlier videos
//! in their recorded order, then this video's earlier kept frames — is ≥ the threshold (exact,
//! no k-limit). The kept set is read from the control plane's `/kept` pages and the accepted
//! dedup outputs they name; this agent caches it per project and reads only what it lacks.
//! Writes `embeddings.npy` (the kept frames' rows), `kept.json` (their frame indices) and
//! `model.digest`; the completion carries a decision per frame.

use std::path::Path;
use std::sync::Arc;

use dataminer_wire::{DedupDecision, DedupEmbedding, FilterFrame, FrameRef as WireFrameRef, LeasedTask, StageResult};
use tokio_util::sync::CancellationToken;

use super::{data_path, Progress, StageContext};
use crate::error::TaskError;
use crate::models::batch::{BatchError, BatchRun, FrameRef, Pooling};
use crate::models::manifest::Kind;
use crate::models::registry::KeptCache;
use crate::models::rules::{dedup_video, KeptSet};

const KEPT_PAGE: i64 = 500;

pub async fn run(
    ctx: &StageContext,
    task: &LeasedTask,
    attempt_dir: &Path,
    progress: Arc<Progress>,
    cancel: CancellationToken,
) -> Result<StageResult, TaskError> {
    let input = &task.input;
    let cfg = input.dedup.clone().ok_or_else(|| TaskError::fatal("dedup task without a dedup config"))?;
    let project = input.project.clone().ok_or_else(|| TaskError::fatal("dedup task without a project"))?;
    let filtered = input.filtered_dir.clone().ok_or_else(|| TaskError::fatal("dedup task without a filter output"))?;
    let registry = ctx.models.clone().ok_or_else(|| TaskError::fatal("this agent has no model registry"))?;
    let cp = ctx.control_plane.clone().ok_or_else(|| TaskError::fatal("this agent has no control-plane client"))?;
    let loaded = {
        let (r, name) = (registry.clone(), cfg.model.clone());
        tokio::task::spawn_blocking(move || r.get(&name))
            .await
            .map_err(|e| TaskError::retryable(format!("model loader panicked: {e}")))?
            .map_err(TaskError::fatal)?
    };
    if loaded.package.manifest.kind != Kind::ImageEmbedder {
        return Err(TaskError::fatal(format!("model {} is not an image embedder", cfg.model)));
    }
    let digest = loaded.package.digest.clone();
    // The kept set up to the recorded position: the cached part plus the pages it lacks. The
    // cache is taken out (not copied: it can be hundreds of MB) and put back after the run;
    // a project's dedup tasks run one at a time.
    let cached = registry.kept.lock().unwrap_or_else(|p| p.into_inner()).remove(&project);
    let mut kept = match cached {
        Some(c) if c.digest == digest && c.upto <= input.kept_seq_upto => c,
        _ => KeptCache { upto: 0, digest: digest.clone(), set: KeptSet::new(loaded.package.manifest.embedding_dim) },
    };
    while kept.upto < input.kept_seq_upto {
        let page =
            cp.kept_page(&project, kept.upto, KEPT_PAGE).await.map_err(|e| TaskError::retryable(e.to_string()))?;
        if page.items.is_empty() {
            return Err(TaskError::retryable(format!(
                "the kept set of {project} ends at {} but the task names {}",
                kept.upto, input.kept_seq_upto
            )));
        }
        for e in page.items.iter().filter(|e| e.kept_seq <= input.kept_seq_upto) {
            if e.model_digest != digest {
                return Err(TaskError::fatal(format!(
                    "the kept set entry of video {} was made with model digest {}, this model's is {digest}; \
                     rerun the project's dedup to change its model",
                    e.video_id, e.model_digest
                )));
            }
            read_kept_entry(&ctx.config.data_root, &e.dedup_dir, e.video_id, &mut kept.set)?;
            kept.upto = e.kept_seq;
        }
        if page.items.iter().any(|e| e.kept_seq > input.kept_seq_upto) || page.next_cursor.is_none() {
            break;
        }
    }
    let filtered_dir = data_path(&ctx.config.data_root, &filtered)?;
    let frames: Vec<FilterFrame> = serde_json::from_slice(
        &std::fs::read(filtered_dir.join("kept.json"))
            .map_err(|e| TaskError::io(&format!("read {filtered}/kept.json"), e))?,
    )
    .map_err(|e| TaskError::fatal(format!("{filtered}/kept.json is malformed: {e}")))?;
    let video_id = input.video_id;
    let (root, out_dir, output_dir) =
        (ctx.config.data_root.clone(), attempt_dir.to_path_buf(), task.attempt_dir.clone());
    let (metrics, decode_threads) = (ctx.metrics.clone(), ctx.config.decode_threads as usize);
    let result = tokio::task::spawn_blocking(move || -> Result<(StageResult, KeptCache), TaskError> {
        let refs: Vec<FrameRef> =
            frames.iter().map(|f| FrameRef { index: f.frame_index as u32, path: f.path.clone() }).collect();
        let pooling = match cfg.embedding {
            DedupEmbedding::Pooler => Pooling::Pooler,
            DedupEmbedding::HiddenCls => Pooling::HiddenCls,
            DedupEmbedding::HiddenMean => Pooling::HiddenMean,
        };
        let run = BatchRun {
            runner: &loaded.shared,
            package: &loaded.package,
            data_root: &root,
            batch_size: cfg.batch_size as usize,
            pooling,
            threads: decode_threads,
        };
        let stop = || cancel.is_cancelled();
        let mut done = |n: usize| progress.frames_done(n, refs.len());
        let (feats, times) = run.image_features(&refs, &stop, &mut done).map_err(|e| match e {
            BatchError::Stopped => TaskError::Stopped("cancelled during the dedup".into()),
            other => TaskError::retryable(other.to_string()),
        })?;
        metrics.decode_seconds.with_label_values(&["dedup"]).inc_by(times.decode.as_secs_f64());
        metrics.model_frames.with_label_values(&["dedup"]).inc_by(feats.iter().filter(|f| f.is_some()).count() as u64);
        let mut rows = Vec::with_capacity(feats.len());
        for (f, e) in frames.iter().zip(feats) {
            let e = e.ok_or_else(|| {
                TaskError::retryable(format!("frame {} kept by the filter is unreadable now", f.path))
            })?;
            rows.push(((video_id, f.frame_index), e));
        }
        let mut after = kept;
        let prior_len = after.set.len();
        let verdicts = dedup_video(&mut after.set, &rows, cfg.threshold).map_err(TaskError::fatal)?;
        let mut decisions = Vec::with_capacity(verdicts.len());
        let (mut kept_rows, mut kept_idx) = (Vec::new(), Vec::new());
        for ((frame, e), v) in rows.iter().zip(&verdicts) {
            if v.kept {
                kept_rows.extend_from_slice(e);
                kept_idx.push(frame.1);
                decisions.push(DedupDecision {
                    frame_index: frame.1,
                    kept: true,
                    duplicate_of: None,
                    similarity: None,
                });
            } else {
                let (of, sim) = v.most_similar.ok_or_else(|| TaskError::fatal("a duplicate without a kept frame"))?;
                decisions.push(DedupDecision {
                    frame_index: frame.1,
                    kept: false,
                    duplicate_of: Some(WireFrameRef { video_id: of.0, frame_index: of.1 }),
                    similarity: Some(sim.clamp(-1.0, 1.0)),
                });
            }
        }
        let dim = after.set.dim();
        crate::models::npy::write(&out_dir.join("embeddings.npy"), kept_idx.len(), dim, &kept_rows)
            .map_err(|e| TaskError::io("write embeddings.npy", e))?;
        let idx = serde_json::to_vec(&kept_idx).map_err(|e| TaskError::fatal(e.to_string()))?;
        super::files::write_atomic(&out_dir.join("kept.json"), &idx)
            .map_err(|e| TaskError::io("write kept.json", e))?;
        super::files::write_atomic(&out_dir.join("model.digest"), after.digest.as_bytes())
            .map_err(|e| TaskError::io("write model.digest", e))?;
        let result = StageResult::Dedup {
            output_dir,
            frames_in: rows.len() as i64,
            frames_kept: kept_idx.len() as i64,
            decisions,
            model_digest: after.digest.clone(),
        };
        // Cache the kept set as read, without this video: its entry joins the kept set only
        // if the control plane accepts this completion, and the next task will page it.
        after.set.truncate(prior_len);
        Ok((result, after))
    })
    .await
    .map_err(|e| TaskError::retryable(format!("dedup worker panicked: {e}")))??;
    registry.kept.lock().unwrap_or_else(|p| p.into_inner()).insert(project, result.1);
    Ok(result.0)
}

/// Appends one kept-set entry's embeddings (its `embeddings.npy` rows, frame indices from
/// its `kept.json`) to `set`.
fn read_kept_entry(root: &Path, dir: &str, video_id: i64, set: &mut KeptSet) -> Result<(), TaskError> {
    let base = data_path(root, dir)?;
    let bytes = std::fs::read(base.join("embeddings.npy"))
        .map_err(|e| TaskError::io(&format!("read {dir}/embeddings.npy"), e))?;
    let (rows, cols, data) =
        crate::models::npy::decode(&bytes).map_err(|e| TaskError::fatal(format!("{dir}/embeddings.npy: {e}")))?;
    let idx: Vec<i64> = serde_json::from_slice(
        &std::fs::read(base.join("kept.json")).map_err(|e| TaskError::io(&format!("read {dir}/kept.json"), e))?,
    )
    .map_err(|e| TaskError::fatal(format!("{dir}/kept.json is malformed: {e}")))?;
    if idx.len() != rows || (rows > 0 && cols != set.dim()) {
        return Err(TaskError::fatal(format!("{dir}: {rows}×{cols} embeddings for {} frames", idx.len())));
    }
    for (i, frame) in idx.iter().enumerate() {
        set.push((video_id, *frame), &data[i * cols..(i + 1) * cols]).map_err(TaskError::fatal)?;
    }
    Ok(())
}
