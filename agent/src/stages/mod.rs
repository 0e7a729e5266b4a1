//! The stages this agent runs, behind one entry point: given a leased task, produce its
//! `StageResult` inside the attempt directory or a classified `TaskError`. Stages report
//! progress through [`Progress`] (read by the heartbeat) and stop when the task's
//! cancellation token fires (lease lost, user cancel, time limit, shutdown).

pub mod download;
pub mod extract;
pub mod files;
pub mod probe;

use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dataminer_wire::{LeasedTask, Stage, StageResult};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::TaskError;
use crate::metrics::Metrics;
use download::guard::Guard;

/// What every stage needs besides the task.
#[derive(Debug, Clone)]
pub struct StageContext {
    pub config: Arc<Config>,
    pub guard: Guard,
    pub metrics: Metrics,
}

/// Progress counters of one running task, shown in heartbeats.
#[derive(Debug, Default)]
pub struct Progress {
    pub bytes: AtomicU64,
    pub total_bytes: AtomicU64,
    pub frames: AtomicU64,
    /// Per mille of the video's duration decoded so far.
    pub permille: AtomicU64,
}

impl Progress {
    pub fn snapshot(&self, stage: Stage) -> serde_json::Value {
        match stage {
            Stage::Download => {
                let total = self.total_bytes.load(Ordering::Relaxed);
                serde_json::json!({
                    "bytes": self.bytes.load(Ordering::Relaxed),
                    "total_bytes": (total > 0).then_some(total),
                })
            }
            _ => serde_json::json!({
                "frames": self.frames.load(Ordering::Relaxed),
                "percent": self.permille.load(Ordering::Relaxed) as f64 / 10.0,
            }),
        }
    }
}

/// Runs `task` to a result. The attempt directory is created here; its contents on failure
/// are the caller's to clean up.
pub async fn run(
    ctx: &StageContext,
    task: &LeasedTask,
    progress: Arc<Progress>,
    cancel: CancellationToken,
) -> Result<StageResult, TaskError> {
    let attempt_dir = data_path(&ctx.config.data_root, &task.attempt_dir)?;
    tokio::fs::create_dir_all(&attempt_dir).await.map_err(|e| TaskError::io("create attempt directory", e))?;
    match task.stage {
        Stage::Download => download::run(ctx, task, &attempt_dir, progress, cancel).await,
        Stage::Extract => extract::run(ctx, task, &attempt_dir, progress, cancel).await,
        other => Err(TaskError::fatal(format!("stage {other} is not served by this agent"))),
    }
}

/// Joins a control-plane-supplied relative path onto the data root, refusing anything that
/// could leave it (absolute paths, `..`).
pub fn data_path(root: &Path, rel: &str) -> Result<PathBuf, TaskError> {
    let p = Path::new(rel);
    if rel.is_empty() || p.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(TaskError::fatal(format!(
            "path {rel:?} from the control plane is not a relative path inside the data root"
        )));
    }
    Ok(root.join(p))
}

/// The path of `file` relative to the data root, with `/` separators (what the control plane
/// records).
pub fn relative_to_root(root: &Path, file: &Path) -> Result<String, TaskError> {
    let rel = file
        .strip_prefix(root)
        .map_err(|_| TaskError::fatal(format!("{} is outside the data root", file.display())))?;
    let parts: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    Ok(parts.join("/"))
}

/// Fails retryably when writing `need` more bytes would leave less than the configured
/// minimum free on the data root (another node may have room; this one may be cleaned).
pub fn ensure_free_space(config: &Config, dir: &Path, need: u64) -> Result<(), TaskError> {
    let avail = fs4::available_space(dir).map_err(|e| TaskError::io("check free space", e))?;
    if avail < need.saturating_add(config.min_free_bytes) {
        return Err(TaskError::retryable(format!(
            "not enough free space on the data root: {avail} bytes available, {need} needed plus {} kept free",
            config.min_free_bytes
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_paths_stay_inside_the_root() {
        let root = Path::new("/data");
        assert_eq!(data_path(root, "videos/1/2.3").expect("ok"), PathBuf::from("/data/videos/1/2.3"));
        for bad in ["", "/etc", "../x", "videos/../../x", "./videos"] {
            assert!(data_path(root, bad).is_err(), "{bad} accepted");
        }
        assert_eq!(relative_to_root(root, Path::new("/data/videos/1/a.mp4")).expect("rel"), "videos/1/a.mp4");
    }
}
