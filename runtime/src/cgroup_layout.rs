//! Where a node's cgroups are and what rootstock reads of them directly: the layout, a
//! cgroup's processes and its OOM kill count. std only: `rootstock-monitor` includes this
//! file (`#[path]`) to read those when its container exits; the daemon reaches it through
//! [`crate::cgroup`].

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Which cgroup hierarchy layout the node uses, and where it is mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupLayout {
    /// One hierarchy per controller under `root` (`<root>/memory`, `<root>/pids`…).
    V1 {
        /// Usually `/sys/fs/cgroup`.
        root: PathBuf,
    },
    /// The unified hierarchy at `root`.
    V2 {
        /// Usually `/sys/fs/cgroup`.
        root: PathBuf,
    },
}

/// v1 controllers whose hierarchy lists a cgroup's processes, in order of preference
/// (every container joins them all; `pids` is the cheapest to read).
const V1_PROCS_CONTROLLERS: [&str; 4] = ["pids", "memory", "cpu", "devices"];

impl CgroupLayout {
    /// Detects the layout under `/sys/fs/cgroup`: v2 when it is itself the unified hierarchy.
    /// (A hybrid v1 node has an empty cgroup2 at `/sys/fs/cgroup/unified`: that is still v1.)
    pub fn detect() -> Self {
        Self::detect_at(Path::new("/sys/fs/cgroup"))
    }

    /// Detects the layout of a cgroup mount at `root` (tests use synthetic trees).
    pub fn detect_at(root: &Path) -> Self {
        if root.join("cgroup.controllers").exists() {
            CgroupLayout::V2 {
                root: root.to_owned(),
            }
        } else {
            CgroupLayout::V1 {
                root: root.to_owned(),
            }
        }
    }

    /// Whether this is the unified (v2) hierarchy.
    pub fn is_v2(&self) -> bool {
        matches!(self, CgroupLayout::V2 { .. })
    }

    pub(crate) fn join(base: &Path, cgroup: &str) -> PathBuf {
        base.join(cgroup.trim_start_matches('/'))
    }

    /// How many times the kernel's OOM killer killed a process in `cgroup` (a path such as
    /// `/kubepods/pod1/<id>`): v1 `memory.oom_control` `oom_kill`, v2 `memory.events`
    /// `oom_kill`. Must be read before the cgroup is removed.
    pub fn oom_kill_count(&self, cgroup: &str) -> io::Result<u64> {
        let file = match self {
            CgroupLayout::V1 { root } => {
                Self::join(&root.join("memory"), cgroup).join("memory.oom_control")
            }
            CgroupLayout::V2 { root } => Self::join(root, cgroup).join("memory.events"),
        };
        let text = fs::read_to_string(file)?;
        Ok(parse_keyed(&text, "oom_kill").unwrap_or(0))
    }

    /// The directory that lists `cgroup`'s processes, if it exists.
    pub fn procs_dir(&self, cgroup: &str) -> Option<PathBuf> {
        match self {
            CgroupLayout::V1 { root } => V1_PROCS_CONTROLLERS
                .iter()
                .map(|c| Self::join(&root.join(c), cgroup))
                .find(|d| d.join("cgroup.procs").exists()),
            CgroupLayout::V2 { root } => {
                let d = Self::join(root, cgroup);
                d.join("cgroup.procs").exists().then_some(d)
            }
        }
    }

    /// Pids of the processes in `cgroup` (not its descendants); empty when it does not exist.
    pub fn procs(&self, cgroup: &str) -> io::Result<Vec<i32>> {
        let Some(dir) = self.procs_dir(cgroup) else {
            return Ok(Vec::new());
        };
        match fs::read_to_string(dir.join("cgroup.procs")) {
            Ok(text) => Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Every directory that exists for `cgroup` (v1: one per mounted controller).
    pub fn dirs(&self, cgroup: &str) -> Vec<PathBuf> {
        match self {
            CgroupLayout::V1 { root } => fs::read_dir(root)
                .map(|rd| {
                    rd.filter_map(|e| e.ok())
                        // Skip the `cpu,cpuacct`-style symlinks: they alias a real mount.
                        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                        .map(|e| Self::join(&e.path(), cgroup))
                        .filter(|d| d.is_dir())
                        .collect()
                })
                .unwrap_or_default(),
            CgroupLayout::V2 { root } => {
                let d = Self::join(root, cgroup);
                if d.is_dir() { vec![d] } else { Vec::new() }
            }
        }
    }
}

/// The number after `key` in a flat keyed file (`memory.events`, `memory.oom_control`).
pub(crate) fn parse_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let mut it = line.split_whitespace();
        (it.next() == Some(key))
            .then(|| it.next().and_then(|v| v.parse().ok()))
            .flatten()
    })
}
