//! The job store: every durable fact (projects, videos, project-videos, tasks, agents) and
//! every state transition, behind one API used by the HTTP handlers and the reaper. SQL is
//! written once in the dialect both backends accept (sqlx's `Any` driver, `$N` placeholders,
//! epoch-millisecond integers, JSON as text); where SQLite and PostgreSQL truly differ — how a
//! write transaction starts, row locking, cross-replica notification, the clock expression —
//! the [`Backend`] decides (see `backend.rs`). Each submodule owns one domain.

mod agents;
mod backend;
mod frames;
mod health;
mod machine;
mod projects;
mod queue;
mod rows;
mod stages;
mod status;
mod videos;

use std::sync::Arc;
use std::time::Duration;

use dataminer_wire::Stage;
use sqlx::any::AnyPoolOptions;
use sqlx::{Any, AnyPool, Transaction};

pub use backend::{Backend, NOTIFY_CHANNEL};
pub use frames::FrameQuery;
pub use health::WallClock;
pub use queue::{CompleteOutcome, FailOutcome, HeartbeatOutcome, ReapReport, MAX_BATCH};
pub use videos::VideoFilter;

use crate::metrics::Metrics;
use crate::wakeup::Wakeup;

/// Everything the store can refuse. Handlers map each variant to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// 404: the named thing does not exist.
    #[error("{0}")]
    NotFound(String),
    /// 409: the request conflicts with the current state (lost lease, duplicate name, …).
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// 422: well-formed but semantically invalid input.
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    #[error("database error")]
    Database(#[source] sqlx::Error),
    /// 503: the database cannot be reached right now (retry later).
    #[error("the database is unavailable; retry shortly ({0})")]
    Unavailable(String),
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database cannot be set up (directory, lock held by another process).
    #[error("{0}")]
    Setup(String),
    /// A row that our own code wrote but cannot be read back: a bug or a hand-edited database.
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl From<sqlx::Error> for StoreError {
    /// Connection-class failures become `Unavailable` (503, retry), everything else stays an
    /// internal error.
    fn from(e: sqlx::Error) -> Self {
        if backend::is_connection_error(&e) {
            StoreError::Unavailable(e.to_string())
        } else {
            StoreError::Database(e)
        }
    }
}

impl StoreError {
    pub(crate) fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        StoreError::Conflict { code, message: message.into() }
    }
    pub(crate) fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        StoreError::Invalid { code, message: message.into() }
    }

    /// The HTTP status and stable code of a refusal the client can act on; `None` for
    /// internal failures. The one place that maps store errors to statuses.
    pub fn client_status(&self) -> Option<(u16, &'static str)> {
        match self {
            StoreError::NotFound(_) => Some((404, "not_found")),
            StoreError::Conflict { code, .. } => Some((409, code)),
            StoreError::Invalid { code, .. } => Some((422, code)),
            StoreError::Unavailable(_) => Some((503, "database_unavailable")),
            _ => None,
        }
    }
}

/// Per-stage values (time limits).
#[derive(Debug, Clone, Copy)]
pub struct PerStage<T> {
    pub download: T,
    pub extract: T,
    pub filter: T,
    pub dedup: T,
    pub detect: T,
}

impl<T: Copy> PerStage<T> {
    pub fn get(&self, s: Stage) -> T {
        match s {
            Stage::Download => self.download,
            Stage::Extract => self.extract,
            Stage::Filter => self.filter,
            Stage::Dedup => self.dedup,
            Stage::Detect => self.detect,
        }
    }
}

/// Tunables of the task protocol (from the control plane's config).
#[derive(Debug, Clone)]
pub struct StoreSettings {
    pub lease_ttl_ms: i64,
    pub max_attempts: i64,
    pub retry_base_ms: i64,
    pub retry_max_ms: i64,
    pub time_limit_ms: PerStage<i64>,
    pub agent_alive_ms: i64,
    /// Hosts whose URLs are downloaded by yt-dlp (exact host or any subdomain).
    pub platform_hosts: Vec<String>,
    /// PostgreSQL connection pool size (SQLite uses one writer and four readers).
    pub db_max_connections: u32,
    /// How long a request waits for a database connection before it is answered 503.
    pub db_acquire_timeout_ms: u64,
    /// The embedded database's wall clock (read once at start; time then advances with the
    /// monotonic clock). Tests replace it.
    pub wall_clock: WallClock,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            lease_ttl_ms: 30_000,
            max_attempts: 5,
            retry_base_ms: 1_000,
            retry_max_ms: 300_000,
            time_limit_ms: PerStage {
                download: 3_600_000,
                extract: 3_600_000,
                filter: 7_200_000,
                dedup: 7_200_000,
                detect: 7_200_000,
            },
            agent_alive_ms: 60_000,
            platform_hosts: Vec::new(),
            db_max_connections: 16,
            db_acquire_timeout_ms: 2_000,
            wall_clock: WallClock::system(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    backend: Backend,
    /// SQLite: one connection, so writers queue in-process instead of spinning on
    /// SQLITE_BUSY. PostgreSQL: the same pool as `reader`.
    writer: AnyPool,
    reader: AnyPool,
    settings: StoreSettings,
    wakeup: Wakeup,
    metrics: Metrics,
    health: health::Health,
    /// SQLite: an exclusive lock on `<db>.lock`, held for the life of the store, so a second
    /// control-plane process on the same file refuses to start.
    _file_lock: Option<std::fs::File>,
}

/// Where the database is.
#[derive(Debug, Clone)]
pub enum DatabaseLocation {
    SqliteFile(std::path::PathBuf),
    Postgres(String),
}

impl Store {
    /// Opens (creating if needed) the database and applies pending migrations.
    pub async fn open(
        location: &DatabaseLocation,
        settings: StoreSettings,
        wakeup: Wakeup,
        metrics: Metrics,
    ) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let mut file_lock = None;
        let (backend, writer, reader) = match location {
            DatabaseLocation::SqliteFile(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| StoreError::Setup(format!("cannot create {}: {e}", dir.display())))?;
                }
                file_lock = Some(lock_sqlite_file(path)?);
                let url = format!("sqlite://{}?mode=rwc", path.display());
                let writer = sqlite_pool(&url, 1).await?;
                // WAL must be on before readers open, and it persists in the file.
                sqlx::query("PRAGMA journal_mode=WAL").execute(&writer).await?;
                let reader = sqlite_pool(&url, 4).await?;
                (Backend::Sqlite, writer, reader)
            }
            DatabaseLocation::Postgres(url) => {
                let url = with_statement_cache(url);
                let pool = AnyPoolOptions::new()
                    .max_connections(settings.db_max_connections)
                    .acquire_timeout(Duration::from_millis(settings.db_acquire_timeout_ms))
                    .connect(&url)
                    .await?;
                (Backend::Postgres, pool.clone(), pool)
            }
        };
        let health = health::Health::new(&settings);
        let store = Store {
            inner: Arc::new(Inner {
                backend,
                writer,
                reader,
                settings,
                wakeup,
                metrics,
                health,
                _file_lock: file_lock,
            }),
        };
        store.migrate().await?;
        stages::extract::rekey_legacy(&store).await?;
        Ok(store)
    }

    /// Applies the pending migrations of this backend (idempotent).
    pub async fn migrate(&self) -> Result<()> {
        let migrator = match self.inner.backend {
            Backend::Sqlite => sqlx::migrate!("../migrations/sqlite"),
            Backend::Postgres => sqlx::migrate!("../migrations/postgres"),
        };
        migrator.run(&self.inner.writer).await?;
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    pub fn settings(&self) -> &StoreSettings {
        &self.inner.settings
    }

    pub fn wakeup(&self) -> &Wakeup {
        &self.inner.wakeup
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The read pool, unless the database is known to be down (then 503 at once instead of
    /// a wait for a connection).
    pub(crate) fn reader(&self) -> Result<&AnyPool> {
        self.inner.health.check()?;
        Ok(&self.inner.reader)
    }

    /// Starts a write transaction the backend's way (SQLite: `BEGIN IMMEDIATE`, so the
    /// write lock is taken up front and a read-then-write can never be invalidated).
    pub(crate) async fn begin_write(&self) -> Result<Transaction<'static, Any>> {
        self.inner.health.check()?;
        let r = self.inner.backend.begin_write(&self.inner.writer).await;
        self.inner.health.observe(r.as_ref().err());
        Ok(r?)
    }

    /// True while leases are in their grace period: for one lease TTL after this process
    /// started or regained its database, an expired lease is not taken away (its agent may
    /// not have been able to heartbeat through the outage).
    pub(crate) fn lease_grace(&self) -> bool {
        self.inner.health.in_grace()
    }

    /// The database clock in epoch milliseconds. Leases, backoff and expiry all use it, so
    /// agents' and replicas' clocks never matter.
    pub(crate) async fn now(&self, tx: &mut Transaction<'static, Any>) -> Result<i64> {
        Ok(self.inner.backend.now(&mut **tx, &self.inner.health).await?)
    }

    pub(crate) async fn now_read(&self) -> Result<i64> {
        Ok(self.inner.backend.now(self.reader()?, &self.inner.health).await?)
    }

    /// Readiness: can we run a query? (Never short-circuited: this is how recovery is seen.)
    pub async fn ping(&self) -> Result<()> {
        let r = sqlx::query("SELECT 1").execute(&self.inner.reader).await;
        self.inner.health.observe(r.as_ref().err());
        r?;
        Ok(())
    }

    /// Wakes `stage`'s waiters again after each delay (ms): a task requeued with backoff
    /// becomes runnable then, and nobody should wait for the slow poll to notice. Other
    /// replicas set the same timer from a `stage@delay` notification (best effort: their
    /// slow poll covers a lost one).
    pub(crate) async fn wake_later(&self, later: &[(Stage, i64)]) {
        for (stage, delay) in later {
            let delay = (*delay).max(0);
            self.inner.wakeup.notify_after(*stage, Duration::from_millis(delay as u64));
            if self.inner.backend == Backend::Postgres {
                let sent = sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(NOTIFY_CHANNEL)
                    .bind(format!("{}@{delay}", stage.as_str()))
                    .execute(&self.inner.writer)
                    .await;
                if let Err(e) = sent {
                    tracing::debug!(error = %e, "could not tell other replicas about a delayed wake-up");
                }
            }
        }
    }

    /// Commits and then wakes every long-polling lease request for the stages that got new
    /// work. Waking happens only after the commit so a woken leaser always sees the rows.
    pub(crate) async fn commit_and_wake(&self, tx: Transaction<'static, Any>, woken: &[Stage]) -> Result<()> {
        self.commit_waking(tx, woken, false).await
    }

    /// Like [`Store::commit_and_wake`] but wakes one waiter per stage (see `Wakeup::notify_one`).
    pub(crate) async fn commit_and_wake_one(&self, tx: Transaction<'static, Any>, woken: &[Stage]) -> Result<()> {
        self.commit_waking(tx, woken, true).await
    }

    async fn commit_waking(&self, tx: Transaction<'static, Any>, woken: &[Stage], one: bool) -> Result<()> {
        let mut tx = tx;
        let mut stages: Vec<Stage> = woken.to_vec();
        stages.sort();
        stages.dedup();
        self.inner.backend.notify_replicas(&mut tx, &stages, one).await?;
        tx.commit().await?;
        if one {
            self.inner.wakeup.notify_one(&stages);
        } else {
            self.inner.wakeup.notify(&stages);
        }
        Ok(())
    }

    pub async fn close(&self) {
        self.inner.writer.close().await;
        self.inner.reader.close().await;
    }
}

/// The embedded database belongs to one control-plane process (its lease path relies on a
/// single writer); a second one on the same file is refused with a clear error.
fn lock_sqlite_file(db: &std::path::Path) -> Result<std::fs::File> {
    let path = db.with_extension("db.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::Setup(format!("cannot open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Setup(format!(
            "another control-plane process is using {} (lock {}); the embedded SQLite database \
                 serves one process — use PostgreSQL (DATABASE_URL) for several replicas",
            db.display(),
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Setup(format!("cannot lock {}: {e}", path.display()))),
    }
}

/// Batched statements come in many shapes (one per batch size); a larger per-connection
/// prepared-statement cache keeps PostgreSQL from re-planning them (unless the URL sets it).
fn with_statement_cache(url: &str) -> String {
    if url.contains("statement-cache-capacity") {
        return url.to_string();
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}statement-cache-capacity=2000")
}

async fn sqlite_pool(url: &str, max: u32) -> Result<AnyPool> {
    Ok(AnyPoolOptions::new()
        .max_connections(max)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(30))
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                use sqlx::Executor;
                // busy_timeout covers the reader pool racing a checkpoint; foreign keys are
                // off by default in SQLite.
                conn.execute("PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;")
                    .await?;
                Ok(())
            })
        })
        .connect(url)
        .await?)
}

/// Builds `$a, $a+1, …` for an IN list starting at placeholder `start`.
pub(crate) fn placeholders(start: usize, n: usize) -> String {
    let mut s = String::with_capacity(n * 4);
    for i in 0..n {
        if i > 0 {
            s.push_str(", ");
        }
        s.push('$');
        s.push_str(&(start + i).to_string());
    }
    s
}

/// Truncates stored error text so one pathological message cannot bloat every row and page.
pub(crate) fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
