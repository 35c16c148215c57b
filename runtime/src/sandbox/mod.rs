//! Pod sandboxes without a pause process: network, IPC and UTS namespaces are created by a
//! short-lived thread of the daemon (`pin`; for a pod with a user namespace, by a short-lived
//! child, `rootstock-monitor pin-namespaces`) and pinned by bind-mounting its
//! `/proc/.../ns/<kind>` under `<state_dir>/sandboxes/<id>/ns/`; containers join them by
//! path. The hostname is set when the UTS namespace is created; `/etc/hostname`,
//! `/etc/hosts`, `/etc/resolv.conf` and `/dev/shm` are prepared per sandbox.
//!
//! ```text
//!   RunPodSandbox ──▶ Ready ──StopPodSandbox──▶ NotReady ──RemovePodSandbox──▶ (removed)
//! ```
//! A pod sharing one PID namespace (CRI `POD`) is the one case with a process: the monitor
//! in pod-init mode is PID 1 of that namespace (reaps orphans, sleeps).
//!
//! Files: this one holds the sandbox's description, record and the paths containers join;
//! `lifecycle` creates, stops, removes, lists and recovers sandboxes; `namespaces`
//! pins the namespaces (`pin` from a thread), writes the pod's files, starts pod-init and
//! tears them down again; `usage` finds a
//! pod's containers and adds up its usage.

mod lifecycle;
mod namespaces;
mod pin;
mod recovery;
mod usage;

pub use lifecycle::OWN_CGROUP_ROOT;
pub use recovery::SandboxRecovery;
pub use usage::SandboxUsage;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::id::SandboxId;
use crate::monitor::ProcessIdentity;
use crate::spec::{BindMount, NamespaceMode, Namespaces, PidMode, Propagation, UserNamespaceJoin};
use crate::userns::UserNamespace;

/// File name of a sandbox's persisted record.
pub const SANDBOX_FILE: &str = "sandbox.json";
/// Current version of [`SandboxRecord`].
pub const SANDBOX_RECORD_VERSION: u32 = 1;

/// The pod's PID namespace mode (CRI `NamespaceMode` for pid).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SandboxPidMode {
    /// Each container has its own (CRI `CONTAINER`, the default).
    #[default]
    Container,
    /// Shared by the pod's containers (CRI `POD`): a `rootstock-monitor pod-init` process
    /// is its PID 1.
    Pod,
    /// The node's (hostPID).
    Host,
}

/// DNS settings (CRI `DNSConfig`, one type with CNI's); `None` in [`SandboxSpec`] copies the
/// node's resolv.conf.
pub use rootstock_fsutil::DnsConfig;

/// What RunPodSandbox asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxSpec {
    /// Sandbox id (the caller generates it).
    pub id: SandboxId,
    /// Pod hostname; empty keeps the node's.
    pub hostname: String,
    /// hostNetwork: the node's network and UTS namespaces, no hostname of its own.
    pub host_network: bool,
    /// hostIPC: the node's IPC namespace and `/dev/shm`.
    pub host_ipc: bool,
    /// PID namespace mode.
    pub pid: SandboxPidMode,
    /// A user namespace of the pod's own (CRI `userns_options` mode POD); `None` keeps the
    /// node's.
    pub userns: Option<UserNamespace>,
    /// DNS.
    pub dns: Option<DnsConfig>,
    /// Sysctls applied inside the new namespaces (before CNI ADD); only namespaced ones
    /// whose namespace the pod owns ([`crate::sysctl::check`]).
    pub sysctls: BTreeMap<String, String>,
    /// The pod's cgroup as kubelet sends it (cleaned by
    /// [`crate::cgroup_join::clean_cgroup_parent`]); pod-init runs in the leaf
    /// `<cgroup_parent>/<sandbox id>` below it. Empty (a bare client such as crictl): the
    /// runtime gives the pod `/rootstock/<sandbox id>`, and removes it with the sandbox.
    pub cgroup_parent: String,
    /// Opaque caller data (CRI metadata, labels, annotations…).
    pub client_data: crate::ClientData,
}

/// Sandbox lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SandboxState {
    /// Namespaces pinned.
    Ready,
    /// Stopped (namespaces released), or from a previous boot.
    NotReady,
}

/// A sandbox's persisted record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxRecord {
    /// [`SANDBOX_RECORD_VERSION`].
    pub version: u32,
    /// Sandbox id.
    pub id: SandboxId,
    /// Lifecycle state.
    pub state: SandboxState,
    /// Pod hostname.
    pub hostname: String,
    /// hostNetwork.
    pub host_network: bool,
    /// hostIPC.
    pub host_ipc: bool,
    /// PID mode.
    pub pid: SandboxPidMode,
    /// When it was created.
    pub created_at_unix_nanos: i64,
    /// Boot it was created in.
    pub boot_id: String,
    /// PID 1 of the pod's shared PID namespace (`SandboxPidMode::Pod` only).
    #[serde(default)]
    pub pod_init: Option<ProcessIdentity>,
    /// The cgroup pod-init was placed in (removed with the sandbox).
    #[serde(default)]
    pub pod_init_cgroup: Option<String>,
    /// The pod cgroup its containers are placed under. Records written before the field
    /// existed lack it: recovery fills it in from the caller's data.
    #[serde(default)]
    pub cgroup_parent: String,
    /// Whether the runtime chose `cgroup_parent` (and so removes it with the sandbox):
    /// kubelet owns the ones it sends.
    #[serde(default)]
    pub own_cgroup: bool,
    /// Opaque caller data.
    #[serde(default)]
    pub client_data: crate::ClientData,
    /// The pod's user namespace, pinned at `ns/user` (`None`: the node's).
    #[serde(default)]
    pub userns: Option<UserNamespace>,
}

impl SandboxRecord {
    /// A NotReady record of sandbox `id` that says nothing else: for one whose record
    /// cannot be read (recovery releases what it pinned), and as a base for tests.
    pub fn unknown(id: SandboxId) -> Self {
        Self {
            version: SANDBOX_RECORD_VERSION,
            id,
            state: SandboxState::NotReady,
            hostname: String::new(),
            host_network: false,
            host_ipc: false,
            pid: SandboxPidMode::Container,
            created_at_unix_nanos: 0,
            boot_id: String::new(),
            pod_init: None,
            pod_init_cgroup: None,
            cgroup_parent: String::new(),
            own_cgroup: false,
            client_data: crate::ClientData::default(),
            userns: None,
        }
    }
}

/// A sandbox's record and its files.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxInfo {
    /// The record.
    pub record: SandboxRecord,
    /// `<state_dir>/sandboxes/<id>`.
    pub dir: PathBuf,
}

pub(crate) const KINDS: [&str; 5] = ["net", "ipc", "uts", "pid", "user"];

impl SandboxInfo {
    /// The pinned namespace file of `kind` (`net`, `ipc`, `uts`, `user`), when the sandbox has one.
    pub fn namespace_path(&self, kind: &str) -> Option<PathBuf> {
        let own = match kind {
            "net" | "uts" => !self.record.host_network,
            "ipc" => !self.record.host_ipc,
            "user" => self.record.userns.is_some(),
            _ => false,
        };
        (own && self.record.state == SandboxState::Ready).then(|| self.dir.join("ns").join(kind))
    }

    /// The network namespace path for CNI (`None` for hostNetwork).
    pub fn netns_path(&self) -> Option<PathBuf> {
        self.namespace_path("net")
    }

    /// The namespaces a container of this pod joins.
    pub fn container_namespaces(&self) -> Namespaces {
        let mode = |kind: &str| match self.namespace_path(kind) {
            Some(p) => NamespaceMode::Path(p),
            None => NamespaceMode::Host,
        };
        Namespaces {
            user: self
                .record
                .userns
                .zip(self.namespace_path("user"))
                .map(|(mapping, path)| UserNamespaceJoin { path, mapping }),
            network: mode("net"),
            ipc: mode("ipc"),
            uts: mode("uts"),
            pid: match self.record.pid {
                SandboxPidMode::Host => PidMode::Host,
                // The pinned namespace, never `/proc/<pid>/ns/pid`: a recycled pid would
                // join another process's namespace. A namespace whose init has died takes
                // no new process (fork fails in it), and such a sandbox is NotReady anyway.
                SandboxPidMode::Pod if self.record.state == SandboxState::Ready => {
                    PidMode::Pod(self.dir.join("ns").join("pid"))
                }
                // A pod-mode sandbox without its init (stopped): nothing can join it; a
                // private namespace is the safe reading.
                SandboxPidMode::Container | SandboxPidMode::Pod => PidMode::Private,
            },
        }
    }

    /// The runtime-provided mounts (`ContainerSpec::sandbox_mounts`): hostname, hosts,
    /// resolv.conf and `/dev/shm`; the spec builder skips any a CRI mount overrides.
    pub fn container_mounts(&self) -> Vec<BindMount> {
        let m = |dst: &str, src: PathBuf| BindMount {
            container_path: dst.into(),
            host_path: src,
            readonly: false,
            propagation: Propagation::Private,
            recursive_readonly: false,
            idmapped: false,
        };
        let mut v = vec![
            m("/etc/hostname", self.dir.join("hostname")),
            m("/etc/hosts", self.dir.join("hosts")),
            m("/etc/resolv.conf", self.dir.join("resolv.conf")),
        ];
        v.push(m(
            "/dev/shm",
            if self.record.host_ipc {
                PathBuf::from("/dev/shm")
            } else {
                self.dir.join("shm")
            },
        ));
        v
    }

    /// The hostname containers get (`None` for hostNetwork: the node's).
    pub fn container_hostname(&self) -> Option<String> {
        (!self.record.host_network).then(|| self.record.hostname.clone())
    }
}

/// resolv.conf content for `dns`.
pub fn resolv_conf(dns: &DnsConfig) -> String {
    let mut s = String::new();
    for srv in &dns.servers {
        s.push_str(&format!("nameserver {srv}\n"));
    }
    if !dns.searches.is_empty() {
        s.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    if !dns.options.is_empty() {
        s.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    s
}

pub(crate) fn hosts_file(hostname: &str, host_network: bool) -> String {
    let mut s = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    if !host_network && !hostname.is_empty() {
        s.push_str(&format!("127.0.1.1\t{hostname}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_from_dns_config() {
        let d = DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
            ],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(&d),
            "nameserver 10.96.0.10\nsearch default.svc.cluster.local svc.cluster.local\noptions ndots:5\n"
        );
    }

    #[test]
    fn hosts_names_the_pod() {
        assert!(hosts_file("pod-a", false).contains("127.0.1.1\tpod-a\n"));
        assert!(!hosts_file("node", true).contains("127.0.1.1"));
    }
}
