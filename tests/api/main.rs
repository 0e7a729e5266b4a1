//! The behavioural suite: every case is an `async fn(Db)` written once and run against the
//! embedded SQLite file and against PostgreSQL (`both!` generates one test per backend).

mod auth;
mod capabilities;
mod errors;
mod expiry;
mod extractions;
mod frames;
mod leases;
mod lifecycle;
mod openapi;
mod ops;
mod pipeline;
mod process;
mod projects;
mod races;
mod reaper;
mod safety;
mod schema;
mod transitions;
mod videos;
mod wakeups;
