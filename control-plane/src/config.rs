//! The control plane's configuration: one typed struct from flags and `DATAMINER_*`
//! environment variables, validated at start and printed with secrets redacted.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::store::{DatabaseLocation, PerStage, StoreSettings};

/// A secret (token, database URL) that never prints.
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

/// The options are global: `control-plane --listen A serve` and `control-plane serve --listen A`
/// mean the same, and every subcommand's `--help` lists them.
#[derive(Debug, Parser)]
#[command(name = "control-plane", version, about = "dataminer control plane: job store, lease protocol and REST API")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: Config,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Print the OpenAPI document and exit.
    Openapi,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address to listen on. Without tokens it must be a loopback address.
    #[arg(long, global = true, env = "DATAMINER_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// PostgreSQL URL (postgres://…). Without it the embedded SQLite file is used.
    #[arg(long, global = true, env = "DATABASE_URL")]
    pub database_url: Option<Secret>,
    /// PostgreSQL connection pool size per replica.
    #[arg(long, global = true, env = "DATAMINER_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,
    /// How long a request waits for a PostgreSQL connection before it is answered 503
    /// `database_unavailable` (with Retry-After).
    #[arg(long, env = "DATAMINER_DB_ACQUIRE_TIMEOUT_MS", default_value_t = 2_000)]
    pub db_acquire_timeout_ms: u64,
    /// The wall clock the embedded database's clock starts from (tests replace it).
    #[arg(skip = crate::store::WallClock::system())]
    pub wall_clock: crate::store::WallClock,
    /// Directory of the embedded SQLite database (a local disk, never a network filesystem).
    #[arg(long, global = true, env = "DATAMINER_STATE_DIR", default_value = "data")]
    pub state_dir: PathBuf,
    /// Bearer token for user routes (projects, videos, status).
    #[arg(long, global = true, env = "DATAMINER_USER_TOKEN")]
    pub user_token: Option<Secret>,
    /// Bearer token for agent routes (register, lease, heartbeat, complete, fail, release).
    #[arg(long, global = true, env = "DATAMINER_AGENT_TOKEN")]
    pub agent_token: Option<Secret>,
    /// A lease lasts this long unless a heartbeat extends it.
    #[arg(long, global = true, env = "DATAMINER_LEASE_TTL_MS", default_value_t = 30_000)]
    pub lease_ttl_ms: u64,
    /// How often the reaper looks for expired leases.
    #[arg(long, global = true, env = "DATAMINER_REAPER_INTERVAL_MS", default_value_t = 1_000)]
    pub reaper_interval_ms: u64,
    /// The longest a lease request may wait for work (long poll).
    #[arg(long, global = true, env = "DATAMINER_MAX_LEASE_WAIT_MS", default_value_t = 30_000)]
    pub max_lease_wait_ms: u64,
    /// Waiting lease requests re-check the queue at least this often (covers lost notifications).
    #[arg(long, global = true, env = "DATAMINER_POLL_FALLBACK_MS", default_value_t = 2_000)]
    pub poll_fallback_ms: u64,
    /// Attempts before a task is dead.
    #[arg(long, global = true, env = "DATAMINER_MAX_ATTEMPTS", default_value_t = 5)]
    pub max_attempts: u32,
    /// First retry backoff; doubles per attempt, with jitter in [0.5, 1]×.
    #[arg(long, global = true, env = "DATAMINER_RETRY_BASE_MS", default_value_t = 1_000)]
    pub retry_base_ms: u64,
    #[arg(long, global = true, env = "DATAMINER_RETRY_MAX_MS", default_value_t = 300_000)]
    pub retry_max_ms: u64,
    /// Hard run-time limit of a download attempt, seconds.
    #[arg(long, global = true, env = "DATAMINER_TIME_LIMIT_DOWNLOAD_S", default_value_t = 3_600)]
    pub time_limit_download_s: u64,
    #[arg(long, global = true, env = "DATAMINER_TIME_LIMIT_EXTRACT_S", default_value_t = 3_600)]
    pub time_limit_extract_s: u64,
    #[arg(long, global = true, env = "DATAMINER_TIME_LIMIT_FILTER_S", default_value_t = 7_200)]
    pub time_limit_filter_s: u64,
    #[arg(long, global = true, env = "DATAMINER_TIME_LIMIT_DEDUP_S", default_value_t = 7_200)]
    pub time_limit_dedup_s: u64,
    #[arg(long, global = true, env = "DATAMINER_TIME_LIMIT_DETECT_S", default_value_t = 7_200)]
    pub time_limit_detect_s: u64,
    /// An agent seen within this window counts as alive.
    #[arg(long, global = true, env = "DATAMINER_AGENT_ALIVE_MS", default_value_t = 60_000)]
    pub agent_alive_ms: u64,
    /// Largest accepted request body (413 above).
    #[arg(long, global = true, env = "DATAMINER_BODY_LIMIT_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub body_limit_bytes: usize,
    /// Largest accepted body on the completion routes (`/v1/tasks/{id}/complete`,
    /// `/v1/tasks/complete`), which carry per-frame results (413 above).
    #[arg(long, global = true, env = "DATAMINER_RESULT_BODY_LIMIT_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub result_body_limit_bytes: usize,
    /// Most URLs in one submission.
    #[arg(long, global = true, env = "DATAMINER_MAX_URLS_PER_REQUEST", default_value_t = 10_000)]
    pub max_urls_per_request: usize,
    /// Hosts (and their subdomains) downloaded with yt-dlp.
    #[arg(
        long,
        global = true,
        env = "DATAMINER_PLATFORM_HOSTS",
        value_delimiter = ',',
        default_value = "youtube.com,youtu.be,vimeo.com,dailymotion.com,twitch.tv,tiktok.com"
    )]
    pub platform_hosts: Vec<String>,
    /// Exact host:port pairs that may be submitted although not globally routable (tests,
    /// on-prem sources). Empty by default.
    #[arg(long, global = true, env = "DATAMINER_ALLOW_HOSTS", value_delimiter = ',')]
    pub allow_hosts: Vec<String>,
    #[arg(long, global = true, env = "DATAMINER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
    /// OTLP/HTTP traces endpoint (e.g. http://otel-collector:4318); export is off without it.
    #[arg(long, global = true, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// On SIGTERM, in-flight requests get this long to finish.
    #[arg(long, global = true, env = "DATAMINER_SHUTDOWN_GRACE_S", default_value_t = 10)]
    pub shutdown_grace_s: u64,
}

/// Shorter bearer tokens are refused at start (guessable).
pub const MIN_TOKEN_CHARS: usize = 16;

impl Config {
    /// Every problem with this configuration; the server refuses to start on any.
    pub fn validate(&self) -> Result<(), String> {
        let mut p = Vec::new();
        match (&self.user_token, &self.agent_token) {
            (None, None) => {
                if !self.listen.ip().is_loopback() {
                    p.push(format!(
                        "listening on {} without tokens would expose the API: set DATAMINER_USER_TOKEN and \
                         DATAMINER_AGENT_TOKEN, or listen on 127.0.0.1",
                        self.listen
                    ));
                }
            }
            (Some(u), Some(a)) => {
                for (name, t) in [("DATAMINER_USER_TOKEN", u), ("DATAMINER_AGENT_TOKEN", a)] {
                    if t.0.chars().count() < MIN_TOKEN_CHARS {
                        p.push(format!(
                            "{name} (--{}) must be at least {MIN_TOKEN_CHARS} characters, e.g. `openssl rand -hex 24`",
                            name.trim_start_matches("DATAMINER_").to_ascii_lowercase().replace('_', "-")
                        ));
                    }
                }
                if u == a {
                    p.push("the user and agent tokens must differ".into());
                }
            }
            _ => p.push("set both DATAMINER_USER_TOKEN and DATAMINER_AGENT_TOKEN, or neither".into()),
        }
        if let Some(url) = &self.database_url {
            if !(url.0.starts_with("postgres://") || url.0.starts_with("postgresql://")) {
                p.push("DATABASE_URL must be a postgres:// URL (leave it unset for the embedded SQLite)".into());
            }
        }
        if !(100..=3_600_000).contains(&self.lease_ttl_ms) {
            p.push("lease TTL must be between 100 ms and 1 h".into());
        }
        if !(10..=60_000).contains(&self.reaper_interval_ms) {
            p.push("reaper interval must be between 10 ms and 60 s".into());
        }
        if self.max_lease_wait_ms > dataminer_wire::MAX_LEASE_WAIT_MS {
            p.push("max lease wait must be at most 120 s".into());
        }
        if !(10..=60_000).contains(&self.poll_fallback_ms) {
            p.push("poll fallback must be between 10 ms and 60 s".into());
        }
        if !(100..=60_000).contains(&self.db_acquire_timeout_ms) {
            p.push("--db-acquire-timeout-ms must be between 100 and 60000".to_string());
        }
        if !(1..=1000).contains(&self.db_max_connections) {
            p.push("database pool size must be between 1 and 1000".into());
        }
        if !(1..=100).contains(&self.max_attempts) {
            p.push("max attempts must be between 1 and 100".into());
        }
        if self.retry_base_ms == 0 || self.retry_max_ms < self.retry_base_ms {
            p.push("retry base must be positive and at most the retry max".into());
        }
        for (name, v) in [
            ("download", self.time_limit_download_s),
            ("extract", self.time_limit_extract_s),
            ("filter", self.time_limit_filter_s),
            ("dedup", self.time_limit_dedup_s),
            ("detect", self.time_limit_detect_s),
        ] {
            if !(1..=7 * 86_400).contains(&v) {
                p.push(format!("{name} time limit must be between 1 s and 7 days"));
            }
        }
        if self.body_limit_bytes < 1024 {
            p.push("body limit must be at least 1 KiB".into());
        }
        if self.result_body_limit_bytes < 1024 {
            p.push("result body limit must be at least 1 KiB".into());
        }
        if !(1..=100_000).contains(&self.max_urls_per_request) {
            p.push("max URLs per request must be between 1 and 100000".into());
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(p.join("; "))
        }
    }

    pub fn database(&self) -> DatabaseLocation {
        match &self.database_url {
            Some(url) => DatabaseLocation::Postgres(url.0.clone()),
            None => DatabaseLocation::SqliteFile(self.state_dir.join("dataminer.db")),
        }
    }

    pub fn store_settings(&self) -> StoreSettings {
        let ms = |s: u64| (s * 1000) as i64;
        StoreSettings {
            lease_ttl_ms: self.lease_ttl_ms as i64,
            max_attempts: i64::from(self.max_attempts),
            retry_base_ms: self.retry_base_ms as i64,
            retry_max_ms: self.retry_max_ms as i64,
            time_limit_ms: PerStage {
                download: ms(self.time_limit_download_s),
                extract: ms(self.time_limit_extract_s),
                filter: ms(self.time_limit_filter_s),
                dedup: ms(self.time_limit_dedup_s),
                detect: ms(self.time_limit_detect_s),
            },
            agent_alive_ms: self.agent_alive_ms as i64,
            platform_hosts: self.platform_hosts.clone(),
            db_max_connections: self.db_max_connections,
            db_acquire_timeout_ms: self.db_acquire_timeout_ms,
            wall_clock: self.wall_clock.clone(),
        }
    }

    pub fn reaper_interval(&self) -> Duration {
        Duration::from_millis(self.reaper_interval_ms)
    }

    /// Defaults as if no flag or variable were given (for tests and embedding).
    pub fn defaults() -> Self {
        Cli::parse_from(["control-plane"]).config
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn options_belong_to_every_subcommand() {
        for args in [
            &["control-plane", "serve", "--listen", "0.0.0.0:9000", "--max-attempts", "7"][..],
            &["control-plane", "--listen", "0.0.0.0:9000", "serve", "--max-attempts", "7"],
        ] {
            let cli = Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert!(matches!(cli.command, Some(Command::Serve)));
            assert_eq!(cli.config.listen, "0.0.0.0:9000".parse().expect("addr"));
            assert_eq!(cli.config.max_attempts, 7);
        }
        let cli = Cli::try_parse_from(["control-plane", "migrate", "--state-dir", "/tmp/x"]).expect("migrate");
        assert_eq!(cli.config.state_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn serve_help_lists_the_options() {
        let help = match Cli::try_parse_from(["control-plane", "serve", "--help"]) {
            Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => e.to_string(),
            other => panic!("expected help, got {other:?}"),
        };
        for flag in ["--listen", "--database-url", "--user-token", "--body-limit-bytes", "DATAMINER_LISTEN"] {
            assert!(help.contains(flag), "{flag} missing from `serve --help`:\n{help}");
        }
    }

    #[test]
    fn short_tokens_are_refused_with_the_minimum() {
        let mut c = Config::defaults();
        c.user_token = Some(Secret("short".into()));
        c.agent_token = Some(Secret("agent-token-0123456789".into()));
        let e = c.validate().expect_err("a 5-character token");
        assert!(e.contains("DATAMINER_USER_TOKEN") && e.contains("at least 16 characters"), "{e}");
        assert!(!e.contains("DATAMINER_AGENT_TOKEN"), "{e}");
    }
}
