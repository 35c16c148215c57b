//! Tracking a runtime's processes: its daemon in a cgroup of its own, so its shims and
//! monitors can be told from the rest of the machine and killed at the end.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::Kind;

/// A cgroup of its own (v1 `pids` hierarchy; the root of a v2-only host) that a runtime's
/// daemon is moved into right after it started. Shims and monitors double-fork and end up
/// children of PID 1, but a fork never leaves its cgroup unless something moves it (the OCI
/// runtime moves only the containers): so "in this cgroup" is what tells the runtime's own
/// processes from the rest of a busy machine ([`pods::memory_per_pod`]), and dropping the
/// value kills whatever of it is still alive. Moving the daemon changes nothing it measures:
/// a `pids` cgroup has no limit unless one is set.
pub struct Tracker {
    dir: PathBuf,
}

impl Tracker {
    pub fn new(kind: Kind) -> std::io::Result<Self> {
        let v1 = Path::new("/sys/fs/cgroup/pids");
        let base = if v1.join("cgroup.procs").exists() {
            v1
        } else {
            Path::new("/sys/fs/cgroup")
        };
        let dir = base.join(format!(
            "rootstock-bench-{}-{}",
            std::process::id(),
            kind.name()
        ));
        std::fs::create_dir(&dir)?;
        Ok(Self { dir })
    }

    /// Moves `pid` (not its existing children) into the cgroup.
    pub fn adopt(&self, pid: i32) -> std::io::Result<()> {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
    }

    /// The cgroup and every cgroup below it, deepest first.
    fn cgroups(&self) -> Vec<PathBuf> {
        let mut all = vec![self.dir.clone()];
        let mut i = 0;
        while i < all.len() {
            if let Ok(entries) = std::fs::read_dir(&all[i]) {
                all.extend(
                    entries
                        .flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
            i += 1;
        }
        all.reverse();
        all
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        // The runtime was stopped and its pods removed; anything left (a shim of a pod that
        // would not go, a monitor) must not outlive the run.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pids: Vec<i32> = self
                .cgroups()
                .iter()
                .flat_map(|cg| {
                    std::fs::read_to_string(cg.join("cgroup.procs"))
                        .unwrap_or_default()
                        .lines()
                        .filter_map(|l| l.trim().parse().ok())
                        .collect::<Vec<i32>>()
                })
                .collect();
            if pids.is_empty() || Instant::now() > deadline {
                break;
            }
            for pid in pids {
                eprintln!("bench: killing leftover process {pid} ({})", comm(pid));
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for cg in self.cgroups() {
            let _ = std::fs::remove_dir(cg);
        }
    }
}

/// A process's name (`/proc/<pid>/comm`), for messages.
fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}
