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
    /// Page cache (v1 `total_cache`, v2 `file`).
    pub memory_cache_bytes: Option<u64>,
    /// Page faults.
    pub page_faults: Option<u64>,
    /// Major page faults.
    pub major_page_faults: Option<u64>,
    /// Processes (tasks) in the cgroup and its children.
    pub pids: Option<u64>,
    /// The memory limit, `None` when there is none.
    pub memory_limit_bytes: Option<u64>,
    /// Processes the kernel's OOM killer killed in the cgroup.
    pub oom_kills: Option<u64>,
}

impl CgroupUsage {
    /// Adds `other` field by field (a missing side counts as zero once the other is set):
    /// a pod's usage from its containers' when its own cgroup cannot be read. The limit is
    /// left alone: the containers' limits say nothing about the pod's.
    pub fn add(&mut self, other: &CgroupUsage) {
        let sum = |x: Option<u64>, y: Option<u64>| match (x, y) {
            (None, None) => None,
            (x, y) => Some(x.unwrap_or(0).saturating_add(y.unwrap_or(0))),
        };
        self.timestamp_unix_nanos = self.timestamp_unix_nanos.max(other.timestamp_unix_nanos);
        self.cpu_usage_ns = sum(self.cpu_usage_ns, other.cpu_usage_ns);
        self.memory_usage_bytes = sum(self.memory_usage_bytes, other.memory_usage_bytes);
        self.memory_working_set_bytes = sum(
            self.memory_working_set_bytes,
            other.memory_working_set_bytes,
        );
        self.memory_rss_bytes = sum(self.memory_rss_bytes, other.memory_rss_bytes);
        self.memory_cache_bytes = sum(self.memory_cache_bytes, other.memory_cache_bytes);
        self.page_faults = sum(self.page_faults, other.page_faults);
        self.major_page_faults = sum(self.major_page_faults, other.major_page_faults);
        self.pids = sum(self.pids, other.pids);
        self.oom_kills = sum(self.oom_kills, other.oom_kills);
    }

    /// Whether the cgroup could be read at all (a pod cgroup that does not exist reads as
    /// nothing).
    pub fn is_readable(&self) -> bool {
        self.cpu_usage_ns.is_some() || self.memory_usage_bytes.is_some()
    }

    /// What may still be charged before the limit is hit (limit − working set, as
    /// cAdvisor and containerd report `available_bytes`); `None` without a limit.
    pub fn memory_available_bytes(&self) -> Option<u64> {
        Some(
            self.memory_limit_bytes?
                .saturating_sub(self.memory_working_set_bytes.unwrap_or(0)),
        )
    }
}

/// The last CPU sample of each container or pod, to report `usage_nano_cores`: the rate
/// since the previous stats call, as containerd and cAdvisor compute it (the first sample
/// has none).
#[derive(Debug, Default)]
pub struct CpuRates {
    last: Mutex<HashMap<String, (i64, u64)>>,
}

impl CpuRates {
    /// Records `usage_ns` (cumulative CPU time) at `timestamp_unix_nanos` for `key` and
    /// returns the CPU rate since its previous sample, in nanocores.
    pub fn rate(&self, key: &str, timestamp_unix_nanos: i64, usage_ns: u64) -> Option<u64> {
        let prev = lock(&self.last).insert(key.to_owned(), (timestamp_unix_nanos, usage_ns));
        let (t0, u0) = prev?;
        let dt = u64::try_from(timestamp_unix_nanos.checked_sub(t0)?)
            .ok()
            .filter(|dt| *dt > 0)?;
        // A counter that went down is a new cgroup under the same name: no rate this time.
        let du = usage_ns.checked_sub(u0)?;
        u64::try_from(u128::from(du) * 1_000_000_000 / u128::from(dt)).ok()
    }

    /// Drops `key`'s sample (its container or pod is gone).
    pub fn forget(&self, key: &str) {
        lock(&self.last).remove(key);
    }
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
                    memory_cache_bytes: keyed(&stat, "total_cache"),
                    page_faults: keyed(&stat, "total_pgfault"),
                    major_page_faults: keyed(&stat, "total_pgmajfault"),
                    pids: read_u64(&under(&root.join("pids"), cgroup).join("pids.current")),
                    memory_limit_bytes: self.memory_limit(cgroup),
                    oom_kills: self.oom_kill_count(cgroup).ok(),
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
                    memory_cache_bytes: keyed(&stat, "file"),
                    page_faults: keyed(&stat, "pgfault"),
                    major_page_faults: keyed(&stat, "pgmajfault"),
                    pids: read_u64(&dir.join("pids.current")),
                    memory_limit_bytes: self.memory_limit(cgroup),
                    oom_kills: self.oom_kill_count(cgroup).ok(),
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
/// `max_age`: only a layer's first stats call walks its tree itself (a fresh writable
/// layer is small); after that a layer with millions of files cannot stall kubelet's polls.
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

    /// The usage of `dir`. The first call for a directory walks it at once (the caller is
    /// a blocking stats thread), so a container's first stats already carry its writable
    /// layer; later calls return the cached value and start a background walk when it is
    /// stale and none is running.
    pub fn get(self: &Arc<Self>, dir: &Path) -> Option<DiskUsage> {
        {
            let mut slots = lock(&self.slots);
            let slot = slots.entry(dir.to_owned()).or_default();
            if slot.refreshed.is_some() || slot.walking {
                self.refresh_in_background(slot, dir);
                return slot.usage;
            }
            slot.walking = true;
        }
        self.finish(dir, disk_usage(dir));
        lock(&self.slots).get(dir).and_then(|s| s.usage)
    }

    fn refresh_in_background(self: &Arc<Self>, slot: &mut Slot, dir: &Path) {
        let stale = slot.refreshed.is_none_or(|t| t.elapsed() >= self.max_age);
        if !stale || slot.walking {
            return;
        }
        slot.walking = true;
        let cache = Arc::clone(self);
        let walk_dir = dir.to_owned();
        let spawned = std::thread::Builder::new()
            .name("layer-usage".to_owned())
            .spawn(move || cache.finish(&walk_dir, disk_usage(&walk_dir)));
        if let Err(e) = spawned {
            slot.walking = false;
            tracing::warn!(dir = %dir.display(), "layer usage: cannot start a walk: {e}");
        }
    }

    fn finish(&self, dir: &Path, usage: io::Result<DiskUsage>) {
        let mut slots = lock(&self.slots);
        // Forgotten meanwhile (container removed): do not resurrect the entry.
        if let Some(slot) = slots.get_mut(dir) {
            slot.walking = false;
            slot.refreshed = Some(Instant::now());
            match usage {
                Ok(u) => slot.usage = Some(u),
                Err(e) => tracing::debug!(dir = %dir.display(), "layer usage: {e}"),
            }
        }
    }

    /// Drops `dir`'s entry (its container is gone).
    pub fn forget(&self, dir: &Path) {
        lock(&self.slots).remove(dir);
    }
}

#[cfg(test)]
mod tests {
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
        // The kernel's "no limit": i64::MAX rounded down to a page.
        w(
            "memory/pod/c/memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        let u = CgroupLayout::detect_at(v1.path()).usage("/pod/c");
        assert_eq!(u.memory_limit_bytes, None);
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
        fs::write(d.join("memory.max"), "4096\n").unwrap();
        let u = CgroupLayout::detect_at(v2.path()).usage("/pod/c");
        assert_eq!(u.memory_limit_bytes, Some(4096));
        assert_eq!(u.memory_available_bytes(), Some(4096));
        assert_eq!(u.cpu_usage_ns, Some(5000));
        assert_eq!(u.memory_working_set_bytes, Some(0));
        assert_eq!(u.pids, None);
    }

    #[test]
    fn disk_usage_counts_files_and_the_first_get_has_it() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("sub")).unwrap();
        fs::write(d.path().join("sub/f"), vec![1u8; 64 * 1024]).unwrap();
        let u = disk_usage(d.path()).unwrap();
        assert_eq!(u.inodes, 3);
        assert!(u.bytes >= 64 * 1024);
        let cache = DiskUsageCache::new(Duration::from_secs(10));
        assert_eq!(cache.get(d.path()).unwrap().inodes, 3);
        // Cached: a new file shows only after a refresh.
        fs::write(d.path().join("g"), b"x").unwrap();
        assert_eq!(cache.get(d.path()).unwrap().inodes, 3);
        cache.forget(d.path());
        assert_eq!(cache.get(d.path()).unwrap().inodes, 4);
    }

    #[test]
    fn cpu_rate_needs_two_samples() {
        let r = CpuRates::default();
        assert_eq!(r.rate("c", 1_000_000_000, 5_000_000_000), None);
        // 0.5 s of CPU in 2 s: a quarter of a core.
        assert_eq!(r.rate("c", 3_000_000_000, 5_500_000_000), Some(250_000_000));
        assert_eq!(
            r.rate("c", 3_000_000_000, 5_600_000_000),
            None,
            "no time passed"
        );
        assert_eq!(r.rate("c", 4_000_000_000, 1), None, "counter reset");
        r.forget("c");
        assert_eq!(r.rate("c", 5_000_000_000, 2), None);
    }

    #[test]
    fn available_bytes_is_limit_minus_working_set() {
        let u = CgroupUsage {
            memory_working_set_bytes: Some(300),
            memory_limit_bytes: Some(1000),
            ..Default::default()
        };
        assert_eq!(u.memory_available_bytes(), Some(700));
        let u = CgroupUsage {
            memory_limit_bytes: None,
            ..u
        };
        assert_eq!(u.memory_available_bytes(), None);
    }

    #[test]
    fn add_sums_what_either_side_has_and_keeps_the_limit() {
        let mut pod = CgroupUsage {
            timestamp_unix_nanos: 5,
            cpu_usage_ns: Some(100),
            memory_limit_bytes: Some(1 << 20),
            ..Default::default()
        };
        pod.add(&CgroupUsage {
            timestamp_unix_nanos: 7,
            cpu_usage_ns: Some(50),
            memory_usage_bytes: Some(4096),
            memory_limit_bytes: Some(1),
            ..Default::default()
        });
        assert_eq!(pod.timestamp_unix_nanos, 7);
        assert_eq!(pod.cpu_usage_ns, Some(150));
        assert_eq!(pod.memory_usage_bytes, Some(4096));
        assert_eq!(pod.pids, None, "neither side had it");
        assert_eq!(pod.memory_limit_bytes, Some(1 << 20));
        assert!(pod.is_readable());
        assert!(!CgroupUsage::default().is_readable());
    }
}
