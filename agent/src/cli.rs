//! The `agent` command line: parse and validate the configuration, set up JSON logs, serve
//! the health and metrics port, register, work until SIGTERM/SIGINT, then shut down within
//! the grace period and exit 0. This is the binary edge, so errors are `anyhow`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing_subscriber::EnvFilter;

use crate::client::ControlPlane;
use crate::config::{Config, LogFormat};
use crate::health::{self, Health};
use crate::metrics::Metrics;
use crate::stages::download::guard::Guard;
use crate::stages::StageContext;
use crate::worker::Worker;

pub async fn run() -> anyhow::Result<()> {
    let config = Config::parse();
    init_logging(config.log_format);
    config.validate().map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    tracing::info!(config = ?config, "starting agent");
    let shutdown = CancellationToken::new();
    let s = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown signal received: no new leases; running tasks get the grace period");
        s.cancel();
    });
    run_until(config, shutdown).await
}

/// Runs the agent until `shutdown` fires, then drains and returns.
pub async fn run_until(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_root)
        .with_context(|| format!("create data root {}", config.data_root.display()))?;
    let config = Arc::new(config);
    let metrics = Metrics::new().context("metrics")?;
    let _ = metrics.data_root.set(config.data_root.clone());
    // A loop that has not turned for three long polls is hung.
    let stall = Duration::from_millis(config.lease_wait_ms * 3).max(Duration::from_secs(60));
    let health = Health::new(stall);
    let listener = tokio::net::TcpListener::bind(config.metrics_listen)
        .await
        .with_context(|| format!("bind the health/metrics port {}", config.metrics_listen))?;
    tracing::info!(addr = %listener.local_addr()?, "health and metrics port");
    let http_stop = CancellationToken::new();
    let server =
        tokio::spawn(health::serve(listener, health::router(health.clone(), metrics.clone()), http_stop.clone()));

    let client = ControlPlane::new(
        &config.control_plane,
        config.agent_token.as_ref().map(|t| t.0.clone()),
        Duration::from_secs(30),
    )?;
    #[allow(unused_mut)] // models builds add the packages they serve
    let mut capabilities = crate::capabilities::probe(&config).await;
    #[allow(unused_mut)] // set only in models builds
    let mut ctx = StageContext::new(config.clone(), Guard::system(&config.allow_hosts), metrics.clone());
    #[cfg(feature = "models")]
    {
        let (registry, served) = model_registry(&config, &metrics).await?;
        if let Some(index) =
            registry.as_ref().and_then(|r| r.device_name().strip_prefix("cuda:").and_then(|n| n.parse().ok()))
        {
            tokio::spawn(crate::device_memory::watch(index, metrics.clone(), shutdown.clone()));
        }
        capabilities.extend(served.iter().map(|m| format!("model:{m}")));
        ctx.models = registry;
        ctx.control_plane = Some(client.clone());
    }
    let worker = Worker::new(ctx, client, health, capabilities);

    let registered = worker.register(&shutdown).await.context("registration refused by the control plane")?;
    let tracker = TaskTracker::new();
    let hard_stop = CancellationToken::new();
    let grace = config.shutdown_grace();
    let mut grace_ends = tokio::time::Instant::now() + grace;
    if registered {
        let loops: Vec<_> = config
            .stages
            .iter()
            .map(|s| tokio::spawn(worker.clone().lease_loop(*s, shutdown.clone(), hard_stop.clone(), tracker.clone())))
            .collect();
        let mut all = std::pin::pin!(futures::future::join_all(loops));
        let finished = tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = &mut all => true, // only if a loop died: they stop on shutdown
        };
        // The grace period counts from the signal, not from the end of the lease loops'
        // last long polls (which they finish, releasing what they bring): running tasks
        // are stopped when it ends, whether or not those polls have answered by then.
        grace_ends = tokio::time::Instant::now() + grace;
        let hard = hard_stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(grace_ends).await;
            hard.cancel();
        });
        if !finished {
            all.await;
        }
    }
    // Leasing has stopped; running tasks get the grace period, then are stopped and released.
    tracker.close();
    if tokio::time::timeout_at(grace_ends, tracker.wait()).await.is_err() {
        tracing::warn!(
            grace_s = grace.as_secs(),
            running = tracker.len(),
            "grace period over: stopping and releasing running tasks"
        );
        hard_stop.cancel();
        if tokio::time::timeout(Duration::from_secs(15), tracker.wait()).await.is_err() {
            tracing::error!("some tasks did not stop in time; their leases expire on their own");
        }
    }
    http_stop.cancel();
    let _ = server.await;
    tracing::info!("agent stopped");
    Ok(())
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = match format {
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_env_filter(filter)
            .try_init(),
        LogFormat::Pretty => tracing_subscriber::fmt().with_env_filter(filter).try_init(),
    };
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// The model registry when this agent serves a model stage, and the packages it serves: the
/// device is chosen (and logged) and every package verified, loaded and run once now, so
/// `--device cuda` on a build without CUDA or a broken package stops the agent at start.
#[cfg(feature = "models")]
async fn model_registry(
    config: &crate::config::Config,
    metrics: &Metrics,
) -> anyhow::Result<(Option<std::sync::Arc<crate::models::registry::Registry>>, Vec<String>)> {
    use crate::models::registry::{Registry, RunSettings};
    if !config.stages.iter().any(|s| s.is_project_stage()) {
        return Ok((None, Vec::new()));
    }
    let settings = RunSettings {
        oom_above: config.test_model_oom_above,
        delay: Duration::from_millis(config.test_model_delay_ms),
        observer: Some(Arc::new(metrics.clone())),
    };
    let r = Registry::new(config.models_dir.clone(), &config.device, settings).map_err(|e| anyhow::anyhow!(e))?;
    let names =
        if config.models.is_empty() { r.available().map_err(|e| anyhow::anyhow!(e))? } else { config.models.clone() };
    if names.is_empty() {
        tracing::warn!(models_dir = %config.models_dir.display(), "no model packages to serve: model tasks will wait for another agent");
    }
    let r = Arc::new(r);
    let (r2, n2) = (r.clone(), names.clone());
    tokio::task::spawn_blocking(move || r2.serve(&n2))
        .await
        .context("model start-up check")?
        .map_err(|e| anyhow::anyhow!("refusing to start: {e}"))?;
    tracing::info!(
        device = %r.device_name(),
        cuda_linked = crate::models::torch::cuda_linked(),
        cuda_devices = tch::Cuda::device_count(),
        models_dir = %config.models_dir.display(),
        models = ?names,
        "model stages run on this device; packages verified and run once"
    );
    Ok((Some(r), names))
}
