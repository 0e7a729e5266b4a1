//! The agent's command line, as a binary of the test crate so that integration tests can
//! start real agent processes (`CARGO_BIN_EXE_dm-agent`) built from the current sources.
//! Like the `agent` binary, it becomes a tool supervisor first when started as one.

fn main() -> anyhow::Result<()> {
    if let Some(code) = dataminer_agent::children::supervisor_main() {
        std::process::exit(code);
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(dataminer_agent::cli::run())
}
