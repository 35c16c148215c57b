//! Making and pinning a pod's network, IPC and UTS namespaces from a short-lived thread of
//! the daemon, without a process: the thread `unshare`s them (they are per-thread, so the
//! daemon's other threads are untouched), sets the hostname and the sysctls from inside
//! them, bind-mounts `/proc/thread-self/ns/<kind>` under the sandbox's `ns/` and exits.
//! The pins then hold the namespaces, as they do those the `pin-namespaces` helper made.
//!
//! Why a thread: exec'ing the helper was a fork, an exec and the dynamic loader on every
//! RunPodSandbox's critical path (CNI ADD can only start once the network namespace is
//! pinned). Nothing runs inside the namespaces but this thread's few system calls on
//! values the daemon has checked, so there is no process to confine: the pod's processes
//! are started later by the OCI runtime, confined by their spec.
//!
//! A user namespace cannot be made this way (`unshare(CLONE_NEWUSER)` needs a
//! single-threaded process): a pod with one still uses the helper ([`crate::userns`]).

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};

use crate::sysctl;

/// The namespaces a sandbox asks for, and what to set inside them.
pub(super) struct PinRequest {
    /// Own network (and with it UTS) namespace.
    pub net: bool,
    /// Own IPC namespace.
    pub ipc: bool,
    /// The hostname set in the new UTS namespace (`None`: it keeps the node's).
    pub hostname: Option<String>,
    /// Sysctls written from inside the new namespaces (checked again here).
    pub sysctls: Vec<(String, String)>,
}

impl PinRequest {
    /// The namespace kinds this request makes, as named under `/proc/<pid>/ns`.
    pub(super) fn kinds(&self) -> Vec<&'static str> {
        let mut kinds = Vec::new();
        if self.net {
            kinds.extend(["net", "uts"]);
        }
        if self.ipc {
            kinds.push("ipc");
        }
        kinds
    }

    /// Makes the namespaces in a new thread and pins each at `nsdir/<kind>`; the error
    /// names the step that failed. A pin made before a failure is left for the caller's
    /// teardown (as with the helper).
    pub(super) fn pin(self, nsdir: &Path) -> Result<(), String> {
        let nsdir = nsdir.to_owned();
        std::thread::Builder::new()
            .name("pin-namespaces".into())
            .spawn(move || {
                let pinned = self.pin_in_this_thread(&nsdir);
                rootstock_fsutil::release_dead_stack();
                pinned
            })
            .map_err(|e| format!("start the namespace thread: {e}"))?
            .join()
            .map_err(|_| "the namespace thread panicked".to_owned())?
    }

    /// Runs in the thread [`Self::pin`] started, which ends right after: the namespaces it
    /// entered must never be seen by any other work of the daemon.
    fn pin_in_this_thread(self, nsdir: &Path) -> Result<(), String> {
        let mut flags = CloneFlags::empty();
        if self.net {
            flags |= CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWUTS;
        }
        if self.ipc {
            flags |= CloneFlags::CLONE_NEWIPC;
        }
        unshare(flags).map_err(|e| format!("unshare: {e}"))?;
        if let Some(h) = &self.hostname {
            nix::unistd::sethostname(h).map_err(|e| format!("sethostname {h:?}: {e}"))?;
        }
        let own = sysctl::OwnNamespaces {
            net: self.net,
            ipc: self.ipc,
            uts: self.net,
        };
        for (k, v) in &self.sysctls {
            // The daemon checked already; checked again where the write happens. A
            // `/proc/sys` file acts on the namespaces of the thread that opens it.
            sysctl::check(k, v, own).map_err(|e| e.to_string())?;
            std::fs::write(sysctl::proc_path(k), v).map_err(|e| format!("sysctl {k}={v}: {e}"))?;
        }
        for kind in self.kinds() {
            let source = PathBuf::from(format!("/proc/thread-self/ns/{kind}"));
            bind(&source, &nsdir.join(kind))?;
        }
        Ok(())
    }
}

/// Bind-mounts the namespace file `source` onto `target` (created empty).
fn bind(source: &Path, target: &Path) -> Result<(), String> {
    File::create(target).map_err(|e| format!("create {}: {e}", target.display()))?;
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| {
        format!(
            "bind-mount {} to {}: {e}",
            source.display(),
            target.display()
        )
    })
}
