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

pub use crate::attach::set_window_size;
use crate::error::{Error, Result};
use crate::exec::{exit_code, kill_exec, read_pid, unique_suffix};
use crate::id::ContainerId;
use crate::oci::{ExecRequest, OciRuntime};

/// A running streaming exec. Dropping it without [`ExecChild::wait`] kills the command.
pub struct ExecChild {
    child: Child,
    pid_file: PathBuf,
    /// The `--process` file of a TTY exec, removed with the pid file.
    process_file: Option<PathBuf>,
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
        if let Some(p) = &self.process_file {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// What an exec's stdio is.
enum ExecStdio {
    /// A terminal's slave as stdin, stdout and stderr; the initial (width, height).
    Terminal([OwnedFd; 3], Option<(u16, u16)>),
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
        // The initial (width, height) goes to the runtime as the process's `consoleSize`
        // (its init sizes the container's pty before starting the command), and is set on
        // ours too: the runtime copies ours over on every SIGWINCH.
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
        let child = self.exec_spawn_with(id, req, ExecStdio::Terminal(stdio, size), scratch_dir)?;
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
        let mut process_file = None;
        match stdio {
            ExecStdio::Terminal([i, o, e], size) => {
                // The whole process from a file, as `exec` would make it from the flags
                // (which `--process` replaces: `exec_command`'s are not used).
                let path = scratch_dir.join(format!("exec-{}.process.json", unique_suffix()));
                let process = tty_process(id, req, size, scratch_dir)?;
                std::fs::write(&path, process)
                    .map_err(|e| Error::io("write the exec process of", &path, e))?;
                cmd = self.command();
                cmd.arg("exec").arg("--pid-file").arg(&pid_file);
                cmd.arg("--process").arg(&path).arg(id.as_str());
                cmd.stdin(i).stdout(o).stderr(e);
                process_file = Some(path);
            }
            ExecStdio::Pipes { stdin } => {
                cmd.stdin(stdin)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                cmd.arg(id.as_str()).args(&req.args);
            }
        }
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        let spawned = cmd.spawn().map_err(|source| Error::Spawn {
            program: self.binary().to_owned(),
            source,
        });
        let child = match spawned {
            Ok(c) => c,
            Err(e) => {
                if let Some(p) = &process_file {
                    let _ = std::fs::remove_file(p);
                }
                return Err(e);
            }
        };
        Ok(ExecChild {
            child,
            pid_file,
            process_file,
            done: false,
        })
    }
}

/// The process of a TTY exec for `<runtime> exec --process`: the container's own (its
/// bundle's `config.json`, which `exec` without `--process` starts from too) with the
/// request's arguments, its environment appended and its working directory, a terminal,
/// and `consoleSize` when the size is known. The size is why: the runtime's init sets it
/// on the container's pty before it starts the command, so a command that reads it at
/// once (`stty size`) sees it, which no SIGWINCH after the start can promise.
fn tty_process(
    id: &ContainerId,
    req: &ExecRequest,
    size: Option<(u16, u16)>,
    bundle: &Path,
) -> Result<Vec<u8>> {
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).map_err(|e| Error::io("read", &path, e))?;
    let bad = |message: String| Error::Runtime {
        id: id.to_string(),
        runtime: path.display().to_string(),
        action: "exec --tty",
        message,
    };
    let spec: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| bad(format!("config.json: {e}")))?;
    let mut process = match spec.get("process") {
        Some(p @ serde_json::Value::Object(_)) => p.clone(),
        _ => return Err(bad("config.json has no process".to_owned())),
    };
    process["args"] = serde_json::json!(req.args);
    process["terminal"] = serde_json::Value::Bool(true);
    if !req.env.is_empty() {
        let mut env = match process.get("env") {
            Some(serde_json::Value::Array(e)) => e.clone(),
            _ => Vec::new(),
        };
        env.extend(req.env.iter().map(|e| serde_json::json!(e)));
        process["env"] = serde_json::Value::Array(env);
    }
    if let Some(cwd) = &req.cwd {
        process["cwd"] = serde_json::json!(cwd);
    }
    match size {
        Some((width, height)) if width > 0 && height > 0 => {
            process["consoleSize"] = serde_json::json!({"width": width, "height": height});
        }
        _ => {
            if let Some(p) = process.as_object_mut() {
                p.remove("consoleSize");
            }
        }
    }
    serde_json::to_vec(&process).map_err(|e| bad(format!("process.json: {e}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tty_process_is_the_containers_with_the_request_and_the_console_size() {
        let bundle = tempfile::tempdir().unwrap();
        let spec = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": 1000, "gid": 1000},
                "args": ["sleep", "3600"],
                "env": ["PATH=/bin", "HOME=/"],
                "cwd": "/srv",
                "capabilities": {"bounding": ["CAP_KILL"]},
                "consoleSize": {"width": 1, "height": 1},
                "noNewPrivileges": true
            }
        });
        std::fs::write(bundle.path().join("config.json"), spec.to_string()).unwrap();
        let id = ContainerId::new("c1").unwrap();
        let req = ExecRequest {
            args: vec!["stty".into(), "size".into()],
            env: vec!["A=1".into()],
            cwd: Some("/tmp".into()),
        };
        let p: serde_json::Value = serde_json::from_slice(
            &tty_process(&id, &req, Some((123, 45)), bundle.path()).unwrap(),
        )
        .unwrap();
        assert_eq!(p["args"], serde_json::json!(["stty", "size"]));
        assert_eq!(p["terminal"], true);
        assert_eq!(
            p["consoleSize"],
            serde_json::json!({"width": 123, "height": 45})
        );
        assert_eq!(p["env"], serde_json::json!(["PATH=/bin", "HOME=/", "A=1"]));
        assert_eq!(p["cwd"], "/tmp");
        // The rest is the container's own, as `exec` without `--process` would take it.
        assert_eq!(p["user"], spec["process"]["user"]);
        assert_eq!(p["capabilities"], spec["process"]["capabilities"]);
        assert_eq!(p["noNewPrivileges"], true);
        // No size known: none (not the container's).
        let p: serde_json::Value =
            serde_json::from_slice(&tty_process(&id, &req, None, bundle.path()).unwrap()).unwrap();
        assert!(p.get("consoleSize").is_none());
        // No config.json: an error naming it.
        let err = tty_process(&id, &req, None, Path::new("/nonexistent")).unwrap_err();
        assert!(err.to_string().contains("config.json"), "{err}");
    }
}
