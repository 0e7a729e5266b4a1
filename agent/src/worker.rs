//! The agent's work loop. It registers (retrying with capped, jittered backoff while the
//! control plane is away), then runs one lease loop per served stage: each waits for a free
//! slot of its stage's concurrency limit, long-polls for up to that many tasks and runs each
//! with a heartbeat beside it. A heartbeat answered 409 (lease lost) or `cancelled` stops
//! the task and its children. On shutdown the loops stop leasing at once; running tasks get
//! the grace period to finish, then are stopped (ffmpeg killed) and released, so their next
//! attempt starts without waiting for the lease to expire.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dataminer_wire::{LeaseRequest, LeasedTask, RegisterAgentRequest, Stage, StageResult, TaskState, PROTOCOL_VERSION};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backoff::Backoff;
use crate::client::{ClientError, ControlPlane};
use crate::config::Config;
use crate::error::TaskError;
use crate::health::Health;
use crate::stages::{self, Progress, StageContext};

const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(10);
/// A lease loop waiting for a free slot still ticks this often (liveness).
const SLOT_WAIT: Duration = Duration::from_secs(5);
/// A stopped stage gets this long to kill and reap its children before it is dropped.
const STAGE_STOP_WAIT: Duration = Duration::from_secs(5);
/// After the grace period, stopped tasks get this long to release their leases.
const RELEASE_WINDOW: Duration = Duration::from_secs(10);

/// Why a task was stopped from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReason {
    LeaseLost,
    Cancelled,
    Shutdown,
}

#[derive(Debug)]
pub struct Worker {
    ctx: StageContext,
    client: ControlPlane,
    health: Arc<Health>,
    agent_id: AtomicI64,
    capabilities: Vec<String>,
    heartbeat_interval: Mutex<Duration>,
    /// Serialises re-registration when several loops find the agent unknown at once.
    register_lock: tokio::sync::Mutex<()>,
    /// Takes the data root out of reported errors.
    scrubber: stages::RootScrubber,
}

impl Worker {
    pub fn new(ctx: StageContext, client: ControlPlane, health: Arc<Health>, capabilities: Vec<String>) -> Arc<Self> {
        let scrubber = stages::RootScrubber::new(&ctx.config.data_root);
        Arc::new(Self {
            scrubber,
            ctx,
            client,
            health,
            agent_id: AtomicI64::new(0),
            capabilities,
            heartbeat_interval: Mutex::new(Duration::from_secs(10)),
            register_lock: tokio::sync::Mutex::new(()),
        })
    }

    fn config(&self) -> &Config {
        &self.ctx.config
    }

    /// Registers, retrying until it succeeds or `stop` fires. A refusal (bad token, protocol
    /// version) is an error: retrying cannot fix configuration.
    pub async fn register(&self, stop: &CancellationToken) -> Result<bool, ClientError> {
        let _g = self.register_lock.lock().await;
        let cfg = self.config();
        let req = RegisterAgentRequest {
            name: cfg.agent_name(),
            node: cfg.node.clone(),
            stages: cfg.stages.clone(),
            capabilities: self.capabilities.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            protocol_version: PROTOCOL_VERSION,
        };
        let mut backoff = Backoff::new(BACKOFF_BASE, BACKOFF_CAP);
        loop {
            for s in &cfg.stages {
                self.health.tick(*s);
            }
            match self.client.register(&req).await {
                Ok(r) => {
                    self.agent_id.store(r.agent_id, Ordering::Relaxed);
                    let hb = cfg.heartbeat_interval_ms.unwrap_or(r.heartbeat_interval_ms).max(10);
                    *self.heartbeat_interval.lock().unwrap_or_else(|e| e.into_inner()) = Duration::from_millis(hb);
                    self.health.set_registered(true);
                    self.health.set_reachable(true);
                    self.ctx.metrics.control_plane_up.set(1);
                    tracing::info!(agent_id = r.agent_id, name = %req.name, capabilities = ?req.capabilities, "registered");
                    return Ok(true);
                }
                Err(e @ ClientError::Unreachable { .. }) => {
                    self.unreachable();
                    let d = e.retry_delay(&mut backoff);
                    tracing::warn!(error = %e, retry_in_ms = d.as_millis() as u64, "cannot register; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return Ok(false),
                        _ = tokio::time::sleep(d) => {}
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn unreachable(&self) {
        self.health.set_reachable(false);
        self.ctx.metrics.control_plane_up.set(0);
    }

    fn reachable(&self) {
        self.health.set_reachable(true);
        self.ctx.metrics.control_plane_up.set(1);
    }

    fn heartbeat_interval(&self) -> Duration {
        *self.heartbeat_interval.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Leases and runs tasks of `stage` until `leasing` fires. Task runners are spawned on
    /// `tracker`; `hard_stop` stops them (after the shutdown grace).
    pub async fn lease_loop(
        self: Arc<Self>,
        stage: Stage,
        leasing: CancellationToken,
        hard_stop: CancellationToken,
        tracker: TaskTracker,
    ) {
        let cfg = self.config();
        let slots = Arc::new(Semaphore::new(cfg.concurrency(stage) as usize));
        let mut backoff = Backoff::new(BACKOFF_BASE, BACKOFF_CAP);
        loop {
            self.health.tick(stage);
            let first = tokio::select! {
                _ = leasing.cancelled() => break,
                p = tokio::time::timeout(SLOT_WAIT, slots.clone().acquire_owned()) => match p {
                    Ok(Ok(p)) => p,
                    Ok(Err(_)) => break,
                    Err(_) => continue, // all slots busy; tick and wait again
                },
            };
            let mut permits = vec![first];
            while permits.len() < cfg.lease_batch as usize {
                match slots.clone().try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                }
            }
            let req = LeaseRequest {
                agent_id: self.agent_id.load(Ordering::Relaxed),
                stages: vec![stage],
                max_tasks: permits.len() as u32,
                wait_ms: cfg.lease_wait_ms,
            };
            // The long poll is not dropped on shutdown: the control plane may commit a lease
            // for us at any moment of it, and a dropped answer would leave those tasks
            // orphaned until their lease expires, an attempt lost. It ends within its wait.
            let resp = self.client.lease(&req).await;
            if leasing.is_cancelled() {
                if let Ok(r) = resp {
                    for task in r.tasks {
                        self.release(&task).await;
                        tracing::info!(task_id = task.task_id, stage = %stage, "leased while shutting down; released");
                    }
                }
                break;
            }
            match resp {
                Ok(r) => {
                    self.reachable();
                    backoff.reset();
                    for task in r.tasks {
                        let Some(permit) = permits.pop() else {
                            // More tasks than asked for: never expected; give it back.
                            tracing::error!(task_id = task.task_id, "control plane returned more tasks than requested");
                            let _ = self.client.release(task.task_id, task.lease_token).await;
                            continue;
                        };
                        let me = self.clone();
                        let hard = hard_stop.clone();
                        tracker.spawn(async move { me.run_task(task, permit, hard).await });
                    }
                }
                Err(e @ ClientError::Unreachable { .. }) => {
                    self.unreachable();
                    let d = e.retry_delay(&mut backoff);
                    tracing::warn!(stage = %stage, error = %e, retry_in_ms = d.as_millis() as u64, "lease failed; retrying");
                    tokio::select! {
                        _ = leasing.cancelled() => break,
                        _ = tokio::time::sleep(d) => {}
                    }
                }
                Err(ClientError::Refused { code, .. }) if code == "agent_not_registered" => {
                    tracing::warn!("the control plane no longer knows this agent; registering again");
                    self.health.set_registered(false);
                    match self.register(&leasing).await {
                        Ok(true) => {}
                        Ok(false) => break,
                        Err(e) => {
                            tracing::error!(error = %e, "registration refused");
                            tokio::select! {
                                _ = leasing.cancelled() => break,
                                _ = tokio::time::sleep(backoff.next_delay()) => {}
                            }
                        }
                    }
                }
                Err(e) => {
                    self.reachable();
                    let d = backoff.next_delay();
                    tracing::error!(stage = %stage, error = %e, retry_in_ms = d.as_millis() as u64, "lease refused");
                    tokio::select! {
                        _ = leasing.cancelled() => break,
                        _ = tokio::time::sleep(d) => {}
                    }
                }
            }
        }
        tracing::info!(stage = %stage, "lease loop stopped");
    }

    /// Runs one task with a heartbeat beside it and reports the outcome.
    async fn run_task(self: Arc<Self>, task: LeasedTask, _permit: OwnedSemaphorePermit, hard_stop: CancellationToken) {
        let stage = task.stage;
        let m = &self.ctx.metrics;
        m.in_flight.with_label_values(&[stage.as_str()]).inc();
        let started = Instant::now();
        let span = tracing::info_span!("task", task_id = task.task_id, stage = %stage, attempt = task.attempt);
        tracing::info!(parent: &span, "task started");

        let cancel = CancellationToken::new();
        let reason: Arc<Mutex<Option<StopReason>>> = Arc::new(Mutex::new(None));
        let progress = Arc::new(Progress::default());
        let lease_deadline = Arc::new(Mutex::new(Instant::now() + Duration::from_millis(task.lease_ttl_ms)));
        let done = CancellationToken::new();
        let hb = tokio::spawn(self.clone().heartbeat_loop(
            task.clone(),
            progress.clone(),
            cancel.clone(),
            reason.clone(),
            lease_deadline.clone(),
            done.clone(),
        ));

        let time_limit = Duration::from_millis(task.time_limit_ms.max(1));
        // The stage runs as its own task so that a panic in it becomes a failure report
        // instead of a lease held until it expires; aborting it drops (and kills) its children.
        let mut work = {
            let (ctx, t, p, c) = (self.ctx.clone(), task.clone(), progress.clone(), cancel.clone());
            tokio::spawn(async move { stages::run(&ctx, &t, p, c).await })
        };
        let outcome = tokio::select! {
            r = &mut work => r.unwrap_or_else(|e| Err(TaskError::retryable(format!("internal error in the {stage} stage: {e}")))),
            _ = hard_stop.cancelled() => {
                set_reason(&reason, StopReason::Shutdown);
                Err(TaskError::Stopped("agent shutting down".into()))
            }
            _ = tokio::time::sleep(time_limit) => {
                Err(TaskError::retryable(format!("time limit of {} s exceeded", time_limit.as_secs())))
            }
        };
        cancel.cancel(); // stops anything the stage left running
        if !work.is_finished() {
            // A stopped stage kills its tools and waits until their supervisors have reaped
            // them all; only then may its directory be touched. One that does not return in
            // time is dropped, which closes the tools' lifelines all the same.
            if tokio::time::timeout(STAGE_STOP_WAIT, &mut work).await.is_err() {
                work.abort();
                let _ = work.await;
            }
        }

        let attempt_dir = stages::data_path(&self.config().data_root, &task.attempt_dir).ok();
        let cleanup = |keep_partial: bool| cleanup_attempt(stage, attempt_dir.clone(), keep_partial);
        let label = match outcome {
            Ok(result) => self.report_success(&task, result, &lease_deadline, &span).await,
            Err(TaskError::Stopped(why)) => {
                let r = reason.lock().unwrap_or_else(|e| e.into_inner()).unwrap_or(StopReason::LeaseLost);
                match r {
                    StopReason::Shutdown => {
                        cleanup(true).await;
                        self.release(&task).await;
                        tracing::info!(parent: &span, "released on shutdown");
                        "released"
                    }
                    StopReason::Cancelled => {
                        cleanup(false).await;
                        tracing::info!(parent: &span, "cancelled by a user; stopped");
                        "cancelled"
                    }
                    StopReason::LeaseLost => {
                        // The attempt can never be accepted; a partial download stays for the
                        // task's next attempt to adopt (or for removal when one succeeds).
                        cleanup(true).await;
                        tracing::warn!(parent: &span, why = %why, "lease lost; stopped");
                        "lease_lost"
                    }
                }
            }
            Err(e) => {
                let retryable = e.is_retryable();
                tracing::warn!(parent: &span, error = %e, retryable, "task failed");
                match self.report_failure(&task, e.to_string(), retryable, &lease_deadline).await {
                    Reported::Cancelled => {
                        cleanup(false).await;
                        tracing::info!(parent: &span, "cancelled by a user while it failed; nothing reported");
                        "cancelled"
                    }
                    r => {
                        // Keep a resumable partial download only for an attempt that will follow.
                        cleanup(retryable && r != Reported::State(TaskState::Dead)).await;
                        if retryable {
                            "failed_retryable"
                        } else {
                            "failed_fatal"
                        }
                    }
                }
            }
        };
        done.cancel();
        let _ = hb.await;
        m.tasks.with_label_values(&[stage.as_str(), label]).inc();
        m.stage_duration.with_label_values(&[stage.as_str(), label]).observe(started.elapsed().as_secs_f64());
        m.in_flight.with_label_values(&[stage.as_str()]).dec();
    }

    async fn heartbeat_loop(
        self: Arc<Self>,
        task: LeasedTask,
        progress: Arc<Progress>,
        cancel: CancellationToken,
        reason: Arc<Mutex<Option<StopReason>>>,
        lease_deadline: Arc<Mutex<Instant>>,
        done: CancellationToken,
    ) {
        let interval = self.heartbeat_interval();
        let mut wait = interval;
        loop {
            tokio::select! {
                _ = done.cancelled() => return,
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let snapshot = progress.snapshot(task.stage);
            match self.client.heartbeat(task.task_id, task.lease_token, Some(snapshot)).await {
                Ok(r) => {
                    self.reachable();
                    wait = interval;
                    if r.cancelled {
                        set_reason(&reason, StopReason::Cancelled);
                        cancel.cancel();
                        return;
                    }
                    *lease_deadline.lock().unwrap_or_else(|e| e.into_inner()) =
                        Instant::now() + Duration::from_millis(r.lease_expires_in_ms);
                }
                Err(e @ ClientError::Unreachable { .. }) => {
                    self.unreachable();
                    let deadline = *lease_deadline.lock().unwrap_or_else(|e| e.into_inner());
                    if Instant::now() >= deadline {
                        // The reaper has requeued it by now; another agent may be running it.
                        tracing::warn!(task_id = task.task_id, error = %e, "lease expired while the control plane was unreachable");
                        set_reason(&reason, StopReason::LeaseLost);
                        cancel.cancel();
                        return;
                    }
                    // Sooner than usual, to renew the lease in time; later when asked to.
                    wait = match e {
                        ClientError::Unreachable { retry_after: Some(d), .. } => d.min(interval),
                        _ => interval / 4,
                    }
                    .max(Duration::from_millis(50));
                }
                Err(ClientError::Cancelled(m)) => {
                    tracing::info!(task_id = task.task_id, message = %m, "heartbeat: the task was cancelled");
                    set_reason(&reason, StopReason::Cancelled);
                    cancel.cancel();
                    return;
                }
                Err(e) => {
                    tracing::warn!(task_id = task.task_id, error = %e, "heartbeat refused; stopping the task");
                    set_reason(&reason, StopReason::LeaseLost);
                    cancel.cancel();
                    return;
                }
            }
        }
    }

    async fn report_success(
        &self,
        task: &LeasedTask,
        result: StageResult,
        lease_deadline: &Mutex<Instant>,
        span: &tracing::Span,
    ) -> &'static str {
        let mut backoff = Backoff::new(BACKOFF_BASE, Duration::from_secs(2));
        loop {
            match self.client.complete(task.task_id, task.lease_token, result.clone()).await {
                Ok(r) => {
                    self.reachable();
                    tracing::info!(parent: span, duplicate = r.duplicate, "task completed");
                    if let Ok(d) = stages::data_path(&self.config().data_root, &task.attempt_dir) {
                        let id = task.task_id;
                        let _ = tokio::task::spawn_blocking(move || remove_sibling_attempts(&d, id)).await;
                    }
                    return "succeeded";
                }
                Err(e @ ClientError::Unreachable { .. }) => {
                    // Also a control plane whose database is down (503 database_unavailable):
                    // retried while the lease lasts, never reported as the task's failure.
                    self.unreachable();
                    let left = lease_deadline
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        tracing::warn!(parent: span, error = %e, "could not report completion before the lease expired");
                        return "lease_lost";
                    }
                    let d = e.retry_delay(&mut backoff).min(left);
                    tracing::info!(parent: span, error = %e, retry_in_ms = d.as_millis() as u64, "completion not accepted yet; retrying");
                    tokio::time::sleep(d).await;
                }
                Err(ClientError::LeaseLost(m)) => {
                    tracing::warn!(parent: span, message = %m, "completion refused: lease lost");
                    return "lease_lost";
                }
                Err(ClientError::Cancelled(m)) => {
                    // A user cancelled the task while it ran: a normal stop, like a heartbeat
                    // saying so. The result is dropped and nothing is reported.
                    tracing::info!(parent: span, message = %m, "cancelled by a user before its completion; result dropped");
                    cleanup_attempt(task.stage, self.attempt_path(task), false).await;
                    return "cancelled";
                }
                Err(e) => {
                    // The result itself was refused (e.g. 422): a bug worth a dead task, not a retry loop.
                    tracing::error!(parent: span, error = %e, "completion refused");
                    let r = self
                        .report_failure(
                            task,
                            format!("result refused by the control plane: {e}"),
                            false,
                            lease_deadline,
                        )
                        .await;
                    cleanup_attempt(task.stage, self.attempt_path(task), false).await;
                    return if r == Reported::Cancelled { "cancelled" } else { "failed_fatal" };
                }
            }
        }
    }

    fn attempt_path(&self, task: &LeasedTask) -> Option<std::path::PathBuf> {
        stages::data_path(&self.config().data_root, &task.attempt_dir).ok()
    }

    /// Reports a failure (its message with paths relative to the data root).
    async fn report_failure(
        &self,
        task: &LeasedTask,
        error: String,
        retryable: bool,
        lease_deadline: &Mutex<Instant>,
    ) -> Reported {
        let error = self.scrubber.scrub(&error);
        let mut backoff = Backoff::new(BACKOFF_BASE, Duration::from_secs(2));
        loop {
            match self.client.fail(task.task_id, task.lease_token, error.clone(), retryable).await {
                Ok(r) => {
                    self.reachable();
                    return Reported::State(r.state);
                }
                Err(ClientError::Cancelled(_)) => return Reported::Cancelled,
                Err(e @ ClientError::Unreachable { .. }) => {
                    self.unreachable();
                    let left = lease_deadline
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        tracing::warn!(task_id = task.task_id, error = %e, "could not report the failure; the reaper will requeue the task");
                        return Reported::Unknown;
                    }
                    tokio::time::sleep(e.retry_delay(&mut backoff).min(left)).await;
                }
                Err(e) => {
                    tracing::warn!(task_id = task.task_id, error = %e, "could not report the failure; the reaper will requeue the task");
                    return Reported::Unknown;
                }
            }
        }
    }

    async fn release(&self, task: &LeasedTask) {
        let deadline = Instant::now() + RELEASE_WINDOW / 2;
        let mut backoff = Backoff::new(BACKOFF_BASE, Duration::from_secs(1));
        loop {
            match self.client.release(task.task_id, task.lease_token).await {
                Ok(()) => return,
                Err(e @ ClientError::Unreachable { .. }) if Instant::now() < deadline => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    tokio::time::sleep(e.retry_delay(&mut backoff).min(left)).await;
                }
                Err(ClientError::Cancelled(_)) => return, // nothing left to give back
                Err(e) => {
                    tracing::warn!(task_id = task.task_id, error = %e, "could not release the task; it returns when its lease expires");
                    return;
                }
            }
        }
    }
}

/// What became of a failure report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reported {
    /// The task's new state (`queued` to be retried, or `dead`).
    State(TaskState),
    /// A user had cancelled the task: nothing was recorded, and nothing needs to be.
    Cancelled,
    /// No answer before the lease ended (the reaper decides) or a refusal.
    Unknown,
}

/// [`cleanup_failed_attempt`] off the runtime's threads (a directory of thousands of frames
/// on a network filesystem).
async fn cleanup_attempt(stage: Stage, dir: Option<std::path::PathBuf>, keep_partial: bool) {
    if let Some(d) = dir {
        let _ = tokio::task::spawn_blocking(move || cleanup_failed_attempt(stage, &d, keep_partial)).await;
    }
}

fn set_reason(reason: &Mutex<Option<StopReason>>, r: StopReason) {
    let mut g = reason.lock().unwrap_or_else(|e| e.into_inner());
    if g.is_none() {
        *g = Some(r);
    }
}

/// After a failure or release: a download that may be resumed keeps its partial file and
/// metadata; everything else in the attempt directory is removed.
fn cleanup_failed_attempt(stage: Stage, dir: &std::path::Path, keep_partial: bool) {
    let resumable = stage == Stage::Download
        && keep_partial
        && dir.join(stages::download::http::PART).is_file()
        && dir.join(stages::download::http::PART_META).is_file();
    if !resumable {
        let _ = std::fs::remove_dir_all(dir);
        return;
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let n = e.file_name();
            if n != stages::download::http::PART && n != stages::download::http::PART_META {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Once an attempt is accepted, the directories of the same task's other attempts (lost
/// leases, orphans) are abandoned for good.
fn remove_sibling_attempts(dir: &std::path::Path, task_id: i64) {
    for d in stages::files::sibling_attempts(dir, task_id) {
        let _ = std::fs::remove_dir_all(d);
    }
}
