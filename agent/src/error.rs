//! How a task attempt ends when it does not succeed. The split between retryable and fatal
//! is the agent's decision, reported to the control plane with the cause: network trouble,
//! a full disk or a time-out may go away on another attempt (or node); a corrupt video, a
//! refused address or an oversized file will not, so retrying them only wastes attempts.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// Worth another attempt (network errors, ENOSPC, server errors, time-outs).
    #[error("{0}")]
    Retryable(String),
    /// Will fail the same way every time (bad input, policy refusal, corrupt media).
    #[error("{0}")]
    Fatal(String),
    /// Stopped from outside (lease lost, user cancel, shutdown); nothing is reported.
    #[error("stopped: {0}")]
    Stopped(String),
}

impl TaskError {
    pub fn retryable(msg: impl Into<String>) -> Self {
        TaskError::Retryable(msg.into())
    }

    pub fn fatal(msg: impl Into<String>) -> Self {
        TaskError::Fatal(msg.into())
    }

    /// Classifies an I/O error: a full disk and transient conditions are retryable, the rest
    /// (permissions, missing paths on the shared root) fatal for this attempt's input.
    pub fn io(context: &str, e: io::Error) -> Self {
        let msg = format!("{context}: {e}");
        if is_transient_io(&e) {
            TaskError::Retryable(msg)
        } else {
            TaskError::Fatal(msg)
        }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, TaskError::Retryable(_))
    }
}

/// An error with its causes (`a: b: c`): reqwest's Display hides the cause that matters,
/// e.g. "connection refused".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// ENOSPC, EDQUOT, interrupted and timed-out operations, and connection failures.
pub fn is_transient_io(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        e.kind(),
        StorageFull
            | QuotaExceeded
            | Interrupted
            | TimedOut
            | WouldBlock
            | ConnectionReset
            | ConnectionAborted
            | ConnectionRefused
            | BrokenPipe
            | UnexpectedEof
            | NotConnected
            | ResourceBusy
            | StaleNetworkFileHandle
    ) || matches!(e.raw_os_error(), Some(28) | Some(122)) // ENOSPC, EDQUOT on older kinds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_is_retryable_and_permission_fatal() {
        assert!(TaskError::io("write", io::Error::from_raw_os_error(28)).is_retryable());
        assert!(TaskError::io("read", io::Error::new(io::ErrorKind::ConnectionReset, "x")).is_retryable());
        assert!(!TaskError::io("open", io::Error::new(io::ErrorKind::PermissionDenied, "x")).is_retryable());
    }
}
