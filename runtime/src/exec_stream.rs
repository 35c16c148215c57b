//! Exec for CRI's streaming `Exec`: the same `<runtime> exec` as ExecSync, but with its
//! stdin, stdout and stderr handed to the caller as pipes instead of being buffered, and
//! killed (with everything it started, as ExecSync's timeout does) when the caller cancels.

use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::exec::{exit_code, kill_exec, read_pid, unique_suffix};
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

impl OciRuntime {
    /// Starts `req` in the running container with piped stdout and stderr, and stdin when
    /// `stdin` is set. `scratch_dir` holds the pid file.
    pub fn exec_spawn(
        &self,
        id: &ContainerId,
        req: &ExecRequest,
        stdin: bool,
        scratch_dir: &Path,
    ) -> Result<ExecChild> {
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
        use std::os::unix::process::CommandExt;
        cmd.arg(id.as_str())
            .args(&req.args)
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
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
