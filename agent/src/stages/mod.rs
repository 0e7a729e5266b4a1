//! The stages this agent runs, behind one entry point: given a leased task, produce its
//! `StageResult` inside the attempt directory or a classified `TaskError`. Stages report
//! progress through [`Progress`] (read by the heartbeat) and stop when the task's
//! cancellation token fires (lease lost, user cancel, time limit, shutdown).

#[cfg(feature = "models")]
pub mod dedup;
pub mod download;
pub mod extract;
pub mod files;
#[cfg(feature = "models")]
pub mod filter;
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
    /// The model packages (`models` build with a model stage to serve).
    #[cfg(feature = "models")]
    pub models: Option<Arc<crate::models::registry::Registry>>,
    /// The control plane, for what a stage reads besides its task (dedup: the kept set).
    #[cfg(feature = "models")]
    pub control_plane: Option<crate::client::ControlPlane>,
}

impl StageContext {
    /// A context without model packages (the CPU stages; `models` builds add a registry).
    pub fn new(config: Arc<Config>, guard: Guard, metrics: Metrics) -> Self {
        StageContext {
            config,
            guard,
            metrics,
            #[cfg(feature = "models")]
            models: None,
            #[cfg(feature = "models")]
            control_plane: None,
        }
    }
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
    /// Records `done` of `total` frames through a model stage.
    pub fn frames_done(&self, done: usize, total: usize) {
        self.frames.store(done as u64, Ordering::Relaxed);
        self.permille.store((done * 1000 / total.max(1)) as u64, Ordering::Relaxed);
    }

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
        #[cfg(feature = "models")]
        Stage::Filter => filter::run(ctx, task, &attempt_dir, progress, cancel).await,
        #[cfg(feature = "models")]
        Stage::Dedup => dedup::run(ctx, task, &attempt_dir, progress, cancel).await,
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

/// Rewrites every path under the data root in a message as a path relative to it, so that
/// errors reported to the control plane (and shown by its API) never reveal where this agent
/// mounted the shared root: `/mnt/dm/videos/29/61.1/video.mp4` → `videos/29/61.1/video.mp4`.
#[derive(Debug, Clone)]
pub struct RootScrubber {
    /// The root as configured, absolute and canonical, longest first.
    prefixes: Vec<String>,
}

impl RootScrubber {
    /// Resolves the root's spellings once (it may be relative, or reached through a link).
    pub fn new(root: &Path) -> Self {
        let mut prefixes: Vec<String> =
            [Some(root.to_path_buf()), std::path::absolute(root).ok(), root.canonicalize().ok()]
                .into_iter()
                .flatten()
                .map(|p| p.to_string_lossy().trim_end_matches('/').to_string())
                .filter(|p| !p.is_empty() && p != ".")
                .collect();
        prefixes.sort_by_key(|p| std::cmp::Reverse(p.len()));
        prefixes.dedup();
        Self { prefixes }
    }

    pub fn scrub(&self, msg: &str) -> String {
        let mut out = msg.to_string();
        for p in &self.prefixes {
            out = replace_path_prefix(&out, p);
        }
        out
    }
}

/// Replaces `prefix/` by nothing and a bare `prefix` by `<data root>`, where `prefix` starts
/// a path (not in the middle of another word or path: `metadata/` is not `data/`).
fn replace_path_prefix(msg: &str, prefix: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().next_back();
        let starts_path = before.is_none_or(|c| !(c.is_alphanumeric() || matches!(c, '/' | '.' | '_' | '-')));
        let after = &rest[i + prefix.len()..];
        out.push_str(&rest[..i]);
        if starts_path && after.starts_with('/') {
            rest = &after[1..];
        } else if starts_path
            && after.chars().next().is_none_or(|c| !(c.is_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            out.push_str("<data root>");
            rest = after;
        } else {
            out.push_str(prefix);
            rest = after;
        }
    }
    out.push_str(rest);
    out
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

    #[test]
    fn errors_never_show_the_data_root() {
        let s = RootScrubber::new(Path::new("/srv/dm-root/"));
        assert_eq!(
            s.scrub("not a readable video (ffprobe: /srv/dm-root/videos/29/61.1/video.mp4: moov atom not found)"),
            "not a readable video (ffprobe: videos/29/61.1/video.mp4: moov atom not found)"
        );
        assert_eq!(
            s.scrub("create /srv/dm-root: denied; /srv/dm-rooted/x"),
            "create <data root>: denied; /srv/dm-rooted/x"
        );
        let rel = RootScrubber::new(Path::new("data"));
        let cwd = std::env::current_dir().expect("cwd");
        let abs = format!("{}/data/frames_raw/1/2.3/frame_000001.jpg", cwd.display());
        assert_eq!(
            rel.scrub(&format!("ffmpeg did not write {abs}")),
            "ffmpeg did not write frames_raw/1/2.3/frame_000001.jpg"
        );
        assert_eq!(rel.scrub("data/videos/1 and metadata/x and /x/data/y"), "videos/1 and metadata/x and /x/data/y");
    }
}
