//! Long-poll wake-ups. A lease request that finds nothing waits on the per-stage `Notify`
//! (registered *before* it looks, so a commit between look and wait is never missed); the
//! store notifies after every commit that enqueued work. On PostgreSQL a listener task turns
//! other replicas' `pg_notify` into the same local notification; a slow poll in the waiter
//! covers notifications lost while the listener reconnects.

use std::sync::Arc;
use std::time::Duration;

use dataminer_wire::Stage;
use futures::future::select_all;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Default)]
pub struct Wakeup {
    stages: Arc<[Notify; 5]>,
    /// Per stage, the 100 ms slots a timer is already set for (so a burst of requeues sets
    /// one timer per slot, not one per task).
    timers: Arc<std::sync::Mutex<std::collections::HashSet<(usize, u64)>>>,
}

fn index(s: Stage) -> usize {
    match s {
        Stage::Download => 0,
        Stage::Extract => 1,
        Stage::Filter => 2,
        Stage::Dedup => 3,
        Stage::Detect => 4,
    }
}

impl Wakeup {
    /// Wakes every waiting lease request of these stages (user actions, requeues: rare, and
    /// the new work may need a capability only some agents have).
    pub fn notify(&self, stages: &[Stage]) {
        for s in stages {
            self.stages[index(*s)].notify_waiters();
        }
    }

    /// Wakes one waiting lease request per stage (the completion path: a batch of successors
    /// is best taken by one agent, not raced for by all). A leaser that fills its batch
    /// passes the baton on with [`Wakeup::pass_baton`], so any amount of new work is taken
    /// promptly without a thundering herd.
    pub fn notify_one(&self, stages: &[Stage]) {
        for s in stages {
            self.stages[index(*s)].notify_one();
        }
    }

    /// Wakes every waiting lease request of `stage` after `delay` (a requeued task's backoff
    /// ends then). Needs a tokio runtime; outside one it does nothing (the slow poll covers).
    pub fn notify_after(&self, stage: Stage, delay: Duration) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let epoch_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        // Round up to the next 100 ms slot: never early, at most 100 ms late.
        let slot = (epoch_ms + delay.as_millis() as u64).div_ceil(100);
        let key = (index(stage), slot);
        {
            let mut timers = self.timers.lock().unwrap_or_else(|p| p.into_inner());
            if !timers.insert(key) {
                return;
            }
        }
        let me = self.clone();
        let wait = Duration::from_millis((slot * 100).saturating_sub(epoch_ms));
        rt.spawn(async move {
            tokio::time::sleep(wait).await;
            me.timers.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
            me.notify(&[stage]);
        });
    }

    /// Called by a leaser that got a full batch: there may be more, wake the next waiter.
    pub fn pass_baton(&self, stages: &[Stage]) {
        self.notify_one(stages);
    }

    /// Runs `attempt` until it returns something non-empty, the deadline passes or shutdown
    /// begins, sleeping in between until one of `stages` is notified (or `poll` elapses).
    pub async fn wait_for<T, E, F, Fut>(
        &self,
        stages: &[Stage],
        wait: Duration,
        poll: Duration,
        shutdown: &CancellationToken,
        mut attempt: F,
    ) -> Result<Vec<T>, E>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Vec<T>, E>>,
    {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let mut waiters: Vec<_> = stages.iter().map(|s| Box::pin(self.stages[index(*s)].notified())).collect();
            for w in &mut waiters {
                w.as_mut().enable();
            }
            let got = attempt().await?;
            let now = tokio::time::Instant::now();
            if !got.is_empty() || now >= deadline || shutdown.is_cancelled() || waiters.is_empty() {
                return Ok(got);
            }
            let nap = (deadline - now).min(poll);
            tokio::select! {
                _ = select_all(waiters) => {}
                _ = tokio::time::sleep(nap) => {}
                _ = shutdown.cancelled() => {}
            }
        }
    }
}

/// PostgreSQL: LISTEN for other replicas' enqueues until shutdown, reconnecting with a
/// capped backoff when the connection drops.
pub async fn listen_postgres(url: String, wakeup: Wakeup, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(200);
    while !shutdown.is_cancelled() {
        match sqlx::postgres::PgListener::connect(&url).await {
            Ok(mut listener) => {
                if let Err(e) = listener.listen(crate::store::NOTIFY_CHANNEL).await {
                    tracing::warn!(error = %e, "LISTEN failed");
                } else {
                    backoff = Duration::from_millis(200);
                    // Anything enqueued while we were not listening is picked up by the
                    // waiters' slow poll; wake them now too, to be prompt after a reconnect.
                    wakeup.notify(&Stage::ALL);
                    loop {
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            n = listener.try_recv() => match n {
                                Ok(Some(n)) => {
                                    // "stage" wakes every waiter, "stage:one" one of them.
                                    match n.payload().split_once(':') {
                                        Some((s, "one")) => {
                                            if let Some(s) = Stage::parse(s) {
                                                wakeup.notify_one(&[s]);
                                            }
                                        }
                                        _ => {
                                            if let Some(s) = Stage::parse(n.payload()) {
                                                wakeup.notify(&[s]);
                                            }
                                        }
                                    }
                                }
                                Ok(None) => {
                                    tracing::warn!("LISTEN connection lost; reconnecting");
                                    break;
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, "LISTEN receive failed; reconnecting");
                                    break;
                                }
                            }
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot connect LISTEN session"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}
