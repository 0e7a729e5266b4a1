//! `agent` binary: a thin wrapper around [`dataminer_agent::cli::run`]. A process started as a
//! tool supervisor (see `dataminer_agent::children`) becomes one before any runtime starts.

fn main() -> anyhow::Result<()> {
    if let Some(code) = dataminer_agent::children::supervisor_main() {
        std::process::exit(code);
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(dataminer_agent::cli::run())
}
