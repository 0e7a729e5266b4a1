//! Child processes (ffmpeg, ffprobe, yt-dlp) that never outlive the agent, not even after
//! `kill -9`, and whose own children (yt-dlp's ffmpeg) die with them.
//!
//! Every tool runs under a tiny *supervisor*: the agent's own binary re-executed as
//! `/proc/self/exe --dataminer-supervise <tool> <args…>` (each binary's `main` calls
//! [`supervisor_main`] before anything else). The chain is
//!
//! ```text
//! agent ──lifeline pipe (supervisor's stdin)──► supervisor ──► tool (own process group) ──► grandchildren
//! ```
//!
//! - The agent holds the write end of a pipe whose read end is the supervisor's stdin and
//!   never writes to it. When the agent dies — however it dies — the kernel closes that end
//!   and the supervisor reads EOF. Dropping the [`Lifeline`] does the same on purpose (a
//!   stopped task). A pipe is used rather than `PR_SET_PDEATHSIG` on the supervisor because
//!   the death signal fires when the *thread* that spawned the child exits, and the agent
//!   spawns from whatever runtime thread it is on.
//! - On EOF the supervisor kills the tool's whole process group (the tool is started as a
//!   group leader; yt-dlp's ffmpeg and ffprobe inherit the group). The supervisor is a
//!   child subreaper (`PR_SET_CHILD_SUBREAPER`), so any descendant that left the group is
//!   re-parented to it once its parent dies; before exiting it kills and reaps every child
//!   it has until none is left, so when the supervisor has exited, nothing below it lives.
//! - The tool also gets `PR_SET_PDEATHSIG(SIGKILL)`, spawned from the supervisor's only
//!   thread: should the supervisor itself be killed (OOM), the tool still dies with it.
//! - The group is killed while the tool is an unreaped zombie (`waitid(WNOWAIT)`), so its
//!   process-group id cannot have been reused by an unrelated process.
//!
//! The supervisor passes stdout and stderr straight through (the tool inherits them) and
//! exits with the tool's status, so callers read a supervised tool like the tool itself.

use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag};
use nix::unistd::{getpid, getppid, Pid};

/// The first argument that makes an agent binary a supervisor.
pub const SUPERVISE_FLAG: &str = "--dataminer-supervise";

/// Exit code of a supervisor that could not start its tool (the shell's "command not found").
const CANNOT_RUN: i32 = 127;

/// Runs the supervisor when this process was started as one, returning its exit code;
/// `None` for a normal start. Call it first in `main`, before any runtime starts threads.
pub fn supervisor_main() -> Option<i32> {
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() != Some(OsStr::new(SUPERVISE_FLAG)) {
        return None;
    }
    let Some(program) = args.next() else {
        eprintln!("{SUPERVISE_FLAG}: no program given");
        return Some(CANNOT_RUN);
    };
    Some(supervise(&program, args.collect()))
}

/// A `std` command that runs `program` under a supervisor. The caller adds arguments and
/// stdout/stderr; stdin is the lifeline (piped) and must stay that way. Fails with ENOENT
/// when `program` cannot be found, as spawning it directly would.
pub fn std_command(program: &Path) -> io::Result<std::process::Command> {
    let resolved = resolve(program)?;
    let mut cmd = std::process::Command::new("/proc/self/exe");
    cmd.arg(SUPERVISE_FLAG).arg(resolved).stdin(Stdio::piped());
    // Its own process group: a terminal's Ctrl-C to the agent's group must not kill the
    // supervisor before it has killed its tool's group (the agent shuts down by itself).
    cmd.process_group(0);
    Ok(cmd)
}

/// A tokio command that runs `program` under a supervisor; see [`std_command`].
pub fn command(program: &Path) -> io::Result<tokio::process::Command> {
    let mut cmd = tokio::process::Command::from(std_command(program)?);
    // Never SIGKILL the supervisor: it could not kill its tool's group then. Dropping the
    // lifeline stops everything instead.
    cmd.kill_on_drop(false);
    Ok(cmd)
}

/// The agent's end of a supervisor's lifeline; dropping it kills the tool and everything
/// the tool started.
#[derive(Debug)]
pub struct Lifeline(#[allow(dead_code)] OwnedFd);

impl Lifeline {
    /// Takes the lifeline out of a freshly spawned `std` supervisor.
    pub fn take_std(child: &mut std::process::Child) -> io::Result<Self> {
        let stdin = child.stdin.take().ok_or_else(|| io::Error::other("supervisor spawned without a lifeline"))?;
        Ok(Lifeline(OwnedFd::from(stdin)))
    }

    /// Takes the lifeline out of a freshly spawned tokio supervisor.
    pub fn take_tokio(child: &mut tokio::process::Child) -> io::Result<Self> {
        let stdin = child.stdin.take().ok_or_else(|| io::Error::other("supervisor spawned without a lifeline"))?;
        Ok(Lifeline(stdin.into_owned_fd()?))
    }
}

/// A supervised tool on the tokio runtime. Dropping it kills the tool's process tree
/// (asynchronously); [`Child::kill`] does so and waits until all of it is gone.
#[derive(Debug)]
pub struct Child {
    pub inner: tokio::process::Child,
    lifeline: Option<Lifeline>,
}

impl Child {
    pub fn spawn(cmd: &mut tokio::process::Command) -> io::Result<Self> {
        let mut inner = cmd.spawn()?;
        let lifeline = Lifeline::take_tokio(&mut inner)?;
        Ok(Self { inner, lifeline: Some(lifeline) })
    }

    /// Waits for the tool to exit by itself.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        self.inner.wait().await
    }

    /// Kills the tool and its descendants; returns when the supervisor has reaped them all.
    pub async fn kill(&mut self) -> io::Result<ExitStatus> {
        self.lifeline.take();
        self.inner.wait().await
    }

    /// Waits for the tool, collecting the stdout and stderr that were piped.
    pub async fn output(self) -> io::Result<std::process::Output> {
        let _lifeline = self.lifeline;
        self.inner.wait_with_output().await
    }
}

/// `program` as the supervisor will exec it: a path with a `/` as given, a bare name looked
/// up in `PATH` here, so that a missing tool fails at spawn time as it always did.
fn resolve(program: &Path) -> io::Result<PathBuf> {
    let enoent = || io::Error::from_raw_os_error(nix::libc::ENOENT);
    if program.as_os_str().is_empty() {
        return Err(enoent());
    }
    if program.components().count() > 1 || program.is_absolute() {
        return if is_executable(program) { Ok(program.to_path_buf()) } else { Err(enoent()) };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| is_executable(p)).ok_or_else(enoent)
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The supervisor: start the tool, watch the lifeline, and leave nothing behind.
fn supervise(program: &OsStr, args: Vec<OsString>) -> i32 {
    let me = getpid();
    // Orphans of the tool's descendants are re-parented here, where the final sweep finds them.
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        eprintln!("supervisor: cannot become a child subreaper: {e}");
    }
    let mut cmd = std::process::Command::new(program);
    cmd.args(args).stdin(Stdio::null()).process_group(0);
    set_parent_death_signal(&mut cmd, me);
    // Spawned while this process has a single thread (the lifeline thread starts after).
    let mut tool = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot run {}: {e}", Path::new(program).display());
            return CANNOT_RUN;
        }
    };
    let group = Pid::from_raw(tool.id() as i32);
    // `true` once the tool is reaped: its group id may be reused from then on, so nobody
    // may signal it any more.
    let reaped = Arc::new(Mutex::new(false));
    let lifeline_closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let (reaped, closed) = (reaped.clone(), lifeline_closed.clone());
        std::thread::spawn(move || {
            wait_for_eof(&mut io::stdin().lock());
            closed.store(true, std::sync::atomic::Ordering::SeqCst);
            let g = reaped.lock().unwrap_or_else(|e| e.into_inner());
            if !*g {
                let _ = killpg(group, Signal::SIGKILL);
            }
        });
    }
    // Wait until the tool has exited without reaping it, so its group id stays ours.
    while let Err(nix::errno::Errno::EINTR) = waitid(Id::Pid(group), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {}
    let status = {
        let mut g = reaped.lock().unwrap_or_else(|e| e.into_inner());
        // Whatever the tool left running in its group goes with it.
        let _ = killpg(group, Signal::SIGKILL);
        let s = tool.wait();
        *g = true;
        s
    };
    sweep_children(me);
    if lifeline_closed.load(std::sync::atomic::Ordering::SeqCst) {
        return 128 + Signal::SIGKILL as i32;
    }
    exit_code(status)
}

/// `PR_SET_PDEATHSIG(SIGKILL)` in the tool: it dies if the supervisor is killed outright.
fn set_parent_death_signal(cmd: &mut std::process::Command, supervisor: Pid) {
    // SAFETY: the closure runs in the forked child before exec. It only makes two system
    // calls that are async-signal-safe (prctl, getppid), allocates nothing and takes no lock;
    // and the supervisor forks while it has a single thread. Named in conventions.md as the
    // one allowed spot for `prctl(PR_SET_PDEATHSIG)`.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)?;
            // The supervisor died before the death signal was armed: do not start orphaned.
            if getppid() != supervisor {
                return Err(io::Error::other("supervisor exited before the tool started"));
            }
            Ok(())
        });
    }
}

/// Reads until EOF (or an error other than an interruption): the agent closed the lifeline.
fn wait_for_eof(r: &mut impl Read) {
    let mut buf = [0u8; 64];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Kills and reaps every child of this process until it has none: a subreaper with no
/// children has no descendants left.
fn sweep_children(me: Pid) {
    loop {
        let kids: Vec<Pid> = children_of(me.as_raw()).into_iter().map(Pid::from_raw).collect();
        if kids.is_empty() {
            return;
        }
        for k in &kids {
            let _ = kill(*k, Signal::SIGKILL);
        }
        for k in kids {
            let _ = waitpid(k, None);
        }
    }
}

/// The processes whose parent is `parent`, from `/proc/<pid>/stat`.
pub fn children_of(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|pid| proc_stat(*pid).is_some_and(|s| s.ppid == parent))
        .collect()
}

/// `pid` and all its descendants alive now (a snapshot).
pub fn process_tree(pid: i32) -> Vec<i32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        all.extend(children_of(all[i]));
        i += 1;
    }
    all
}

/// The fields of `/proc/<pid>/stat` the agent and its tests look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// `R`, `S`, `D`, `Z` (zombie), …
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
}

/// Reads `/proc/<pid>/stat`; `None` when the process is gone.
pub fn proc_stat(pid: i32) -> Option<ProcStat> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid pgrp …": comm may hold spaces and parentheses.
    let rest = &s[s.rfind(')')? + 1..];
    let mut it = rest.split_whitespace();
    let state = it.next()?.chars().next()?;
    let ppid = it.next()?.parse().ok()?;
    let pgrp = it.next()?.parse().ok()?;
    Some(ProcStat { state, ppid, pgrp })
}

fn exit_code(status: io::Result<ExitStatus>) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => c,
            (None, Some(sig)) => 128 + sig,
            _ => 1,
        },
        Err(e) => {
            eprintln!("supervisor: waiting for the tool: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_like_exec() {
        assert!(resolve(Path::new("sh")).is_ok_and(|p| p.is_absolute()));
        let e = resolve(Path::new("no-such-tool-xyz")).expect_err("missing");
        assert_eq!(e.raw_os_error(), Some(nix::libc::ENOENT));
        assert!(resolve(Path::new("/nonexistent/ffmpeg")).is_err());
    }

    #[test]
    fn reads_proc_stat() {
        let s = proc_stat(std::process::id() as i32).expect("own stat");
        assert_eq!(s.ppid, getppid().as_raw());
        assert!(proc_stat(i32::MAX).is_none());
    }
}
