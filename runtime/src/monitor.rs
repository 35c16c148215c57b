//! The daemon's side of `rootstock-monitor` and the protocol both sides share: the command
//! line, the "created" report on the monitor's stdout, and the files it leaves in the
//! container's run directory.
//!
//! ```text
//! daemon ──spawn──▶ monitor (stage 1) ──fork──▶ monitor (stage 2: setsid, subreaper)
//!    │ waits for stage 1 (exits at once)             │ runs `<runtime> create`, reports
//!    │◀──────── "ok <monitor pid> <init pid>" ───────┘ then owns stdio, logs, waits for init
//! ```
//! Stage 2 is nobody's child the daemon must reap, and in its own session: a SIGKILL of
//! the daemon (or its process group) does not reach it.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::util;

pub use crate::monitor_proto::*;

/// Identity of a running monitor: pid plus start time, so a reused pid is never mistaken
/// for it after a daemon restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessIdentity {
    /// Process id.
    pub pid: i32,
    /// `/proc/<pid>/stat` field 22.
    pub start_time: u64,
}

impl ProcessIdentity {
    /// Whether that very process is still alive (and not a zombie).
    pub fn is_alive(&self) -> bool {
        util::process_matches(self.pid, self.start_time)
    }
}

/// What a successful `create` through the monitor yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Created {
    /// The monitor.
    pub monitor: ProcessIdentity,
    /// The container's init (waiting in `runc init` until `start`).
    pub init_pid: i32,
}

/// Runs the monitor, which runs `<runtime> create`, and waits (up to `timeout`) for its
/// report. `Err(message)` carries the runtime's own error (e.g. the executable is missing).
/// `runtime_copy` is the runtime's sealed copy, passed as the monitor's stdin when
/// `args.runtime` is [`RUNTIME_FROM_STDIN`] (stdin, not an fd number of our choosing: std
/// spawns through posix_spawn only without a pre-exec hook, and a fork of the daemon copies
/// its page tables and write-protects its heap).
pub fn spawn(
    monitor_bin: &Path,
    args: &MonitorArgs,
    runtime_copy: Option<&OwnedFd>,
    timeout: Duration,
) -> Result<Created, String> {
    let (mut reader, writer) = io::pipe().map_err(|e| format!("pipe: {e}"))?;
    let stderr = File::create(args.run_dir.join(MONITOR_LOG_FILE))
        .map_err(|e| format!("create {MONITOR_LOG_FILE}: {e}"))?;
    let mut cmd = Command::new(monitor_bin);
    let stdin = match runtime_copy {
        Some(copy) => Stdio::from(
            copy.try_clone()
                .map_err(|e| format!("dup the runtime's sealed copy: {e}"))?,
        ),
        None => Stdio::null(),
    };
    cmd.args(args.to_args())
        .stdin(stdin)
        .stdout(writer)
        .stderr(stderr);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", monitor_bin.display()))?;
    // The Command holds the parent's copy of the pipe's write end until dropped; without
    // this the read below would never see EOF.
    drop(cmd);
    // Stage 1 forks and exits at once; reaping it here leaves no zombie behind.
    let status = child.wait().map_err(|e| format!("wait for monitor: {e}"))?;
    rootstock_fsutil::failpoint::hit("container.monitor-spawned");
    let report = read_report(&mut reader, timeout)?;
    let report = report.trim_end();
    if let Some(rest) = report.strip_prefix("ok ") {
        let mut it = rest.split_whitespace().map(str::parse::<i32>);
        if let (Some(Ok(pid)), Some(Ok(init_pid))) = (it.next(), it.next()) {
            let start_time = util::process_start_time(pid)
                .map_err(|e| format!("monitor {pid} vanished after create: {e}"))?;
            return Ok(Created {
                monitor: ProcessIdentity { pid, start_time },
                init_pid,
            });
        }
    }
    if let Some(msg) = report.strip_prefix("error ") {
        return Err(msg.to_owned());
    }
    let log = std::fs::read_to_string(args.run_dir.join(MONITOR_LOG_FILE)).unwrap_or_default();
    Err(format!(
        "monitor failed ({status}) without a report: {}",
        log.trim()
    ))
}

fn read_report(reader: &mut io::PipeReader, timeout: Duration) -> Result<String, String> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no report from the monitor within {timeout:?}"));
        }
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(reader.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(format!("poll monitor pipe: {e}")),
        }
        match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read monitor pipe: {e}")),
        }
        if buf.len() > 64 * 1024 {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Asks the monitor to reopen the container's log file (after kubelet rotated it).
pub fn request_log_reopen(monitor: &ProcessIdentity) -> io::Result<()> {
    if !monitor.is_alive() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "monitor is not running",
        ));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(monitor.pid),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .map_err(io::Error::from)
}
