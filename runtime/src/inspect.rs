//! What a verbose PodSandboxStatus shows as `runtimeSpec`. rootstock runs no pause
//! container, so this is the OCI spec such a container would have: the pod's namespaces
//! (by their pinned paths), hostname, cgroup, runtime-provided mounts and annotations.
//! Scripts read it as they read containerd's (`.info.runtimeSpec.linux.namespaces` for the
//! network namespace path), so the shape is the OCI one.

use std::collections::HashMap;
use std::path::PathBuf;

use oci_spec::runtime::{LinuxBuilder, LinuxNamespace, LinuxNamespaceType, Mount, Spec};

use crate::sandbox::{SandboxInfo, SandboxPidMode};

impl SandboxInfo {
    /// The pod's spec as its pause container's would read (cgroups path: the pod cgroup).
    pub fn runtime_spec(&self, annotations: &HashMap<String, String>) -> Spec {
        let mut namespaces = Vec::new();
        let mut ns = |typ: LinuxNamespaceType, path: Option<PathBuf>| {
            let mut n = LinuxNamespace::default();
            n.set_typ(typ);
            n.set_path(path);
            namespaces.push(n);
        };
        ns(LinuxNamespaceType::Mount, None);
        for (kind, typ) in [
            ("net", LinuxNamespaceType::Network),
            ("ipc", LinuxNamespaceType::Ipc),
            ("uts", LinuxNamespaceType::Uts),
        ] {
            if let Some(path) = self.namespace_path(kind) {
                ns(typ, Some(path));
            }
        }
        match (self.record.pid, self.record.pod_init) {
            (SandboxPidMode::Host, _) => {}
            (SandboxPidMode::Pod, Some(_)) => ns(
                LinuxNamespaceType::Pid,
                Some(self.dir.join("ns").join("pid")),
            ),
            _ => ns(LinuxNamespaceType::Pid, None),
        }
        let linux = LinuxBuilder::default()
            .namespaces(namespaces)
            .cgroups_path(PathBuf::from(&self.record.cgroup_parent))
            .build()
            .unwrap_or_default();
        let mounts = self
            .container_mounts()
            .into_iter()
            .map(|m| {
                let mut mount = Mount::default();
                mount.set_destination(m.container_path);
                mount.set_typ(Some("bind".to_owned()));
                mount.set_source(Some(m.host_path));
                mount.set_options(Some(vec!["rbind".to_owned(), "rprivate".to_owned()]));
                mount
            })
            .collect();
        let mut spec = Spec::default();
        spec.set_process(None);
        spec.set_root(None);
        spec.set_hostname(self.container_hostname());
        spec.set_mounts(Some(mounts));
        spec.set_linux(Some(linux));
        spec.set_annotations(Some(annotations.clone()));
        spec
    }
}
