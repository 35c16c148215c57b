//! Usage numbers for the CRI stats RPCs: cgroup counters (read on each call: they are a few
//! small files) and the writable layer's disk usage (a tree walk, so cached and refreshed
//! in the background: kubelet polls every container every 10 s).

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cgroup::CgroupLayout;
use crate::runtime::lock;
use crate::util::now_unix_nanos;

/// What a cgroup (a container's or a pod's) has used, each `None` when its controller or
/// file is missing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupUsage {
    /// When the files were read.
    pub timestamp_unix_nanos: i64,
    /// Cumulative CPU time, nanoseconds.
    pub cpu_usage_ns: Option<u64>,
    /// Memory charged, page cache included.
    pub memory_usage_bytes: Option<u64>,
    /// Usage minus inactive file pages: what kubelet evicts on (cAdvisor's definition).
    pub memory_working_set_bytes: Option<u64>,
    /// Anonymous memory.
    pub memory_rss_bytes: Option<u64>,
    /// Page faults.
    pub page_faults: Option<u64>,
    /// Major page faults.
    pub major_page_faults: Option<u64>,
    /// Processes (tasks) in the cgroup and its children.
    pub pids: Option<u64>,
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

fn under(base: &Path, cgroup: &str) -> PathBuf {
    base.join(cgroup.trim_start_matches('/'))
}

impl CgroupLayout {
    /// Reads the usage counters of `cgroup` (`/kubepods/pod1/<id>`). Hierarchical totals
    /// (v1 `total_*`), so a pod cgroup counts its containers.
    pub fn usage(&self, cgroup: &str) -> CgroupUsage {
        let timestamp_unix_nanos = now_unix_nanos();
        match self {
            CgroupLayout::V1 { root } => {
                let mem = under(&root.join("memory"), cgroup);
                let stat = fs::read_to_string(mem.join("memory.stat")).unwrap_or_default();
                let usage = read_u64(&mem.join("memory.usage_in_bytes"));
                CgroupUsage {
                    timestamp_unix_nanos,
                    cpu_usage_ns: read_u64(
                        &under(&root.join("cpuacct"), cgroup).join("cpuacct.usage"),
                    ),
                    memory_usage_bytes: usage,
                    memory_working_set_bytes: usage.map(|u| {
                        u.saturating_sub(keyed(&stat, "total_inactive_file").unwrap_or(0))
                    }),
                    memory_rss_bytes: keyed(&stat, "total_rss"),
                    page_faults: keyed(&stat, "total_pgfault"),
                    major_page_faults: keyed(&stat, "total_pgmajfault"),
                    pids: read_u64(&under(&root.join("pids"), cgroup).join("pids.current")),
                }
            }
            CgroupLayout::V2 { root } => {
                let dir = under(root, cgroup);
                let stat = fs::read_to_string(dir.join("memory.stat")).unwrap_or_default();
                let cpu = fs::read_to_string(dir.join("cpu.stat")).unwrap_or_default();
                let usage = read_u64(&dir.join("memory.current"));
                CgroupUsage {
                    timestamp_unix_nanos,
                    cpu_usage_ns: keyed(&cpu, "usage_usec").map(|us| us.saturating_mul(1000)),
                    memory_usage_bytes: usage,
                    memory_working_set_bytes: usage
                        .map(|u| u.saturating_sub(keyed(&stat, "inactive_file").unwrap_or(0))),
                    memory_rss_bytes: keyed(&stat, "anon"),
                    page_faults: keyed(&stat, "pgfault"),
                    major_page_faults: keyed(&stat, "pgmajfault"),
                    pids: read_u64(&dir.join("pids.current")),
                }
            }
        }
    }
}

/// Disk usage of a directory tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskUsage {
    /// When the walk finished.
    pub timestamp_unix_nanos: i64,
    /// Allocated bytes (`st_blocks * 512`, as `du`).
    pub bytes: u64,
    /// Inodes.
    pub inodes: u64,
}

/// Walks `dir` without following symlinks. Entries that vanish meanwhile are skipped: the
/// container keeps writing while we count.
pub fn disk_usage(dir: &Path) -> io::Result<DiskUsage> {
    use std::os::unix::fs::MetadataExt;
    let mut out = DiskUsage::default();
    let mut stack = vec![dir.to_owned()];
    let root = fs::symlink_metadata(dir)?;
    out.bytes += root.blocks() * 512;
    out.inodes += 1;
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = fs::symlink_metadata(e.path()) else {
                continue;
            };
            out.bytes += m.blocks() * 512;
            out.inodes += 1;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    out.timestamp_unix_nanos = now_unix_nanos();
    Ok(out)
}

#[derive(Debug, Default)]
struct Slot {
    usage: Option<DiskUsage>,
    refreshed: Option<Instant>,
    walking: bool,
}

/// Writable-layer usage by directory, refreshed by a background thread when older than
/// `max_age`: a stats call never walks a tree itself, so a layer with millions of files
/// cannot stall kubelet's polls.
#[derive(Debug)]
pub struct DiskUsageCache {
    max_age: Duration,
    slots: Mutex<HashMap<PathBuf, Slot>>,
}

impl DiskUsageCache {
    /// A cache whose entries are refreshed when older than `max_age`.
    pub fn new(max_age: Duration) -> Arc<Self> {
        Arc::new(Self {
            max_age,
            slots: Mutex::new(HashMap::new()),
        })
    }

    /// The last known usage of `dir` (`None` until the first walk finished), starting a
    /// background walk when it is missing or stale and none is running.
    pub fn get(self: &Arc<Self>, dir: &Path) -> Option<DiskUsage> {
        let mut slots = lock(&self.slots);
        let slot = slots.entry(dir.to_owned()).or_default();
        let stale = slot.refreshed.is_none_or(|t| t.elapsed() >= self.max_age);
        if stale && !slot.walking {
            slot.walking = true;
            let cache = Arc::clone(self);
            let walk_dir = dir.to_owned();
            let spawned = std::thread::Builder::new()
                .name("layer-usage".to_owned())
                .spawn(move || {
                    let dir = walk_dir;
                    let usage = disk_usage(&dir);
                    let mut slots = lock(&cache.slots);
                    // Forgotten meanwhile (container removed): do not resurrect the entry.
                    if let Some(slot) = slots.get_mut(&dir) {
                        slot.walking = false;
                        slot.refreshed = Some(Instant::now());
                        match usage {
                            Ok(u) => slot.usage = Some(u),
                            Err(e) => {
                                tracing::debug!(dir = %dir.display(), "layer usage: {e}")
                            }
                        }
                    }
                });
            if let Err(e) = spawned {
                slot.walking = false;
                tracing::warn!(dir = %dir.display(), "layer usage: cannot start a walk: {e}");
            }
        }
        slot.usage
    }

    /// Drops `dir`'s entry (its container is gone).
    pub fn forget(&self, dir: &Path) {
        lock(&self.slots).remove(dir);
    }
}

/// One network interface's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceUsage {
    /// Interface name.
    pub name: String,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Transmit errors.
    pub tx_errors: u64,
}

/// The interfaces (but `lo`, which kubelet and cAdvisor leave out) of the network namespace
/// process `pid` is in: `/proc/<pid>/net/dev` shows that namespace's counters without
/// entering it, which a netlink socket would need a thread of its own for.
pub fn net_dev(pid: i32) -> io::Result<Vec<InterfaceUsage>> {
    Ok(parse_net_dev(&fs::read_to_string(format!(
        "/proc/{pid}/net/dev"
    ))?))
}

fn parse_net_dev(text: &str) -> Vec<InterfaceUsage> {
    text.lines()
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let name = name.trim();
            if name == "lo" {
                return None;
            }
            let f: Vec<u64> = rest
                .split_whitespace()
                .map(|v| v.parse().ok())
                .collect::<Option<_>>()?;
            // rx: bytes packets errs drop fifo frame compressed multicast, then tx: bytes
            // packets errs …
            (f.len() >= 11).then(|| InterfaceUsage {
                name: name.to_owned(),
                rx_bytes: f[0],
                rx_errors: f[2],
                tx_bytes: f[8],
                tx_errors: f[10],
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn net_dev_skips_headers_and_lo() {
        let text = "Inter-|   Receive                            |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0\n  eth0:    5000      40    2    0    0     0          0         0     3000      30    1    0    0     0       0          0\n";
        let got = parse_net_dev(text);
        assert_eq!(
            got,
            vec![InterfaceUsage {
                name: "eth0".into(),
                rx_bytes: 5000,
                rx_errors: 2,
                tx_bytes: 3000,
                tx_errors: 1,
            }]
        );
    }

    use super::*;

    #[test]
    fn v1_and_v2_usage_and_working_set() {
        let v1 = tempfile::tempdir().unwrap();
        let w = |p: &str, t: &str| {
            let p = v1.path().join(p);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, t).unwrap();
        };
        w("cpuacct/pod/c/cpuacct.usage", "1234\n");
        w("memory/pod/c/memory.usage_in_bytes", "1000\n");
        w(
            "memory/pod/c/memory.stat",
            "cache 10\ntotal_inactive_file 300\ntotal_rss 500\ntotal_pgfault 7\n",
        );
        w("pids/pod/c/pids.current", "3\n");
        let u = CgroupLayout::detect_at(v1.path()).usage("/pod/c");
        assert_eq!(u.cpu_usage_ns, Some(1234));
        assert_eq!(u.memory_working_set_bytes, Some(700));
        assert_eq!(u.memory_rss_bytes, Some(500));
        assert_eq!(u.pids, Some(3));

        let v2 = tempfile::tempdir().unwrap();
        fs::write(v2.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        let d = v2.path().join("pod/c");
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("cpu.stat"), "usage_usec 5\nuser_usec 3\n").unwrap();
        fs::write(d.join("memory.current"), "100\n").unwrap();
        fs::write(d.join("memory.stat"), "anon 40\ninactive_file 150\n").unwrap();
        let u = CgroupLayout::detect_at(v2.path()).usage("/pod/c");
        assert_eq!(u.cpu_usage_ns, Some(5000));
        assert_eq!(u.memory_working_set_bytes, Some(0));
        assert_eq!(u.pids, None);
    }

    #[test]
    fn disk_usage_counts_files_and_the_cache_fills_in_the_background() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("sub")).unwrap();
        fs::write(d.path().join("sub/f"), vec![1u8; 64 * 1024]).unwrap();
        let u = disk_usage(d.path()).unwrap();
        assert_eq!(u.inodes, 3);
        assert!(u.bytes >= 64 * 1024);
        let cache = DiskUsageCache::new(Duration::from_secs(10));
        let deadline = Instant::now() + Duration::from_secs(5);
        let got = loop {
            if let Some(u) = cache.get(d.path()) {
                break u;
            }
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(got.inodes, 3);
    }
}
