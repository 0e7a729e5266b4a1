//! The download stage: fetch the task's URL into its attempt directory under `videos/`
//! (directly over HTTP(S), or through yt-dlp for platform URLs), probe it with ffprobe and
//! report size, SHA-256 and metadata. A retried attempt first adopts the partial file an
//! earlier attempt of the same task left behind, so it can resume instead of starting over.

pub mod guard;
pub mod http;
pub mod ytdlp;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use dataminer_wire::{LeasedTask, StageResult};
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::error::TaskError;
use crate::stages::{files, probe, relative_to_root, Progress, StageContext};

pub async fn run(
    ctx: &StageContext,
    task: &LeasedTask,
    attempt_dir: &Path,
    progress: Arc<Progress>,
    cancel: CancellationToken,
) -> Result<StageResult, TaskError> {
    let raw = task.input.url.as_deref().ok_or_else(|| TaskError::fatal("download task without a URL"))?;
    let url = Url::parse(raw).map_err(|e| TaskError::fatal(format!("invalid URL: {e}")))?;
    let (file, sha256, size) = match task.input.source_kind.as_deref().unwrap_or("direct") {
        "direct" => {
            adopt_partial(attempt_dir, task.task_id, Duration::from_millis(ctx.config.resume_quiet_ms));
            let f = http::fetch(ctx, &url, attempt_dir, &progress, &cancel).await?;
            ctx.metrics.bytes_downloaded.inc_by(f.transferred);
            if f.resumed_from > 0 {
                tracing::info!(task_id = task.task_id, resumed_from = f.resumed_from, "download resumed");
            }
            (f.path, f.sha256, f.size)
        }
        "platform" => {
            let r = ytdlp::fetch(ctx, &url, attempt_dir, &progress, &cancel).await?;
            ctx.metrics.bytes_downloaded.inc_by(r.2);
            r
        }
        other => return Err(TaskError::fatal(format!("unknown source kind {other:?}"))),
    };
    let info = probe::probe(&ctx.config.ffprobe, &file).await?;
    if let Some(d) = info.duration_s {
        if d > ctx.config.max_video_duration_s as f64 {
            return Err(TaskError::fatal(format!(
                "video is {d:.1} s long, more than the limit of {} s",
                ctx.config.max_video_duration_s
            )));
        }
    }
    Ok(StageResult::Download {
        file_path: relative_to_root(&ctx.config.data_root, &file)?,
        sha256,
        size_bytes: size as i64,
        duration_s: info.duration_s,
        fps: info.fps,
        width: info.width,
        height: info.height,
        codec: info.codec,
        start_time_s: info.start_time_s,
        stream_frames: info.frame_count,
    })
}

/// Moves the largest resumable partial download of an earlier attempt of this task
/// (a sibling `<task_id>.<token>` directory) into `attempt_dir`, and removes that directory.
/// A partial written to within `quiet` is left alone: its writer may still be running.
fn adopt_partial(attempt_dir: &Path, task_id: i64, quiet: Duration) {
    let mut best: Option<(u64, std::path::PathBuf)> = None;
    for dir in files::sibling_attempts(attempt_dir, task_id) {
        let Ok(md) = std::fs::metadata(dir.join(http::PART)) else { continue };
        let quiet_enough = md.modified().ok().and_then(|m| m.elapsed().ok()).is_some_and(|age| age >= quiet);
        if quiet_enough && dir.join(http::PART_META).is_file() && best.as_ref().is_none_or(|b| md.len() > b.0) {
            best = Some((md.len(), dir));
        }
    }
    let Some((len, dir)) = best else { return };
    let moved = std::fs::rename(dir.join(http::PART_META), attempt_dir.join(http::PART_META))
        .and_then(|_| std::fs::rename(dir.join(http::PART), attempt_dir.join(http::PART)));
    match moved {
        Ok(()) => {
            tracing::info!(task_id, bytes = len, from = %dir.display(), "adopted a partial download from an earlier attempt");
            let _ = std::fs::remove_dir_all(&dir);
        }
        Err(e) => tracing::warn!(task_id, error = %e, "cannot adopt partial download; starting over"),
    }
}
