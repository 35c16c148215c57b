//! Building the OCI runtime spec (`config.json`) from typed inputs: the CRI container
//! config as plain values ([`ContainerSpec`]) plus the image config ([`ImageConfig`]).
//!
//! The builder is a sequence of small steps (`process`, `mounts`, `namespaces`,
//! `security`, `resources`), each owning one family of fields, so the security-context and
//! resources families can grow without touching the others.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use oci_spec::runtime::{
    Capabilities, Capability, LinuxBuilder, LinuxCapabilities, LinuxCpu, LinuxDevice,
    LinuxDeviceCgroup, LinuxDeviceType, LinuxHugepageLimit, LinuxMemory, LinuxNamespace,
    LinuxNamespaceType, LinuxPids, LinuxResources, LinuxSeccomp, Mount, Process, Root, Spec, User,
};

use crate::error::{Error, Result};
use crate::id::ContainerId;
use crate::seccomp_default;
use crate::user::{self, UserRequest};

/// The image config values a container inherits (OCI image config `config` section).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env` (`KEY=VALUE`).
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: String,
    /// `User`.
    pub user: String,
}

/// How a container gets one of its network/IPC/UTS namespaces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NamespaceMode {
    /// A new namespace of its own.
    #[default]
    Private,
    /// Join the namespace pinned at this path (the sandbox's).
    Path(PathBuf),
    /// The node's namespace (hostNetwork, hostIPC).
    Host,
}

/// How a container gets its PID namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum PidMode {
    /// Its own (CRI `CONTAINER`): init exiting takes every process with it.
    #[default]
    Private,
    /// The pod's shared namespace, pinned at this path (CRI `POD`).
    Pod(PathBuf),
    /// Another container's, at this path (CRI `TARGET`, `kubectl debug --target`).
    Target(PathBuf),
    /// The node's (hostPID).
    Host,
}

/// The container's namespaces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Namespaces {
    /// Network.
    pub network: NamespaceMode,
    /// IPC.
    pub ipc: NamespaceMode,
    /// UTS (hostname).
    pub uts: NamespaceMode,
    /// PID.
    pub pid: PidMode,
}

impl Namespaces {
    /// Without a private PID namespace the kernel does not kill the container's other
    /// processes when its init exits: the monitor (and StopContainer) must.
    pub fn needs_kill_all(&self) -> bool {
        !matches!(self.pid, PidMode::Private)
    }
}

/// Mount propagation (CRI `MountPropagation`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Propagation {
    /// `rprivate`.
    #[default]
    Private,
    /// `rslave`: host mounts appear in the container.
    HostToContainer,
    /// `rshared`: both ways.
    Bidirectional,
}

/// A bind mount into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    /// Where it appears in the container.
    pub container_path: PathBuf,
    /// What is mounted.
    pub host_path: PathBuf,
    /// Mounted read-only.
    pub readonly: bool,
    /// Propagation.
    pub propagation: Propagation,
    /// Read-only all the way down (CRI `recursive_read_only`): submounts too, through the
    /// OCI runtime's `rro` option (`mount_setattr(AT_RECURSIVE, MOUNT_ATTR_RDONLY)`, kernel
    /// ≥ 5.12). Needs `readonly` and private propagation (checked at the CRI boundary).
    pub recursive_readonly: bool,
}

/// A container's seccomp profile (CRI `SecurityProfile`, or the deprecated
/// `seccomp_profile_path` string, parsed at the gRPC boundary).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SeccompProfile {
    /// No filter (CRI `Unconfined`, and what an unset profile means, as in containerd).
    #[default]
    Unconfined,
    /// The runtime's default profile ([`crate::seccomp_default`]); also the deprecated
    /// `runtime/default` and `docker/default` names.
    RuntimeDefault,
    /// A profile file on the node (absolute path), in the OCI/Docker seccomp JSON format,
    /// put into the spec's `linux.seccomp` as containerd's `seccomp.WithProfile` does.
    Localhost(PathBuf),
}

/// A container's AppArmor profile (CRI `SecurityProfile`, or the deprecated
/// `apparmor_profile` string).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AppArmorProfile {
    /// None asked, or CRI `Unconfined`.
    #[default]
    Unconfined,
    /// The runtime's default profile: rootstock has none to load yet (containerd generates
    /// and loads `cri-containerd.apparmor.d`); the container runs unconfined, warned once.
    RuntimeDefault,
    /// A profile already loaded on the node, by name.
    Localhost(String),
}

/// The CRI security context fields (issue 7 fills in more of them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecurityContext {
    /// `run_as_user`.
    pub run_as_user: Option<u32>,
    /// `run_as_username`.
    pub run_as_username: Option<String>,
    /// `run_as_group`.
    pub run_as_group: Option<u32>,
    /// `supplemental_groups`.
    pub supplemental_groups: Vec<u32>,
    /// `supplemental_groups_policy` `Strict`: no groups from the image's `/etc/group`.
    pub supplemental_groups_strict: bool,
    /// `readonly_rootfs`.
    pub readonly_rootfs: bool,
    /// `no_new_privs`.
    pub no_new_privs: bool,
    /// `privileged`: every capability, the host's devices, no masked or read-only paths,
    /// writable sysfs and procfs.
    pub privileged: bool,
    /// `capabilities.add_capabilities` (`CAP_X`, `X` or `ALL`).
    pub add_capabilities: Vec<String>,
    /// `capabilities.drop_capabilities`.
    pub drop_capabilities: Vec<String>,
    /// `masked_paths`; `None` keeps the defaults.
    pub masked_paths: Option<Vec<String>>,
    /// `readonly_paths`; `None` keeps the defaults.
    pub readonly_paths: Option<Vec<String>>,
    /// Seccomp profile (ignored when privileged, as containerd does).
    pub seccomp: SeccompProfile,
    /// AppArmor profile.
    pub apparmor: AppArmorProfile,
}

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

/// A container as CRI's CreateContainer describes it, in plain values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerSpec {
    /// CRI `command` (replaces the image's entrypoint).
    pub command: Vec<String>,
    /// CRI `args` (replace the image's cmd).
    pub args: Vec<String>,
    /// CRI `envs`, in order; they win over the image's.
    pub env: Vec<(String, String)>,
    /// CRI `working_dir`; the image's, then `/`, when empty.
    pub working_dir: Option<String>,
    /// The image config values.
    pub image: ImageConfig,
    /// The pod's hostname (set in the spec unless the UTS namespace is the host's).
    pub hostname: Option<String>,
    /// CRI mounts (kubelet's volumes, `/etc/hosts`, termination log…).
    pub mounts: Vec<BindMount>,
    /// Runtime-provided mounts (`/etc/hostname`, `/etc/resolv.conf`, `/dev/shm`…), skipped
    /// when a CRI mount targets the same path.
    pub sandbox_mounts: Vec<BindMount>,
    /// Namespaces.
    pub namespaces: Namespaces,
    /// The pod cgroup (kubelet's `cgroup_parent`); the container's is `<parent>/<id>`.
    pub cgroup_parent: String,
    /// Security context.
    pub security: SecurityContext,
    /// Resources.
    pub resources: Resources,
    /// Allocate a terminal.
    pub tty: bool,
    /// OCI annotations to pass to the runtime.
    pub annotations: BTreeMap<String, String>,
    /// Host devices (CRI `devices`), applied by [`crate::devices`].
    pub devices: Vec<crate::devices::DeviceRequest>,
    /// CDI devices by fully qualified name, applied by [`crate::cdi`].
    pub cdi_devices: Vec<String>,
    /// Keep a stdin open for the container (CRI `stdin`), held by its monitor.
    pub stdin: bool,
    /// Close that stdin once the first attached client detaches (CRI `stdin_once`).
    pub stdin_once: bool,
}

/// Facts about the node, probed once at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostFacts {
    /// The daemon's own `oom_score_adj`.
    pub oom_score_adj: i32,
    /// Whether processes we start may lower `oom_score_adj` (`CAP_SYS_RESOURCE`).
    pub can_lower_oom_score_adj: bool,
    /// The daemon's capability bounding set (`CapBnd`): what `ALL` and privileged expand to.
    pub capability_bounding: u64,
    /// Whether the kernel enforces AppArmor (`/sys/module/apparmor/parameters/enabled`).
    pub apparmor: bool,
    /// Whether `/sys/fs/cgroup` is the unified (v2) hierarchy.
    pub cgroup_v2: bool,
}

impl HostFacts {
    /// Reads `/proc/self/oom_score_adj` and the effective capability set.
    pub fn probe() -> Self {
        let oom_score_adj = std::fs::read_to_string("/proc/self/oom_score_adj")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        const CAP_SYS_RESOURCE: u32 = 24;
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let mask = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                .unwrap_or(0)
        };
        let cap_eff = mask("CapEff:");
        Self {
            oom_score_adj,
            can_lower_oom_score_adj: cap_eff & (1 << CAP_SYS_RESOURCE) != 0,
            capability_bounding: mask("CapBnd:"),
            apparmor: std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
                .is_ok_and(|v| v.trim() == "Y"),
            cgroup_v2: crate::cgroup::CgroupLayout::detect().is_v2(),
        }
    }
}

/// A built spec and what was adjusted on the way.
#[derive(Debug, Clone)]
pub struct BuiltSpec {
    /// The OCI spec.
    pub spec: Spec,
    /// The container's cgroup path (`<cgroup_parent>/<id>`).
    pub cgroup_path: String,
    /// The requested `oom_score_adj` was raised to what the node allows.
    pub oom_score_adj_clamped: Option<(i32, i32)>,
    /// `RuntimeDefault` profiles asked for and not applied (rootstock has none yet).
    pub runtime_default_skipped: Vec<Confinement>,
}

/// A kind of confinement profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confinement {
    /// seccomp.
    Seccomp,
    /// AppArmor.
    AppArmor,
}

/// The capabilities containerd and CRI-O grant a non-privileged container.
pub const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Paths masked by default (containerd's list).
pub const DEFAULT_MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/proc/scsi",
];

/// Paths made read-only by default (containerd's list).
pub const DEFAULT_READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Builds the spec for container `id` whose root filesystem is mounted at `rootfs` (the
/// image's tree is read there for `/etc/passwd`).
pub fn build(
    id: &ContainerId,
    s: &ContainerSpec,
    rootfs: &Path,
    host: &HostFacts,
) -> Result<BuiltSpec> {
    let spec_err = |message: String| Error::Spec {
        id: id.to_string(),
        message,
    };
    let cgroup_path = cgroup_path(&s.cgroup_parent, id);
    let (mut process, oom_score_adj_clamped) = process(s, rootfs, host)?;
    let mut runtime_default_skipped = Vec::new();
    let privileged = s.security.privileged;
    // Privileged containers get no seccomp filter, as with containerd.
    let seccomp = match &s.security.seccomp {
        _ if privileged => None,
        SeccompProfile::Unconfined => None,
        SeccompProfile::RuntimeDefault => Some(seccomp_default::profile(&bounding_caps(&process))),
        SeccompProfile::Localhost(path) => Some(load_seccomp(path).map_err(&spec_err)?),
    };
    process.set_apparmor_profile(
        apparmor_profile(&s.security, host, &mut runtime_default_skipped).map_err(&spec_err)?,
    );
    let mut root = Root::default();
    root.set_path(rootfs.to_owned());
    root.set_readonly(Some(s.security.readonly_rootfs));

    let (mounts, rootfs_propagation) = mounts(s);
    // Privileged: CRI says the runtime must not mask or read-only any path, whatever the
    // request lists (kubelet still sends the defaults in `masked_paths` for some pods).
    let masked = if privileged {
        Vec::new()
    } else {
        s.security.masked_paths.clone().unwrap_or_else(|| {
            DEFAULT_MASKED_PATHS
                .iter()
                .map(|p| (*p).to_owned())
                .collect()
        })
    };
    let readonly = if privileged {
        Vec::new()
    } else {
        s.security.readonly_paths.clone().unwrap_or_else(|| {
            DEFAULT_READONLY_PATHS
                .iter()
                .map(|p| (*p).to_owned())
                .collect()
        })
    };
    let linux = LinuxBuilder::default()
        // On cgroup v2 a non-privileged container gets its own cgroup namespace, as
        // containerd and CRI-O give it: its /sys/fs/cgroup and /proc/self/cgroup show its
        // own cgroup as the root, not the node's tree.
        .namespaces(namespaces(&s.namespaces, host.cgroup_v2 && !privileged))
        .cgroups_path(PathBuf::from(&cgroup_path))
        .resources(resources(s, host))
        .masked_paths(masked)
        .readonly_paths(readonly);
    let linux = if privileged {
        linux.devices(host_devices(Path::new("/dev")))
    } else {
        linux
    };
    let linux = match seccomp {
        Some(filter) => linux.seccomp(filter),
        None => linux,
    };
    let linux = match rootfs_propagation {
        Some(p) => linux.rootfs_propagation(p),
        None => linux,
    }
    .build()
    .map_err(|e| spec_err(e.to_string()))?;

    let mut spec = Spec::default();
    spec.set_process(Some(process));
    spec.set_root(Some(root));
    spec.set_mounts(Some(mounts));
    spec.set_linux(Some(linux));
    // hostNetwork/host UTS: no hostname in the spec (runc refuses to set one without a
    // private UTS namespace).
    spec.set_hostname(match s.namespaces.uts {
        NamespaceMode::Host => None,
        _ => s.hostname.clone(),
    });
    spec.set_annotations(Some(
        s.annotations
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<HashMap<_, _>>(),
    ));
    Ok(BuiltSpec {
        spec,
        cgroup_path,
        oom_score_adj_clamped,
        runtime_default_skipped,
    })
}

/// The container's bounding capabilities by name (`CAP_CHOWN`…): what the default seccomp
/// profile's capability-gated rules look at, as in containerd.
fn bounding_caps(process: &Process) -> Vec<String> {
    process
        .capabilities()
        .as_ref()
        .and_then(|c| c.bounding().as_ref())
        .map(|set| {
            set.iter()
                .filter_map(|c| serde_json::to_value(c).ok())
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Reads a seccomp profile file (the OCI `linux.seccomp` object; the Docker format is the
/// same JSON, and its Docker-only keys are ignored, as containerd's `json.Unmarshal` does).
fn load_seccomp(path: &Path) -> std::result::Result<LinuxSeccomp, String> {
    if !path.is_absolute() {
        return Err(format!(
            "seccomp profile {}: a Localhost profile must be an absolute path",
            path.display()
        ));
    }
    let data =
        std::fs::read(path).map_err(|e| format!("seccomp profile {}: {e}", path.display()))?;
    serde_json::from_slice(&data).map_err(|e| {
        format!(
            "seccomp profile {}: not a seccomp profile: {e}",
            path.display()
        )
    })
}

/// The AppArmor profile for `process.apparmorProfile`. On a node without AppArmor, asking
/// for any profile but `Unconfined` fails, as containerd's `generateApparmorSpecOpts` does
/// ("apparmor is not supported"): a profile silently not applied is worse than an error.
fn apparmor_profile(
    sc: &SecurityContext,
    host: &HostFacts,
    skipped: &mut Vec<Confinement>,
) -> std::result::Result<Option<String>, String> {
    match &sc.apparmor {
        AppArmorProfile::Unconfined => Ok(None),
        _ if !host.apparmor => Err("apparmor is not supported on this node".to_owned()),
        AppArmorProfile::RuntimeDefault => {
            if !sc.privileged {
                skipped.push(Confinement::AppArmor);
            }
            Ok(None)
        }
        AppArmorProfile::Localhost(name) => Ok(Some(name.clone())),
    }
}

/// `<cgroup_parent>/<id>`, absolute (cgroupfs driver).
pub fn cgroup_path(parent: &str, id: &ContainerId) -> String {
    let parent = parent.trim_end_matches('/');
    if parent.is_empty() {
        format!("/{id}")
    } else if parent.starts_with('/') {
        format!("{parent}/{id}")
    } else {
        format!("/{parent}/{id}")
    }
}

/// CRI's override rules (containerd's, inherited from Docker): `command` replaces the
/// entrypoint, and then the image's cmd is not used either; `args` alone replace the cmd.
pub fn process_args(s: &ContainerSpec) -> Vec<String> {
    let mut command = s.command.clone();
    let mut args = s.args.clone();
    if command.is_empty() {
        if args.is_empty() {
            args = s.image.cmd.clone();
        }
        // `ENTRYPOINT [""]` means "no entrypoint".
        if !(s.image.entrypoint.len() == 1 && s.image.entrypoint[0].is_empty()) {
            command = s.image.entrypoint.clone();
        }
    }
    command.extend(args);
    command
}

/// Image env, then CRI env replacing same-named keys, then `HOSTNAME`; `PATH` defaulted.
pub fn process_env(s: &ContainerSpec) -> Vec<String> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str| match env.iter_mut().find(|(ek, _)| ek == k) {
        Some(e) => e.1 = v.to_owned(),
        None => env.push((k.to_owned(), v.to_owned())),
    };
    for kv in &s.image.env {
        let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
        set(k, v);
    }
    if let Some(h) = &s.hostname {
        // Before the CRI env: a container that sets HOSTNAME itself keeps its value.
        set("HOSTNAME", h);
    }
    for (k, v) in &s.env {
        set(k, v);
    }
    let mut out: Vec<String> = env.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    if !out.iter().any(|e| e.starts_with("PATH=")) {
        out.insert(0, DEFAULT_PATH.to_owned());
    }
    out
}

fn process(
    s: &ContainerSpec,
    rootfs: &Path,
    host: &HostFacts,
) -> Result<(Process, Option<(i32, i32)>)> {
    let args = process_args(s);
    if args.is_empty() {
        return Err(Error::InvalidArgument(
            "no command specified: neither the container config nor the image has one".to_owned(),
        ));
    }
    let resolved = user::resolve(
        rootfs,
        &UserRequest {
            image_user: &s.image.user,
            run_as_user: s.security.run_as_user,
            run_as_username: s.security.run_as_username.as_deref(),
            run_as_group: s.security.run_as_group,
            supplemental_groups: &s.security.supplemental_groups,
            strict_groups: s.security.supplemental_groups_strict,
        },
    )?;
    let mut user = User::default();
    user.set_uid(resolved.uid);
    user.set_gid(resolved.gid);
    // The primary group is listed among the supplementary ones too, as containerd does
    // (`ensureAdditionalGids`): `id -G` and ContainerStatus.user then show it, as critest's
    // SupplementalGroupsPolicy specs expect.
    let mut gids = vec![resolved.gid];
    gids.extend(
        resolved
            .additional_gids
            .iter()
            .filter(|g| **g != resolved.gid),
    );
    user.set_additional_gids(Some(gids));

    let cwd = s
        .working_dir
        .clone()
        .filter(|w| !w.is_empty())
        .or_else(|| Some(s.image.working_dir.clone()).filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".to_owned());

    let (oom, clamped) = match s.resources.oom_score_adj {
        Some(adj) if adj < host.oom_score_adj && !host.can_lower_oom_score_adj => {
            (Some(host.oom_score_adj), Some((adj, host.oom_score_adj)))
        }
        other => (other, None),
    };

    let mut p = Process::default();
    p.set_terminal(Some(s.tty));
    p.set_args(Some(args));
    p.set_env(Some(process_env(s)));
    p.set_cwd(PathBuf::from(cwd));
    p.set_user(user);
    p.set_capabilities(Some(capabilities(&s.security, host)?));
    p.set_no_new_privileges(Some(s.security.no_new_privs));
    // Inherit the monitor's rlimits: never raise a hard limit above the daemon's own.
    p.set_rlimits(None);
    p.set_oom_score_adj(oom);
    Ok((p, clamped))
}

fn parse_cap(name: &str) -> Result<Capability> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    Capability::from_str(bare)
        .map_err(|_| Error::InvalidArgument(format!("unknown capability {name:?}")))
}

/// Capability names indexed by their kernel number (`linux/capability.h`), so a name can be
/// checked against a `CapBnd` mask.
const CAPABILITY_NUMBERS: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Every capability the daemon itself may grant (its bounding set `bounding`): asking the
/// OCI runtime for more fails the create with EPERM (e.g. `SYS_RESOURCE` on these nodes).
fn all_capabilities(bounding: u64) -> Vec<Capability> {
    CAPABILITY_NUMBERS
        .iter()
        .enumerate()
        .filter(|(bit, _)| bounding & (1u64 << bit) != 0)
        .filter_map(|(_, n)| Capability::from_str(n).ok())
        .collect()
}

/// Default set, then drops, then adds (`ALL` in either expands to every capability), as
/// containerd applies them.
fn capabilities(sc: &SecurityContext, host: &HostFacts) -> Result<LinuxCapabilities> {
    let mut set: Capabilities = if sc.privileged {
        // Privileged starts from every capability; drops still apply, as in containerd.
        all_capabilities(host.capability_bounding)
            .into_iter()
            .collect()
    } else {
        DEFAULT_CAPABILITIES.iter().copied().collect()
    };
    for d in &sc.drop_capabilities {
        if d.eq_ignore_ascii_case("ALL") {
            set.clear();
        } else {
            set.remove(&parse_cap(d)?);
        }
    }
    for a in &sc.add_capabilities {
        if a.eq_ignore_ascii_case("ALL") {
            set.extend(all_capabilities(host.capability_bounding));
        } else {
            set.insert(parse_cap(a)?);
        }
    }
    let mut caps = LinuxCapabilities::default();
    caps.set_bounding(Some(set.clone()));
    caps.set_effective(Some(set.clone()));
    caps.set_permitted(Some(set));
    // Empty inheritable and ambient sets, as containerd ≥ 1.7 does (CVE-2022-24769).
    caps.set_inheritable(Some(Capabilities::new()));
    caps.set_ambient(Some(Capabilities::new()));
    Ok(caps)
}

fn bind(m: &BindMount) -> Mount {
    let mut options = vec![
        "rbind".to_owned(),
        match m.propagation {
            Propagation::Private => "rprivate",
            Propagation::HostToContainer => "rslave",
            Propagation::Bidirectional => "rshared",
        }
        .to_owned(),
        if m.readonly { "ro" } else { "rw" }.to_owned(),
    ];
    if m.recursive_readonly {
        options.push("rro".to_owned());
    }
    options.dedup();
    let mut mount = Mount::default();
    mount.set_destination(m.container_path.clone());
    mount.set_typ(Some("bind".to_owned()));
    mount.set_source(Some(m.host_path.clone()));
    mount.set_options(Some(options));
    mount
}

/// Default mounts, then runtime-provided ones not overridden by CRI, then CRI mounts,
/// parents before children. Returns the rootfs propagation the mounts need.
fn mounts(s: &ContainerSpec) -> (Vec<Mount>, Option<String>) {
    let cri_targets: Vec<&Path> = s
        .mounts
        .iter()
        .map(|m| m.container_path.as_path())
        .collect();
    let extra: Vec<&BindMount> = s
        .sandbox_mounts
        .iter()
        .filter(|m| !cri_targets.contains(&m.container_path.as_path()))
        .chain(s.mounts.iter())
        .collect();
    let mut out: Vec<Mount> = oci_spec::runtime::get_default_mounts()
        .into_iter()
        // A mount we or kubelet provide at the same place replaces the default one.
        .filter(|d| !extra.iter().any(|m| m.container_path == *d.destination()))
        .map(|mut d| {
            // The default sysfs is read-only; a privileged container gets it writable
            // (procfs is already read-write, only the read-only paths protect it).
            if s.security.privileged && d.typ().as_deref() == Some("sysfs") {
                let options = d
                    .options()
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|o| o != "ro")
                    .chain(std::iter::once("rw".to_owned()))
                    .collect();
                d.set_options(Some(options));
            }
            d
        })
        .collect();
    let mut user: Vec<&BindMount> = extra;
    // Stable sort by depth, so `/a` is mounted before `/a/b` whatever the request order.
    user.sort_by_key(|m| m.container_path.components().count());
    out.extend(user.iter().map(|m| bind(m)));
    let propagation = if s
        .mounts
        .iter()
        .any(|m| m.propagation == Propagation::Bidirectional)
    {
        Some("rshared".to_owned())
    } else if s
        .mounts
        .iter()
        .any(|m| m.propagation == Propagation::HostToContainer)
    {
        Some("rslave".to_owned())
    } else {
        None
    };
    (out, propagation)
}

fn namespaces(n: &Namespaces, cgroup: bool) -> Vec<LinuxNamespace> {
    let mut out = Vec::new();
    let mut ns = |typ: LinuxNamespaceType, path: Option<PathBuf>| {
        let mut l = LinuxNamespace::default();
        l.set_typ(typ);
        l.set_path(path);
        out.push(l);
    };
    ns(LinuxNamespaceType::Mount, None);
    for (mode, typ) in [
        (&n.network, LinuxNamespaceType::Network),
        (&n.ipc, LinuxNamespaceType::Ipc),
        (&n.uts, LinuxNamespaceType::Uts),
    ] {
        match mode {
            NamespaceMode::Private => ns(typ, None),
            NamespaceMode::Path(p) => ns(typ, Some(p.clone())),
            NamespaceMode::Host => {}
        }
    }
    match &n.pid {
        PidMode::Private => ns(LinuxNamespaceType::Pid, None),
        PidMode::Pod(p) | PidMode::Target(p) => ns(LinuxNamespaceType::Pid, Some(p.clone())),
        PidMode::Host => {}
    }
    if cgroup {
        ns(LinuxNamespaceType::Cgroup, None);
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
fn resources(s: &ContainerSpec, host: &HostFacts) -> LinuxResources {
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
fn host_devices(dir: &Path) -> Vec<LinuxDevice> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> ContainerSpec {
        ContainerSpec {
            image: ImageConfig {
                entrypoint: vec!["/entry".into()],
                cmd: vec!["serve".into()],
                env: vec!["PATH=/bin".into(), "A=image".into(), "B=image".into()],
                working_dir: "/srv".into(),
                user: String::new(),
            },
            cgroup_parent: "/kubepods/pod1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn args_follow_cri_override_rules() {
        let mut s = base();
        assert_eq!(process_args(&s), ["/entry", "serve"]);
        s.args = vec!["x".into()];
        assert_eq!(process_args(&s), ["/entry", "x"]);
        s.command = vec!["/bin/sh".into()];
        s.args = vec![];
        assert_eq!(process_args(&s), ["/bin/sh"]);
        s.args = vec!["-c".into(), "true".into()];
        assert_eq!(process_args(&s), ["/bin/sh", "-c", "true"]);
    }

    #[test]
    fn cri_env_wins_and_hostname_is_set() {
        let mut s = base();
        s.env = vec![("B".into(), "cri".into()), ("C".into(), "cri".into())];
        s.hostname = Some("pod-a".into());
        assert_eq!(
            process_env(&s),
            ["PATH=/bin", "A=image", "B=cri", "HOSTNAME=pod-a", "C=cri"]
        );
        s.image.env.clear();
        assert!(process_env(&s)[0].starts_with("PATH=/usr/local/sbin"));
    }

    #[test]
    fn spec_has_paths_namespaces_and_clamped_oom() {
        let mut s = base();
        s.namespaces.network = NamespaceMode::Path("/run/ns/net".into());
        s.namespaces.uts = NamespaceMode::Host;
        s.namespaces.pid = PidMode::Host;
        s.hostname = Some("h".into());
        s.resources.oom_score_adj = Some(-997);
        s.mounts.push(BindMount {
            container_path: "/data/sub".into(),
            host_path: "/x".into(),
            readonly: true,
            propagation: Propagation::HostToContainer,
            recursive_readonly: false,
        });
        s.mounts.push(BindMount {
            container_path: "/data".into(),
            host_path: "/y".into(),
            readonly: false,
            propagation: Propagation::Private,
            recursive_readonly: false,
        });
        s.sandbox_mounts.push(BindMount {
            container_path: "/dev/shm".into(),
            host_path: "/run/shm".into(),
            readonly: false,
            propagation: Propagation::Private,
            recursive_readonly: false,
        });
        let id = ContainerId::new("c1").unwrap();
        let host = HostFacts {
            oom_score_adj: 0,
            can_lower_oom_score_adj: false,
            capability_bounding: u64::MAX,
            apparmor: false,
            cgroup_v2: false,
        };
        let dir = tempfile::tempdir().unwrap();
        let b = build(&id, &s, dir.path(), &host).unwrap();
        assert_eq!(b.cgroup_path, "/kubepods/pod1/c1");
        assert_eq!(b.oom_score_adj_clamped, Some((-997, 0)));
        let json = serde_json::to_value(&b.spec).unwrap();
        assert_eq!(json["process"]["oomScoreAdj"], 0);
        assert!(json.get("hostname").is_none());
        let ns = json["linux"]["namespaces"].as_array().unwrap();
        let types: Vec<&str> = ns.iter().map(|n| n["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["mount", "network", "ipc"]);
        assert_eq!(ns[1]["path"], "/run/ns/net");
        assert_eq!(json["linux"]["rootfsPropagation"], "rslave");
        let dests: Vec<&str> = json["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        let data = dests.iter().position(|d| *d == "/data").unwrap();
        let sub = dests.iter().position(|d| *d == "/data/sub").unwrap();
        assert!(data < sub);
        assert_eq!(dests.iter().filter(|d| **d == "/dev/shm").count(), 1);
        assert_eq!(json["root"]["readonly"], false);
        assert_eq!(json["process"]["cwd"], "/srv");
    }

    #[test]
    fn capabilities_add_and_drop() {
        let sc = SecurityContext {
            drop_capabilities: vec!["ALL".into()],
            add_capabilities: vec!["CAP_NET_ADMIN".into(), "kill".into()],
            ..Default::default()
        };
        let host = HostFacts {
            oom_score_adj: 0,
            can_lower_oom_score_adj: false,
            capability_bounding: u64::MAX,
            apparmor: false,
            cgroup_v2: false,
        };
        let caps = capabilities(&sc, &host).unwrap();
        let b = caps.bounding().clone().unwrap();
        assert_eq!(b.len(), 2);
        assert!(b.contains(&Capability::NetAdmin));
        assert!(
            capabilities(
                &SecurityContext {
                    add_capabilities: vec!["NOPE".into()],
                    ..Default::default()
                },
                &host
            )
            .is_err()
        );
    }

    #[test]
    fn privileged_gets_bounded_caps_devices_rw_sysfs_and_no_masked_paths() {
        let mut s = base();
        s.security.privileged = true;
        s.security.masked_paths = Some(vec!["/proc/kcore".into()]);
        let id = ContainerId::new("c1").unwrap();
        // No CAP_SYS_RESOURCE (24) in the daemon's bounding set, as on these nodes.
        let host = HostFacts {
            oom_score_adj: 0,
            can_lower_oom_score_adj: false,
            capability_bounding: ((1u64 << 41) - 1) & !(1 << 24),
            apparmor: false,
            cgroup_v2: false,
        };
        let dir = tempfile::tempdir().unwrap();
        let json = serde_json::to_value(build(&id, &s, dir.path(), &host).unwrap().spec).unwrap();
        let bnd = json["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap();
        assert_eq!(bnd.len(), 40);
        assert!(!bnd.iter().any(|c| c == "CAP_SYS_RESOURCE"));
        assert!(bnd.iter().any(|c| c == "CAP_SYS_ADMIN"));
        assert_eq!(json["linux"]["maskedPaths"].as_array().unwrap().len(), 0);
        assert_eq!(json["linux"]["readonlyPaths"].as_array().unwrap().len(), 0);
        let devices = json["linux"]["resources"]["devices"].as_array().unwrap();
        assert_eq!(devices.len(), 1);
        assert_eq!(devices[0]["allow"], true);
        let sys = json["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/sys")
            .unwrap();
        let opts: Vec<&str> = sys["options"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o.as_str().unwrap())
            .collect();
        assert!(opts.contains(&"rw") && !opts.contains(&"ro"), "{opts:?}");
    }

    #[test]
    fn localhost_seccomp_is_loaded_and_privileged_or_default_get_none() {
        let dir = tempfile::tempdir().unwrap();
        let profile = dir.path().join("deny-mkdir.json");
        // Docker's format: `archMap` is Docker-only and ignored.
        std::fs::write(
            &profile,
            r#"{"defaultAction":"SCMP_ACT_ALLOW","archMap":[],
                "syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#,
        )
        .unwrap();
        let id = ContainerId::new("c1").unwrap();
        let host = HostFacts {
            oom_score_adj: 0,
            can_lower_oom_score_adj: false,
            capability_bounding: u64::MAX,
            apparmor: false,
            cgroup_v2: false,
        };
        let mut s = base();
        s.security.seccomp = SeccompProfile::Localhost(profile.clone());
        let b = build(&id, &s, dir.path(), &host).unwrap();
        let json = serde_json::to_value(&b.spec).unwrap();
        assert_eq!(json["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ALLOW");
        assert_eq!(
            json["linux"]["seccomp"]["syscalls"][0]["names"][1],
            "mkdirat"
        );
        assert_eq!(json["linux"]["seccomp"]["syscalls"][0]["errnoRet"], 1);

        s.security.privileged = true;
        let json = serde_json::to_value(build(&id, &s, dir.path(), &host).unwrap().spec).unwrap();
        assert!(json["linux"].get("seccomp").is_none());
        s.security.privileged = false;

        s.security.seccomp = SeccompProfile::RuntimeDefault;
        let b = build(&id, &s, dir.path(), &host).unwrap();
        assert!(b.runtime_default_skipped.is_empty());
        let json = serde_json::to_value(&b.spec).unwrap();
        assert_eq!(json["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        s.security.privileged = true;
        let json = serde_json::to_value(build(&id, &s, dir.path(), &host).unwrap().spec).unwrap();
        assert!(
            json["linux"].get("seccomp").is_none(),
            "privileged: unconfined"
        );
        s.security.privileged = false;

        for bad in [
            dir.path().join("missing.json"),
            PathBuf::from("relative.json"),
        ] {
            s.security.seccomp = SeccompProfile::Localhost(bad);
            let err = build(&id, &s, dir.path(), &host).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument, "{err}");
        }
        std::fs::write(&profile, "{\"defaultAction\": 3}").unwrap();
        s.security.seccomp = SeccompProfile::Localhost(profile);
        let err = build(&id, &s, dir.path(), &host).unwrap_err();
        assert!(err.to_string().contains("not a seccomp profile"), "{err}");
    }

    #[test]
    fn apparmor_without_apparmor_fails_unless_unconfined_and_unified_passes_through() {
        let id = ContainerId::new("c1").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut host = HostFacts {
            oom_score_adj: 0,
            can_lower_oom_score_adj: false,
            capability_bounding: u64::MAX,
            apparmor: false,
            cgroup_v2: false,
        };
        let mut s = base();
        s.security.apparmor = AppArmorProfile::Localhost("my-profile".into());
        let err = build(&id, &s, dir.path(), &host).unwrap_err();
        assert!(
            err.to_string().contains("apparmor is not supported"),
            "{err}"
        );
        s.security.apparmor = AppArmorProfile::RuntimeDefault;
        assert!(build(&id, &s, dir.path(), &host).is_err());
        s.security.apparmor = AppArmorProfile::Unconfined;
        assert!(build(&id, &s, dir.path(), &host).is_ok());

        host.apparmor = true;
        s.security.apparmor = AppArmorProfile::Localhost("my-profile".into());
        s.resources.memory_limit_bytes = Some(1 << 30);
        s.resources.memory_swap_limit_bytes = Some(2 << 30);
        s.resources.unified = [("memory.high".to_owned(), "1000".to_owned())].into();
        let json = serde_json::to_value(build(&id, &s, dir.path(), &host).unwrap().spec).unwrap();
        assert_eq!(json["process"]["apparmorProfile"], "my-profile");
        let r = &json["linux"]["resources"];
        assert_eq!(r["unified"]["memory.high"], "1000");
        assert_eq!(r["memory"]["swap"], 2i64 << 30);
    }

    #[test]
    fn cgroup_v2_gives_a_cgroup_namespace_and_our_cpu_weight() {
        let id = ContainerId::new("c1").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut host = HostFacts {
            oom_score_adj: 0,
            can_lower_oom_score_adj: false,
            capability_bounding: u64::MAX,
            apparmor: false,
            cgroup_v2: false,
        };
        let mut s = base();
        s.resources.cpu_shares = Some(512);
        let spec = |host: &HostFacts, s: &ContainerSpec| {
            serde_json::to_value(build(&id, s, dir.path(), host).unwrap().spec).unwrap()
        };
        let has_cgroupns = |json: &serde_json::Value| {
            json["linux"]["namespaces"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["type"] == "cgroup")
        };
        // v1: shares as given (runc writes cpu.shares), the node's cgroup namespace.
        let v1 = spec(&host, &s);
        assert_eq!(v1["linux"]["resources"]["cpu"]["shares"], 512);
        assert!(!has_cgroupns(&v1));

        host.cgroup_v2 = true;
        let v2 = spec(&host, &s);
        assert!(has_cgroupns(&v2));
        let r = &v2["linux"]["resources"];
        assert!(r["cpu"]["shares"].is_null(), "{r}");
        let update = crate::cgroup::v2_settings(&s.resources).unwrap();
        assert!(update.contains(&("cpu.weight".to_owned(), "20".to_owned())));
        assert_eq!(r["unified"]["cpu.weight"], "20", "create = update");
        // The request's own cpu.weight wins, at create as at update.
        s.resources.unified = [("cpu.weight".to_owned(), "300".to_owned())].into();
        assert_eq!(
            spec(&host, &s)["linux"]["resources"]["unified"]["cpu.weight"],
            "300"
        );
        // Privileged: the node's cgroup namespace, as containerd.
        s.security.privileged = true;
        assert!(!has_cgroupns(&spec(&host, &s)));
    }
}
