//! What the store knows about its database's health, and the clock of the embedded one.
//! After a connection-class failure the store answers 503 at once for a short while instead
//! of making every request wait for a connection (a circuit breaker; `/readyz` still tries,
//! which is how recovery is noticed). When the database comes back — and when the process
//! starts — leases get one TTL of grace: an agent that could not heartbeat through the
//! outage keeps its task if it heartbeats within that TTL.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Result, StoreError, StoreSettings};

/// Reads the wall clock in epoch ms. The embedded database reads it once, at start, and
/// then advances with the monotonic clock, so a wall-clock step never expires every lease.
#[derive(Clone)]
pub struct WallClock(Arc<dyn Fn() -> i64 + Send + Sync>);

impl WallClock {
    pub fn system() -> Self {
        WallClock(Arc::new(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0)
        }))
    }

    /// A clock of the caller's (tests: one that jumps).
    pub fn from_fn(f: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        WallClock(Arc::new(f))
    }

    fn read(&self) -> i64 {
        (self.0)()
    }
}

impl std::fmt::Debug for WallClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WallClock")
    }
}

/// How long requests are answered 503 without trying after a connection failure.
const OPEN_FOR: Duration = Duration::from_millis(1_000);

#[derive(Debug)]
struct State {
    /// Set while the last attempt to reach the database failed.
    down_since: Option<Instant>,
    /// Requests fail fast until then.
    open_until: Option<Instant>,
    grace_until: Instant,
}

#[derive(Debug)]
pub(crate) struct Health {
    state: Mutex<State>,
    ttl: Duration,
    anchor_wall_ms: i64,
    anchor: Instant,
}

impl Health {
    pub(crate) fn new(settings: &StoreSettings) -> Self {
        let ttl = Duration::from_millis(settings.lease_ttl_ms.max(0) as u64);
        Health {
            state: Mutex::new(State { down_since: None, open_until: None, grace_until: Instant::now() + ttl }),
            ttl,
            anchor_wall_ms: settings.wall_clock.read(),
            anchor: Instant::now(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means another thread panicked while holding it; the state is
        // a few plain fields that are always consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fails fast while the circuit is open.
    pub(crate) fn check(&self) -> Result<()> {
        let s = self.lock();
        if s.open_until.is_some_and(|u| Instant::now() < u) {
            return Err(StoreError::Unavailable("the last connection attempt failed".into()));
        }
        Ok(())
    }

    /// Records the outcome of an attempt to reach the database.
    pub(crate) fn observe(&self, err: Option<&sqlx::Error>) {
        let mut s = self.lock();
        match err {
            Some(e) if super::backend::is_connection_error(e) => {
                let now = Instant::now();
                if s.down_since.is_none() {
                    tracing::warn!(error = %e, "database unreachable; answering 503 until it is back");
                    s.down_since = Some(now);
                }
                s.open_until = Some(now + OPEN_FOR);
            }
            Some(_) => {}
            None => {
                if let Some(since) = s.down_since.take() {
                    s.grace_until = Instant::now() + self.ttl;
                    s.open_until = None;
                    tracing::info!(
                        down_ms = since.elapsed().as_millis() as u64,
                        grace_ms = self.ttl.as_millis() as u64,
                        "database reachable again; leases get one TTL of grace"
                    );
                }
            }
        }
    }

    pub(crate) fn in_grace(&self) -> bool {
        Instant::now() < self.lock().grace_until
    }

    /// The embedded database's clock: the wall clock at start plus monotonic time since.
    pub(crate) fn clock_ms(&self) -> i64 {
        self.anchor_wall_ms + self.anchor.elapsed().as_millis() as i64
    }
}
