//! Child processes of a test (a daemon, the registry, containerd): tied to the thread that
//! spawned them, and stopped politely, then not.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Makes the kernel SIGKILL the child when the thread that spawns it dies
/// (`PR_SET_PDEATHSIG`), so a test killed by SIGKILL or a harness timeout leaves nothing
/// running. The kernel ties this to the spawning *thread*, not the process: spawn from the
/// thread that lives as long as the child should (the test's own, a bench's main thread).
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2), which
    // is async-signal-safe; it touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// Runs `cmd` (a tool the test needs: tar, umoci, helm, make…) to completion and returns its
/// stdout. It must succeed: a failure panics naming the command, its status and both
/// outputs.
pub fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// SIGTERM, up to `grace` to exit, then SIGKILL; reaps the child either way.
pub fn terminate(child: &mut Child, grace: Duration) {
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn terminate_kills_what_ignores_sigterm() {
        let mut child = die_with_parent(
            Command::new("sh").args(["-c", "trap '' TERM; while :; do sleep 1; done"]),
        )
        .spawn()
        .unwrap();
        terminate(&mut child, Duration::from_millis(200));
        // Reaped: nothing left to wait for.
        assert!(child.try_wait().unwrap().is_some());
    }

    #[test]
    fn a_child_dies_with_its_spawning_thread() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let child = die_with_parent(Command::new("sleep").arg("60"))
                .spawn()
                .unwrap();
            tx.send(child).unwrap();
        })
        .join()
        .unwrap();
        let mut child = rx.recv().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "the child outlived its thread");
            std::thread::sleep(Duration::from_millis(10));
        };
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }
}
