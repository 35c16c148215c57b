//! Moving rootstock's own long-lived processes out of the daemon's cgroup, and checking
//! the cgroup paths clients send.
//!
//! A service manager that restarts the daemon by killing its whole cgroup (systemd's
//! default `KillMode=control-group`, a DaemonSet's container being stopped) would take
//! every monitor, and with it every container's log and exit record, along. So each
//! monitor moves itself into [`MONITORS_CGROUP`] and each pod-init into a leaf of its pod's
//! cgroup before doing anything else, in every hierarchy: on cgroup v1 each controller's,
//! the named `systemd` one and the hybrid `unified` cgroup2 (systemd tracks services in
//! those); on v2 the one tree, where only leaves may hold processes once controllers are
//! enabled below a node — hence a leaf for pod-init rather than the pod cgroup itself.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use crate::cgroup_layout::CgroupLayout;
use crate::error::{Error, Result};

/// The cgroup (in every hierarchy) the monitors live in.
pub const MONITORS_CGROUP: &str = "/rootstock-monitors";

/// A client's `cgroup_parent`, cleaned: absolute, `.` and empty components dropped, and
/// refused when a component is `..` (it would leave the cgroup root: `../../x` named a
/// directory outside `/sys/fs/cgroup/<controller>`), holds a NUL, or names nothing.
pub fn clean_cgroup_parent(parent: &str) -> Result<String> {
    let bad = |why: &str| {
        Err(Error::InvalidArgument(format!(
            "cgroup_parent {parent:?} {why}"
        )))
    };
    if parent.contains('\0') {
        return bad("holds a NUL byte");
    }
    let mut clean = String::new();
    for c in Path::new(parent).components() {
        match c {
            Component::Normal(n) => {
                clean.push('/');
                clean.push_str(&n.to_string_lossy());
            }
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return bad("must stay under the cgroup root (no '..')");
            }
        }
    }
    if clean.is_empty() {
        return bad("names the cgroup root itself");
    }
    Ok(clean)
}

impl CgroupLayout {
    /// Every mounted hierarchy: on v1 each directory under the root (symlinks such as
    /// `cpu,cpuacct` alias a real one), on v2 the root.
    pub fn hierarchies(&self) -> Vec<PathBuf> {
        match self {
            CgroupLayout::V1 { root } => fs::read_dir(root)
                .map(|rd| {
                    rd.filter_map(|e| e.ok())
                        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                        .map(|e| e.path())
                        .filter(|p| p.join("cgroup.procs").exists())
                        .collect()
                })
                .unwrap_or_default(),
            CgroupLayout::V2 { root } => vec![root.clone()],
        }
    }

    /// Creates `cgroup` (an absolute cgroup path, already checked) in every hierarchy and
    /// moves process `pid` (0: the caller) into it. Every hierarchy is tried; the errors of
    /// those that failed are returned together.
    pub fn enter(&self, cgroup: &str, pid: u32) -> std::result::Result<(), String> {
        let mut errors = Vec::new();
        for h in self.hierarchies() {
            if let Err(e) = enter_one(&h, cgroup, pid) {
                errors.push(format!("{}: {e}", h.display()));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!("join cgroup {cgroup}: {}", errors.join("; ")))
        }
    }

    /// Removes `cgroup` (empty by now) from every hierarchy; one already gone is fine.
    /// Retries briefly: a process SIGKILLed a moment ago may still be leaving it.
    pub fn remove(&self, cgroup: &str) -> std::result::Result<(), String> {
        for h in self.hierarchies() {
            let dir = h.join(cgroup.trim_start_matches('/'));
            let mut last = Ok(());
            for _ in 0..50 {
                last = match fs::remove_dir(&dir) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(e),
                };
                if last.is_ok() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            last.map_err(|e| format!("remove {}: {e}", dir.display()))?;
        }
        Ok(())
    }

    /// [`CgroupLayout::enter`] for the calling process, which must be single-threaded,
    /// without the RCU grace period a `cgroup.procs` write waits for (the global threadgroup
    /// lock: 5–16 ms per burst of moves, measured here, on every pod start's path). On each
    /// v1 hierarchy the one thread moves itself through `tasks` ("0": the kernel skips that
    /// lock for the current thread). A v2 hierarchy (the whole tree, or hybrid's `unified`)
    /// has no such file: its `cgroup` directory is made and returned, for the caller to fork
    /// into with [`fork_into`]; the caller itself stays where it is there. Every hierarchy
    /// is tried; the errors of those that failed come back together beside the v2 directory.
    pub fn enter_self_v1(
        &self,
        cgroup: &str,
    ) -> (Option<PathBuf>, std::result::Result<(), String>) {
        let mut errors = Vec::new();
        let mut v2 = None;
        for h in self.hierarchies() {
            let made = make_dirs(&h, cgroup).and_then(|dir| {
                if h.join("tasks").exists() {
                    fs::write(dir.join("tasks"), "0")
                } else {
                    v2 = Some(dir);
                    Ok(())
                }
            });
            if let Err(e) = made {
                errors.push(format!("{}: {e}", h.display()));
            }
        }
        let joined = if errors.is_empty() {
            Ok(())
        } else {
            Err(format!("join cgroup {cgroup}: {}", errors.join("; ")))
        };
        (v2, joined)
    }
}

/// fork(2) whose child starts in the v2 cgroup directory `into` (clone3 with
/// CLONE_INTO_CGROUP, Linux 5.7): no process is moved, so there is no grace period to wait
/// for. Where clone3 refuses (an older kernel, a cgroup that takes no process), a plain fork
/// whose child writes itself into `into/cgroup.procs`, as [`CgroupLayout::enter`] would.
/// Returns the child's pid in the parent and 0 in the child.
///
/// # Safety
/// As for fork(2): the caller is single-threaded, so the child is a complete copy of it.
pub unsafe fn fork_into(into: Option<&Path>) -> io::Result<libc::pid_t> {
    if let Some(dir) = into
        && let Ok(fd) = fs::File::open(dir)
    {
        use std::os::fd::AsRawFd;
        // struct clone_args up to `cgroup` (CLONE_ARGS_SIZE_VER2).
        let mut args = [0u64; 11];
        args[0] = 0x2_0000_0000; // CLONE_INTO_CGROUP
        args[4] = libc::SIGCHLD as u64; // exit_signal
        args[10] = fd.as_raw_fd() as u64; // cgroup
        // SAFETY: `args` is a valid clone_args of the size passed; without CLONE_VM
        // the child gets a copy of this (single-threaded, per the caller) process, as
        // with fork. Nothing in this crate relies on glibc's cached thread id, which a
        // raw clone3 leaves stale in the child.
        let pid = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                args.as_mut_ptr(),
                std::mem::size_of_val(&args),
            )
        };
        if pid >= 0 {
            return Ok(pid as libc::pid_t);
        }
    }
    // SAFETY: the caller is single-threaded (this function's contract).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0
        && let Some(dir) = into
        && let Err(e) = fs::write(dir.join("cgroup.procs"), "0")
    {
        eprintln!("join cgroup {}: {e}", dir.display());
    }
    Ok(pid)
}

/// Makes `cgroup` in `hierarchy` (each level), returning its directory.
fn make_dirs(hierarchy: &Path, cgroup: &str) -> io::Result<PathBuf> {
    let mut dir = hierarchy.to_owned();
    // A v1 cpuset cgroup starts with empty cpus/mems and takes no process until they are
    // set: copy the parent's at each level (as runc does).
    let cpuset = hierarchy.join("cpuset.cpus").exists();
    for part in cgroup.split('/').filter(|p| !p.is_empty()) {
        let parent = dir.clone();
        dir.push(part);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        if cpuset {
            for file in ["cpuset.cpus", "cpuset.mems"] {
                let mine = fs::read_to_string(dir.join(file))?;
                if mine.trim().is_empty() {
                    fs::write(dir.join(file), fs::read_to_string(parent.join(file))?)?;
                }
            }
        }
    }
    Ok(dir)
}

fn enter_one(hierarchy: &Path, cgroup: &str, pid: u32) -> io::Result<()> {
    let dir = make_dirs(hierarchy, cgroup)?;
    fs::write(dir.join("cgroup.procs"), pid.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_parent_is_cleaned_and_kept_under_the_root() {
        assert_eq!(
            clean_cgroup_parent("/kubepods/burstable/pod1").unwrap(),
            "/kubepods/burstable/pod1"
        );
        assert_eq!(
            clean_cgroup_parent("kubepods//./pod1/").unwrap(),
            "/kubepods/pod1"
        );
        for bad in ["../../x", "/kubepods/../../x", "/", "", "a\0b", "/a/.."] {
            let err = clean_cgroup_parent(bad).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument, "{bad:?}");
        }
    }

    #[test]
    fn enter_creates_the_cgroup_in_every_v1_hierarchy_with_cpuset_inherited() {
        let root = tempfile::tempdir().unwrap();
        for h in ["cpuset", "pids", "systemd"] {
            fs::create_dir(root.path().join(h)).unwrap();
            fs::write(root.path().join(h).join("cgroup.procs"), "").unwrap();
        }
        fs::write(root.path().join("cpuset/cpuset.cpus"), "0-1\n").unwrap();
        fs::write(root.path().join("cpuset/cpuset.mems"), "0\n").unwrap();
        // A synthetic tree: a real kernel creates the interface files with mkdir.
        for d in ["cpuset/pod", "cpuset/pod/init"] {
            fs::create_dir(root.path().join(d)).unwrap();
            fs::write(root.path().join(d).join("cpuset.cpus"), "").unwrap();
            fs::write(root.path().join(d).join("cpuset.mems"), "").unwrap();
        }
        let layout = CgroupLayout::detect_at(root.path());
        layout.enter("/pod/init", 42).unwrap();
        for h in ["cpuset", "pids", "systemd"] {
            let procs = root.path().join(h).join("pod/init/cgroup.procs");
            assert_eq!(fs::read_to_string(procs).unwrap(), "42");
        }
        let cpus = fs::read_to_string(root.path().join("cpuset/pod/init/cpuset.cpus")).unwrap();
        assert_eq!(cpus, "0-1\n");
    }

    #[test]
    fn enter_self_v1_moves_the_thread_through_tasks_and_hands_back_the_v2_directory() {
        let root = tempfile::tempdir().unwrap();
        // Hybrid: two v1 hierarchies (with `tasks`) and `unified` (cgroup2, without).
        for h in ["pids", "systemd", "unified"] {
            fs::create_dir(root.path().join(h)).unwrap();
            fs::write(root.path().join(h).join("cgroup.procs"), "").unwrap();
            if h != "unified" {
                fs::write(root.path().join(h).join("tasks"), "").unwrap();
            }
        }
        let layout = CgroupLayout::detect_at(root.path());
        let (v2, joined) = layout.enter_self_v1(MONITORS_CGROUP);
        joined.unwrap();
        for h in ["pids", "systemd"] {
            let dir = root.path().join(h).join("rootstock-monitors");
            assert_eq!(fs::read_to_string(dir.join("tasks")).unwrap(), "0");
            assert!(!dir.join("cgroup.procs").exists(), "{h}: no process move");
        }
        let unified = root.path().join("unified/rootstock-monitors");
        assert_eq!(v2, Some(unified.clone()));
        assert!(!unified.join("cgroup.procs").exists());
    }

    #[test]
    fn enter_on_v2_uses_the_one_hierarchy() {
        let root = tempfile::tempdir().unwrap();
        fs::write(root.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        fs::write(root.path().join("cgroup.procs"), "").unwrap();
        let layout = CgroupLayout::detect_at(root.path());
        assert_eq!(layout.hierarchies(), vec![root.path().to_owned()]);
        layout.enter(MONITORS_CGROUP, 7).unwrap();
        let procs = root.path().join("rootstock-monitors/cgroup.procs");
        assert_eq!(fs::read_to_string(procs).unwrap(), "7");
    }
}
