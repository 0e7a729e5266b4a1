//! Building and running the application: the one constructor that `main` and the tests
//! share. `build` validates the config, opens (and migrates) the store and binds the
//! listener; `run_until_stopped` serves until the shutdown token fires (SIGTERM/SIGINT in
//! `main`), with the reaper and — on PostgreSQL — the LISTEN task beside the server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::http::{self, AppState, HttpSettings};
use crate::metrics::Metrics;
use crate::store::{DatabaseLocation, Store, StoreError};
use crate::wakeup::Wakeup;
use crate::{reaper, wakeup};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot open the database: {0}")]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("metrics registry: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("server failed: {0}")]
    Serve(std::io::Error),
}

#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    store: Store,
    state: AppState,
    config: Config,
    shutdown: CancellationToken,
}

impl Application {
    pub async fn build(config: Config) -> Result<Self, StartError> {
        config.validate().map_err(StartError::Config)?;
        let metrics = Metrics::new()?;
        let wakeup = Wakeup::default();
        let store = Store::open(&config.database(), config.store_settings(), wakeup, metrics.clone()).await?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Bind { addr: config.listen, source })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind { addr: config.listen, source })?;
        let shutdown = CancellationToken::new();
        let state = AppState {
            store: store.clone(),
            http: Arc::new(HttpSettings {
                user_token: config.user_token.as_ref().map(|s| s.0.clone()),
                agent_token: config.agent_token.as_ref().map(|s| s.0.clone()),
                max_lease_wait: Duration::from_millis(config.max_lease_wait_ms),
                poll_fallback: Duration::from_millis(config.poll_fallback_ms),
                heartbeat_interval_ms: (config.lease_ttl_ms / 3).max(1),
                max_urls_per_request: config.max_urls_per_request,
                platform_hosts: config.platform_hosts.clone(),
                allow_hosts: config.allow_hosts.clone(),
                body_limit_bytes: config.body_limit_bytes,
                result_body_limit_bytes: config.result_body_limit_bytes,
            }),
            metrics,
            shutdown: shutdown.clone(),
        };
        Ok(Self { listener, addr, store, state, config, shutdown })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn store(&self) -> Store {
        self.store.clone()
    }

    /// Cancel it to stop the server gracefully.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    pub async fn run_until_stopped(self) -> Result<(), StartError> {
        let Application { listener, store, state, config, shutdown, .. } = self;
        let reaper = tokio::spawn(reaper::run(store.clone(), config.reaper_interval(), shutdown.clone()));
        let listen = match config.database() {
            DatabaseLocation::Postgres(url) => {
                Some(tokio::spawn(wakeup::listen_postgres(url, store.wakeup().clone(), shutdown.clone())))
            }
            DatabaseLocation::SqliteFile(_) => None,
        };
        let app = http::app(state);
        let grace = Duration::from_secs(config.shutdown_grace_s);
        let stop = shutdown.clone();
        let server = axum::serve(http::listener::JsonErrorListener(listener), app)
            .with_graceful_shutdown(async move { stop.cancelled().await });
        let result = tokio::select! {
            r = server => r.map_err(StartError::Serve),
            // In-flight requests get `grace` after the signal; then we stop waiting.
            _ = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
                tracing::warn!("shutdown grace period over; dropping remaining connections");
                Ok(())
            }
        };
        shutdown.cancel();
        let _ = reaper.await;
        if let Some(l) = listen {
            let _ = l.await;
        }
        store.close().await;
        result
    }
}
