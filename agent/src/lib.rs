//! The dataminer agent: a stateless worker that registers with the control plane, leases
//! tasks of the stages it serves, runs them (download, extract) against the shared data
//! root, and reports results. It never touches the database. `cli::run` is the binary.

pub mod backoff;
pub mod capabilities;
pub mod children;
pub mod cli;
pub mod client;
pub mod config;
pub mod device_memory;
pub mod error;
pub mod health;
pub mod metrics;
pub mod models;
pub mod stages;
pub mod worker;
