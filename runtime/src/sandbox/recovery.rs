//! What start-up recovery checks of each sandbox beyond its record (`lifecycle.rs` loads the
//! records):
//!
//! - **Unfinished**: RunPodSandbox marks the sandbox directory ([`UNFINISHED_FILE`]) before
//!   anything is made and clears the mark only once CNI ADD is done and the reply is about to
//!   go out ([`Runtime::sandbox_committed`]). A sandbox still marked at start-up was never
//!   acknowledged to kubelet (the daemon died inside RunPodSandbox): recovery reports it and
//!   the daemon removes it with its network, so the RPC's effect is absent and kubelet's
//!   retry starts afresh, instead of adopting a pod whose CNI ADD never finished.
//! - **Lost namespaces** (same boot): a cleanup script or an OOM-killer storm can take the
//!   namespace pins (the bind mounts under `ns/`) and pod-init away while the daemon is
//!   down. Such a sandbox must not be reported Ready with its old IP — its `ns/net` is a
//!   plain empty file and every CreateContainer would fail inside runc ("can't get final
//!   child's PID from pipe") — so each pin is checked to be an nsfs mount of the right
//!   namespace type and pod-init to be the very process recorded (pid and start time);
//!   otherwise the sandbox becomes NotReady (what is left is released), and kubelet
//!   recreates the pod. The daemon then runs CNI DEL for it, which gives its IP back.

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{SandboxPidMode, SandboxRecord, SandboxState};
use crate::error::{Error, Result};
use crate::id::SandboxId;
use crate::runtime::Runtime;

/// What sandbox recovery found, beyond the records it loaded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxRecovery {
    /// Sandboxes whose RunPodSandbox was never acknowledged: the daemon removes them (CNI
    /// DEL first).
    pub unfinished: Vec<SandboxId>,
    /// Ready sandboxes of this boot whose namespaces or pod-init were gone: now NotReady.
    pub lost_namespaces: Vec<SandboxId>,
}

/// Present in a sandbox directory while its RunPodSandbox has not been acknowledged.
pub(crate) const UNFINISHED_FILE: &str = "unfinished";

/// `NSFS_MAGIC` (linux/magic.h): the file system of `/proc/<pid>/ns/*` and their bind mounts.
const NSFS_MAGIC: i64 = 0x6e73_6673;
/// `NS_GET_NSTYPE` (linux/nsfs.h, `_IO(0xb7, 0x3)`): the `CLONE_NEW*` type of an nsfs file.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// What the unfinished mark holds: enough to release the cgroups a sandbox whose record was
/// never written may have made (pod-init's leaf below the pod cgroup, and the pod cgroup
/// itself when the runtime chose it).
#[derive(Debug, Serialize, Deserialize)]
struct Unfinished {
    cgroup_parent: String,
    own_cgroup: bool,
}

/// Marks `dir` (a new sandbox's directory) unfinished. Not fsynced: the state dir is per
/// boot, and a SIGKILL loses nothing the page cache holds.
pub(super) fn mark_unfinished(dir: &Path, cgroup_parent: &str, own_cgroup: bool) -> Result<()> {
    let path = dir.join(UNFINISHED_FILE);
    let mark = Unfinished {
        cgroup_parent: cgroup_parent.to_owned(),
        own_cgroup,
    };
    let data = serde_json::to_vec(&mark).map_err(|e| Error::WriteState {
        path: path.clone(),
        source: std::io::Error::other(e),
    })?;
    fs::write(&path, data).map_err(|e| Error::io("write", &path, e))
}

/// Whether RunPodSandbox of the sandbox in `dir` was never acknowledged.
pub(super) fn is_unfinished(dir: &Path) -> bool {
    dir.join(UNFINISHED_FILE).exists()
}

impl Runtime {
    /// RunPodSandbox is about to answer: the sandbox is complete (see the module doc). A
    /// crash after this leaves a sandbox kubelet may not know of yet, but a whole one (it
    /// finds it by its labels and adopts or removes it).
    pub fn sandbox_committed(&self, id: &SandboxId) -> Result<()> {
        let path = self.sandbox_dir(id).join(UNFINISHED_FILE);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove", &path, e)),
        }
    }

    /// A sandbox whose record was never written (the daemon died inside RunPodSandbox
    /// before it): pod-init, if it was started, is killed through its cgroup (its identity
    /// was not recorded), and the cgroups the mark names are removed. Best effort: logged.
    pub(super) fn release_unrecorded_cgroups(&self, info: &super::SandboxInfo) {
        let Ok(data) = fs::read(info.dir.join(UNFINISHED_FILE)) else {
            return;
        };
        let Ok(mark) = serde_json::from_slice::<Unfinished>(&data) else {
            return;
        };
        let leaf = format!("{}/{}", mark.cgroup_parent, info.record.id);
        for pid in self.cgroups.procs(&leaf).unwrap_or_default() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let mut cgroups = vec![leaf];
        if mark.own_cgroup {
            cgroups.push(mark.cgroup_parent);
        }
        for cg in cgroups {
            if let Err(e) = self.cgroups.remove(&cg) {
                tracing::warn!(sandbox = %info.record.id, "recovery: {e}");
            }
        }
    }

    /// A Ready sandbox of this boot whose namespaces or pod-init are gone becomes NotReady,
    /// and what is left of it (pod-init, pins, `/dev/shm`) is released. Returns why, when
    /// it did (the caller persists the record).
    pub(super) fn release_lost_namespaces(
        &self,
        rec: &mut SandboxRecord,
    ) -> Result<Option<String>> {
        if rec.state != SandboxState::Ready || rec.boot_id != self.boot_id {
            return Ok(None);
        }
        let Some(why) = self.lost_namespace(rec) else {
            return Ok(None);
        };
        let info = self.sandbox_info(rec);
        self.stop_pod_init(rec);
        self.teardown_sandbox(&info, false)?;
        rec.state = SandboxState::NotReady;
        rec.pod_init = None;
        Ok(Some(why))
    }

    /// The first namespace (or pod-init) of a Ready sandbox that is not what it should be.
    fn lost_namespace(&self, rec: &SandboxRecord) -> Option<String> {
        let dir = self.sandbox_dir(&rec.id).join("ns");
        let mut kinds = Vec::new();
        if !rec.host_network {
            kinds.extend([("net", libc::CLONE_NEWNET), ("uts", libc::CLONE_NEWUTS)]);
        }
        if !rec.host_ipc {
            kinds.push(("ipc", libc::CLONE_NEWIPC));
        }
        if rec.pid == SandboxPidMode::Pod {
            kinds.push(("pid", libc::CLONE_NEWPID));
            match &rec.pod_init {
                Some(init) if init.is_alive() => {}
                Some(init) => return Some(format!("pod-init (pid {}) is gone", init.pid)),
                None => return Some("pod-init was never recorded".to_owned()),
            }
        }
        kinds.into_iter().find_map(|(kind, want)| {
            let path = dir.join(kind);
            open_pin(&path, want)
                .err()
                .map(|why| format!("{}: {why}", path.display()))
        })
    }
}

/// The namespace pinned at `path` (an nsfs file, i.e. a live bind mount) if it is of type
/// `want`.
pub(super) fn open_pin(path: &Path, want: libc::c_int) -> std::result::Result<File, String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    let fd = file.as_raw_fd();
    // SAFETY: a zeroed statfs is a valid out-buffer; `fd` is open for the whole call.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstatfs(fd, &mut st) } != 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between architectures
    if st.f_type as i64 != NSFS_MAGIC {
        return Err("not a mounted namespace (the pin is gone)".to_owned());
    }
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the fd.
    let got = unsafe { libc::ioctl(fd, NS_GET_NSTYPE as _) };
    if got < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    if got != want {
        return Err(format!("a namespace of type {got:#x}, not {want:#x}"));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn a_plain_file_is_not_a_pin_and_our_own_namespace_is_one_of_its_type() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("net");
        fs::write(&plain, "").unwrap();
        assert!(
            open_pin(&plain, libc::CLONE_NEWNET)
                .unwrap_err()
                .contains("not a mounted")
        );
        let own = Path::new("/proc/self/ns/net");
        open_pin(own, libc::CLONE_NEWNET).unwrap();
        assert!(
            open_pin(own, libc::CLONE_NEWIPC)
                .unwrap_err()
                .contains("type")
        );
    }
}
