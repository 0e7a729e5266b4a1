//! The agent's command line, as a binary of the test crate so that integration tests can
//! start real agent processes (`CARGO_BIN_EXE_dm-agent`) built from the current sources.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    dataminer_agent::cli::run().await
}
