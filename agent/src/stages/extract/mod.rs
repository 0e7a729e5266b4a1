//! The extract stage: one ffmpeg run (through ffmpeg-sidecar, with the system ffmpeg) turns
//! the downloaded video into `frame_000001.jpg …` plus `manifest.json` in the attempt's
//! directory under `frames_raw/<video_id>/`. ffmpeg reads local files only, never waits on
//! a terminal, and is killed when the task is stopped. A video that yields no frame, makes
//! ffmpeg log errors, or decodes to more than a second short of its container's duration
//! fails fatally with ffmpeg's own words: retrying a corrupt file only burns attempts.

pub mod manifest;
pub mod plan;
pub mod showinfo;

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use dataminer_wire::{LeasedTask, StageResult};
use ffmpeg_sidecar::command::FfmpegCommand;
use ffmpeg_sidecar::event::{FfmpegEvent, LogLevel};
use ffmpeg_sidecar::log_parser::FfmpegLogParser;
use tokio_util::sync::CancellationToken;

use crate::children;
use crate::error::TaskError;
use crate::stages::files::write_atomic;
use crate::stages::{data_path, ensure_free_space, probe, relative_to_root, Progress, StageContext};
use manifest::{frame_file_name, FrameEntry, Manifest, SourceFacts};
use showinfo::{TapLine, Taps};

/// Decoding may end this much short of the container's duration before the file counts
/// as truncated.
const TRUNCATION_SLACK_S: f64 = 1.0;
const MAX_ERROR_LINES: usize = 12;
/// ffmpeg log lines in flight between the parser thread and the stage.
const LOG_CHANNEL: usize = 1024;

pub async fn run(
    ctx: &StageContext,
    task: &LeasedTask,
    attempt_dir: &Path,
    progress: Arc<Progress>,
    cancel: CancellationToken,
) -> Result<StageResult, TaskError> {
    let cfg = &ctx.config;
    let video_rel =
        task.input.video_path.as_deref().ok_or_else(|| TaskError::fatal("extract task without a video_path"))?;
    let video = data_path(&cfg.data_root, video_rel)?;
    if !video.is_file() {
        // The shared root may be briefly unavailable; the attempt limit bounds the retries.
        return Err(TaskError::retryable(format!("input video {video_rel} is not on the data root")));
    }
    let settings = task.input.extract.clone().unwrap_or_default();
    // ffprobe costs ~0.1 s; only interval_seconds needs its start time before ffmpeg starts,
    // the other strategies probe while ffmpeg decodes.
    let mut probe_task = {
        let (bin, file) = (cfg.ffprobe.clone(), video.clone());
        AbortOnDrop(Some(tokio::spawn(async move { probe::probe(&bin, &file).await })))
    };
    let early = if settings.strategy == dataminer_wire::ExtractStrategy::IntervalSeconds {
        Some(probe_task.join().await?)
    } else {
        None
    };
    let start = early.as_ref().and_then(|i| i.start_time_s).unwrap_or(0.0);
    // Room for the frames, checked up front: 100 frames of 0.5 byte per pixel of 1080p
    // (~100 MB) on top of the configured reserve; a disk that fills later fails the run
    // retryably through ffmpeg's "No space left on device".
    let frames = settings.max_frames_per_video.min(100) as u64;
    ensure_free_space(cfg, attempt_dir, frames * 1920 * 1080 / 2)?;
    let plan = plan::plan(&settings, start);

    // ffmpeg-sidecar builds the arguments (and its `-loglevel level+info`, which the log
    // parser relies on); the process itself runs under a supervisor so that it dies with
    // the agent.
    let mut cmd = FfmpegCommand::new_with_path(&cfg.ffmpeg);
    cmd.hide_banner()
        .args(["-nostdin", "-nostats", "-y", "-protocol_whitelist", "file", "-copyts"])
        .input(video.as_os_str())
        .filter_complex(&plan.filter_complex);
    let pattern = attempt_dir.join("frame_%06d.jpg");
    for o in &plan.outputs {
        cmd.args(["-map", &format!("[{}]", o.label), "-fps_mode", "passthrough", "-c:v", "mjpeg"])
            .args(["-q:v", &plan.qscale.to_string(), "-frames:v", &o.max_frames.to_string()])
            .args(["-start_number", &o.start_number.to_string(), "-f", "image2"])
            .output(pattern.as_os_str());
    }
    let cannot_run = |e: std::io::Error| TaskError::fatal(format!("cannot run {}: {e}", cfg.ffmpeg.display()));
    let mut sup = children::std_command(&cfg.ffmpeg).map_err(cannot_run)?;
    // Nothing on stdout (image2 output), so it goes nowhere; stderr is the log.
    sup.args(cmd.get_args()).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = ChildGuard::spawn(&mut sup).map_err(cannot_run)?;
    let stderr = child.stderr().ok_or_else(|| TaskError::retryable("ffmpeg stderr missing"))?;

    // ffmpeg-sidecar parses the log lines on a thread; they come here through a bounded
    // channel, so a slow reader holds ffmpeg back (a full stderr pipe) instead of queueing
    // an hour of showinfo lines in memory.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(LogLevel, String)>(LOG_CHANNEL);
    let declared = Arc::new(std::sync::Mutex::new(None::<f64>));
    let declared_w = declared.clone();
    std::thread::spawn(move || {
        let mut parser = FfmpegLogParser::new(std::io::BufReader::new(stderr));
        loop {
            match parser.parse_next_event() {
                Ok(FfmpegEvent::LogEOF) => break,
                Ok(FfmpegEvent::Log(level, line)) => {
                    if tx.blocking_send((level, line)).is_err() {
                        break;
                    }
                }
                Ok(FfmpegEvent::ParsedDuration(d)) => {
                    *declared_w.lock().unwrap_or_else(|e| e.into_inner()) = Some(d.duration);
                }
                Ok(_) => {}
                Err(_) => {} // a line the parser did not expect; not one of ours
            }
        }
    });

    let out_taps: Vec<(&str, usize)> = plan.outputs.iter().map(|o| (o.tap.as_str(), o.max_frames as usize)).collect();
    let mut taps = Taps::new(&out_taps);
    let mut errors: Vec<String> = Vec::new();
    loop {
        let ev = tokio::select! {
            _ = cancel.cancelled() => {
                child.kill().await;
                return Err(TaskError::Stopped("cancelled".into()));
            }
            ev = rx.recv() => ev,
        };
        let Some((level, line)) = ev else { break };
        match level {
            LogLevel::Error | LogLevel::Fatal => {
                if errors.len() < MAX_ERROR_LINES {
                    errors.push(line);
                }
            }
            _ => {
                if taps.feed(&line) == Some(TapLine::Source) {
                    progress.frames.store(taps.written() as u64, Ordering::Relaxed);
                    let duration = *declared.lock().unwrap_or_else(|e| e.into_inner());
                    if let (Some(last), Some(d)) = (taps.last_decoded(), duration) {
                        if let Some(s) = taps.seconds(last.pts) {
                            let pm = (((s - start) / d) * 1000.0).clamp(0.0, 1000.0);
                            progress.permille.store(pm as u64, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
    }
    let status = child.wait().await.map_err(|e| TaskError::retryable(format!("waiting for ffmpeg: {e}")))?;
    if cancel.is_cancelled() {
        return Err(TaskError::Stopped("cancelled".into()));
    }
    if !errors.is_empty() {
        let msg = format!("ffmpeg reported errors decoding {video_rel}: {}", errors.join(" | "));
        // A full disk is the node's problem, not the video's.
        return Err(if msg.contains("No space left on device") {
            TaskError::retryable(msg)
        } else {
            TaskError::fatal(msg)
        });
    }
    if !status.success() {
        return Err(TaskError::fatal(format!("ffmpeg failed on {video_rel} ({status})")));
    }

    let info = match early {
        Some(i) => i,
        None => probe_task.join().await?,
    };
    let start = info.start_time_s.unwrap_or(0.0);
    let kept = taps.kept_frames().map_err(TaskError::fatal)?;
    let decoded = taps.decoded();
    if kept.is_empty() {
        return Err(TaskError::fatal(format!("no frame extracted from {video_rel} ({decoded} frames decoded)")));
    }
    let capped = kept.len() >= settings.max_frames_per_video as usize;
    if !capped {
        check_complete(&taps, &info, start).map_err(|m| TaskError::fatal(format!("{video_rel}: {m}")))?;
    }

    let frames_dir = relative_to_root(&cfg.data_root, attempt_dir)?;
    let mut frames = Vec::with_capacity(kept.len());
    for (i, k) in kept.iter().enumerate() {
        let index = i as u32 + 1;
        let pts_s =
            taps.seconds(k.pts).ok_or_else(|| TaskError::fatal("ffmpeg did not report the stream's time base"))?;
        frames.push(FrameEntry {
            index,
            source_frame: k.source_frame,
            pts_s,
            path: format!("{frames_dir}/{}", frame_file_name(index)),
        });
    }
    let m = Manifest {
        version: manifest::VERSION,
        video_id: task.input.video_id,
        video_path: video_rel.to_string(),
        settings,
        source: SourceFacts {
            duration_s: info.duration_s,
            container_duration_s: info.container_duration_s,
            fps: info.fps,
            start_time_s: start,
            width: info.width,
            height: info.height,
            frames_decoded: decoded,
            capped,
        },
        frames,
    };
    // A stat per frame and the manifest write are blocking file work (thousands of frames on
    // a network filesystem): off the runtime's threads.
    let dir = attempt_dir.to_path_buf();
    let m = tokio::task::spawn_blocking(move || write_manifest(&dir, m))
        .await
        .map_err(|e| TaskError::retryable(format!("manifest writer failed: {e}")))??;
    ctx.metrics.frames_extracted.inc_by(m.frames.len() as u64);
    Ok(StageResult::Extract {
        frames_dir,
        manifest_path: relative_to_root(&cfg.data_root, &attempt_dir.join(manifest::FILE_NAME))?,
        frame_count: m.frames.len() as i64,
    })
}

/// Checks that ffmpeg wrote exactly the listed frames, then writes the manifest atomically.
fn write_manifest(dir: &Path, m: Manifest) -> Result<Manifest, TaskError> {
    for f in &m.frames {
        let name = frame_file_name(f.index);
        if !dir.join(&name).is_file() {
            return Err(TaskError::retryable(format!("ffmpeg did not write {name}")));
        }
    }
    if dir.join(frame_file_name(m.frames.len() as u32 + 1)).exists() {
        return Err(TaskError::retryable("ffmpeg wrote more frames than it reported"));
    }
    let body = serde_json::to_vec_pretty(&m).map_err(|e| TaskError::fatal(format!("manifest: {e}")))?;
    write_atomic(&dir.join(manifest::FILE_NAME), &body).map_err(|e| TaskError::io("write manifest", e))?;
    Ok(m)
}

/// The concurrent ffprobe, aborted (its child killed) if the stage ends first.
struct AbortOnDrop(Option<tokio::task::JoinHandle<Result<probe::VideoInfo, TaskError>>>);

impl AbortOnDrop {
    async fn join(&mut self) -> Result<probe::VideoInfo, TaskError> {
        let h = self.0.take().ok_or_else(|| TaskError::retryable("ffprobe joined twice"))?;
        h.await.map_err(|e| TaskError::retryable(format!("ffprobe task failed: {e}")))?
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}

/// Fails when decoding stopped more than a second short of the duration the file declares
/// (a truncated file whose index survived).
fn check_complete(taps: &Taps, info: &probe::VideoInfo, start: f64) -> Result<(), String> {
    let Some(declared) = info.stream_duration_s.or(info.duration_s) else { return Ok(()) };
    let last = taps.last_decoded().and_then(|l| taps.seconds(l.pts)).ok_or("no frame decoded")?;
    let frame = info.fps.map(|f| 1.0 / f).unwrap_or(0.0);
    let decoded = last - start + frame;
    if declared - decoded > TRUNCATION_SLACK_S {
        return Err(format!(
            "decoding ended at {decoded:.3} s of a declared {declared:.3} s; the file is truncated or corrupt"
        ));
    }
    Ok(())
}

/// The supervised ffmpeg: killed (with its supervisor's whole tree) if the stage is stopped
/// or dropped while it runs.
struct ChildGuard {
    child: Option<std::process::Child>,
    lifeline: Option<children::Lifeline>,
}

impl ChildGuard {
    fn spawn(cmd: &mut std::process::Command) -> std::io::Result<Self> {
        let mut child = cmd.spawn()?;
        let lifeline = children::Lifeline::take_std(&mut child)?;
        Ok(Self { child: Some(child), lifeline: Some(lifeline) })
    }

    fn stderr(&mut self) -> Option<std::process::ChildStderr> {
        self.child.as_mut().and_then(|c| c.stderr.take())
    }

    /// Waits for ffmpeg to exit by itself.
    async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        let mut c = self.child.take().ok_or_else(|| std::io::Error::other("ffmpeg waited for twice"))?;
        let lifeline = self.lifeline.take();
        let status = tokio::task::spawn_blocking(move || c.wait()).await.map_err(std::io::Error::other)?;
        drop(lifeline);
        status
    }

    /// Kills ffmpeg and waits until its supervisor has reaped it.
    async fn kill(&mut self) {
        self.lifeline.take();
        if let Some(mut c) = self.child.take() {
            let _ = tokio::task::spawn_blocking(move || c.wait()).await;
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // Closing the lifeline makes the supervisor kill ffmpeg; reap it on a thread so a
        // dropped stage never blocks the runtime.
        self.lifeline.take();
        if let Some(mut c) = self.child.take() {
            std::thread::spawn(move || {
                let _ = c.wait();
            });
        }
    }
}
