//! The daemon's side of `rootstock-monitor` and the protocol both sides share: the command
//! line, the "created" report on the monitor's stdout, and the files it leaves in the
//! container's run directory.
//!
//! ```text
//! daemon ──spawn──▶ monitor (stage 1) ──fork──▶ monitor (stage 2: setsid, subreaper)
//!    │ mounts the rootfs, writes the spec            │ opens the log, binds its sockets
//!    │──────────────── "create" ────────────────────▶│ runs `<runtime> create`, reports
//!    │◀──────── "ok <monitor pid> <init pid>" ───────┘ then owns stdio, logs, waits for init
//! ```
//! The monitor starts before the bundle is ready and waits on its stdout, a socket to the
//! daemon, for the word to run `create`: its exec, its move out of the daemon's cgroups and
//! its fork take as long as the rootfs mount and the spec, which they overlap (#18).
//! If the daemon goes away or gives up first, the monitor reads EOF and exits.
//! Stage 2 is nobody's child the daemon must reap, and in its own session: a SIGKILL of
//! the daemon (or its process group) does not reach it.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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

/// A monitor started ahead of its container's bundle, waiting for [`Starting::create`].
/// Dropped without it, the monitor is told to give up, and its end is awaited, so that
/// nothing of it still writes in the run directory when the caller removes that.
#[derive(Debug)]
pub struct Starting {
    /// Stage 1, reaped once it has forked stage 2 (at once); `None` once told to create,
    /// which is how the drop knows the monitor has its word.
    stage1: Option<Child>,
    /// The monitor's stdout: the word to create goes one way, the report the other.
    channel: UnixStream,
    run_dir: PathBuf,
    timeout: Duration,
}

/// Starts the monitor for `args` (the bundle need not exist yet); `timeout` bounds the wait
/// for its report. `runtime_copy` is the runtime's sealed copy, passed as the monitor's
/// stdin when `args.runtime` is [`RUNTIME_FROM_STDIN`] (stdin, not an fd number of our
/// choosing: std spawns through posix_spawn only without a pre-exec hook, and a fork of the
/// daemon copies its page tables and write-protects its heap).
pub fn start(
    monitor_bin: &Path,
    args: &MonitorArgs,
    runtime_copy: Option<&OwnedFd>,
    timeout: Duration,
) -> Result<Starting, String> {
    let (channel, theirs) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    let stderr = File::create(args.run_dir.join(MONITOR_LOG_FILE))
        .map_err(|e| format!("create {MONITOR_LOG_FILE}: {e}"))?;
    let stdin = match runtime_copy {
        Some(copy) => Stdio::from(
            copy.try_clone()
                .map_err(|e| format!("dup the runtime's sealed copy: {e}"))?,
        ),
        None => Stdio::null(),
    };
    // The Command's copy of the monitor's end is dropped with it: EOF then means the
    // monitor is done with the channel.
    let stage1 = Command::new(monitor_bin)
        .args(args.to_args())
        .stdin(stdin)
        .stdout(OwnedFd::from(theirs))
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", monitor_bin.display()))?;
    Ok(Starting {
        stage1: Some(stage1),
        channel,
        run_dir: args.run_dir.clone(),
        timeout,
    })
}

impl Starting {
    /// Lets the monitor run `<runtime> create` (the bundle is complete) and waits for its
    /// report. `Err(message)` carries the runtime's own error (e.g. the executable is
    /// missing).
    pub fn create(mut self) -> Result<Created, String> {
        // A monitor that already failed has closed its end: its report says why.
        let _ = self.channel.write_all(CREATE_NOW);
        let status = self.reap_stage1();
        rootstock_fsutil::failpoint::hit("container.monitor-spawned");
        let report = read_report(&mut self.channel, self.timeout)?;
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
        let log = std::fs::read_to_string(self.run_dir.join(MONITOR_LOG_FILE)).unwrap_or_default();
        Err(format!(
            "monitor failed ({status}) without a report: {}",
            log.trim()
        ))
    }

    /// Stage 1 forks and exits at once; reaping it leaves no zombie behind.
    fn reap_stage1(&mut self) -> String {
        match self.stage1.take().map(|mut c| c.wait()) {
            Some(Ok(status)) => status.to_string(),
            Some(Err(e)) => format!("wait for monitor: {e}"),
            None => "reaped".into(),
        }
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        if self.stage1.is_none() {
            return;
        }
        // Never told to create: EOF makes it give up; its own EOF says it is gone.
        let _ = self.channel.shutdown(std::net::Shutdown::Write);
        if let Err(e) = read_report(&mut self.channel, self.timeout) {
            tracing::warn!(run_dir = %self.run_dir.display(), "monitor told to give up: {e}");
        }
        self.reap_stage1();
    }
}

fn read_report(reader: &mut UnixStream, timeout: Duration) -> Result<String, String> {
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
