//! Everything a daemon can leave on the host, listed per kind, for the reliability tests
//! (crash matrix, reboot, soak): a snapshot taken with only the long-lived objects in place
//! is the baseline, and every later snapshot must list exactly the same items.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rootstock_test_e2e::daemon::Daemon;
use rootstock_test_e2e::network::TestNet;

/// A cgroup root private to one test (kubelet-style pod cgroups `<root>/<pod>` below it), so
/// that the test counts only its own cgroups while other tests run.
pub struct CgroupRoot(pub String);

impl CgroupRoot {
    pub fn new(tag: &str) -> Self {
        Self(format!("/rse2e-{tag}-{}", std::process::id()))
    }

    /// The pod cgroup kubelet would send for pod `name`.
    pub fn pod_parent(&self, name: &str) -> String {
        format!("{}/{name}", self.0)
    }

    /// Every cgroup below a pod cgroup (containers, pod-init leaves), in every hierarchy: the
    /// pod cgroups themselves are kubelet's, which the runtime never removes.
    pub fn leaves(&self) -> Vec<String> {
        let mut out = Vec::new();
        for h in hierarchies() {
            let root = h.join(self.0.trim_start_matches('/'));
            for pod in subdirs(&root) {
                for leaf in subdirs(&pod) {
                    out.push(
                        leaf.strip_prefix("/sys/fs/cgroup")
                            .unwrap()
                            .display()
                            .to_string(),
                    );
                }
            }
        }
        out.sort();
        out
    }

    /// Removes the whole tree (after the test removed its pods), deepest first.
    pub fn remove(&self) {
        for h in hierarchies() {
            let root = h.join(self.0.trim_start_matches('/'));
            for pod in subdirs(&root) {
                for leaf in subdirs(&pod) {
                    let _ = std::fs::remove_dir(leaf);
                }
                let _ = std::fs::remove_dir(pod);
            }
            let _ = std::fs::remove_dir(root);
        }
    }

    /// Every process in a cgroup of this root (for the reboot simulation's kill).
    pub fn processes(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        let root = Path::new("/sys/fs/cgroup/pids").join(self.0.trim_start_matches('/'));
        let mut stack = vec![root];
        while let Some(dir) = stack.pop() {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            pids.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            stack.extend(subdirs(&dir));
        }
        pids
    }
}

impl Drop for CgroupRoot {
    fn drop(&mut self) {
        self.remove();
    }
}

fn hierarchies() -> Vec<PathBuf> {
    // `cpu,cpuacct`-style symlinks alias a real mount: directories only.
    entries(Path::new("/sys/fs/cgroup"), true)
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    entries(dir, true)
}

fn names(dir: &Path) -> Vec<String> {
    entries(dir, false)
        .iter()
        .filter_map(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .collect()
}

/// The entries of `dir` (only directories, not symlinks to them, with `dirs_only`), sorted;
/// none when it cannot be read.
fn entries(dir: &Path, dirs_only: bool) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| !dirs_only || e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Processes whose command line names `dir` (monitors carry their run directory; pod-init
/// and containers carry no host path and are counted through their cgroups).
pub fn processes_naming(dir: &Path) -> Vec<i32> {
    let needle = dir.display().to_string();
    let me = std::process::id() as i32;
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) && super::is_live(pid) {
            pids.push(pid);
        }
    }
    pids.sort();
    pids
}

/// Every kind of thing a pod or container leaves on the host, by name.
pub type Footprint = BTreeMap<&'static str, Vec<String>>;

/// What the daemon (with `net` and `cgroups`) holds on the host right now.
pub fn take(daemon: &Daemon, net: &TestNet, cgroups: &CgroupRoot) -> Footprint {
    let mut monitors: Vec<String> = processes_naming(&daemon.state_dir)
        .into_iter()
        .map(|p| {
            let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            // The monitor's `--id <container>`: stable across snapshots, unlike a pid.
            let args: Vec<String> = cmd
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            match args.iter().position(|a| a == "--id") {
                Some(i) => format!(
                    "monitor of {}",
                    args.get(i + 1).cloned().unwrap_or_default()
                ),
                None => format!("process {}", args.join(" ")),
            }
        })
        .collect();
    monitors.sort();
    let mut mounts = super::mounts_under(&daemon.state_dir);
    mounts.extend(super::mounts_under(&daemon.root_dir));
    mounts.sort();
    let mut veths = net.bridge_ports();
    veths.sort();
    let mut ips = net.reserved_ips();
    ips.sort();
    let runc: Vec<String> = names(&daemon.state_dir.join("runtime"))
        .into_iter()
        .flat_map(|h| {
            names(&daemon.state_dir.join("runtime").join(&h))
                .into_iter()
                .map(move |c| format!("{h}/{c}"))
        })
        .collect();
    BTreeMap::from([
        ("mounts under the root and state dirs", mounts),
        ("cgroups below the pod cgroups", cgroups.leaves()),
        ("veths on the bridge", veths),
        ("host-local IPAM reservations", ips),
        ("CNI result cache entries", net.cache_entries()),
        ("monitor processes", monitors),
        ("OCI runtime states", runc),
        (
            "container run dirs",
            names(&daemon.state_dir.join("containers")),
        ),
        ("sandbox dirs", names(&daemon.state_dir.join("sandboxes"))),
        (
            "writable layers",
            names(&daemon.root_dir.join("containers")),
        ),
        ("image trees", names(&daemon.root_dir.join("trees"))),
    ])
}

/// Fails naming every kind whose items differ from the baseline, with what is extra and
/// what is missing.
pub fn assert_same(baseline: &Footprint, now: &Footprint, when: &str) {
    let mut problems = Vec::new();
    for (kind, before) in baseline {
        let after = &now[kind];
        let extra: Vec<&String> = after.iter().filter(|x| !before.contains(x)).collect();
        let missing: Vec<&String> = before.iter().filter(|x| !after.contains(x)).collect();
        if !extra.is_empty() || !missing.is_empty() {
            problems.push(format!("{kind}: left over {extra:?}, missing {missing:?}"));
        }
    }
    assert!(problems.is_empty(), "{when}:\n  {}", problems.join("\n  "));
}
