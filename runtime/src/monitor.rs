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

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::util;

/// `<runtime> create --pid-file`: the container init's host pid.
pub const INIT_PID_FILE: &str = "init.pid";
/// The OCI runtime's own log (`--log`, JSON lines), kept out of the container's log.
pub const RUNTIME_LOG_FILE: &str = "runtime.log";
/// The console socket the OCI runtime sends a terminal's pty master to.
pub const CONSOLE_SOCKET_FILE: &str = "console.sock";
/// The monitor's own stderr.
pub const MONITOR_LOG_FILE: &str = "monitor.log";
/// The socket a client writes the container's stdin to (CRI `stdin`; see [`crate::stdin`]).
/// Relative to the run directory, the monitor's working directory: a unix socket path is
/// limited to 108 bytes.
pub const STDIN_SOCKET_FILE: &str = "stdin.sock";
/// The socket clients attach to the container's output on (see [`crate::attach`]);
/// relative to the run directory, as [`STDIN_SOCKET_FILE`].
pub const ATTACH_SOCKET_FILE: &str = "attach.sock";
/// Written atomically by the monitor when the container's init has exited.
pub const EXIT_FILE: &str = "exit.json";

/// The monitor's command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorArgs {
    /// OCI runtime binary (`runc`, `crun`, or a path).
    pub runtime: PathBuf,
    /// The runtime's `--root` (its state directory, one per handler).
    pub runtime_root: PathBuf,
    /// Container id.
    pub id: String,
    /// OCI bundle (holds `config.json`).
    pub bundle: PathBuf,
    /// The container's run directory: pid file, runtime log, exit file.
    pub run_dir: PathBuf,
    /// The CRI log file.
    pub log_path: PathBuf,
    /// The container's cgroup path (the spec's `cgroupsPath`).
    pub cgroup: String,
    /// Kill every process left in the cgroup when init exits (no private PID namespace).
    pub kill_all: bool,
    /// The container has a terminal: the runtime hands the pty master to the monitor over
    /// a console socket, and its output is logged as stdout.
    pub tty: bool,
    /// Give the container a stdin held open by the monitor ([`crate::stdin`]).
    pub stdin: bool,
    /// Close that stdin when the first client hangs up.
    pub stdin_once: bool,
}

impl MonitorArgs {
    /// The arguments to pass (without the program name).
    pub fn to_args(&self) -> Vec<OsString> {
        let mut v: Vec<OsString> = Vec::new();
        let mut pair = |k: &str, val: OsString| {
            v.push(k.into());
            v.push(val);
        };
        pair("--runtime", self.runtime.clone().into());
        pair("--runtime-root", self.runtime_root.clone().into());
        pair("--id", self.id.clone().into());
        pair("--bundle", self.bundle.clone().into());
        pair("--run-dir", self.run_dir.clone().into());
        pair("--log-path", self.log_path.clone().into());
        pair("--cgroup", self.cgroup.clone().into());
        if self.kill_all {
            v.push("--kill-all".into());
        }
        for (flag, on) in [
            ("--tty", self.tty),
            ("--stdin", self.stdin),
            ("--stdin-once", self.stdin_once),
        ] {
            if on {
                v.push(flag.into());
            }
        }
        v
    }

    /// Parses what [`MonitorArgs::to_args`] produced.
    pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Self, String> {
        let mut it = args.into_iter();
        let (mut runtime, mut runtime_root, mut id, mut bundle) = (None, None, None, None);
        let (mut run_dir, mut log_path, mut cgroup) = (None, None, None);
        let (mut kill_all, mut tty, mut stdin, mut stdin_once) = (false, false, false, false);
        while let Some(a) = it.next() {
            let key = a.to_string_lossy().into_owned();
            let flag = match key.as_str() {
                "--kill-all" => Some(&mut kill_all),
                "--tty" => Some(&mut tty),
                "--stdin" => Some(&mut stdin),
                "--stdin-once" => Some(&mut stdin_once),
                _ => None,
            };
            if let Some(flag) = flag {
                *flag = true;
                continue;
            }
            let val = it.next().ok_or_else(|| format!("{key} needs a value"))?;
            match key.as_str() {
                "--runtime" => runtime = Some(PathBuf::from(val)),
                "--runtime-root" => runtime_root = Some(PathBuf::from(val)),
                "--id" => id = Some(val.to_string_lossy().into_owned()),
                "--bundle" => bundle = Some(PathBuf::from(val)),
                "--run-dir" => run_dir = Some(PathBuf::from(val)),
                "--log-path" => log_path = Some(PathBuf::from(val)),
                "--cgroup" => cgroup = Some(val.to_string_lossy().into_owned()),
                _ => return Err(format!("unknown argument {key}")),
            }
        }
        fn need<T>(v: Option<T>, k: &str) -> Result<T, String> {
            v.ok_or_else(|| format!("missing {k}"))
        }
        Ok(Self {
            runtime: need(runtime, "--runtime")?,
            runtime_root: need(runtime_root, "--runtime-root")?,
            id: need(id, "--id")?,
            bundle: need(bundle, "--bundle")?,
            run_dir: need(run_dir, "--run-dir")?,
            log_path: need(log_path, "--log-path")?,
            cgroup: need(cgroup, "--cgroup")?,
            kill_all,
            tty,
            stdin,
            stdin_once,
        })
    }
}

/// How the container's init ended, as the monitor recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// Format version (1).
    pub version: u32,
    /// Exit status; 128 + signal number when a signal killed it.
    pub exit_code: i32,
    /// The signal that killed it, if any.
    pub signal: Option<i32>,
    /// When the monitor saw it exit.
    pub exited_at_unix_nanos: i64,
    /// The memory cgroup's OOM kill count was non-zero.
    pub oom_killed: bool,
}

impl ExitRecord {
    /// Reads `<run_dir>/exit.json`; `None` while the container has not exited.
    pub fn read(run_dir: &Path) -> io::Result<Option<Self>> {
        match std::fs::read(run_dir.join(EXIT_FILE)) {
            Ok(data) => serde_json::from_slice(&data)
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes it atomically (temp, rename): the daemon may read it at any moment, and must
    /// never see a torn record. Not fsynced: the run directory is per-boot state (tmpfs
    /// under `/run` on a node), and a power loss that could lose the file ends the boot the
    /// record belongs to, after which every container counts as exited anyway; a daemon's
    /// crash loses nothing the kernel holds. The two fsyncs were on every stop's path.
    pub fn write(&self, run_dir: &Path) -> io::Result<()> {
        let data = serde_json::to_vec(self).map_err(io::Error::other)?;
        let tmp = run_dir.join(format!(".{EXIT_FILE}.tmp"));
        std::fs::write(&tmp, &data)?;
        std::fs::rename(&tmp, run_dir.join(EXIT_FILE))
    }
}

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
pub fn spawn(monitor_bin: &Path, args: &MonitorArgs, timeout: Duration) -> Result<Created, String> {
    let (mut reader, writer) = io::pipe().map_err(|e| format!("pipe: {e}"))?;
    let stderr = File::create(args.run_dir.join(MONITOR_LOG_FILE))
        .map_err(|e| format!("create {MONITOR_LOG_FILE}: {e}"))?;
    let mut cmd = Command::new(monitor_bin);
    cmd.args(args.to_args())
        .stdin(Stdio::null())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_round_trip() {
        let a = MonitorArgs {
            runtime: "runc".into(),
            runtime_root: "/run/rootstock/runtime/runc".into(),
            id: "abc".into(),
            bundle: "/b".into(),
            run_dir: "/r".into(),
            log_path: "/var/log/pods/x/0.log".into(),
            cgroup: "/kubepods/abc".into(),
            kill_all: true,
            tty: true,
            stdin: true,
            stdin_once: false,
        };
        assert_eq!(MonitorArgs::parse(a.to_args()).unwrap(), a);
        assert!(MonitorArgs::parse(vec![OsString::from("--id")]).is_err());
    }
}
