//! ffprobe on a local file: the metadata a download reports (duration, fps, size, codec,
//! start time, frame count when the container knows it) and the facts extraction checks a
//! decode against. ffprobe may read local files only (`-protocol_whitelist file`).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;

use crate::children;
use crate::error::TaskError;

#[derive(Debug, Clone, PartialEq)]
pub struct VideoInfo {
    /// The video stream's duration, or the container's when the stream has none, seconds.
    pub duration_s: Option<f64>,
    /// The video stream's duration when it has one, seconds.
    pub stream_duration_s: Option<f64>,
    /// The duration the container claims (its header), seconds. It can be far from the
    /// stream's: a broken or hostile header may claim 49.7 days for 2 s of video.
    pub container_duration_s: Option<f64>,
    pub fps: Option<f64>,
    pub width: Option<i64>,
    pub height: Option<i64>,
    pub codec: Option<String>,
    /// The video stream's start time (falls back to the container's), seconds.
    pub start_time_s: Option<f64>,
    /// Frames in the video stream as the container declares them (absent for many formats).
    pub frame_count: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct Probe {
    #[serde(default)]
    streams: Vec<ProbeStream>,
    format: Option<ProbeFormat>,
}

#[derive(Debug, Deserialize)]
struct ProbeStream {
    codec_name: Option<String>,
    width: Option<i64>,
    height: Option<i64>,
    avg_frame_rate: Option<String>,
    r_frame_rate: Option<String>,
    start_time: Option<String>,
    duration: Option<String>,
    nb_frames: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ProbeFormat {
    duration: Option<String>,
    start_time: Option<String>,
}

/// Probes `file`; a file without a video stream or that ffprobe cannot read is fatal (it is
/// not a video, and will not become one on retry).
pub async fn probe(ffprobe: &Path, file: &Path) -> Result<VideoInfo, TaskError> {
    let cannot_run = |e: std::io::Error| TaskError::fatal(format!("cannot run {}: {e}", ffprobe.display()));
    let mut cmd = children::command(ffprobe).map_err(cannot_run)?;
    cmd.args(["-v", "error", "-protocol_whitelist", "file", "-print_format", "json", "-show_format", "-show_streams"])
        .args(["-select_streams", "v:0"])
        .arg(file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = children::Child::spawn(&mut cmd).map_err(cannot_run)?;
    // On a time-out (or a stopped task) the child is dropped: its lifeline closes and the
    // supervisor kills ffprobe.
    let out = tokio::time::timeout(Duration::from_secs(120), child.output())
        .await
        .map_err(|_| TaskError::retryable("ffprobe did not finish within 120 s"))?
        .map_err(|e| TaskError::retryable(format!("waiting for ffprobe: {e}")))?;
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if !out.status.success() {
        return Err(TaskError::fatal(format!("not a readable video (ffprobe: {})", first_lines(&stderr))));
    }
    parse(&out.stdout).map_err(|e| {
        TaskError::fatal(format!(
            "{e}{}",
            if stderr.is_empty() { String::new() } else { format!(" (ffprobe: {})", first_lines(&stderr)) }
        ))
    })
}

fn first_lines(s: &str) -> String {
    s.lines().take(5).collect::<Vec<_>>().join(" | ")
}

fn parse(json: &[u8]) -> Result<VideoInfo, String> {
    let p: Probe = serde_json::from_slice(json).map_err(|e| format!("unreadable ffprobe output: {e}"))?;
    let s = p.streams.into_iter().next().ok_or("the file has no video stream")?;
    let f = p.format;
    let num = |v: &Option<String>| v.as_deref().and_then(|x| x.parse::<f64>().ok()).filter(|x| x.is_finite());
    let stream_duration_s = num(&s.duration).filter(|d| *d > 0.0);
    let format_duration = f.as_ref().and_then(|f| num(&f.duration)).filter(|d| *d > 0.0);
    let fps = rate(s.avg_frame_rate.as_deref()).or_else(|| rate(s.r_frame_rate.as_deref()));
    Ok(VideoInfo {
        // The stream's own duration first: a container's can include a start offset.
        duration_s: stream_duration_s.or(format_duration),
        stream_duration_s,
        container_duration_s: format_duration,
        fps,
        width: s.width,
        height: s.height,
        codec: s.codec_name,
        start_time_s: num(&s.start_time).or_else(|| f.as_ref().and_then(|f| num(&f.start_time))),
        frame_count: s.nb_frames.as_deref().and_then(|n| n.parse::<i64>().ok()).filter(|n| *n > 0),
    })
}

/// "30000/1001" → 29.97; "0/0" → None.
fn rate(r: Option<&str>) -> Option<f64> {
    let (n, d) = r?.split_once('/')?;
    let (n, d) = (n.parse::<f64>().ok()?, d.parse::<f64>().ok()?);
    (d > 0.0 && n > 0.0).then(|| n / d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ffprobe_json() {
        let j = br#"{"streams":[{"codec_name":"h264","width":320,"height":240,"avg_frame_rate":"30000/1001",
            "r_frame_rate":"30000/1001","start_time":"1.500000","duration":"4.004000","nb_frames":"120"}],
            "format":{"duration":"4.100000","start_time":"1.400000"}}"#;
        let v = parse(j).expect("parse");
        assert_eq!(v.codec.as_deref(), Some("h264"));
        assert_eq!(v.duration_s, Some(4.004));
        assert_eq!(v.stream_duration_s, Some(4.004));
        assert_eq!(v.container_duration_s, Some(4.1));
        assert!((v.fps.unwrap_or(0.0) - 29.97).abs() < 0.01);
        assert_eq!(v.start_time_s, Some(1.5));
        assert_eq!(v.frame_count, Some(120));
    }

    #[test]
    fn no_video_stream_is_an_error() {
        assert!(parse(br#"{"streams":[],"format":{"duration":"3"}}"#).is_err());
        assert_eq!(rate(Some("0/0")), None);
    }
}
