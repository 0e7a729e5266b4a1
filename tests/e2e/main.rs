//! End-to-end suite: real control plane (SQLite and PostgreSQL), real agent processes, a
//! local HTTP server serving videos made by ffmpeg, real ffmpeg and yt-dlp. Expected frame
//! numbers and timestamps are literal values worked out from the fixture recipes in
//! `dataminer_tests::media` and the strategy rules in the agent's `extract::plan`.

#[macro_use]
extern crate dataminer_tests;

mod children;
mod harness;
mod lifecycle;
#[cfg(feature = "models")]
mod model_failures;
#[cfg(feature = "models")]
mod model_rules;
#[cfg(feature = "models")]
mod models;
mod pipeline;
mod protocol;
mod sources;
mod ssrf;
mod strategies;
