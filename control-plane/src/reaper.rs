//! The reaper loop: every interval, requeue or bury leases that expired or ran past their
//! stage's hard time limit (decided by the database clock, see `Store::reap_once`). Safe to
//! run on every replica at once; stops promptly on shutdown.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::Store;

pub async fn run(store: Store, interval: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        // A database hiccup must not kill the loop; the next tick retries.
        match tokio::time::timeout(Duration::from_secs(30), store.reap_once()).await {
            Ok(Ok(r)) if r.requeued + r.dead > 0 => {
                tracing::info!(requeued = r.requeued, dead = r.dead, "reaped expired leases")
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "reaper pass failed"),
            Err(_) => tracing::warn!("reaper pass timed out after 30 s"),
        }
    }
}
