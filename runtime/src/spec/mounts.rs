//! The mounts and namespaces of the spec: default mounts, the sandbox's and kubelet's bind
//! mounts in order, rootfs propagation, namespaces by path.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType, Mount};

use super::ContainerSpec;

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

/// The pod's user namespace, joined by path; the mappings go into the spec too (runc 1.1
/// needs them to know the container root's host ids, for the devices it creates).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserNamespaceJoin {
    /// The pinned namespace.
    pub path: PathBuf,
    /// Its mappings.
    pub mapping: crate::userns::UserNamespace,
}

/// The container's namespaces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Namespaces {
    /// User: the pod's (`None`: the node's).
    pub user: Option<UserNamespaceJoin>,
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
    /// kubelet sent id mappings (the pod's): in a user-namespaced pod the source is mounted
    /// through a clone idmapped with the pod's user namespace ([`crate::userns`]).
    pub idmapped: bool,
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
pub(super) fn mounts(s: &ContainerSpec) -> (Vec<Mount>, Option<String>) {
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

pub(super) fn namespaces(n: &Namespaces, cgroup: bool) -> Vec<LinuxNamespace> {
    let mut out = Vec::new();
    let mut ns = |typ: LinuxNamespaceType, path: Option<PathBuf>| {
        let mut l = LinuxNamespace::default();
        l.set_typ(typ);
        l.set_path(path);
        out.push(l);
    };
    if let Some(user) = &n.user {
        ns(LinuxNamespaceType::User, Some(user.path.clone()));
    }
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
