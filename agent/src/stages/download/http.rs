//! Direct HTTP(S) downloads: streamed into `video.part` in the attempt directory while a
//! writer thread hashes (SHA-256) and writes, so network, hashing and disk overlap the way
//! `curl | tee | sha256sum` does. Redirects are followed by hand (at most three), each hop
//! through the SSRF guard with the client pinned to the checked addresses and no proxy.
//! A retried attempt resumes a partial file left by an earlier one with `Range` plus
//! `If-Range` (a strong ETag or Last-Modified); a server that ignores the range, or content
//! that changed, makes it start over.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use reqwest::header::{CONTENT_RANGE, CONTENT_TYPE, ETAG, IF_RANGE, LAST_MODIFIED, LOCATION, RANGE};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use url::Url;

use super::guard::{redact, CheckedTarget, GuardError};
use crate::error::error_chain;
use crate::error::TaskError;
use crate::stages::files::{hash_into, hex, write_atomic};
use crate::stages::{ensure_free_space, Progress, StageContext};

pub const PART: &str = "video.part";
pub const PART_META: &str = "video.part.json";
const MAX_REDIRECTS: u32 = 3;

/// What a retried attempt needs to resume `video.part`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartMeta {
    pub url: String,
    /// A strong ETag or a Last-Modified date, sent as `If-Range`.
    pub validator: String,
}

#[derive(Debug)]
pub struct Fetched {
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
    /// Bytes received by this attempt (excluding a resumed prefix).
    pub transferred: u64,
    pub resumed_from: u64,
}

/// Downloads `url` into `dir`, returning the final file.
pub async fn fetch(
    ctx: &StageContext,
    url: &Url,
    dir: &Path,
    progress: &Arc<Progress>,
    cancel: &CancellationToken,
) -> Result<Fetched, TaskError> {
    let cfg = &ctx.config;
    let part = dir.join(PART);
    let meta_path = dir.join(PART_META);
    let mut resume = read_resumable(&part, &meta_path, url);
    if resume.is_none() {
        let _ = std::fs::remove_file(&meta_path);
    }
    let mut current = url.clone();
    let mut redirects = 0;
    let mut range_refused = false;
    let resp = loop {
        let target = ctx.guard.check(&current).await.map_err(guard_error)?;
        let client = client_for(ctx, &target)?;
        let mut req = client.get(current.clone());
        if let Some((offset, m)) = &resume {
            req = req.header(RANGE, format!("bytes={offset}-")).header(IF_RANGE, m.validator.as_str());
        }
        let resp = tokio::select! {
            _ = cancel.cancelled() => return Err(TaskError::Stopped("cancelled".into())),
            r = req.send() => r.map_err(|e| network_error(&current, &e))?,
        };
        let status = resp.status();
        if status.is_redirection() {
            let loc = resp.headers().get(LOCATION).and_then(|v| v.to_str().ok()).ok_or_else(|| {
                TaskError::fatal(format!("HTTP {status} without a Location from {}", redact(&current)))
            })?;
            let next = current
                .join(loc)
                .map_err(|e| TaskError::fatal(format!("bad redirect Location from {}: {e}", redact(&current))))?;
            redirects += 1;
            if redirects > MAX_REDIRECTS {
                return Err(TaskError::fatal(format!(
                    "more than {MAX_REDIRECTS} redirects starting at {}",
                    redact(url)
                )));
            }
            current = next;
            continue;
        }
        match status {
            StatusCode::PARTIAL_CONTENT if resume.is_some() => {
                let offset = resume.as_ref().map(|r| r.0).unwrap_or(0);
                if content_range_start(&resp) == Some(offset) {
                    break resp;
                }
                tracing::info!(url = %redact(&current), "server answered a different range; starting over");
                resume = None;
            }
            StatusCode::OK => {
                if resume.is_some() {
                    tracing::info!(url = %redact(&current), "server ignored the range or the content changed; starting over");
                    resume = None;
                }
                break resp;
            }
            StatusCode::RANGE_NOT_SATISFIABLE if resume.is_some() && !range_refused => {
                range_refused = true;
                resume = None;
            }
            s if s.is_server_error() || s == StatusCode::REQUEST_TIMEOUT || s == StatusCode::TOO_MANY_REQUESTS => {
                return Err(TaskError::retryable(format!("HTTP {s} from {}", redact(&current))));
            }
            s => return Err(TaskError::fatal(format!("HTTP {s} from {}", redact(&current)))),
        }
    };

    if let Some(ct) = resp.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
        let ct = ct.to_ascii_lowercase();
        if ct.contains("mpegurl") || ct.contains("dash+xml") {
            return Err(TaskError::fatal(format!(
                "{} is a live or segmented stream ({ct}); only files are downloaded",
                redact(&current)
            )));
        }
    }
    let offset = resume.as_ref().map(|r| r.0).unwrap_or(0);
    let total = resp.content_length().map(|l| l + offset);
    if let Some(t) = total {
        if t > cfg.max_download_bytes {
            return Err(TaskError::fatal(format!(
                "{} is {t} bytes, more than the limit of {} bytes",
                redact(&current),
                cfg.max_download_bytes
            )));
        }
        progress.total_bytes.store(t, Ordering::Relaxed);
    }
    ensure_free_space(cfg, dir, total.map(|t| t - offset).unwrap_or(0))?;
    if let Some(validator) = validator(&resp) {
        let m = PartMeta { url: url.to_string(), validator };
        write_atomic(&meta_path, &serde_json::to_vec(&m).unwrap_or_default())
            .map_err(|e| TaskError::io("write partial-download metadata", e))?;
    } else {
        let _ = std::fs::remove_file(&meta_path);
    }
    let ext = extension(&current, resp.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()));

    // Open the part file and hash a resumed prefix before streaming the rest.
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let part_for_writer = part.clone();
    let writer = tokio::task::spawn_blocking(move || write_and_hash(&part_for_writer, offset, rx));
    progress.bytes.store(offset, Ordering::Relaxed);
    let mut received: u64 = 0;
    let read_timeout = Duration::from_secs(cfg.read_timeout_s);
    let mut stream = resp.bytes_stream();
    let outcome: Result<(), TaskError> = loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => break Err(TaskError::Stopped("cancelled".into())),
            n = tokio::time::timeout(read_timeout, stream.next()) => n,
        };
        match next {
            Err(_) => {
                break Err(TaskError::retryable(format!(
                    "no data for {} s from {}",
                    read_timeout.as_secs(),
                    redact(&current)
                )))
            }
            Ok(None) => break Ok(()),
            Ok(Some(Err(e))) => break Err(network_error(&current, &e)),
            Ok(Some(Ok(chunk))) => {
                received += chunk.len() as u64;
                if offset + received > cfg.max_download_bytes {
                    break Err(TaskError::fatal(format!(
                        "{} exceeded the limit of {} bytes",
                        redact(&current),
                        cfg.max_download_bytes
                    )));
                }
                progress.bytes.store(offset + received, Ordering::Relaxed);
                if tx.send(chunk).await.is_err() {
                    break Ok(()); // the writer stopped; its error is reported below
                }
            }
        }
    };
    drop(tx);
    let written = writer.await.map_err(|e| TaskError::retryable(format!("writer thread failed: {e}")))?;
    outcome?;
    let (sha256, size) = written?;
    if size == 0 {
        // Said plainly: ffprobe's "moov atom not found" on an empty file explains nothing.
        let why = if total == Some(0) { "Content-Length 0" } else { "no body" };
        return Err(TaskError::fatal(format!("empty response ({why}) from {}", redact(&current))));
    }
    if let Some(t) = total {
        if size != t {
            return Err(TaskError::retryable(format!(
                "connection closed after {size} of {t} bytes from {}",
                redact(&current)
            )));
        }
    }
    let final_path = dir.join(format!("video.{ext}"));
    let (from, to) = (part.clone(), final_path.clone());
    tokio::task::spawn_blocking(move || {
        std::fs::rename(&from, &to)?;
        let _ = std::fs::remove_file(&meta_path);
        Ok::<_, std::io::Error>(())
    })
    .await
    .map_err(|e| TaskError::retryable(format!("rename thread failed: {e}")))?
    .map_err(|e| TaskError::io("rename finished download", e))?;
    Ok(Fetched { path: final_path, sha256, size, transferred: received, resumed_from: offset })
}

/// The writer thread: appends chunks to the part file (after hashing any resumed prefix)
/// and returns the hex SHA-256 and size of the whole file.
fn write_and_hash(
    part: &Path,
    offset: u64,
    mut rx: tokio::sync::mpsc::Receiver<Bytes>,
) -> Result<(String, u64), TaskError> {
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let file = if offset > 0 {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(part)
            .map_err(|e| TaskError::io("open partial download", e))?;
        size = hash_into(&mut (&f).take(offset), &mut hasher).map_err(|e| TaskError::io("read partial download", e))?;
        if size != offset {
            return Err(TaskError::retryable("partial download is shorter than its recorded length"));
        }
        f.set_len(offset).map_err(|e| TaskError::io("truncate partial download", e))?;
        f.seek(std::io::SeekFrom::Start(offset)).map_err(|e| TaskError::io("seek partial download", e))?;
        f
    } else {
        std::fs::File::create(part).map_err(|e| TaskError::io("create download file", e))?
    };
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    while let Some(chunk) = rx.blocking_recv() {
        hasher.update(&chunk);
        w.write_all(&chunk).map_err(|e| TaskError::io("write download", e))?;
        size += chunk.len() as u64;
    }
    let f = w.into_inner().map_err(|e| TaskError::io("write download", e.into_error()))?;
    f.sync_data().map_err(|e| TaskError::io("sync download", e))?;
    Ok((hex(&hasher.finalize()), size))
}

/// The resumable prefix left in `dir` for this URL, if any.
fn read_resumable(part: &Path, meta_path: &Path, url: &Url) -> Option<(u64, PartMeta)> {
    let meta: PartMeta = serde_json::from_slice(&std::fs::read(meta_path).ok()?).ok()?;
    let len = std::fs::metadata(part).ok()?.len();
    (meta.url == url.as_str() && len > 0).then_some((len, meta))
}

fn validator(resp: &reqwest::Response) -> Option<String> {
    let h = resp.headers();
    if let Some(e) = h.get(ETAG).and_then(|v| v.to_str().ok()) {
        if !e.starts_with("W/") {
            return Some(e.to_string());
        }
    }
    h.get(LAST_MODIFIED).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// `bytes 100-199/200` → 100.
fn content_range_start(resp: &reqwest::Response) -> Option<u64> {
    let v = resp.headers().get(CONTENT_RANGE)?.to_str().ok()?;
    v.strip_prefix("bytes ")?.split('-').next()?.trim().parse().ok()
}

/// One client per hop, pinned to the guard's addresses: it resolves nothing by itself, takes
/// no proxy from the environment and follows no redirect on its own.
fn client_for(ctx: &StageContext, target: &CheckedTarget) -> Result<reqwest::Client, TaskError> {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(NoResolve))
        .connect_timeout(Duration::from_secs(ctx.config.connect_timeout_s))
        .user_agent(concat!("dataminer-agent/", env!("CARGO_PKG_VERSION")));
    if let Some((name, addrs)) = &target.pin {
        b = b.resolve_to_addrs(name, addrs);
    }
    b.build().map_err(|e| TaskError::retryable(format!("cannot build HTTP client: {e}")))
}

/// A resolver that resolves nothing: every name the client may connect to is pinned.
struct NoResolve;

impl reqwest::dns::Resolve for NoResolve {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let n = name.as_str().to_string();
        Box::pin(async move {
            Err(Box::new(std::io::Error::other(format!("{n} was not checked by the download guard")))
                as Box<dyn std::error::Error + Send + Sync>)
        })
    }
}

/// A refused target is fatal; a name that did not resolve may resolve on another attempt.
pub(crate) fn guard_error(e: GuardError) -> TaskError {
    match e {
        GuardError::Refused { .. } => TaskError::fatal(e.to_string()),
        GuardError::Resolve { .. } => TaskError::retryable(e.to_string()),
    }
}

fn network_error(url: &Url, e: &reqwest::Error) -> TaskError {
    let s = format!("network error fetching {}: {}", redact(url), error_chain(e));
    if e.is_builder() {
        TaskError::fatal(s)
    } else {
        TaskError::retryable(s)
    }
}

/// The stored file's extension: from a fixed list, by URL path or content type (never a
/// user-supplied string).
fn extension(url: &Url, content_type: Option<&str>) -> &'static str {
    const KNOWN: [&str; 10] = ["mp4", "m4v", "mov", "webm", "mkv", "avi", "ts", "flv", "mpg", "ogv"];
    let from_path = url.path().rsplit('.').next().map(str::to_ascii_lowercase);
    if let Some(e) = from_path.and_then(|e| KNOWN.iter().find(|k| **k == e)) {
        return e;
    }
    match content_type.map(|c| c.split(';').next().unwrap_or("").trim().to_ascii_lowercase()).as_deref() {
        Some("video/mp4") => "mp4",
        Some("video/webm") => "webm",
        Some("video/x-matroska") => "mkv",
        Some("video/quicktime") => "mov",
        Some("video/mp2t") => "ts",
        _ => "bin",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_come_from_a_fixed_list() {
        let u = |s: &str| Url::parse(s).expect("url");
        assert_eq!(extension(&u("http://h/a/b.MP4?x=1"), None), "mp4");
        assert_eq!(extension(&u("http://h/a/b.php"), Some("video/webm")), "webm");
        assert_eq!(extension(&u("http://h/a/b.sh"), Some("text/html")), "bin");
    }
}
