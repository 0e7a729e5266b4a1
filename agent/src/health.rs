//! The agent's own HTTP port: `/healthz` answers 200 only while the work loops keep turning
//! (each loop records a tick at least every lease wait plus a few seconds, so a hung loop
//! turns the probe red instead of the seed's once-written `/tmp/healthy` file), `/readyz`
//! answers 200 while the agent is registered and the control plane answered its last call,
//! and `/metrics` is the Prometheus text format.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use dataminer_wire::Stage;

use crate::metrics::Metrics;

fn slot(stage: Stage) -> usize {
    Stage::ALL.iter().position(|s| *s == stage).unwrap_or(0)
}

/// Shared liveness and readiness facts, written by the work loops.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    /// Per work loop (one per served stage): milliseconds since `started` of its last tick,
    /// or `u64::MAX` when that loop is not running.
    ticks: [AtomicU64; 5],
    registered: AtomicBool,
    reachable: AtomicBool,
    /// A loop that has not ticked for this long is considered hung.
    stall_after: Duration,
}

impl Health {
    pub fn new(stall_after: Duration) -> Arc<Self> {
        Arc::new(Self {
            started: Instant::now(),
            ticks: std::array::from_fn(|_| AtomicU64::new(u64::MAX)),
            registered: AtomicBool::new(false),
            reachable: AtomicBool::new(false),
            stall_after,
        })
    }

    /// Records that the work loop of `stage` turned.
    pub fn tick(&self, stage: Stage) {
        self.ticks[slot(stage)].store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub fn set_registered(&self, v: bool) {
        self.registered.store(v, Ordering::Relaxed);
    }

    pub fn set_reachable(&self, v: bool) {
        self.reachable.store(v, Ordering::Relaxed);
    }

    /// Every running loop ticked within `stall_after` (true before any loop started).
    pub fn is_live(&self) -> bool {
        let now = self.started.elapsed().as_millis() as u64;
        let limit = self.stall_after.as_millis() as u64;
        self.ticks
            .iter()
            .map(|t| t.load(Ordering::Relaxed))
            .filter(|t| *t != u64::MAX)
            .all(|t| now.saturating_sub(t) <= limit)
    }

    /// Ready, or why not.
    pub fn readiness(&self) -> Result<(), &'static str> {
        if !self.registered.load(Ordering::Relaxed) {
            Err("not registered with the control plane")
        } else if !self.reachable.load(Ordering::Relaxed) {
            Err("control plane unreachable")
        } else {
            Ok(())
        }
    }
}

#[derive(Clone)]
struct Ctx {
    health: Arc<Health>,
    metrics: Metrics,
}

pub fn router(health: Arc<Health>, metrics: Metrics) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(Ctx { health, metrics })
}

async fn healthz(State(c): State<Ctx>) -> (StatusCode, &'static str) {
    if c.health.is_live() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "work loop stalled\n")
    }
}

async fn readyz(State(c): State<Ctx>) -> (StatusCode, String) {
    match c.health.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

async fn metrics_text(State(c): State<Ctx>) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], c.metrics.render())
}

/// Serves until `stop` is cancelled.
pub async fn serve(listener: tokio::net::TcpListener, router: Router, stop: CancellationToken) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(async move { stop.cancelled().await }).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_follows_ticks() {
        let h = Health::new(Duration::from_millis(30));
        h.tick(Stage::Download);
        h.tick(Stage::Extract);
        assert!(h.is_live());
        std::thread::sleep(Duration::from_millis(60));
        h.tick(Stage::Download);
        assert!(!h.is_live(), "one loop that stopped ticking must turn /healthz red");
        h.tick(Stage::Extract);
        assert!(h.is_live());
        assert_eq!(h.readiness(), Err("not registered with the control plane"));
        h.set_registered(true);
        h.set_reachable(true);
        assert_eq!(h.readiness(), Ok(()));
    }
}
