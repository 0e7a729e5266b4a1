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
            // Renames on the shared root: blocking file work, off the runtime's threads.
            let (dir, id, quiet) =
                (attempt_dir.to_path_buf(), task.task_id, Duration::from_millis(ctx.config.resume_quiet_ms));
            tokio::task::spawn_blocking(move || adopt_partial(&dir, id, quiet))
                .await
                .map_err(|e| TaskError::retryable(format!("adopting a partial download failed: {e}")))?;
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
    check_duration(&info, ctx.config.max_video_duration_s)?;
    if let (Some(claim), Some(stream)) = (info.container_duration_s, info.stream_duration_s) {
        if claim - stream > CLAIM_SLACK_S {
            tracing::warn!(
                task_id = task.task_id,
                container_duration_s = claim,
                stream_duration_s = stream,
                "the container claims a longer duration than its video stream has; the stream's is reported"
            );
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
        container_duration_s: info.container_duration_s,
    })
}

/// A container may claim this much more than its video stream (audio running on, a start
/// offset) before the difference is worth a warning.
const CLAIM_SLACK_S: f64 = 1.0;

/// The duration limit applies to the video stream and to what the container claims: a header
/// that claims 49.7 days is refused like a video that lasts them (a decoder or a later stage
/// may believe it), with both numbers in the message.
fn check_duration(info: &probe::VideoInfo, limit_s: u64) -> Result<(), TaskError> {
    let limit = limit_s as f64;
    if let Some(d) = info.duration_s.filter(|d| *d > limit) {
        return Err(TaskError::fatal(format!("video is {d:.1} s long, more than the limit of {limit_s} s")));
    }
    if let Some(claim) = info.container_duration_s.filter(|c| *c > limit) {
        let stream = info.duration_s.map_or_else(|| "of unknown length".to_string(), |d| format!("of {d:.1} s"));
        return Err(TaskError::fatal(format!(
            "the container claims a duration of {claim:.1} s ({}) for a video stream {stream}; \
             the claim is more than the limit of {limit_s} s",
            human_duration(claim)
        )));
    }
    Ok(())
}

/// 4294967.3 → "49.7 days"; 5400 → "1.5 h".
fn human_duration(s: f64) -> String {
    if s >= 2.0 * 86_400.0 {
        format!("{:.1} days", s / 86_400.0)
    } else if s >= 3600.0 {
        format!("{:.1} h", s / 3600.0)
    } else {
        format!("{:.1} min", s / 60.0)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn info(stream: Option<f64>, claim: Option<f64>) -> probe::VideoInfo {
        probe::VideoInfo {
            duration_s: stream.or(claim),
            stream_duration_s: stream,
            container_duration_s: claim,
            fps: None,
            width: None,
            height: None,
            codec: None,
            start_time_s: None,
            frame_count: None,
        }
    }

    #[test]
    fn the_limit_sees_the_containers_claim() {
        assert!(check_duration(&info(Some(2.0), Some(2.1)), 60).is_ok());
        let e = check_duration(&info(Some(2.0), Some(4_294_967.295)), 14_400).expect_err("claim over the limit");
        assert_eq!(
            e.to_string(),
            "the container claims a duration of 4294967.3 s (49.7 days) for a video stream of 2.0 s; \
             the claim is more than the limit of 14400 s"
        );
        assert!(!e.is_retryable());
        let e = check_duration(&info(Some(90.0), Some(90.0)), 60).expect_err("stream over the limit");
        assert_eq!(e.to_string(), "video is 90.0 s long, more than the limit of 60 s");
    }
}
