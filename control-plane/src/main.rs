//! `control-plane` binary: a thin wrapper around [`dataminer_control_plane::cli::run`].

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    dataminer_control_plane::cli::run().await
}
