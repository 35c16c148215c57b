//! Driving an OCI runtime binary (`runc`, `crun`) through its command line. Both speak the
//! same subcommands and flags; the differences handled here are in their error texts.
//! `create` is not here: the monitor runs it, so that it becomes the container's parent.

use std::ffi::OsString;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::id::ContainerId;

/// One configured OCI runtime: handler name, binary, and its state root (`--root`), kept
/// apart from the runtime's default root so other users of runc on the node never see or
/// collide with our containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciRuntime {
    handler: String,
    binary: PathBuf,
    root: PathBuf,
}

/// The part of `<runtime> state` we use.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct OciState {
    /// `creating`, `created`, `running`, `paused` or `stopped`.
    pub status: String,
    /// The init's host pid (0 once stopped, for some runtimes).
    #[serde(default)]
    pub pid: i32,
}

/// A command to run in a container with [`OciRuntime::exec`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecRequest {
    /// Program and arguments.
    pub args: Vec<String>,
    /// Extra `KEY=VALUE` environment entries (on top of the container's).
    pub env: Vec<String>,
    /// Working directory, if not the container's.
    pub cwd: Option<String>,
}

/// What an exec'd command produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    /// Everything it wrote to stdout (bounded, see [`MAX_EXEC_OUTPUT`]).
    pub stdout: Vec<u8>,
    /// Everything it wrote to stderr (bounded).
    pub stderr: Vec<u8>,
    /// Exit status; 128 + signal when killed by a signal.
    pub exit_code: i32,
}

/// Per-stream cap on captured exec output (kubelet's probes and `ExecSync` callers read
/// small outputs; the cap keeps a runaway command from exhausting the daemon's memory).
pub const MAX_EXEC_OUTPUT: usize = 16 * 1024 * 1024;

impl OciRuntime {
    /// A runtime `binary` for `handler`, keeping its state under `root`.
    pub fn new(
        handler: impl Into<String>,
        binary: impl Into<PathBuf>,
        root: impl Into<PathBuf>,
    ) -> Self {
        Self {
            handler: handler.into(),
            binary: binary.into(),
            root: root.into(),
        }
    }

    /// The handler name.
    pub fn handler(&self) -> &str {
        &self.handler
    }

    /// The binary.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// The runtime's `--root`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.binary);
        c.arg("--root").arg(&self.root).stdin(Stdio::null());
        c
    }

    fn run(&self, id: &ContainerId, action: &'static str, args: &[OsString]) -> Result<Vec<u8>> {
        let out = self
            .command()
            .args(args)
            .output()
            .map_err(|source| Error::Spawn {
                program: self.binary.clone(),
                source,
            })?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            let mut message = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            if message.is_empty() {
                message = out.status.to_string();
            }
            Err(Error::Runtime {
                id: id.to_string(),
                runtime: self.handler.clone(),
                action,
                message,
            })
        }
    }

    /// `<runtime> start <id>`: lets the created container's init exec the process.
    pub fn start(&self, id: &ContainerId) -> Result<()> {
        self.run(id, "start", &["start".into(), id.as_str().into()])
            .map(drop)
    }

    /// `<runtime> kill [--all] <id> <signal>`. `all` signals every process in the
    /// container's cgroup (needed when it has no private PID namespace).
    pub fn kill(&self, id: &ContainerId, signal: i32, all: bool) -> Result<()> {
        let mut args: Vec<OsString> = vec!["kill".into()];
        if all {
            args.push("--all".into());
        }
        args.push(id.as_str().into());
        args.push(signal.to_string().into());
        self.run(id, "kill", &args).map(drop)
    }

    /// `<runtime> delete [--force] <id>`. A container the runtime does not know is already
    /// deleted: that is success (removal is idempotent, as CRI's RemoveContainer is).
    pub fn delete(&self, id: &ContainerId, force: bool) -> Result<()> {
        let mut args: Vec<OsString> = vec!["delete".into()];
        if force {
            args.push("--force".into());
        }
        args.push(id.as_str().into());
        match self.run(id, "delete", &args) {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => match self.state(id) {
                Ok(None) => Ok(()),
                _ => Err(e),
            },
        }
    }

    /// `<runtime> state <id>`; `None` when the runtime does not know the container.
    pub fn state(&self, id: &ContainerId) -> Result<Option<OciState>> {
        match self.run(id, "state", &["state".into(), id.as_str().into()]) {
            Ok(out) => serde_json::from_slice(&out)
                .map(Some)
                .map_err(|e| Error::Runtime {
                    id: id.to_string(),
                    runtime: self.handler.clone(),
                    action: "state",
                    message: format!("unparsable state: {e}"),
                }),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `<runtime> update --resources <file> <id>` with an OCI `LinuxResources` document.
    pub fn update(
        &self,
        id: &ContainerId,
        resources: &oci_spec::runtime::LinuxResources,
        scratch_dir: &Path,
    ) -> Result<()> {
        let file = scratch_dir.join("resources.json");
        let data = serde_json::to_vec(resources)
            .map_err(|e| Error::InvalidArgument(format!("resources: {e}")))?;
        std::fs::write(&file, data).map_err(|e| Error::io("write", &file, e))?;
        let r = self.run(
            id,
            "update",
            &[
                "update".into(),
                "--resources".into(),
                file.clone().into(),
                id.as_str().into(),
            ],
        );
        let _ = std::fs::remove_file(&file);
        r.map(drop)
    }

    /// Runs a command in the running container and collects its output, like CRI's
    /// ExecSync. `--pid-file` tells us the exec'd process's own pid: on timeout that process
    /// is SIGKILLed (killing only the `runc exec` client would leave it running, and critest
    /// checks it is gone), and the call fails with [`Error::ExecTimeout`]. `scratch_dir`
    /// holds the pid file.
    pub fn exec(
        &self,
        id: &ContainerId,
        req: &ExecRequest,
        timeout: Option<Duration>,
        scratch_dir: &Path,
    ) -> Result<ExecOutput> {
        if req.args.is_empty() {
            return Err(Error::InvalidArgument("exec: empty command".to_owned()));
        }
        let pid_file = scratch_dir.join(format!("exec-{}.pid", unique_suffix()));
        let mut cmd = self.command();
        cmd.arg("exec").arg("--pid-file").arg(&pid_file);
        for e in &req.env {
            cmd.arg("--env").arg(e);
        }
        if let Some(cwd) = &req.cwd {
            cmd.arg("--cwd").arg(cwd);
        }
        cmd.arg(id.as_str())
            .args(&req.args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| Error::Spawn {
            program: self.binary.clone(),
            source,
        })?;
        let result = collect(&mut child, timeout.map(|t| Instant::now() + t));
        let out = match result {
            Ok(out) => out,
            Err(Collect::TimedOut) => {
                // Kill the exec'd process first (it is what must be gone), then the client.
                if let Some(pid) = read_pid(&pid_file) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                let _ = child.kill();
                let _ = child.wait();
                let _ = std::fs::remove_file(&pid_file);
                return Err(Error::ExecTimeout {
                    id: id.to_string(),
                    timeout: timeout.unwrap_or_default(),
                });
            }
            Err(Collect::Io(e)) => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = std::fs::remove_file(&pid_file);
                return Err(Error::io("exec in", scratch_dir, e));
            }
        };
        let _ = std::fs::remove_file(&pid_file);
        Ok(out)
    }
}

fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// runc: "container does not exist"; crun: "…/status: No such file or directory".
fn is_not_found(e: &Error) -> bool {
    match e {
        Error::Runtime { message, .. } => {
            message.contains("does not exist")
                || message.contains("No such file or directory")
                || message.contains("not found")
        }
        _ => false,
    }
}

enum Collect {
    TimedOut,
    Io(io::Error),
}

/// Reads stdout and stderr until both close and the child has exited, or the deadline.
fn collect(
    child: &mut Child,
    deadline: Option<Instant>,
) -> std::result::Result<ExecOutput, Collect> {
    let mut out_pipe = child.stdout.take();
    let mut err_pipe = child.stderr.take();
    let mut out = ExecOutput::default();
    let mut status = None;
    // After the client exits, a background process the command started may keep the
    // pipes open; do not wait for it beyond this grace period.
    let mut exited_at: Option<Instant> = None;
    const GRACE: Duration = Duration::from_millis(500);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if status.is_none() {
            status = child.try_wait().map_err(Collect::Io)?;
            if status.is_some() {
                exited_at = Some(Instant::now());
            }
        }
        if let Some(st) = status {
            let drained = out_pipe.is_none() && err_pipe.is_none();
            let grace_over = exited_at.is_some_and(|t| t.elapsed() > GRACE);
            if drained || grace_over {
                out.exit_code = exit_code(st);
                return Ok(out);
            }
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return Err(Collect::TimedOut);
        }
        // Wake up at least every 50 ms to notice the child's exit (no SIGCHLD plumbing in
        // a library that must not own signal handlers).
        let mut wait = Duration::from_millis(50);
        if let Some(d) = deadline {
            wait = wait.min(d - now);
        }
        let ms = u16::try_from(wait.as_millis()).unwrap_or(50);
        let (o, e) = {
            let mut fds = Vec::new();
            let oi = out_pipe.as_ref().map(|p| {
                fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
                fds.len() - 1
            });
            let ei = err_pipe.as_ref().map(|p| {
                fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
                fds.len() - 1
            });
            if fds.is_empty() {
                std::thread::sleep(wait);
                (false, false)
            } else {
                match poll(&mut fds, PollTimeout::from(ms)) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => return Err(Collect::Io(e.into())),
                }
                let mask = PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR;
                let ready = |i: Option<usize>| {
                    i.and_then(|i| fds[i].revents())
                        .is_some_and(|r| r.intersects(mask))
                };
                (ready(oi), ready(ei))
            }
        };
        if o {
            read_into(&mut out_pipe, &mut out.stdout, &mut buf).map_err(Collect::Io)?;
        }
        if e {
            read_into(&mut err_pipe, &mut out.stderr, &mut buf).map_err(Collect::Io)?;
        }
    }
}

fn read_into<R: Read>(pipe: &mut Option<R>, sink: &mut Vec<u8>, buf: &mut [u8]) -> io::Result<()> {
    let Some(p) = pipe.as_mut() else {
        return Ok(());
    };
    match p.read(buf) {
        Ok(0) => *pipe = None,
        Ok(n) => {
            let room = MAX_EXEC_OUTPUT.saturating_sub(sink.len());
            sink.extend_from_slice(&buf[..n.min(room)]);
        }
        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
        Err(e) => return Err(e),
    }
    Ok(())
}

fn exit_code(st: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    st.code()
        .or_else(|| st.signal().map(|s| 128 + s))
        .unwrap_or(255)
}
