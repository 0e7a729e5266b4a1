//! The agent's configuration: one typed struct from flags and `DATAMINER_*` environment
//! variables, validated at start and printed with the token redacted. Download limits live
//! here (they protect this node); extraction settings come with each task from the project.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use dataminer_wire::Stage;

/// A secret that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"[redacted]\"")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone, Parser)]
#[command(name = "agent", version, about = "dataminer agent: leases tasks from the control plane and runs them")]
pub struct Config {
    /// Base URL of the control plane.
    #[arg(long, env = "DATAMINER_CONTROL_PLANE", default_value = "http://127.0.0.1:8080")]
    pub control_plane: String,
    /// Bearer token for the agent routes (unset for the embedded default without tokens).
    #[arg(long, env = "DATAMINER_AGENT_TOKEN")]
    pub agent_token: Option<Secret>,
    /// Unique agent name; default: the hostname.
    #[arg(long, env = "DATAMINER_AGENT_NAME")]
    pub name: Option<String>,
    /// Kubernetes node (downward API).
    #[arg(long, env = "NODE_NAME")]
    pub node: Option<String>,
    /// Stages this agent serves.
    #[arg(long, env = "DATAMINER_STAGES", value_delimiter = ',', default_value = "download,extract", value_parser = parse_stage)]
    pub stages: Vec<Stage>,
    /// Concurrent download tasks.
    #[arg(long, env = "DATAMINER_DOWNLOAD_CONCURRENCY", default_value_t = 4)]
    pub download_concurrency: u32,
    /// Concurrent extract tasks (each runs one ffmpeg).
    #[arg(long, env = "DATAMINER_EXTRACT_CONCURRENCY", default_value_t = 2)]
    pub extract_concurrency: u32,
    /// Concurrent filter tasks (they feed one runner per model, which batches across them).
    #[arg(long, env = "DATAMINER_FILTER_CONCURRENCY", default_value_t = 2)]
    pub filter_concurrency: u32,
    /// Concurrent dedup tasks (of different projects: a project's dedup runs one at a time).
    #[arg(long, env = "DATAMINER_DEDUP_CONCURRENCY", default_value_t = 2)]
    pub dedup_concurrency: u32,
    /// Model packages (`<dir>/<name>/manifest.json`), read by the model stages (`models` build).
    #[arg(long, env = "DATAMINER_MODELS_DIR", default_value = "models")]
    pub models_dir: PathBuf,
    /// The packages to serve (advertised as `model:<name>`); default: every package in the
    /// models dir. Each is verified and run once at start: a broken one stops the agent.
    #[arg(long, env = "DATAMINER_MODELS", value_delimiter = ',')]
    pub models: Vec<String>,
    /// Model device: `auto` (CUDA 0 when this build has CUDA, else CPU), `cpu` or `cuda:N`.
    #[arg(long, env = "DATAMINER_DEVICE", default_value = "auto")]
    pub device: String,
    /// Threads per model task that read, decode and pre-process frames.
    #[arg(long, env = "DATAMINER_DECODE_THREADS", default_value_t = 2)]
    pub decode_threads: u32,
    /// Test hook: a model batch of more frames than this fails as out of memory.
    #[arg(long, env = "DATAMINER_TEST_MODEL_OOM_ABOVE", hide = true)]
    pub test_model_oom_above: Option<usize>,
    /// Test hook: every model batch first sleeps this long, milliseconds.
    #[arg(long, env = "DATAMINER_TEST_MODEL_DELAY_MS", hide = true, default_value_t = 0)]
    pub test_model_delay_ms: u64,
    /// The shared data root (videos/, frames_raw/, projects/…), the same path on every agent.
    #[arg(long, env = "DATAMINER_DATA_ROOT", default_value = "data")]
    pub data_root: PathBuf,
    /// Most tasks asked for in one lease request.
    #[arg(long, env = "DATAMINER_LEASE_BATCH", default_value_t = 4)]
    pub lease_batch: u32,
    /// Long-poll wait per lease request (capped by the control plane).
    #[arg(long, env = "DATAMINER_LEASE_WAIT_MS", default_value_t = 20_000)]
    pub lease_wait_ms: u64,
    /// Heartbeat period; default: what the control plane suggests at registration.
    #[arg(long, env = "DATAMINER_HEARTBEAT_INTERVAL_MS")]
    pub heartbeat_interval_ms: Option<u64>,
    /// On SIGTERM, running tasks get this long to finish before they are released.
    #[arg(long, env = "DATAMINER_SHUTDOWN_GRACE_S", default_value_t = 25)]
    pub shutdown_grace_s: u64,
    /// Address of the agent's own HTTP port (/healthz, /readyz, /metrics).
    #[arg(long, env = "DATAMINER_METRICS_LISTEN", default_value = "0.0.0.0:9090")]
    pub metrics_listen: SocketAddr,
    /// Largest file a download may produce, bytes.
    #[arg(long, env = "DATAMINER_MAX_DOWNLOAD_BYTES", default_value_t = 8 * 1024 * 1024 * 1024)]
    pub max_download_bytes: u64,
    /// Longest video accepted, seconds (by ffprobe's duration).
    #[arg(long, env = "DATAMINER_MAX_VIDEO_DURATION_S", default_value_t = 4 * 3600)]
    pub max_video_duration_s: u64,
    /// Connect timeout of a download, seconds.
    #[arg(long, env = "DATAMINER_CONNECT_TIMEOUT_S", default_value_t = 15)]
    pub connect_timeout_s: u64,
    /// A download that receives nothing for this long fails (retryable), seconds.
    #[arg(long, env = "DATAMINER_READ_TIMEOUT_S", default_value_t = 60)]
    pub read_timeout_s: u64,
    /// Keep at least this much free space on the data root; a task that would go below it
    /// fails retryably (another node may have room).
    #[arg(long, env = "DATAMINER_MIN_FREE_BYTES", default_value_t = 1024 * 1024 * 1024)]
    pub min_free_bytes: u64,
    /// Exact host:port pairs that may be downloaded from although not globally routable
    /// (tests, on-prem sources). Empty by default.
    #[arg(long, env = "DATAMINER_ALLOW_HOSTS", value_delimiter = ',')]
    pub allow_hosts: Vec<String>,
    /// Hosts (and their subdomains) that yt-dlp may be run for; must match the control plane's.
    #[arg(
        long,
        env = "DATAMINER_PLATFORM_HOSTS",
        value_delimiter = ',',
        default_value = "youtube.com,youtu.be,vimeo.com,dailymotion.com,twitch.tv,tiktok.com"
    )]
    pub platform_hosts: Vec<String>,
    /// yt-dlp format selection (the seed's, with `?` so sources that do not report a
    /// height still match).
    #[arg(
        long,
        env = "DATAMINER_YTDLP_FORMAT",
        default_value = "bestvideo[height<=?1080]+bestaudio/best[height<=?1080]"
    )]
    pub ytdlp_format: String,
    #[arg(long, env = "DATAMINER_FFMPEG", default_value = "ffmpeg")]
    pub ffmpeg: PathBuf,
    #[arg(long, env = "DATAMINER_FFPROBE", default_value = "ffprobe")]
    pub ffprobe: PathBuf,
    #[arg(long, env = "DATAMINER_YTDLP", default_value = "yt-dlp")]
    pub ytdlp: PathBuf,
    /// A partial download left by an earlier attempt is resumed only when nothing wrote to it
    /// for this long (an orphaned writer would still be touching it).
    #[arg(long, env = "DATAMINER_RESUME_QUIET_MS", default_value_t = 2_000)]
    pub resume_quiet_ms: u64,
    #[arg(long, env = "DATAMINER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
}

fn parse_stage(s: &str) -> Result<Stage, String> {
    Stage::parse(s.trim()).ok_or_else(|| format!("unknown stage {s:?} (download, extract, filter, dedup, detect)"))
}

impl Config {
    /// Every problem with this configuration; the agent refuses to start on any.
    pub fn validate(&self) -> Result<(), String> {
        let mut p = Vec::new();
        match url::Url::parse(&self.control_plane) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            _ => p.push(format!("control plane URL {:?} must be an http(s) URL", self.control_plane)),
        }
        if self.stages.is_empty() {
            p.push("serve at least one stage".into());
        }
        for s in &self.stages {
            let served = matches!(s, Stage::Download | Stage::Extract)
                || (cfg!(feature = "models") && matches!(s, Stage::Filter | Stage::Dedup));
            if !served {
                let which = if cfg!(feature = "models") {
                    "download, extract, filter and dedup"
                } else {
                    "download and extract; build with --features models for filter and dedup"
                };
                p.push(format!("stage {s} is not served by this agent build ({which} are)"));
            }
        }
        if !matches!(self.device.as_str(), "auto" | "cpu" | "cuda")
            && self.device.strip_prefix("cuda:").is_none_or(|n| n.parse::<u32>().is_err())
        {
            p.push(format!("device {:?} must be auto, cpu or cuda:N", self.device));
        }
        if !(1..=64).contains(&self.decode_threads) {
            p.push("decode threads must be between 1 and 64".into());
        }
        for m in &self.models {
            if m.is_empty() || m.contains('/') || m.contains("..") || m.len() > 58 {
                p.push(format!("model {m:?} must be a package directory name of at most 58 bytes"));
            }
        }
        for (name, v) in [
            ("download", self.download_concurrency),
            ("extract", self.extract_concurrency),
            ("filter", self.filter_concurrency),
            ("dedup", self.dedup_concurrency),
        ] {
            if !(1..=256).contains(&v) {
                p.push(format!("{name} concurrency must be between 1 and 256"));
            }
        }
        if !(1..=64).contains(&self.lease_batch) {
            p.push("lease batch must be between 1 and 64".into());
        }
        if self.lease_wait_ms > 120_000 {
            p.push("lease wait must be at most 120 s".into());
        }
        if let Some(h) = self.heartbeat_interval_ms {
            if !(10..=600_000).contains(&h) {
                p.push("heartbeat interval must be between 10 ms and 10 min".into());
            }
        }
        if self.shutdown_grace_s > 3600 {
            p.push("shutdown grace must be at most 1 h".into());
        }
        if self.max_download_bytes == 0 || self.max_video_duration_s == 0 {
            p.push("download limits must be positive".into());
        }
        if self.connect_timeout_s == 0 || self.read_timeout_s == 0 {
            p.push("timeouts must be positive".into());
        }
        for a in &self.allow_hosts {
            if !a.contains(':') || a.rsplit(':').next().and_then(|s| s.parse::<u16>().ok()).is_none() {
                p.push(format!("allow-host {a:?} must be host:port"));
            }
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(p.join("; "))
        }
    }

    pub fn agent_name(&self) -> String {
        self.name.clone().filter(|n| !n.trim().is_empty()).unwrap_or_else(hostname)
    }

    pub fn concurrency(&self, stage: Stage) -> u32 {
        match stage {
            Stage::Download => self.download_concurrency,
            Stage::Filter => self.filter_concurrency,
            Stage::Dedup => self.dedup_concurrency,
            _ => self.extract_concurrency,
        }
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_s)
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|s| s.trim().to_string()))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "agent".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        let mut v = vec!["agent"];
        v.extend_from_slice(args);
        Config::try_parse_from(v).expect("parse")
    }

    #[test]
    fn defaults_are_valid() {
        let c = parse(&[]);
        assert_eq!(c.stages, vec![Stage::Download, Stage::Extract]);
        c.validate().expect("valid");
    }

    #[test]
    fn problems_are_reported_together() {
        let c = parse(&["--control-plane", "ftp://x", "--lease-batch", "0", "--allow-hosts", "nohost"]);
        let e = c.validate().expect_err("invalid");
        assert!(e.contains("control plane URL"), "{e}");
        assert!(e.contains("lease batch"), "{e}");
        assert!(e.contains("host:port"), "{e}");
    }

    #[test]
    fn token_is_redacted() {
        let c = parse(&["--agent-token", "supersecret-token-123"]);
        assert!(!format!("{c:?}").contains("supersecret"));
    }
}
