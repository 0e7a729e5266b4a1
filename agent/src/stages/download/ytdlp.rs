//! Platform downloads through the real `yt-dlp`. yt-dlp does its own networking, so it only
//! runs for hosts on the platform allow-list, after the same address check as direct
//! downloads, with no proxy (environment proxies removed and `--proxy ""`), no configuration
//! files, no `--exec`, restricted file names and a fixed output template inside the attempt
//! directory. Live streams and files over the size limit are refused by yt-dlp's filters.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;
use url::Url;

use super::guard::redact;
use crate::children;
use crate::error::TaskError;
use crate::stages::files::{hash_into, hex};
use crate::stages::{Progress, StageContext};

const PROGRESS_PREFIX: &str = "dmprogress ";

/// True when `host` is a platform host or a subdomain of one.
pub fn is_platform_host(platform_hosts: &[String], host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    platform_hosts
        .iter()
        .map(|p| p.trim().to_ascii_lowercase())
        .any(|p| !p.is_empty() && (h == p || h.ends_with(&format!(".{p}"))))
}

pub async fn fetch(
    ctx: &StageContext,
    url: &Url,
    dir: &Path,
    progress: &Arc<Progress>,
    cancel: &CancellationToken,
) -> Result<(PathBuf, String, u64), TaskError> {
    let cfg = &ctx.config;
    let host = url.host_str().unwrap_or_default();
    if !is_platform_host(&cfg.platform_hosts, host) {
        return Err(TaskError::fatal(format!(
            "{host} is not on this agent's platform allow-list; yt-dlp is not run for it"
        )));
    }
    ctx.guard.check(url).await.map_err(super::http::guard_error)?;
    super::super::ensure_free_space(cfg, dir, 0)?;
    let template = dir.join("video.%(ext)s");
    let cannot_run = |e: std::io::Error| TaskError::fatal(format!("cannot run {}: {e}", cfg.ytdlp.display()));
    // Supervised: yt-dlp's own ffmpeg/ffprobe die with it, and all of them with the agent.
    let mut cmd = children::command(&cfg.ytdlp).map_err(cannot_run)?;
    for var in
        ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy", "no_proxy"]
    {
        cmd.env_remove(var);
    }
    cmd.args(["--ignore-config", "--no-exec", "--restrict-filenames", "--no-playlist", "--no-cache-dir"])
        .args(["--proxy", "", "--no-mtime", "--no-part", "--quiet", "--no-warnings", "--newline", "--progress"])
        .args(["--progress-template", &format!("download:{PROGRESS_PREFIX}%(progress.downloaded_bytes)s %(progress.total_bytes,progress.total_bytes_estimate)s")])
        .args(["--socket-timeout", &cfg.read_timeout_s.to_string()])
        .args(["--max-filesize", &cfg.max_download_bytes.to_string()])
        .args(["--match-filter", &format!("!is_live & duration <=? {}", cfg.max_video_duration_s)])
        .args(["--format", &cfg.ytdlp_format])
        .arg("--ffmpeg-location")
        .arg(&cfg.ffmpeg)
        .args(["--print", "after_move:filepath"])
        .arg("--output")
        .arg(&template)
        .arg("--")
        .arg(url.as_str())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = children::Child::spawn(&mut cmd).map_err(cannot_run)?;
    let stdout = child.inner.stdout.take().ok_or_else(|| TaskError::retryable("yt-dlp stdout missing"))?;
    let stderr = child.inner.stderr.take().ok_or_else(|| TaskError::retryable("yt-dlp stderr missing"))?;
    let err_task = tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        let mut kept = Vec::new();
        while let Ok(Some(l)) = lines.next_line().await {
            if kept.len() < 20 && !l.trim().is_empty() {
                kept.push(l);
            }
        }
        kept.join(" | ")
    });
    let mut printed = Vec::new();
    let mut lines = BufReader::new(stdout).lines();
    loop {
        let line = tokio::select! {
            _ = cancel.cancelled() => {
                let _ = child.kill().await;
                return Err(TaskError::Stopped("cancelled".into()));
            }
            l = lines.next_line() => l,
        };
        match line {
            Ok(Some(l)) => {
                if let Some(p) = l.strip_prefix(PROGRESS_PREFIX) {
                    let mut it = p.split_whitespace().map(|x| x.parse::<f64>().ok());
                    if let Some(Some(b)) = it.next() {
                        progress.bytes.store(b as u64, Ordering::Relaxed);
                    }
                    if let Some(Some(t)) = it.next() {
                        progress.total_bytes.store(t as u64, Ordering::Relaxed);
                    }
                } else if !l.trim().is_empty() {
                    printed.push(l);
                }
            }
            Ok(None) => break,
            Err(e) => return Err(TaskError::retryable(format!("reading yt-dlp output: {e}"))),
        }
    }
    let status = child.wait().await.map_err(|e| TaskError::retryable(format!("waiting for yt-dlp: {e}")))?;
    let errors = err_task.await.unwrap_or_default();
    if !status.success() {
        return Err(classify(&errors, url));
    }
    let file = printed.last().map(PathBuf::from).filter(|p| p.starts_with(dir) && p.is_file()).ok_or_else(|| {
        let why = if errors.is_empty() { printed.join(" | ") } else { errors.clone() };
        TaskError::fatal(format!(
            "yt-dlp produced no file for {} (live stream, over the size or duration limit, or no matching format): {why}",
            redact(url)
        ))
    })?;
    let path = file.clone();
    let (sha, size) = tokio::task::spawn_blocking(move || hash_file(&path))
        .await
        .map_err(|e| TaskError::retryable(format!("hash thread failed: {e}")))??;
    if size == 0 {
        return Err(TaskError::fatal(format!("yt-dlp produced an empty file for {}", redact(url))));
    }
    Ok((file, sha, size))
}

/// yt-dlp's exit status does not say whether to retry; its messages do.
fn classify(stderr: &str, url: &Url) -> TaskError {
    let lower = stderr.to_ascii_lowercase();
    // An empty response: yt-dlp has retried it already, and says so in its own words.
    if lower.contains("did not get any data blocks") {
        return TaskError::fatal(format!("empty file from {}: yt-dlp received no data ({stderr})", redact(url)));
    }
    let msg = format!("yt-dlp failed for {}: {stderr}", redact(url));
    let fatal = [
        "unsupported url",
        "http error 404",
        "http error 410",
        "http error 403",
        "video unavailable",
        "private video",
        "requested format is not available",
        "is live",
        "this live event",
        "no video formats found",
    ];
    if fatal.iter().any(|f| lower.contains(f)) {
        TaskError::fatal(msg)
    } else {
        TaskError::retryable(msg)
    }
}

fn hash_file(path: &Path) -> Result<(String, u64), TaskError> {
    use sha2::Digest;
    let mut f = std::fs::File::open(path).map_err(|e| TaskError::io("open downloaded file", e))?;
    let mut h = sha2::Sha256::new();
    let size = hash_into(&mut f, &mut h).map_err(|e| TaskError::io("read downloaded file", e))?;
    Ok((hex(&h.finalize()), size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_hosts_match_subdomains_only() {
        let hosts = vec!["youtube.com".to_string()];
        assert!(is_platform_host(&hosts, "www.youtube.com"));
        assert!(is_platform_host(&hosts, "YOUTUBE.COM."));
        assert!(!is_platform_host(&hosts, "notyoutube.com"));
        assert!(!is_platform_host(&hosts, "youtube.com.evil.example"));
    }

    #[test]
    fn not_found_is_fatal_and_timeouts_retry() {
        let u = Url::parse("https://www.youtube.com/watch?v=x").expect("url");
        assert!(!classify("ERROR: Unsupported URL: x", &u).is_retryable());
        assert!(classify("ERROR: Unable to download webpage: timed out", &u).is_retryable());
        let empty = classify("ERROR: Did not get any data blocks (gave up after 5 attempts)", &u);
        assert!(!empty.is_retryable());
        assert!(empty.to_string().starts_with("empty file from https://www.youtube.com/"), "{empty}");
    }
}
