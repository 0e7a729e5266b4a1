//! What differs between the two databases, in one place. SQLite has no `SKIP LOCKED`, no
//! NOTIFY and must take its write lock up front (`BEGIN IMMEDIATE`, on a single writer
//! connection — one control-plane process per SQLite file); PostgreSQL locks candidate rows
//! with `FOR UPDATE SKIP LOCKED`, tells other replicas about new work with `pg_notify` (sent
//! at commit, one per stage per transaction) and reports concurrency-key races as unique
//! violations that the lease path retries.

use dataminer_wire::Stage;
use sqlx::{Any, AnyPool, Transaction};

/// The channel other replicas LISTEN on; the payload is the stage name.
pub const NOTIFY_CHANNEL: &str = "dataminer_tasks";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }

    pub(crate) async fn begin_write(self, pool: &AnyPool) -> sqlx::Result<Transaction<'static, Any>> {
        match self {
            Backend::Sqlite => pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => pool.begin().await,
        }
    }

    /// Epoch milliseconds from the database clock. The embedded SQLite database lives in
    /// this process, so its clock is this process's clock: no round trip to ask it.
    /// Its clock is monotonic after start (see `Health::clock_ms`), so a wall-clock step
    /// does not expire every lease at once.
    pub(crate) async fn now<'c, E>(self, executor: E, health: &super::health::Health) -> sqlx::Result<i64>
    where
        E: sqlx::Executor<'c, Database = Any>,
    {
        match self {
            Backend::Sqlite => Ok(health.clock_ms()),
            Backend::Postgres => {
                sqlx::query_scalar("SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)")
                    .fetch_one(executor)
                    .await
            }
        }
    }

    /// Row locking for the lease candidate query. SQLite needs none: `BEGIN IMMEDIATE` on
    /// the single writer already excludes every other writer.
    pub(crate) fn lock_candidates(self) -> &'static str {
        match self {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE OF t SKIP LOCKED",
        }
    }

    /// Locks the canonical-content candidates a download completion links to. On PostgreSQL
    /// a concurrent extract completion of the canonical video either finishes first (and this
    /// read waits for it and sees `EXTRACTED`) or waits for this transaction (and its
    /// following statement sees the new copy waiting): without the lock both can miss each
    /// other and the copy waits forever. SQLite's single writer already orders them.
    pub(crate) fn lock_rows(self) -> &'static str {
        match self {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE",
        }
    }

    /// Shared row lock for a read that decides (a join reading its video's state).
    pub(crate) fn share_rows(self) -> &'static str {
        match self {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR SHARE",
        }
    }

    /// Claims concurrency keys for the rest of the transaction without waiting and returns
    /// those that are not available. PostgreSQL takes a transaction-scoped advisory lock per
    /// key (busy → another lease transaction is claiming it right now) and then looks for a
    /// task already leased with the key (the candidate query may predate another replica's
    /// commit). SQLite's single writer makes the candidate query current: nothing to do.
    pub(crate) async fn claim_keys(
        self,
        tx: &mut Transaction<'static, Any>,
        keys: &[&str],
    ) -> sqlx::Result<Vec<String>> {
        if self == Backend::Sqlite || keys.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<String> = (1..=keys.len()).map(|i| format!("(${i})")).collect();
        let sql = format!(
            "SELECT v.column1 FROM (VALUES {}) AS v \
             WHERE NOT pg_try_advisory_xact_lock(hashtextextended(v.column1, 0)) \
             OR EXISTS (SELECT 1 FROM tasks t WHERE t.concurrency_key = v.column1 AND t.state = 'leased')",
            rows.join(", ")
        );
        let mut q = sqlx::query_scalar::<_, String>(&sql);
        for k in keys {
            q = q.bind(*k);
        }
        q.fetch_all(&mut **tx).await
    }

    /// Tells other replicas' lease waiters about new work: payload `stage` wakes all of
    /// them, `stage:one` one (the completion path).
    pub(crate) async fn notify_replicas(
        self,
        tx: &mut Transaction<'static, Any>,
        stages: &[Stage],
        one: bool,
    ) -> sqlx::Result<()> {
        if self == Backend::Postgres && !stages.is_empty() {
            // One round trip for all stages: SELECT pg_notify($1, $2), pg_notify($1, $3), …
            let calls: Vec<String> = (0..stages.len()).map(|i| format!("pg_notify($1, ${})", i + 2)).collect();
            let sql = format!("SELECT {}", calls.join(", "));
            let mut q = sqlx::query(&sql).bind(NOTIFY_CHANNEL);
            for s in stages {
                q = q.bind(if one { format!("{}:one", s.as_str()) } else { s.as_str().to_string() });
            }
            q.execute(&mut **tx).await?;
        }
        Ok(())
    }
}

/// True for errors that only mean "another transaction got in the way" (deadlock, PostgreSQL
/// serialisation failure, SQLite busy, or the one known unique race: two lease transactions
/// taking the same concurrency key, caught by `tasks_key_leased`): the transaction rolled
/// back entirely, so running it again is safe. Any other unique violation is a bug and is
/// not retried.
pub(crate) fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            matches!(db.code().as_deref(), Some("40P01") | Some("40001") | Some("5") | Some("6"))
                || (is_unique_violation(e)
                    && (db.constraint() == Some("tasks_key_leased") || db.message().contains("tasks.concurrency_key")))
        }
        _ => false,
    }
}

/// True for failures to reach the database (refused or dropped connection, pool timeout,
/// server shutting down or not accepting connections): the request may succeed later.
pub(crate) fn is_connection_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            c.starts_with("08")
                || matches!(c.as_ref(), "57P01" | "57P02" | "57P03" | "53300")
                // The database refuses new connections (ALLOW_CONNECTIONS false, maintenance).
                || (c == "55000" && db.message().contains("not currently accepting connections"))
        }),
        _ => false,
    }
}

/// True for a unique-constraint violation (SQLite 2067/1555, PostgreSQL 23505).
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            matches!(db.code().as_deref(), Some("23505") | Some("2067") | Some("1555"))
                || db.kind() == sqlx::error::ErrorKind::UniqueViolation
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only the concurrency-key race is transient: any other unique violation is a bug that
    /// must surface, not be retried ten times.
    #[tokio::test]
    async fn only_the_concurrency_key_race_is_transient() {
        use sqlx::Connection;
        let mut c = sqlx::SqliteConnection::connect("sqlite::memory:").await.expect("open");
        sqlx::query(
            "CREATE TABLE tasks (id INTEGER PRIMARY KEY, state TEXT, concurrency_key TEXT, name TEXT UNIQUE); \
             CREATE UNIQUE INDEX tasks_key_leased ON tasks (concurrency_key) WHERE state = 'leased'",
        )
        .execute(&mut c)
        .await
        .expect("schema");
        sqlx::query("INSERT INTO tasks (state, concurrency_key, name) VALUES ('leased', 'dedup:1', 'a')")
            .execute(&mut c)
            .await
            .expect("first");
        let key = sqlx::query("INSERT INTO tasks (state, concurrency_key, name) VALUES ('leased', 'dedup:1', 'b')")
            .execute(&mut c)
            .await
            .expect_err("key race");
        assert!(is_unique_violation(&key) && is_transient(&key), "{key}");
        let other = sqlx::query("INSERT INTO tasks (state, concurrency_key, name) VALUES ('queued', 'dedup:2', 'a')")
            .execute(&mut c)
            .await
            .expect_err("name clash");
        assert!(is_unique_violation(&other) && !is_transient(&other), "{other}");
        assert!(is_connection_error(&sqlx::Error::PoolTimedOut) && !is_connection_error(&other));
    }
}
