//! What this agent can do, as advertised at registration: the stages it serves, `ffmpeg`
//! and `yt-dlp` when they run (with their versions as `ffmpeg=5.1.9` tags), and the free
//! space on the data root (`disk_free_gib=…`). A platform download is only leased to an agent
//! advertising `yt-dlp`.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::config::Config;

/// Capability tags for the registration request.
pub async fn probe(config: &Config) -> Vec<String> {
    let mut caps = Vec::new();
    match version_of(&config.ffmpeg, &["-hide_banner", "-version"]).await {
        Some(v) => {
            caps.push("ffmpeg".to_string());
            caps.push(format!("ffmpeg={}", ffmpeg_version(&v)));
        }
        None => tracing::warn!(ffmpeg = %config.ffmpeg.display(), "ffmpeg not found: the extract stage will fail"),
    }
    match version_of(&config.ytdlp, &["--version"]).await {
        Some(v) => {
            caps.push("yt-dlp".to_string());
            caps.push(format!("yt-dlp={}", v.trim()));
        }
        None => {
            tracing::info!(ytdlp = %config.ytdlp.display(), "yt-dlp not found: platform URLs are left to other agents")
        }
    }
    if let Ok(free) = fs4::available_space(&config.data_root) {
        caps.push(format!("disk_free_gib={}", free >> 30));
    }
    caps.into_iter().map(|c| c.chars().take(64).collect()).collect()
}

/// First line of `bin args…` when it runs and exits 0 within 10 s.
async fn version_of(bin: &Path, args: &[&str]) -> Option<String> {
    let mut cmd = crate::children::command(bin).ok()?;
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::null());
    let child = crate::children::Child::spawn(&mut cmd).ok()?;
    let out = tokio::time::timeout(Duration::from_secs(10), child.output()).await.ok()?.ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("").to_string())
}

/// "ffmpeg version 5.1.9-0+deb12u1 Copyright…" → "5.1.9-0+deb12u1".
fn ffmpeg_version(line: &str) -> String {
    line.split_whitespace().nth(2).unwrap_or("unknown").to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn ffmpeg_version_is_the_third_word() {
        assert_eq!(super::ffmpeg_version("ffmpeg version 5.1.9-0+deb12u1 Copyright (c)"), "5.1.9-0+deb12u1");
    }
}
