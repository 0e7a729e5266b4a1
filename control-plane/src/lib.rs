//! The dataminer control plane: the single source of truth for projects, videos and tasks,
//! and the lease protocol agents use to do the work. `main.rs` is a thin wrapper around
//! [`startup::Application`], which the integration tests build the same way.

pub mod cli;
pub mod config;
pub mod http;
pub mod metrics;
pub mod reaper;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod urls;
pub mod wakeup;
