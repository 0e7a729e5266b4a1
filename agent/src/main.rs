//! `agent` binary: a thin wrapper around [`dataminer_agent::cli::run`].

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    dataminer_agent::cli::run().await
}
