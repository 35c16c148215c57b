//! Keeping the kernel's cgroup-migration lock out of its idle state while processes are
//! being placed into cgroups.
//!
//! Every move into a cgroup (a pid written to `cgroup.procs` or `tasks`) takes the kernel's
//! global `cgroup_threadgroup_rwsem` for writing. Once no move has happened for about one
//! RCU grace period that lock goes back to its fast-for-readers state, and the next move
//! first waits a whole grace period: 8 ms median, up to 16 ms, measured on the dev VM
//! (0.2 ms when the lock is warm). A pod start makes its moves (pod-init, the monitor,
//! the OCI runtime's own) tens of milliseconds apart, so nearly each of them paid that
//! wait. While a sandbox or container is being created, a thread of the daemon therefore
//! moves itself into the cgroup it is already in every 2 ms: a no-op migration that keeps
//! the lock warm (what cgroup2's `favordynmods` mount option does for good), and the one
//! grace period left is waited out by that thread while the RPC does its own work.
//!
//! Execs are left cold on purpose: kubelet's exec probes would keep the thread (and every
//! fork on the node on the lock's slower read path) busy for good on a node full of them,
//! to save a few milliseconds of a probe that has seconds to answer.

use std::fs;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::cgroup_layout::CgroupLayout;

/// How long the lock is kept warm after the last [`warm`]: a pod start's moves happen
/// within this of its RunPodSandbox or CreateContainer.
const HOLD: Duration = Duration::from_millis(300);
/// Well under a grace period (a few ms at the least).
const PERIOD: Duration = Duration::from_millis(2);

struct Warmer {
    until: Mutex<Option<Instant>>,
    wake: Condvar,
}

static WARMER: OnceLock<Option<&'static Warmer>> = OnceLock::new();

/// Keeps cgroup moves fast for the next [`HOLD`]; call it first thing in an operation
/// that will place processes into cgroups. Never fails: without a cgroup file to write
/// (or a thread to write it) moves just stay as slow as the kernel makes them.
pub fn warm() {
    let Some(warmer) = *WARMER.get_or_init(start) else {
        return;
    };
    let mut until = warmer.until.lock().unwrap_or_else(|p| p.into_inner());
    *until = Some(Instant::now() + HOLD);
    warmer.wake.notify_one();
}

fn start() -> Option<&'static Warmer> {
    let warmer: &'static Warmer = Box::leak(Box::new(Warmer {
        until: Mutex::new(None),
        wake: Condvar::new(),
    }));
    let spawned = std::thread::Builder::new()
        .name("cgroup-warm".to_owned())
        .stack_size(64 * 1024)
        .spawn(move || run(warmer));
    match spawned {
        Ok(_) => Some(warmer),
        Err(e) => {
            tracing::debug!("cgroup moves are not kept warm: no thread: {e}");
            None
        }
    }
}

fn run(warmer: &Warmer) {
    let Some((file, me)) = own_cgroup_file() else {
        tracing::debug!("cgroup moves are not kept warm: the daemon's cgroup was not found");
        return;
    };
    loop {
        {
            let mut until = warmer.until.lock().unwrap_or_else(|p| p.into_inner());
            while until.is_none_or(|t| Instant::now() >= t) {
                *until = None;
                until = warmer.wake.wait(until).unwrap_or_else(|p| p.into_inner());
            }
        }
        if let Err(e) = fs::write(&file, &me) {
            tracing::debug!("cgroup moves are not kept warm: {}: {e}", file.display());
            return;
        }
        std::thread::sleep(PERIOD);
    }
}

/// The file that moves this thread into the cgroup it is in, and what to write to it: on
/// v1 its thread id to `tasks` of its first listed hierarchy (a move of one named thread
/// takes the lock; one of "0", the caller, would not), on v2 the process id to
/// `cgroup.procs`.
fn own_cgroup_file() -> Option<(PathBuf, String)> {
    let own = fs::read_to_string("/proc/thread-self/cgroup").ok()?;
    match CgroupLayout::detect() {
        CgroupLayout::V2 { root } => {
            let path = own.lines().find_map(|l| l.strip_prefix("0::"))?;
            let file = CgroupLayout::join(&root, path).join("cgroup.procs");
            Some((file, std::process::id().to_string()))
        }
        CgroupLayout::V1 { root } => own.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let name = controllers.strip_prefix("name=").unwrap_or(controllers);
            if name.is_empty() {
                return None;
            }
            let file = CgroupLayout::join(&root.join(name), path).join("tasks");
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            file.exists().then(|| (file, tid.to_string()))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The warming write is found on this node and is a no-op: the thread stays where it
    /// was in every hierarchy (a wrong file would move it, or fail and disable warming).
    #[test]
    fn the_warming_write_leaves_the_thread_in_its_cgroups() {
        let before = fs::read_to_string("/proc/thread-self/cgroup").unwrap();
        let (file, me) = own_cgroup_file().expect("the test's own cgroup file");
        fs::write(&file, &me).unwrap();
        assert_eq!(
            fs::read_to_string("/proc/thread-self/cgroup").unwrap(),
            before
        );
        let listed = fs::read_to_string(&file).unwrap();
        assert!(
            listed.lines().any(|l| l == me),
            "{me} not in {}",
            file.display()
        );
    }
}
