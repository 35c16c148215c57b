//! Exec for CRI's streaming `Exec`: the same `<runtime> exec` as ExecSync, but with its
//! stdin, stdout and stderr handed to the caller as pipes instead of being buffered, and
//! killed (with everything it started, as ExecSync's timeout does) when the caller cancels.
//! With a TTY, the runtime allocates the pty inside the container (`exec --tty`) and relays
//! it to a pty of ours; the caller gets our master.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::exec::{exit_code, kill_exec, read_pid};
use crate::id::ContainerId;
use crate::oci::{ExecRequest, OciRuntime};

/// A running streaming exec. Dropping it without [`ExecChild::wait`] kills the command.
pub struct ExecChild {
    child: Child,
    pid_file: PathBuf,
    done: bool,
}

impl ExecChild {
    /// The command's stdin (present when the exec was started with `stdin`).
    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.child.stdin.take()
    }

    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    pub fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.child.stderr.take()
    }

    /// Blocks until the command exits (its exit code, 128+signal when killed) or `cancel`
    /// is set, in which case the command and everything it started are killed and `None`
    /// is returned. Polls every 20 ms: a library must not own SIGCHLD.
    pub fn wait(&mut self, cancel: &AtomicBool) -> Result<Option<i32>> {
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) => {
                    self.done = true;
                    return Ok(Some(exit_code(st)));
                }
                Ok(None) => {}
                Err(e) => return Err(Error::io("wait for exec in", &self.pid_file, e)),
            }
            if cancel.load(Ordering::Relaxed) {
                self.kill();
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sets the terminal's size: on our pty's `master`, then SIGWINCH tells the runtime
    /// (`runc exec --tty`) to copy it to the container's pty, which signals the command.
    pub fn resize(pid: i32, master: &impl AsRawFd, width: u16, height: u16) -> std::io::Result<()> {
        set_window_size(master, width, height)?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGWINCH,
        )
        .map_err(std::io::Error::from)
    }

    /// Where the runtime writes the command's pid once it has started it: by then the
    /// runtime's own signal handler (SIGWINCH included) is installed.
    pub fn pid_file(&self) -> &Path {
        &self.pid_file
    }

    /// The runtime client's pid (for [`ExecChild::resize`]).
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn kill(&mut self) {
        if !self.done {
            kill_exec(&mut self.child, read_pid(&self.pid_file));
            self.done = true;
        }
    }
}

impl Drop for ExecChild {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

/// What an exec's stdio is.
enum ExecStdio {
    /// A terminal's slave as stdin, stdout and stderr.
    Terminal([OwnedFd; 3]),
    /// Pipes for stdout and stderr; stdin as given.
    Pipes { stdin: Stdio },
}

impl OciRuntime {
    /// Starts `req` in the running container with a terminal. `runc exec --tty` allocates
    /// the pty inside the container (its devpts, the command's controlling terminal) and,
    /// not detached, relays it to its own stdio, which must be a terminal: a pty of ours,
    /// whose master is returned. (With a console socket runc insists on `--detach`, and a
    /// detached process is no longer our child: its exit code would be lost.) Resizes go
    /// through [`ExecChild::resize`].
    pub fn exec_spawn_tty(
        &self,
        id: &ContainerId,
        req: &ExecRequest,
        size: Option<(u16, u16)>,
        scratch_dir: &Path,
    ) -> Result<(ExecChild, File)> {
        // The initial (width, height) is set before the runtime starts: it copies it to the
        // container's pty right after starting the command (runc's `forward`), with no
        // SIGWINCH to miss. A command that reads the size at once may still see 0x0.
        let ws = size.map(|(w, h)| nix::pty::Winsize {
            ws_row: h,
            ws_col: w,
            ws_xpixel: 0,
            ws_ypixel: 0,
        });
        let pty = nix::pty::openpty(ws.as_ref(), None).map_err(|e| Error::Runtime {
            id: id.to_string(),
            runtime: self.binary().display().to_string(),
            action: "exec --tty",
            message: format!("openpty: {e}"),
        })?;
        // Raw from the start: the container's own pty already turns `\n` into `\r\n`; ours
        // must pass bytes through unchanged. runc makes it raw too, but only after starting
        // the command, whose first output would get a second `\r`.
        let raw = nix::sys::termios::tcgetattr(&pty.slave).and_then(|mut t| {
            nix::sys::termios::cfmakeraw(&mut t);
            nix::sys::termios::tcsetattr(&pty.slave, nix::sys::termios::SetArg::TCSANOW, &t)
        });
        raw.map_err(|e| Error::Runtime {
            id: id.to_string(),
            runtime: self.binary().display().to_string(),
            action: "exec --tty",
            message: format!("raw mode on the pty: {e}"),
        })?;
        let dup = |fd: &OwnedFd| {
            fd.try_clone()
                .map_err(|e| Error::io("duplicate the pty of an exec in", scratch_dir, e))
        };
        let stdio = [dup(&pty.slave)?, dup(&pty.slave)?, pty.slave];
        let child = self.exec_spawn_with(id, req, ExecStdio::Terminal(stdio), scratch_dir)?;
        Ok((child, File::from(pty.master)))
    }

    /// Starts `req` in the running container with piped stdout and stderr, and stdin when
    /// `stdin` is set. `scratch_dir` holds the pid file.
    pub fn exec_spawn(
        &self,
        id: &ContainerId,
        req: &ExecRequest,
        stdin: bool,
        scratch_dir: &Path,
    ) -> Result<ExecChild> {
        let stdin = if stdin { Stdio::piped() } else { Stdio::null() };
        self.exec_spawn_with(id, req, ExecStdio::Pipes { stdin }, scratch_dir)
    }

    fn exec_spawn_with(
        &self,
        id: &ContainerId,
        req: &ExecRequest,
        stdio: ExecStdio,
        scratch_dir: &Path,
    ) -> Result<ExecChild> {
        let (mut cmd, pid_file) = self.exec_command(req, scratch_dir)?;
        match stdio {
            ExecStdio::Terminal([i, o, e]) => {
                cmd.arg("--tty").stdin(i).stdout(o).stderr(e);
            }
            ExecStdio::Pipes { stdin } => {
                cmd.stdin(stdin)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
            }
        }
        use std::os::unix::process::CommandExt;
        cmd.arg(id.as_str()).args(&req.args).process_group(0);
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            program: self.binary().to_owned(),
            source,
        })?;
        Ok(ExecChild {
            child,
            pid_file,
            done: false,
        })
    }
}

/// Sets a terminal's window size (the pty master's: the command sees it on its side, with
/// SIGWINCH).
pub fn set_window_size(master: &impl AsRawFd, width: u16, height: u16) -> std::io::Result<()> {
    let ws = libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which is valid for the call;
    // a non-terminal fd fails with ENOTTY, nothing else is touched.
    let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
