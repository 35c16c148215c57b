//! The security part of the spec: capabilities, seccomp, AppArmor and the default masked
//! and read-only paths.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities, LinuxSeccomp, Process};

use super::HostFacts;
use crate::error::{Error, Result};

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

/// The container's bounding capabilities by name (`CAP_CHOWN`…): what the default seccomp
/// profile's capability-gated rules look at, as in containerd.
pub(super) fn bounding_caps(process: &Process) -> Vec<String> {
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
pub(super) fn load_seccomp(path: &Path) -> std::result::Result<LinuxSeccomp, String> {
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
pub(super) fn apparmor_profile(
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
pub(super) fn capabilities(sc: &SecurityContext, host: &HostFacts) -> Result<LinuxCapabilities> {
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
