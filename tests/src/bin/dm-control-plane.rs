//! The control plane's command line, as a binary of the test crate so that integration
//! tests can start real control-plane processes (`CARGO_BIN_EXE_dm-control-plane`).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    dataminer_control_plane::cli::run().await
}
