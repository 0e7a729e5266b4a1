//! The filter stage (`models` build): scores every frame of the project-video's extraction
//! against the project's positive, negative and junk prompts with its image–text package and
//! keeps a frame by the original's strict rule (`models::rules::filter_frame`). Writes every
//! score to `scores.npy` (frames × prompts, NaN for unreadable frames) and the kept frames to
//! `kept.json` in the attempt directory; the completion carries the kept frames' rows. Raw
//! frames are not copied.

use std::path::Path;
use std::sync::Arc;

use dataminer_wire::{FilterConfig, FilterFrame, LeasedTask, StageResult};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::extract::manifest::Manifest;
use super::{data_path, Progress, StageContext};
use crate::error::TaskError;
use crate::models::batch::{siglip_score, BatchError, BatchRun, FrameRef, Pooling};
use crate::models::manifest::Kind;
use crate::models::registry::PromptError;
use crate::models::rules::{filter_frame, FilterThresholds};

pub async fn run(
    ctx: &StageContext,
    task: &LeasedTask,
    attempt_dir: &Path,
    progress: Arc<Progress>,
    cancel: CancellationToken,
) -> Result<StageResult, TaskError> {
    let cfg = task.input.filter.clone().ok_or_else(|| TaskError::fatal("filter task without a filter config"))?;
    let manifest_rel =
        task.input.manifest_path.clone().ok_or_else(|| TaskError::fatal("filter task without a frames manifest"))?;
    let manifest_path = data_path(&ctx.config.data_root, &manifest_rel)?;
    let registry = ctx.models.clone().ok_or_else(|| TaskError::fatal("this agent has no model registry"))?;
    let (ctx, attempt_dir, output_dir) = (ctx.clone(), attempt_dir.to_path_buf(), task.attempt_dir.clone());
    tokio::task::spawn_blocking(move || {
        let bytes = std::fs::read(&manifest_path).map_err(|e| {
            let m = format!("cannot read the frames manifest {manifest_rel}: {e}");
            // Missing: the extraction's output is gone (fatal); anything else may pass.
            if e.kind() == std::io::ErrorKind::NotFound {
                TaskError::fatal(m)
            } else {
                TaskError::retryable(m)
            }
        })?;
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| TaskError::fatal(format!("the frames manifest {manifest_rel} is malformed: {e}")))?;
        let loaded = registry.get(&cfg.model).map_err(TaskError::fatal)?;
        if loaded.package.manifest.kind != Kind::ImageTextScorer {
            return Err(TaskError::fatal(format!("model {} is not an image-text scorer", cfg.model)));
        }
        let prompts: Vec<String> =
            cfg.positive_prompts.iter().chain(&cfg.negative_prompts).chain(&cfg.junk_prompts).cloned().collect();
        let texts = loaded.prompt_embeddings(&prompts).map_err(|e| match e {
            PromptError::Fatal(m) => TaskError::fatal(m),
            PromptError::Model(m) => TaskError::retryable(m),
        })?;
        let frames: Vec<FrameRef> =
            manifest.frames.iter().map(|f| FrameRef { index: f.index, path: f.path.clone() }).collect();
        let run = BatchRun {
            runner: &loaded.shared,
            package: &loaded.package,
            data_root: &ctx.config.data_root,
            batch_size: cfg.batch_size as usize,
            pooling: Pooling::Pooler,
            threads: ctx.config.decode_threads as usize,
        };
        let stop = || cancel.is_cancelled();
        let mut done = |n: usize| progress.frames_done(n, frames.len());
        let (feats, times) = run.image_features(&frames, &stop, &mut done).map_err(|e| match e {
            BatchError::Stopped => TaskError::Stopped("cancelled during the filter".into()),
            BatchError::Io { .. } => TaskError::retryable(e.to_string()),
            BatchError::Model(m) => TaskError::retryable(m.to_string()),
        })?;
        let metrics = &ctx.metrics;
        metrics.decode_seconds.with_label_values(&["filter"]).inc_by(times.decode.as_secs_f64());
        metrics.model_frames.with_label_values(&["filter"]).inc_by(feats.iter().filter(|f| f.is_some()).count() as u64);
        let m = &loaded.package.manifest;
        let (scale, bias) = (m.logit_scale.unwrap_or(0.0), m.logit_bias.unwrap_or(0.0));
        let t = thresholds(&cfg);
        let (np, nn) = (cfg.positive_prompts.len(), cfg.negative_prompts.len());
        let mut scores = Vec::with_capacity(frames.len() * prompts.len());
        let mut kept = Vec::new();
        let mut unreadable = 0;
        for (f, feat) in manifest.frames.iter().zip(&feats) {
            let Some(feat) = feat else {
                unreadable += 1;
                scores.extend(std::iter::repeat_n(f32::NAN, prompts.len()));
                continue;
            };
            let s: Vec<f32> = texts.iter().map(|t| siglip_score(feat, t, scale, bias)).collect();
            if let Some(v) = filter_frame(&s[..np], &s[np..np + nn], &s[np + nn..], &t) {
                if v.kept {
                    kept.push(FilterFrame {
                        frame_index: i64::from(f.index),
                        pts_s: f.pts_s,
                        path: f.path.clone(),
                        width: manifest.source.width.unwrap_or(0),
                        height: manifest.source.height.unwrap_or(0),
                        best_prompt: v.best_positive as i64,
                        pos_max: v.pos_max,
                        neg_max: v.neg_max,
                        junk_max: v.junk_max,
                    });
                }
            }
            scores.extend(s);
        }
        crate::models::npy::write(&attempt_dir.join("scores.npy"), frames.len(), prompts.len(), &scores)
            .map_err(|e| TaskError::io("write scores.npy", e))?;
        let kept_json = serde_json::to_vec(&kept).map_err(|e| TaskError::fatal(format!("kept.json: {e}")))?;
        super::files::write_atomic(&attempt_dir.join("kept.json"), &kept_json)
            .map_err(|e| TaskError::io("write kept.json", e))?;
        Ok(StageResult::Filter {
            output_dir,
            frames_in: frames.len() as i64,
            frames_kept: kept.len() as i64,
            frames: kept,
            frames_unreadable: unreadable,
            config_digest: digest(&cfg, &loaded.package.digest),
        })
    })
    .await
    .map_err(|e| TaskError::retryable(format!("filter worker panicked: {e}")))?
}

fn thresholds(c: &FilterConfig) -> FilterThresholds {
    FilterThresholds {
        threshold: c.threshold,
        negative_threshold: c.negative_threshold,
        margin_threshold: c.margin_threshold,
        junk_threshold: c.junk_threshold,
        junk_margin_threshold: c.junk_margin_threshold,
    }
}

/// What the result depends on: the filter config and the exact package.
fn digest(c: &FilterConfig, package_digest: &str) -> String {
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(c).unwrap_or_default());
    h.update(package_digest.as_bytes());
    format!("{:x}", h.finalize())
}
