//! The resources part of the spec: cgroup limits (shared with `update`) and device rules,
//! and the host's devices for a privileged container.

use std::collections::BTreeMap;
use std::path::Path;

use oci_spec::runtime::{
    LinuxCpu, LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType, LinuxHugepageLimit, LinuxMemory,
    LinuxPids, LinuxResources,
};

use super::{ContainerSpec, HostFacts};

/// The CRI `LinuxContainerResources` fields. CRI's "0 = unset" becomes `None` at the
/// gRPC boundary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// `oom_score_adj`; clamped when the node cannot lower it.
    pub oom_score_adj: Option<i32>,
    /// `cpu_shares`.
    pub cpu_shares: Option<u64>,
    /// `cpu_quota` (µs per period); negative is "no limit".
    pub cpu_quota: Option<i64>,
    /// `cpu_period` (µs).
    pub cpu_period: Option<u64>,
    /// `cpuset_cpus`.
    pub cpuset_cpus: Option<String>,
    /// `cpuset_mems`.
    pub cpuset_mems: Option<String>,
    /// `memory_limit_in_bytes`; `-1` is "no limit" (in-place resize removing one).
    pub memory_limit_bytes: Option<i64>,
    /// `memory_swap_limit_in_bytes`: memory plus swap, as OCI's `swap`; without it swap is
    /// limited to the memory limit (no swap use), as containerd does.
    pub memory_swap_limit_bytes: Option<i64>,
    /// Pids limit.
    pub pids_limit: Option<i64>,
    /// Hugepage limits: (page size as in `hugetlb.<size>.limit_in_bytes`, e.g. `2MB`;
    /// bytes). kubelet only sends sizes the node has.
    pub hugepage_limits: Vec<(String, u64)>,
    /// `unified`: cgroup v2 files and values, written as given after everything else
    /// (kubelet's MemoryQoS `memory.high`…). Rejected on a v1 node.
    pub unified: BTreeMap<String, String>,
}

/// The cgroup part of [`Resources`] as OCI `LinuxResources` (no device rules: `update`
/// uses this as is; `build` adds the device rules).
pub fn linux_resources(r: &Resources) -> LinuxResources {
    let mut out = LinuxResources::default();
    if r.cpu_shares.is_some()
        || r.cpu_quota.is_some()
        || r.cpu_period.is_some()
        || r.cpuset_cpus.is_some()
        || r.cpuset_mems.is_some()
    {
        let mut cpu = LinuxCpu::default();
        cpu.set_shares(r.cpu_shares);
        cpu.set_quota(r.cpu_quota);
        cpu.set_period(r.cpu_period);
        cpu.set_cpus(r.cpuset_cpus.clone());
        cpu.set_mems(r.cpuset_mems.clone());
        out.set_cpu(Some(cpu));
    }
    if let Some(limit) = r.memory_limit_bytes {
        let mut mem = LinuxMemory::default();
        mem.set_limit(Some(limit));
        mem.set_swap(Some(r.memory_swap_limit_bytes.unwrap_or(limit)));
        out.set_memory(Some(mem));
    }
    if let Some(limit) = r.pids_limit {
        let mut pids = LinuxPids::default();
        pids.set_limit(limit);
        out.set_pids(Some(pids));
    }
    if !r.hugepage_limits.is_empty() {
        out.set_hugepage_limits(Some(
            r.hugepage_limits
                .iter()
                .map(|(size, limit)| {
                    let mut h = LinuxHugepageLimit::default();
                    h.set_page_size(size.clone());
                    // The kernel takes u64; OCI says i64: saturate what cannot be said.
                    h.set_limit(i64::try_from(*limit).unwrap_or(i64::MAX));
                    h
                })
                .collect(),
        ));
    }
    if !r.unified.is_empty() {
        out.set_unified(Some(r.unified.clone().into_iter().collect()));
    }
    out
}

fn device_rule(
    allow: bool,
    typ: Option<LinuxDeviceType>,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> LinuxDeviceCgroup {
    let mut d = LinuxDeviceCgroup::default();
    d.set_allow(allow);
    d.set_typ(typ);
    d.set_major(major);
    d.set_minor(minor);
    d.set_access(Some(access.to_owned()));
    d
}

/// Device cgroup: deny everything, then allow the standard character devices (null, zero,
/// full, random, urandom, tty, ptmx, pts), as containerd's default spec does.
pub(super) fn resources(s: &ContainerSpec, host: &HostFacts) -> LinuxResources {
    let mut r = if host.cgroup_v2 {
        // One shares → weight conversion for create and update: ours (runc and crun changed
        // formula across versions), handed to the OCI runtime as a `unified` value.
        linux_resources(&crate::cgroup::weight_as_unified(&s.resources))
    } else {
        linux_resources(&s.resources)
    };
    if s.security.privileged {
        // Privileged: every device the host has is reachable.
        r.set_devices(Some(vec![device_rule(true, None, None, None, "rwm")]));
        return r;
    }
    let c = Some(LinuxDeviceType::C);
    let mut devices = vec![device_rule(false, None, None, None, "rwm")];
    for (major, minor) in [(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 2)] {
        devices.push(device_rule(true, c, Some(major), Some(minor), "rwm"));
    }
    devices.push(device_rule(true, c, Some(136), None, "rwm"));
    r.set_devices(Some(devices));
    r
}

/// Directories under `/dev` whose nodes are the container's own (runc sets them up), not
/// host devices to copy, as containerd's `HostDevices` skips them.
const HOST_DEVICE_SKIP: [&str; 5] = ["pts", "shm", "fd", "mqueue", "console"];

/// The host's block and character devices under `dir`, for a privileged container. A node
/// that cannot be read is skipped: a device that vanished meanwhile is not an error.
pub(super) fn host_devices(dir: &Path) -> Vec<LinuxDevice> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if dir == Path::new("/dev")
            && HOST_DEVICE_SKIP
                .iter()
                .any(|s| entry.file_name().to_str() == Some(s))
        {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let ft = meta.file_type();
        let typ = if ft.is_dir() {
            out.extend(host_devices(&path));
            continue;
        } else if ft.is_block_device() {
            LinuxDeviceType::B
        } else if ft.is_char_device() {
            LinuxDeviceType::C
        } else {
            continue;
        };
        let rdev = meta.rdev();
        let mut d = LinuxDevice::default();
        d.set_path(path);
        d.set_typ(typ);
        d.set_major(i64::from(nix::sys::stat::major(rdev) as u32));
        d.set_minor(i64::from(nix::sys::stat::minor(rdev) as u32));
        d.set_file_mode(Some(meta.mode() & 0o7777));
        d.set_uid(Some(meta.uid()));
        d.set_gid(Some(meta.gid()));
        out.push(d);
    }
    out
}
