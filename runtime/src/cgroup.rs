//! The cgroup work the runtime does itself. The OCI runtime creates and removes the
//! container's cgroup and applies the create-time limits (it converts OCI's v1-style
//! values to cgroup v2 files with the formulas [`v2_settings`] uses, and writes the
//! `unified` map as given). rootstock reads the OOM kill count, the processes left in a
//! cgroup and the usage counters (`stats`), and on cgroup v2 applies
//! UpdateContainerResources itself ([`CgroupLayout::apply_v2`]); on v1 that goes through
//! `<runtime> update`. cgroup v2 is the first-class layout; v1 (these machines) reads
//! per-controller hierarchies.
//!
//! Hand-written rather than `cgroups-rs`: a few files are read or written, and the monitor
//! that links this module must stay small.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use crate::error::{Error, Result};
use crate::spec::Resources;

pub use crate::cgroup_layout::CgroupLayout;

/// The largest `cpu.shares` the kernel takes (and the smallest, below).
const MAX_SHARES: u64 = 262_144;
const MIN_SHARES: u64 = 2;

/// `cpu.shares` → `cpu.weight`, as runc (`ConvertCPUSharesToCgroupV2Value`), crun and
/// kubelet convert: 2…262144 maps linearly onto 1…10000.
pub fn cpu_weight(shares: u64) -> u64 {
    let shares = shares.clamp(MIN_SHARES, MAX_SHARES);
    1 + ((shares - MIN_SHARES) * 9999) / (MAX_SHARES - MIN_SHARES)
}

/// `r` with `cpu_shares` moved into `unified` as the `cpu.weight` [`cpu_weight`] gives, for
/// the OCI spec on a cgroup v2 node: the OCI runtime then writes our value at create, so
/// create and UpdateContainerResources ([`v2_settings`]) agree whatever runc or crun
/// version converts shares (runc ≥ 1.3.2 and crun ≥ 1.23 moved to a non-linear formula,
/// runc#4785: their create-time weight would differ from ours). A `cpu.weight` of the
/// request's own `unified` map wins, as it does at update.
pub fn weight_as_unified(r: &Resources) -> Resources {
    let mut out = r.clone();
    if let Some(shares) = out.cpu_shares.take() {
        out.unified
            .entry("cpu.weight".to_owned())
            .or_insert_with(|| cpu_weight(shares).to_string());
    }
    out
}

/// A unified-map entry must name a controller file of the cgroup itself (`memory.high`):
/// never a path, and never a `cgroup.*` core file (`cgroup.procs` would move a process of
/// the node into the container's cgroup, `cgroup.kill` kill it, `cgroup.subtree_control`
/// change the hierarchy). The value is one line. Checked the same way on v1 and v2, before
/// anything is written.
pub fn check_unified(key: &str, value: &str) -> Result<()> {
    let ok = !key.is_empty()
        && !key.contains(['/', '\0'])
        && !key.starts_with('.')
        && key
            .split_once('.')
            .is_some_and(|(c, f)| !c.is_empty() && !f.is_empty() && c != "cgroup");
    if !ok {
        return Err(Error::InvalidArgument(format!(
            "unified cgroup resource {key:?} is not a cgroup v2 controller file name \
             (<controller>.<file>, not cgroup.*)"
        )));
    }
    if value.contains(['\0', '\n']) {
        return Err(Error::InvalidArgument(format!(
            "unified cgroup resource {key:?}: the value holds a NUL or newline"
        )));
    }
    Ok(())
}

fn limit_or_max(v: i64) -> String {
    if v < 0 {
        "max".to_owned()
    } else {
        v.to_string()
    }
}

/// The cgroup v2 files and values for `r`, in the order they are written; the `unified`
/// entries come last, so they win over a converted value of the same file (as in runc).
///
/// - `cpu.weight` from `cpu_shares` ([`cpu_weight`]);
/// - `cpu.max` `"<quota> <period>"`, `"max <period>"` for no quota, the quota alone when
///   no period is given (the kernel keeps the period);
/// - `memory.max`; `memory.swap.max` = OCI swap (memory + swap) − memory, `0` when no
///   swap limit is asked (no swap use), `max` for `-1`;
/// - `pids.max`, `cpuset.cpus`, `cpuset.mems`, `hugetlb.<size>.max`.
pub fn v2_settings(r: &Resources) -> Result<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: String| out.push((k.to_owned(), v));
    if let Some(shares) = r.cpu_shares {
        set("cpu.weight", cpu_weight(shares).to_string());
    }
    if r.cpu_quota.is_some() || r.cpu_period.is_some() {
        let quota = match r.cpu_quota {
            Some(q) if q > 0 => q.to_string(),
            _ => "max".to_owned(),
        };
        let value = match r.cpu_period {
            Some(p) => format!("{quota} {p}"),
            None => quota,
        };
        set("cpu.max", value);
    }
    if let Some(cpus) = &r.cpuset_cpus {
        set("cpuset.cpus", cpus.clone());
    }
    if let Some(mems) = &r.cpuset_mems {
        set("cpuset.mems", mems.clone());
    }
    match (r.memory_limit_bytes, r.memory_swap_limit_bytes) {
        (Some(mem), swap) => {
            set("memory.max", limit_or_max(mem));
            let swap = match swap {
                Some(s) if s < 0 => "max".to_owned(),
                // No memory limit: swap cannot be bounded by it either.
                None if mem < 0 => "max".to_owned(),
                None => "0".to_owned(),
                Some(s) if s < mem => {
                    return Err(Error::InvalidArgument(format!(
                        "memory+swap limit {s} is below the memory limit {mem}"
                    )));
                }
                Some(s) => (s - mem).to_string(),
            };
            set("memory.swap.max", swap);
        }
        (None, Some(_)) => {
            return Err(Error::InvalidArgument(
                "a swap limit needs a memory limit".to_owned(),
            ));
        }
        (None, None) => {}
    }
    if let Some(pids) = r.pids_limit {
        set(
            "pids.max",
            if pids > 0 {
                pids.to_string()
            } else {
                "max".to_owned()
            },
        );
    }
    for (size, limit) in &r.hugepage_limits {
        set(&format!("hugetlb.{size}.max"), limit.to_string());
    }
    for (k, v) in &r.unified {
        check_unified(k, v)?;
        set(k, v.clone());
    }
    Ok(out)
}

impl CgroupLayout {
    /// Applies `r` to `cgroup` (a path such as `/kubepods/pod1/<id>`) on cgroup v2 by
    /// writing [`v2_settings`] into its files: UpdateContainerResources' path on v2. Every
    /// file's controller must be in the cgroup's `cgroup.controllers` (enabled in its
    /// parent's `cgroup.subtree_control`), or the write is refused with the reason rather
    /// than the kernel's bare ENOENT. `memory.swap.max` is skipped when the kernel has no
    /// swap accounting (the file is absent) and no swap use is asked for, as runc does.
    ///
    /// Plain writes, not temp + rename: these are kernel interface files, each write is
    /// applied whole or refused.
    pub fn apply_v2(&self, cgroup: &str, r: &Resources) -> Result<()> {
        let CgroupLayout::V2 { root } = self else {
            return Err(Error::InvalidArgument(
                "cgroup v2 resources applied on a cgroup v1 node".to_owned(),
            ));
        };
        let settings = v2_settings(r)?;
        let dir = Self::join(root, cgroup);
        let controllers_file = dir.join("cgroup.controllers");
        let controllers = fs::read_to_string(&controllers_file)
            .map_err(|e| Error::io("read", &controllers_file, e))?;
        let enabled: Vec<&str> = controllers.split_whitespace().collect();
        for (file, value) in &settings {
            let controller = file.split('.').next().unwrap_or_default();
            if controller != "cgroup" && !enabled.contains(&controller) {
                return Err(Error::Cgroup {
                    cgroup: cgroup.to_owned(),
                    message: format!(
                        "cannot set {file}: the {controller} controller is not enabled for it \
                         (not in the parent's cgroup.subtree_control)"
                    ),
                });
            }
            let path = dir.join(file);
            if file == "memory.swap.max" && value == "0" && !path.exists() {
                continue;
            }
            write_existing(&path, value).map_err(|e| Error::Cgroup {
                cgroup: cgroup.to_owned(),
                message: format!("write {value:?} to {file}: {e}"),
            })?;
        }
        Ok(())
    }

    /// The memory limit of `cgroup` in bytes, `None` when unlimited or unreadable: v1
    /// `memory.limit_in_bytes` (unlimited reads as a page-rounded `i64::MAX`), v2
    /// `memory.max` (`max`).
    pub fn memory_limit(&self, cgroup: &str) -> Option<u64> {
        let (file, unlimited_from) = match self {
            CgroupLayout::V1 { root } => (
                Self::join(&root.join("memory"), cgroup).join("memory.limit_in_bytes"),
                1u64 << 62,
            ),
            CgroupLayout::V2 { root } => (Self::join(root, cgroup).join("memory.max"), u64::MAX),
        };
        let text = fs::read_to_string(file).ok()?;
        let v: u64 = text.trim().parse().ok()?;
        (v < unlimited_from).then_some(v)
    }
}

/// Writes `value` to a file that must already exist (a cgroup interface file: creating one
/// is never right, and a synthetic tree must have it too).
fn write_existing(path: &Path, value: &str) -> io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)?;
    f.write_all(value.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_kill_v1_and_v2() {
        let v1 = tempfile::tempdir().unwrap();
        let d = v1.path().join("memory/pod/c1");
        fs::create_dir_all(&d).unwrap();
        fs::write(
            d.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        let l = CgroupLayout::detect_at(v1.path());
        assert!(!l.is_v2());
        assert_eq!(l.oom_kill_count("/pod/c1").unwrap(), 2);

        let v2 = tempfile::tempdir().unwrap();
        fs::write(v2.path().join("cgroup.controllers"), "memory pids\n").unwrap();
        let d = v2.path().join("pod/c1");
        fs::create_dir_all(&d).unwrap();
        fs::write(
            d.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n",
        )
        .unwrap();
        fs::write(d.join("cgroup.procs"), "12\n34\n").unwrap();
        let l = CgroupLayout::detect_at(v2.path());
        assert!(l.is_v2());
        assert_eq!(l.oom_kill_count("/pod/c1").unwrap(), 1);
        assert_eq!(l.procs("/pod/c1").unwrap(), vec![12, 34]);
        assert!(l.procs("/pod/gone").unwrap().is_empty());
    }

    /// A cgroup2 hierarchy as a v2 kernel lays it out for `/kubepods/pod1/c1`: the root's
    /// and each level's `cgroup.controllers` / `cgroup.subtree_control`, and the
    /// container's interface files with the kernel's defaults.
    fn synthetic_v2(controllers: &str, swap_accounting: bool) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let all = "cpuset cpu io memory hugetlb pids rdma misc";
        fs::write(root.path().join("cgroup.controllers"), format!("{all}\n")).unwrap();
        let mut dir = root.path().to_owned();
        for level in ["kubepods", "pod1", "c1"] {
            fs::write(
                dir.join("cgroup.subtree_control"),
                format!("{controllers}\n"),
            )
            .unwrap();
            dir = dir.join(level);
            fs::create_dir(&dir).unwrap();
            fs::write(dir.join("cgroup.controllers"), format!("{controllers}\n")).unwrap();
        }
        fs::write(dir.join("cgroup.subtree_control"), "").unwrap();
        let mut files = vec![
            ("cgroup.procs", ""),
            ("cpu.weight", "100"),
            ("cpu.max", "max 100000"),
            ("cpuset.cpus", ""),
            ("cpuset.mems", ""),
            ("memory.max", "max"),
            ("memory.high", "max"),
            ("pids.max", "max"),
            ("hugetlb.2MB.max", "max"),
        ];
        if swap_accounting {
            files.push(("memory.swap.max", "max"));
        }
        for (f, v) in files {
            fs::write(dir.join(f), format!("{v}\n")).unwrap();
        }
        root
    }

    fn read(root: &Path, file: &str) -> String {
        fs::read_to_string(root.join("kubepods/pod1/c1").join(file))
            .unwrap()
            .trim()
            .to_owned()
    }

    #[test]
    fn cpu_weight_uses_the_runc_and_kubelet_conversion() {
        assert_eq!(cpu_weight(2), 1);
        assert_eq!(cpu_weight(0), 1);
        assert_eq!(cpu_weight(512), 20);
        assert_eq!(cpu_weight(1024), 39);
        assert_eq!(cpu_weight(262_144), 10_000);
        assert_eq!(cpu_weight(1 << 30), 10_000);
    }

    #[test]
    fn v2_update_writes_cgroup2_files_and_reads_the_limit_back() {
        let tree = synthetic_v2("cpuset cpu memory hugetlb pids", true);
        let layout = CgroupLayout::detect_at(tree.path());
        assert!(layout.is_v2());
        let cg = "/kubepods/pod1/c1";
        assert_eq!(layout.memory_limit(cg), None, "max is no limit");
        let r = Resources {
            cpu_shares: Some(512),
            cpu_quota: Some(50_000),
            cpu_period: Some(100_000),
            cpuset_cpus: Some("0-1".into()),
            cpuset_mems: Some("0".into()),
            memory_limit_bytes: Some(128 << 20),
            pids_limit: Some(64),
            hugepage_limits: vec![("2MB".into(), 4 << 20)],
            unified: [("memory.high".to_owned(), "100663296".to_owned())].into(),
            ..Default::default()
        };
        layout.apply_v2(cg, &r).unwrap();
        let root = tree.path();
        assert_eq!(read(root, "cpu.weight"), "20");
        assert_eq!(read(root, "cpu.max"), "50000 100000");
        assert_eq!(read(root, "cpuset.cpus"), "0-1");
        assert_eq!(read(root, "cpuset.mems"), "0");
        assert_eq!(read(root, "memory.max"), (128u64 << 20).to_string());
        assert_eq!(read(root, "memory.swap.max"), "0", "no swap use by default");
        assert_eq!(read(root, "memory.high"), "100663296");
        assert_eq!(read(root, "pids.max"), "64");
        assert_eq!(read(root, "hugetlb.2MB.max"), (4u64 << 20).to_string());
        assert_eq!(layout.memory_limit(cg), Some(128 << 20));

        // An in-place resize: limits lifted, a swap allowance, the quota dropped.
        let r = Resources {
            cpu_quota: Some(-1),
            cpu_period: Some(100_000),
            memory_limit_bytes: Some(256 << 20),
            memory_swap_limit_bytes: Some(384 << 20),
            ..Default::default()
        };
        layout.apply_v2(cg, &r).unwrap();
        assert_eq!(read(root, "cpu.max"), "max 100000");
        assert_eq!(read(root, "memory.swap.max"), (128u64 << 20).to_string());
        assert_eq!(read(root, "cpu.weight"), "20", "untouched when not sent");
        let r = Resources {
            memory_limit_bytes: Some(-1),
            cpu_quota: Some(20_000),
            ..Default::default()
        };
        layout.apply_v2(cg, &r).unwrap();
        assert_eq!(read(root, "memory.max"), "max");
        assert_eq!(read(root, "memory.swap.max"), "max");
        assert_eq!(read(root, "cpu.max"), "20000");
        assert_eq!(layout.memory_limit(cg), None);
    }

    #[test]
    fn v2_update_refuses_disabled_controllers_bad_keys_and_bad_swap() {
        // pids not delegated to the pod, and no swap accounting in the kernel.
        let tree = synthetic_v2("cpuset cpu memory hugetlb", false);
        let layout = CgroupLayout::detect_at(tree.path());
        let cg = "/kubepods/pod1/c1";
        let err = layout
            .apply_v2(
                cg,
                &Resources {
                    pids_limit: Some(10),
                    ..Default::default()
                },
            )
            .unwrap_err();
        assert!(err.to_string().contains("pids controller"), "{err}");
        // No swap file and no swap asked: skipped, the memory limit still applies.
        layout
            .apply_v2(
                cg,
                &Resources {
                    memory_limit_bytes: Some(1 << 20),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(read(tree.path(), "memory.max"), "1048576");
        for key in [
            "../../escape.max",
            "memory",
            ".hidden",
            "cpu/../x.y",
            "cgroup.procs",
            "cgroup.kill",
            "cgroup.subtree_control",
        ] {
            let r = Resources {
                unified: [(key.to_owned(), "1".to_owned())].into(),
                ..Default::default()
            };
            let err = layout.apply_v2(cg, &r).unwrap_err();
            assert_eq!(
                err.kind(),
                crate::ErrorKind::InvalidArgument,
                "{key}: {err}"
            );
        }
        let r = Resources {
            memory_limit_bytes: Some(2 << 20),
            memory_swap_limit_bytes: Some(1 << 20),
            ..Default::default()
        };
        assert!(layout.apply_v2(cg, &r).is_err());
        assert!(
            CgroupLayout::V1 {
                root: tree.path().to_owned()
            }
            .apply_v2(cg, &Resources::default())
            .is_err()
        );
    }
}
