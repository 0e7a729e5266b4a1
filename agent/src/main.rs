//! The dataminer agent — a placeholder until the agent issue lands: it says so and exits
//! with a failure status, so nothing mistakes it for a worker that is running.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "dataminer agent {}: not implemented yet; it speaks protocol {} once it lands",
        env!("CARGO_PKG_VERSION"),
        dataminer_wire::PROTOCOL_VERSION
    );
    ExitCode::from(2)
}
