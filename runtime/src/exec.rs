//! ExecSync through the OCI runtime's `exec`: the output is collected under one budget that
//! keeps the reply below kubelet's 16 MiB gRPC message limit, and on timeout the exec'd
//! process and everything it started are killed.
//!
//! What the exec starts is found by process group: the `<runtime> exec` client runs in a
//! group of its own, and the exec'd process, its child (runc's `init` clones with
//! `CLONE_PARENT`), leads another (runc's `init` calls `setsid`); whatever the command
//! starts stays in that group unless it leaves on purpose (a daemonising command escapes, as
//! with any runtime). On timeout:
//! 1. every member but the client and its children is SIGKILLed first, while its parent
//!    (typically a shell waiting on it) still lives to reap it: a child that outlives its
//!    parent is reparented to the container's init, and an init that does not reap (`sleep`,
//!    most applications) would keep it as a zombie that `ps` in the container still shows;
//! 2. then the client's children, the exec'd process among them; the client reaps it and
//!    exits;
//! 3. then every group seen, which also covers a runtime that had not written the pid file
//!    yet (the process still in `runc init`), and the client itself.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use crate::error::{Error, Result};
use crate::id::ContainerId;
use crate::oci::{ExecOutput, ExecRequest, OciRuntime};

/// Budget for stdout and stderr together: kubelet's CRI client refuses replies over 16 MiB
/// (`maxMsgSize` in cri-client), and the reply also carries the exit code, the markers and
/// the protobuf framing.
pub const MAX_EXEC_OUTPUT: usize = 16 * 1024 * 1024 - 64 * 1024;

/// Appended to a stream that was cut at [`MAX_EXEC_OUTPUT`], so a caller never mistakes a
/// truncated output for a complete one (containerd cuts silently).
pub const TRUNCATED_MARKER: &[u8] =
    b"\n[rootstock: output truncated, an ExecSync reply is limited to 16 MiB]\n";

/// How long the group's other members get to be reaped by their parents, and the client to
/// reap the exec'd process, before the rest of the group is killed regardless.
const REAP_GRACE: Duration = Duration::from_millis(500);

/// After the client exits, a background process the command started may keep the pipes
/// open; its output is not waited for beyond this.
const DRAIN_GRACE: Duration = Duration::from_millis(500);

impl OciRuntime {
    /// Runs a command in the running container and collects its output, like CRI's
    /// ExecSync. On timeout the command and everything it started are killed (see the module
    /// doc) and the call fails with [`Error::ExecTimeout`]. `scratch_dir` holds the pid file.
    pub fn exec(
        &self,
        id: &ContainerId,
        req: &ExecRequest,
        timeout: Option<Duration>,
        scratch_dir: &Path,
    ) -> Result<ExecOutput> {
        let (mut cmd, pid_file) = self.exec_command(req, scratch_dir)?;
        cmd.arg(id.as_str())
            .args(&req.args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd.spawn().map_err(|source| Error::Spawn {
            program: self.binary().to_owned(),
            source,
        })?;
        let result = collect(&mut child, timeout.map(|t| Instant::now() + t));
        if result.is_err() {
            kill_exec(&mut child, read_pid(&pid_file));
        }
        let _ = std::fs::remove_file(&pid_file);
        match result {
            Ok(out) => Ok(out),
            Err(Collect::TimedOut) => Err(Error::ExecTimeout {
                id: id.to_string(),
                timeout: timeout.unwrap_or_default(),
            }),
            Err(Collect::Io(e)) => Err(Error::io("exec in", scratch_dir, e)),
        }
    }

    /// `<runtime> exec --pid-file … --env … --cwd …` for `req`, shared by ExecSync and the
    /// streaming exec (the caller adds the stdio, the container id and the arguments), with
    /// its pid file in `scratch_dir`.
    pub(crate) fn exec_command(
        &self,
        req: &ExecRequest,
        scratch_dir: &Path,
    ) -> Result<(crate::oci::RuntimeCommand, PathBuf)> {
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
        Ok((cmd, pid_file))
    }
}

pub(crate) fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub(crate) fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Kills what the exec started in the order the module doc explains, and reaps the client.
pub(crate) fn kill_exec(child: &mut Child, exec_pid: Option<i32>) {
    let client = child.id() as i32;
    // The exec'd process is the client's child (runc's and crun's `init` clone with
    // CLONE_PARENT) in a session of its own (`setsid`, done by it or by an intermediate
    // already gone): the groups of the client's children are the exec's, known even before
    // the pid file names the process.
    let mut tops = vec![client];
    let mut groups = vec![client];
    let deadline = Instant::now() + REAP_GRACE;
    loop {
        let procs = processes();
        for p in &procs {
            if p.ppid == client || Some(p.pid) == exec_pid {
                if !tops.contains(&p.pid) {
                    tops.push(p.pid);
                }
                if !groups.contains(&p.pgrp) {
                    groups.push(p.pgrp);
                }
            }
        }
        let rest: Vec<i32> = procs
            .iter()
            .filter(|p| groups.contains(&p.pgrp) && !tops.contains(&p.pid))
            .map(|p| p.pid)
            .collect();
        if rest.is_empty() || Instant::now() >= deadline {
            break;
        }
        for p in rest {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for top in tops.iter().filter(|t| **t != client) {
        let _ = kill(Pid::from_raw(*top), Signal::SIGKILL);
    }
    let deadline = Instant::now() + REAP_GRACE;
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    for g in groups {
        let _ = killpg(Pid::from_raw(g), Signal::SIGKILL);
    }
    let _ = child.wait();
}

/// One process as `/proc/<pid>/stat` shows it (host pids).
struct Proc {
    pid: i32,
    ppid: i32,
    pgrp: i32,
}

/// Every process of the host, zombies included.
fn processes() -> Vec<Proc> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<i32>().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // Fields after the parenthesised name: state, ppid, pgrp.
            let mut f = stat.rsplit_once(')')?.1.split_whitespace().skip(1);
            let ppid = f.next()?.parse().ok()?;
            let pgrp = f.next()?.parse().ok()?;
            Some(Proc { pid, ppid, pgrp })
        })
        .collect()
}

enum Collect {
    TimedOut,
    Io(io::Error),
}

/// The output collected so far and how much of the shared budget is left.
struct Sink {
    out: ExecOutput,
    stdout_cut: bool,
    stderr_cut: bool,
}

impl Sink {
    /// Keeps what fits in the budget of `stream` (0 stdout, 1 stderr); the rest is read and
    /// dropped, so the command never blocks on a full pipe.
    fn take(&mut self, stream: usize, data: &[u8]) {
        let room = MAX_EXEC_OUTPUT.saturating_sub(self.out.stdout.len() + self.out.stderr.len());
        let (buf, cut) = if stream == 0 {
            (&mut self.out.stdout, &mut self.stdout_cut)
        } else {
            (&mut self.out.stderr, &mut self.stderr_cut)
        };
        buf.extend_from_slice(&data[..data.len().min(room)]);
        if data.len() > room {
            *cut = true;
        }
    }

    fn finish(mut self, code: i32) -> ExecOutput {
        if self.stdout_cut {
            self.out.stdout.extend_from_slice(TRUNCATED_MARKER);
        }
        if self.stderr_cut {
            self.out.stderr.extend_from_slice(TRUNCATED_MARKER);
        }
        self.out.exit_code = code;
        self.out
    }
}

/// Reads stdout and stderr until both close and the child has exited, or the deadline.
fn collect(
    child: &mut Child,
    deadline: Option<Instant>,
) -> std::result::Result<ExecOutput, Collect> {
    let mut pipes = [
        child.stdout.take().map(|p| File::from(OwnedFd::from(p))),
        child.stderr.take().map(|p| File::from(OwnedFd::from(p))),
    ];
    let mut sink = Sink {
        out: ExecOutput::default(),
        stdout_cut: false,
        stderr_cut: false,
    };
    let mut status = None;
    let mut exited_at: Option<Instant> = None;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if status.is_none() {
            status = child.try_wait().map_err(Collect::Io)?;
            if status.is_some() {
                exited_at = Some(Instant::now());
            }
        }
        if let Some(st) = status {
            let drained = pipes.iter().all(Option::is_none);
            let grace_over = exited_at.is_some_and(|t| t.elapsed() > DRAIN_GRACE);
            if drained || grace_over {
                return Ok(sink.finish(exit_code(st)));
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
        let ready = {
            let mut fds = Vec::new();
            let mut index = [None; 2];
            for (i, p) in pipes.iter().enumerate() {
                if let Some(p) = p {
                    fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
                    index[i] = Some(fds.len() - 1);
                }
            }
            if fds.is_empty() {
                std::thread::sleep(wait);
                [false; 2]
            } else {
                let ms = u16::try_from(wait.as_millis()).unwrap_or(50);
                match poll(&mut fds, PollTimeout::from(ms)) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => return Err(Collect::Io(e.into())),
                }
                let mask = PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR;
                index.map(|i| {
                    i.and_then(|i| fds[i].revents())
                        .is_some_and(|r| r.intersects(mask))
                })
            }
        };
        for stream in 0..2 {
            if !ready[stream] {
                continue;
            }
            let Some(p) = pipes[stream].as_mut() else {
                continue;
            };
            match p.read(&mut buf) {
                Ok(0) => pipes[stream] = None,
                Ok(n) => sink.take(stream, &buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Collect::Io(e)),
            }
        }
    }
}

pub(crate) fn exit_code(st: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    st.code()
        .or_else(|| st.signal().map(|s| 128 + s))
        .unwrap_or(255)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_over_the_budget_is_cut_and_marked_across_both_streams() {
        let mut sink = Sink {
            out: ExecOutput::default(),
            stdout_cut: false,
            stderr_cut: false,
        };
        sink.take(1, b"err");
        sink.take(0, &vec![b'x'; MAX_EXEC_OUTPUT]);
        sink.take(0, b"more");
        let out = sink.finish(0);
        assert_eq!(out.stderr, b"err");
        assert_eq!(
            out.stdout.len(),
            MAX_EXEC_OUTPUT - 3 + TRUNCATED_MARKER.len()
        );
        assert!(out.stdout.ends_with(TRUNCATED_MARKER));
    }
}
