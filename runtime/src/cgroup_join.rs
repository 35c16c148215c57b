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
}

fn enter_one(hierarchy: &Path, cgroup: &str, pid: u32) -> io::Result<()> {
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
