//! The `control-plane` command line: parse config, set up logging, serve until SIGTERM or
//! SIGINT (or run a one-shot subcommand). This is the binary edge, so errors are `anyhow`.

use crate::config::{Cli, Command};
use crate::startup::Application;
use crate::{http, store, telemetry};
use anyhow::Context;
use clap::Parser;

/// Runs the `control-plane` command line (shared by the binary and the test harness binary).
pub async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = cli.config;
    if let Some(Command::Openapi) = cli.command {
        println!("{}", http::openapi().to_pretty_json().context("render OpenAPI")?);
        return Ok(());
    }
    let _telemetry = telemetry::init(config.log_format, config.otlp_endpoint.as_deref())?;
    config.validate().map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    tracing::info!(config = ?config, "starting control plane");
    if let Some(Command::Migrate) = cli.command {
        let s = store::Store::open(
            &config.database(),
            config.store_settings(),
            Default::default(),
            crate::metrics::Metrics::new()?,
        )
        .await?;
        s.close().await;
        tracing::info!("migrations applied");
        return Ok(());
    }
    let app = Application::build(config).await?;
    tracing::info!(addr = %app.local_addr(), backend = app.store().backend().name(), "listening");
    let token = app.shutdown_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown signal received; finishing in-flight requests");
        token.cancel();
    });
    app.run_until_stopped().await?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
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
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
