//! User namespaces for pods (CRI `userns_options` mode POD, Kubernetes `hostUsers: false`):
//! root in the container is an unprivileged id range of the node.
//!
//! How a pod gets one:
//! - the `pin-namespaces` helper unshares a user namespace first, the daemon writes kubelet's
//!   mappings into `/proc/<pid>/{uid,gid}_map`, and only then does the helper unshare the
//!   network, IPC and UTS namespaces, which the new user namespace therefore owns. The user
//!   namespace is pinned with the others (`<sandbox>/ns/user`); pod-init `setns`es into it
//!   before it makes the PID namespace; every container joins it by path.
//! - files are not chowned or copied: the image's flattened tree is cloned as a detached
//!   mount, idmapped with the pod's pinned user namespace (`mount_setattr(MOUNT_ATTR_IDMAP)`,
//!   [`attach_clone`]) and used as the overlay's lower directory, so a file owned by 0 on
//!   disk is owned by the pod's root inside. Kernel ≥ 5.19 takes an idmapped lower under
//!   overlayfs; the overlay keeps its own private clone of each layer, so the staging mount
//!   is detached again right after the overlay is mounted.
//! - CRI bind mounts are cloned the same way under the container's run directory (idmapped
//!   when kubelet sent mappings), so that the OCI runtime, which resolves mount sources from
//!   inside the user namespace, only walks directories the pod's root may search.
//!
//! Why rootstock does the idmapping and not the OCI runtime: Debian bookworm has runc 1.1.5
//! and crun 1.8.1 (backports has neither newer), and idmapped mounts in the OCI spec need
//! runc ≥ 1.2 or crun ≥ 1.9. Joining a user namespace by path works in both, and the
//! kernel's `mount_setattr` is all the rest needs. containerd 2.x does the same for the
//! snapshots it hands to runc.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use rustix::mount::{MoveMountFlags, OpenTreeFlags};
use serde::{Deserialize, Serialize};

/// The directory of a container's run directory where its rootfs lower directory and CRI
/// mounts are staged (each detached again once used; [`detach_all_in`] before any removal).
pub const STAGED_MOUNTS: &str = "mounts";

/// One contiguous id range: container ids `container_id..container_id+length` are host ids
/// `host_id..host_id+length`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdRange {
    /// First id inside the namespace.
    pub container_id: u32,
    /// First id on the node.
    pub host_id: u32,
    /// How many ids.
    pub length: u32,
}

impl IdRange {
    fn map_line(&self) -> String {
        format!("{} {} {}\n", self.container_id, self.host_id, self.length)
    }
}

/// A pod's user namespace: one uid and one gid range (what kubelet allocates); the CRI
/// boundary checked that container id 0 is mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserNamespace {
    /// The uid mapping.
    pub uids: IdRange,
    /// The gid mapping.
    pub gids: IdRange,
}

impl UserNamespace {
    /// The node uid the pod's root is.
    pub fn root_uid(&self) -> u32 {
        self.uids.host_id
    }

    /// The node gid the pod's root group is.
    pub fn root_gid(&self) -> u32 {
        self.gids.host_id
    }

    /// Writes the mappings of the (fresh) user namespace of process `pid`. The writer is
    /// root in the parent namespace, so `setgroups` needs no "deny" first.
    pub fn write_maps(&self, pid: i32) -> io::Result<()> {
        for (file, range) in [("uid_map", self.uids), ("gid_map", self.gids)] {
            // One write(2) per file: the kernel takes the map only whole, and only once.
            File::options()
                .write(true)
                .open(format!("/proc/{pid}/{file}"))?
                .write_all(range.map_line().as_bytes())?;
        }
        Ok(())
    }
}

/// `struct mount_attr` of `mount_setattr(2)` (not in the libc crate).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// Clones the mount (with `recursive`, the mount tree) at `source` as a detached mount,
/// idmaps it with the user namespace open in `userns` when given, and attaches it at
/// `target`, which must exist (a directory for a directory, a file for a file). Files owned
/// by id N on disk then show as the namespace's host id for N: 0 is the pod's root.
pub fn attach_clone(
    source: &Path,
    target: &Path,
    userns: Option<&File>,
    recursive: bool,
) -> io::Result<()> {
    let mut flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= OpenTreeFlags::AT_RECURSIVE;
    }
    let tree = rustix::mount::open_tree(rustix::fs::CWD, source, flags)?;
    if let Some(ns) = userns {
        let attr = MountAttr {
            attr_set: MOUNT_ATTR_IDMAP,
            attr_clr: 0,
            propagation: 0,
            userns_fd: ns.as_raw_fd() as u64,
        };
        let at_flags = libc::AT_EMPTY_PATH | if recursive { libc::AT_RECURSIVE } else { 0 };
        // SAFETY: a valid fd, an empty NUL-terminated path, and a live `mount_attr` of the
        // size passed; the kernel only reads it.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                tree.as_raw_fd(),
                c"".as_ptr(),
                at_flags,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    rustix::mount::move_mount(
        &tree,
        c"",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )?;
    Ok(())
}

/// Detaches whatever is mounted at `path` (lazily: users of the mount keep it); nothing
/// mounted there is fine.
pub fn detach(path: &Path) -> io::Result<()> {
    use nix::mount::{MntFlags, umount2};
    match umount2(path, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
        Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// Detaches every staging mount in `dir` (the per-container `mounts/` directory), then
/// removes it. Called before anything removes a run directory recursively: a staging mount
/// still attached there would let the removal reach into the host directory it shows.
pub fn detach_all_in(dir: &Path) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        // A stacked mount (a retry) is peeled until nothing is left (bounded: a path that
        // stays a mount point after a successful detach must not spin).
        for _ in 0..8 {
            if !crate::rootfs::is_mountpoint(&path) {
                break;
            }
            detach(&path)?;
        }
        if crate::rootfs::is_mountpoint(&path) {
            return Err(io::Error::other(format!(
                "{} is still a mount point after detaching it",
                path.display()
            )));
        }
    }
    std::fs::remove_dir_all(dir)
}

/// The `pin-namespaces` helper seen from the daemon. Without a user namespace it reports
/// `ok <pid>` once its namespaces exist. With one it first reports `userns <pid>` and waits
/// for a line on stdin while the daemon writes the mappings, so that the namespaces it makes
/// next are owned by a user namespace that already has them. EOF on its stdin ends it.
pub(crate) struct PinHelper {
    child: Child,
    /// The helper's pid (its `/proc/<pid>/ns/*` are what gets pinned).
    pub(crate) pid: i32,
}

impl PinHelper {
    /// Spawns `monitor pin-namespaces <args>` (plus `--userns` when `userns` is given) and
    /// waits until its namespaces exist.
    pub(crate) fn spawn(
        monitor: &Path,
        args: &[String],
        userns: Option<&UserNamespace>,
    ) -> Result<Self, String> {
        let mut cmd = Command::new(monitor);
        cmd.arg("pin-namespaces").args(args);
        if userns.is_some() {
            cmd.arg("--userns");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", monitor.display()))?;
        let result = Self::converse(&mut child, userns);
        match result {
            Ok(pid) => Ok(Self { child, pid }),
            Err(e) => {
                drop(child.stdin.take());
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }

    fn converse(child: &mut Child, userns: Option<&UserNamespace>) -> Result<i32, String> {
        let out = child.stdout.take().ok_or("no stdout")?;
        let mut out = BufReader::new(out);
        let mut read = |prefix: &str| -> Result<i32, String> {
            let mut line = String::new();
            out.read_line(&mut line)
                .map_err(|e| format!("read namespace helper: {e}"))?;
            match line.trim().strip_prefix(prefix) {
                Some(p) => p.parse().map_err(|_| format!("bad helper report {line:?}")),
                None => Err(line.trim().trim_start_matches("error ").to_owned()),
            }
        };
        if let Some(ns) = userns {
            let pid = read("userns ")?;
            // The maps go to our own child, whatever the line said.
            if u32::try_from(pid).ok() != Some(child.id()) {
                return Err(format!("helper {} reported pid {pid}", child.id()));
            }
            ns.write_maps(pid)
                .map_err(|e| format!("write the user namespace mappings of {pid}: {e}"))?;
            child
                .stdin
                .as_mut()
                .ok_or("no stdin")?
                .write_all(b"mapped\n")
                .map_err(|e| format!("resume namespace helper: {e}"))?;
        }
        read("ok ")
    }

    /// Ends the helper (EOF on its stdin) and reaps it: the pod keeps no process.
    pub(crate) fn finish(mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// Whether every directory above `state_dir` may be searched by others: the OCI runtime
/// resolves a user-namespaced container's rootfs (under `state_dir`) from inside the pod's
/// user namespace, as an unprivileged uid of the node. (`state_dir` itself is made 0711.)
pub fn check_searchable(state_dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    for dir in state_dir.ancestors().skip(1) {
        let mode = std::fs::metadata(dir)
            .map_err(|e| format!("stat {}: {e}", dir.display()))?
            .permissions()
            .mode();
        if mode & 0o001 == 0 {
            return Err(format!(
                "{} (above the state directory) is mode {:o}: others need search (x) \
                 permission to reach the pods' root filesystems from inside their user namespaces",
                dir.display(),
                mode & 0o7777
            ));
        }
    }
    Ok(())
}

/// The mapping the start-up probe uses (any range works; this is kubelet's first).
const PROBE_NS: UserNamespace = UserNamespace {
    uids: IdRange {
        container_id: 0,
        host_id: 65536,
        length: 65536,
    },
    gids: IdRange {
        container_id: 0,
        host_id: 65536,
        length: 65536,
    },
};

/// Whether this node can run user-namespaced pods the way rootstock does it, tried for
/// real once at start-up: a user namespace made by the helper, an idmapped clone of a
/// directory on the filesystem of `scratch` (the store's: the image trees live there), and
/// an overlay mounted over it that shows a disk-root-owned file as the namespace's root.
/// The error names the missing piece. `scratch` is created and removed again.
pub fn probe(monitor: &Path, scratch: &Path) -> Result<(), String> {
    let helper = PinHelper::spawn(monitor, &[], Some(&PROBE_NS))
        .map_err(|e| format!("user namespaces: {e}"))?;
    let ns = File::open(format!("/proc/{}/ns/user", helper.pid))
        .map_err(|e| format!("user namespaces: open the probe's namespace: {e}"));
    let result = ns.and_then(|ns| probe_overlay(&ns, scratch));
    helper.finish();
    for d in ["merged", "idmapped"] {
        let _ = detach(&scratch.join(d));
    }
    let _ = std::fs::remove_dir_all(scratch);
    result
}

fn probe_overlay(ns: &File, scratch: &Path) -> Result<(), String> {
    for d in ["merged", "idmapped"] {
        let _ = detach(&scratch.join(d));
    }
    let _ = std::fs::remove_dir_all(scratch);
    for d in ["lower", "idmapped", "upper", "work", "merged"] {
        let p = scratch.join(d);
        std::fs::create_dir_all(&p).map_err(|e| format!("create {}: {e}", p.display()))?;
    }
    attach_clone(
        &scratch.join("lower"),
        &scratch.join("idmapped"),
        Some(ns),
        false,
    )
    .map_err(|e| {
        format!(
            "idmapped mounts (kernel ≥ 5.12 and a filesystem that supports them) under {}: {e}",
            scratch.display()
        )
    })?;
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        scratch.join("idmapped").display(),
        scratch.join("upper").display(),
        scratch.join("work").display()
    );
    nix::mount::mount(
        Some("overlay"),
        &scratch.join("merged"),
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(opts.as_str()),
    )
    .map_err(|e| format!("overlayfs over an idmapped lower directory (kernel ≥ 5.19): {e}"))?;
    let shown = std::fs::metadata(scratch.join("idmapped"))
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .map_err(|e| format!("stat the idmapped probe directory: {e}"))?;
    if shown != PROBE_NS.root_uid() {
        return Err(format!(
            "idmapped mounts: a root-owned directory shows uid {shown}, not {}",
            PROBE_NS.root_uid()
        ));
    }
    Ok(())
}

/// Stages the CRI bind mounts of a container of a user-namespaced pod: each source is
/// cloned (with its submounts, as `rbind` would) to `dir/<n>`, idmapped with the pod's user
/// namespace `ns` where kubelet sent mappings, and the mount's source becomes that clone.
/// The OCI runtime resolves sources from inside the user namespace, where kubelet's
/// directories (0750 and the like) cannot be searched; `dir` sits in the container's run
/// directory, which the pod's root group may search. The clones are detached again once the
/// container exists ([`detach_all_in`]): its mount namespace holds its own copies.
pub(crate) fn stage_mounts(
    dir: &Path,
    mounts: &mut [crate::spec::BindMount],
    ns: &File,
) -> crate::error::Result<()> {
    use crate::error::Error;
    if mounts.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
    for (i, m) in mounts.iter_mut().enumerate() {
        let stage = dir.join(i.to_string());
        let is_dir = std::fs::metadata(&m.host_path)
            .map_err(|e| Error::io("stat mount source", &m.host_path, e))?
            .is_dir();
        if is_dir {
            std::fs::create_dir(&stage)
        } else {
            File::create(&stage).map(drop)
        }
        .map_err(|e| Error::io("create mount point", &stage, e))?;
        let mut attached = attach_clone(&m.host_path, &stage, m.idmapped.then_some(ns), true);
        if m.idmapped
            && let Err(e) = &attached
            && e.raw_os_error() == Some(libc::EINVAL)
        {
            // The filesystem (or one below the source) takes no idmapped mounts: mounted as
            // it is, as the CRI contract allows ("when the filesystem supports it").
            tracing::warn!(
                source = %m.host_path.display(),
                "idmapped mount not supported here ({e}); mounting it without the mapping"
            );
            attached = attach_clone(&m.host_path, &stage, None, true);
        }
        attached.map_err(|e| Error::io("attach a clone of", &m.host_path, e))?;
        m.host_path = stage;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_closed_directory_above_the_state_dir_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let closed = tmp.path().join("closed");
        let state = closed.join("state");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
        let err = check_searchable(&state).unwrap_err();
        assert!(err.contains(&format!("{} ", closed.display())), "{err}");
        assert!(err.contains("mode 700"), "{err}");
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o751)).unwrap();
        assert_eq!(check_searchable(&state), Ok(()));
    }

    #[test]
    fn detaching_the_staged_mounts_never_removes_what_they_show() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, staged) = (tmp.path().join("src"), tmp.path().join("run/mounts"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("keep"), "x").unwrap();
        std::fs::create_dir_all(staged.join("0")).unwrap();
        attach_clone(&src, &staged.join("0"), None, true).unwrap();
        // Stacked twice, as a retried create would leave it.
        attach_clone(&src, &staged.join("0"), None, true).unwrap();
        assert!(staged.join("0/keep").exists());
        detach_all_in(&staged).unwrap();
        assert!(!staged.exists());
        assert_eq!(std::fs::read_to_string(src.join("keep")).unwrap(), "x");
        detach_all_in(&staged).unwrap();
    }

    #[test]
    fn map_lines_are_what_proc_takes() {
        let r = IdRange {
            container_id: 0,
            host_id: 65536,
            length: 65536,
        };
        assert_eq!(r.map_line(), "0 65536 65536\n");
    }
}
