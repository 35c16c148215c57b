//! Building the OCI runtime spec (`config.json`) from typed inputs: the CRI container
//! config as plain values ([`ContainerSpec`]) plus the image config ([`ImageConfig`]).
//!
//! The builder is a sequence of small steps (`process`, `mounts`, `namespaces`,
//! `security`, `resources`), each owning one family of fields, so the security-context and
//! resources families can grow without touching the others.
//!
//! Files by family: `process` (args, env, user), `security` (capabilities, seccomp,
//! AppArmor, masked paths), `mounts` (bind mounts, namespaces), `resources` (cgroup
//! limits, device rules); this file holds the container description and `build`, which
//! puts the families together.

mod mounts;
mod process;
mod resources;
mod security;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxBuilder, LinuxIdMappingBuilder, Root, Spec};

use crate::error::{Error, Result};
use crate::id::ContainerId;
use crate::seccomp_default;

pub use mounts::{BindMount, NamespaceMode, Namespaces, PidMode, Propagation, UserNamespaceJoin};
pub use process::{ImageConfig, process_args, process_env};
pub use resources::{Resources, linux_resources};
pub use security::{
    AppArmorProfile, Confinement, DEFAULT_CAPABILITIES, DEFAULT_MASKED_PATHS,
    DEFAULT_READONLY_PATHS, SeccompProfile, SecurityContext,
};

use mounts::{mounts, namespaces};
use process::process;
use resources::{host_devices, resources};
use security::{apparmor_profile, bounding_caps, load_seccomp};

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
    let linux = match &s.namespaces.user {
        Some(user) => {
            let map = |r: crate::userns::IdRange| {
                LinuxIdMappingBuilder::default()
                    .container_id(r.container_id)
                    .host_id(r.host_id)
                    .size(r.length)
                    .build()
            };
            let uids = map(user.mapping.uids).map_err(|e| spec_err(e.to_string()))?;
            let gids = map(user.mapping.gids).map_err(|e| spec_err(e.to_string()))?;
            linux.uid_mappings(vec![uids]).gid_mappings(vec![gids])
        }
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
