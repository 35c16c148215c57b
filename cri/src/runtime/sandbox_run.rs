//! RunPodSandbox: namespaces, hostname, DNS, sysctls and the pod cgroup (runtime crate), then
//! CNI ADD for pods with their own network. Every step taken is undone if a later one fails.

use k8s_cri::v1::{
    LinuxPodSandboxConfig, NamespaceMode, PodSandboxConfig, RunPodSandboxRequest,
    RunPodSandboxResponse,
};
use rootstock_cni::{PodNetwork, PortMapping, Protocol};
use rootstock_runtime::events::EventKind;
use rootstock_runtime::{DnsConfig, SandboxId, SandboxPidMode, SandboxSpec};

use super::meta::{SandboxMeta, new_id, to_json};
use super::undo::AsyncUndo;
use super::{RuntimeApi, blocking};
use crate::error::CriError;

impl RuntimeApi {
    pub(super) async fn handle_run_pod_sandbox(
        &self,
        req: RunPodSandboxRequest,
    ) -> Result<RunPodSandboxResponse, CriError> {
        let config = req.config.ok_or_else(|| {
            CriError::InvalidArgument("RunPodSandbox: no sandbox config given".to_owned())
        })?;
        // An unknown RuntimeClass handler is refused before anything is made.
        self.rt.handler(&req.runtime_handler)?;
        let id = SandboxId::new(new_id()?)?;
        let meta = sandbox_meta(&config, &req.runtime_handler)?;
        let reservation = self
            .names
            .reserve("pod sandbox", &meta.reserved_name(), id.as_str())?;
        let spec = sandbox_spec(
            &config,
            &meta,
            &id,
            self.config.runtime.userns_kubelet_ranges_only,
        )?;
        if spec.userns.is_some()
            && let Err(missing) = self.rt.user_namespaces()
        {
            return Err(CriError::FailedPrecondition(format!(
                "RunPodSandbox: user namespaces (userns_options mode POD) are not available                  on this node: {missing}"
            )));
        }
        let network = (!spec.host_network).then(|| pod_network(&config, &meta, &id));
        let network = network.transpose()?;

        let mut undo = AsyncUndo::new(format_args!("sandbox {id}"));
        let created = match self.create_sandbox(spec, network, &mut undo).await {
            Ok(()) => self.commit_sandbox(&id).await,
            Err(err) => Err(err),
        };
        match created {
            Ok(()) => {
                undo.commit();
                reservation.keep();
                let info = self.rt.sandbox(&id).ok();
                let events = self.rt.events();
                events.publish_sandbox(EventKind::Created, id.clone(), info.clone());
                events.publish_sandbox(EventKind::Started, id.clone(), info);
                tracing::info!(sandbox = %id, name = %meta.reserved_name(), "pod sandbox ready");
                Ok(RunPodSandboxResponse {
                    pod_sandbox_id: id.to_string(),
                })
            }
            Err(err) => {
                undo.run().await;
                Err(err)
            }
        }
    }

    /// The runtime's sandbox, with CNI ADD started as soon as its network namespace is
    /// pinned, so that ADD overlaps what the runtime still does (pod-init, the sandbox's
    /// record); each step pushes its undo onto `undo` as soon as it has something to undo.
    async fn create_sandbox(
        &self,
        spec: SandboxSpec,
        network: Option<PodNetwork>,
        undo: &mut AsyncUndo,
    ) -> Result<(), CriError> {
        let id = spec.id.clone();
        let wants_network = network.is_some();
        let (rt, cni, metrics, tokio) = (
            self.rt.clone(),
            self.cni.clone(),
            self.metrics.clone(),
            tokio::runtime::Handle::current(),
        );
        let (created, add) = tokio::task::spawn_blocking(move || {
            let mut add = None;
            let created = rt.create_sandbox_with(spec, |info| {
                if let (Some(mut pod), Some(netns)) = (network, info.netns_path()) {
                    pod.netns_path = netns;
                    add = Some(tokio.spawn(async move {
                        let started = std::time::Instant::now();
                        let status = cni.setup(&pod).await;
                        metrics.cni_done("add", status.is_ok(), started.elapsed());
                        status
                    }));
                }
            });
            (created, add)
        })
        .await
        .map_err(|e| CriError::Internal(format!("blocking task failed: {e}")))?;
        // ADD runs to its end whatever happened meanwhile: teardown (DEL) must never race it.
        let added = match add {
            Some(task) => Some(task.await),
            None => None,
        };
        // Removing a sandbox the runtime already released (its create failed) is a no-op.
        let (rt, sid) = (self.rt.clone(), id.clone());
        undo.push("remove the sandbox", async move {
            blocking(move || rt.remove_sandbox(&sid)).await
        });
        if added.is_some() {
            // A failed ADD already ran DEL itself, but teardown is idempotent and also
            // covers an ADD that succeeded before the sandbox or a later step failed.
            let (api, id) = (self.clone(), id.clone());
            undo.push("CNI teardown", async move {
                api.pod_ips().remove(id.as_str());
                api.cni.teardown(id.as_str()).await
            });
        }
        created?;
        let status = match added {
            Some(Ok(status)) => status?,
            Some(Err(e)) => return Err(CriError::Internal(format!("CNI ADD task failed: {e}"))),
            None if wants_network => {
                return Err(CriError::Internal(format!(
                    "sandbox {id}: no network namespace was pinned"
                )));
            }
            None => return Ok(()),
        };
        let ips = status.ips.iter().map(ToString::to_string).collect();
        self.pod_ips().insert(id.to_string(), ips);
        Ok(())
    }

    /// The commit point: until the runtime's "unfinished" mark is cleared, a crash makes
    /// start-up recovery remove the sandbox and its network (the RPC never happened).
    async fn commit_sandbox(&self, id: &SandboxId) -> Result<(), CriError> {
        rootstock_fsutil::failpoint::hit("sandbox.network-ready");
        let (rt, id) = (self.rt.clone(), id.clone());
        blocking(move || rt.sandbox_committed(&id)).await?;
        Ok(())
    }

    pub(super) fn pod_ips(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Vec<String>>> {
        // Entries are replaced whole; a poisoned map is still consistent.
        self.pod_ips.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn sandbox_meta(config: &PodSandboxConfig, runtime_handler: &str) -> Result<SandboxMeta, CriError> {
    let metadata = config.metadata.as_ref().ok_or_else(|| {
        CriError::InvalidArgument("RunPodSandbox: sandbox config has no metadata".to_owned())
    })?;
    for (field, value) in [
        ("name", &metadata.name),
        ("namespace", &metadata.namespace),
        ("uid", &metadata.uid),
    ] {
        if value.is_empty() {
            return Err(CriError::InvalidArgument(format!(
                "RunPodSandbox: sandbox metadata.{field} is empty"
            )));
        }
    }
    check_hostname(&config.hostname)?;
    let linux = config.linux.clone().unwrap_or_default();
    let ns = namespace_options(&linux);
    let mut meta = SandboxMeta::new(metadata);
    meta.labels = config.labels.clone();
    meta.annotations = config.annotations.clone();
    meta.runtime_handler = runtime_handler.to_owned();
    meta.log_directory = config.log_directory.clone();
    meta.network_mode = ns.network;
    meta.pid_mode = ns.pid;
    meta.ipc_mode = ns.ipc;
    meta.target_id = ns.target_id;
    meta.config = Some(config.clone());
    Ok(meta)
}

/// The pod cgroup kubelet sent, cleaned, and refused when it would leave the cgroup root
/// (`../../x`). Empty (a bare client such as crictl) stays empty: the runtime then gives
/// the pod a cgroup of its own, and removes it with the pod.
fn cgroup_parent(config: &PodSandboxConfig) -> Result<String, CriError> {
    let given = config
        .linux
        .as_ref()
        .map(|l| l.cgroup_parent.as_str())
        .unwrap_or_default();
    if given.is_empty() {
        return Ok(String::new());
    }
    rootstock_runtime::cgroup_join::clean_cgroup_parent(given)
        .map_err(|e| CriError::InvalidArgument(format!("RunPodSandbox: config.linux.{e}")))
}

/// A hostname the kernel accepts and kubelet could send (a DNS name of at most 64 bytes,
/// `HOST_NAME_MAX`): anything else would fail `sethostname` deep inside the sandbox set-up.
fn check_hostname(hostname: &str) -> Result<(), CriError> {
    let bad = |why: &str| {
        Err(CriError::InvalidArgument(format!(
            "RunPodSandbox: config.hostname {hostname:?} {why}"
        )))
    };
    if hostname.len() > 64 {
        return bad(&format!(
            "is {} bytes long; at most 64 are allowed",
            hostname.len()
        ));
    }
    if !hostname
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return bad("may only hold ASCII letters, digits, '-', '.' and '_'");
    }
    Ok(())
}

fn namespace_options(linux: &LinuxPodSandboxConfig) -> k8s_cri::v1::NamespaceOption {
    linux
        .security_context
        .as_ref()
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default()
}

fn sandbox_spec(
    config: &PodSandboxConfig,
    meta: &SandboxMeta,
    id: &SandboxId,
    userns_kubelet_ranges_only: bool,
) -> Result<SandboxSpec, CriError> {
    let userns = super::userns::pod_user_namespace(
        &namespace_options(config.linux.as_ref().unwrap_or(&Default::default())),
        userns_kubelet_ranges_only,
    )?;
    let node = NamespaceMode::Node as i32;
    let pid = match NamespaceMode::try_from(meta.pid_mode) {
        Ok(NamespaceMode::Node) => SandboxPidMode::Host,
        // CRI's zero value is POD: a sandbox without namespace options shares one PID
        // namespace, as with containerd's pause container. kubelet always sets the mode.
        Ok(NamespaceMode::Pod) => SandboxPidMode::Pod,
        _ => SandboxPidMode::Container,
    };
    Ok(SandboxSpec {
        id: id.clone(),
        // Empty: the node's hostname, as containerd (the pod name can be longer than a
        // hostname may be).
        hostname: config.hostname.clone(),
        host_network: meta.network_mode == node,
        host_ipc: meta.ipc_mode == node,
        pid,
        userns,
        dns: dns_config(config),
        sysctls: config
            .linux
            .as_ref()
            .map(|l| {
                l.sysctls
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default(),
        cgroup_parent: cgroup_parent(config)?,
        client_data: to_json(meta).into(),
    })
}

/// The pod's DNS settings, one value for the runtime (resolv.conf) and CNI (plugins with
/// the `dns` capability).
fn dns_config(config: &PodSandboxConfig) -> Option<DnsConfig> {
    config.dns_config.as_ref().map(|d| DnsConfig {
        servers: d.servers.clone(),
        searches: d.searches.clone(),
        options: d.options.clone(),
    })
}

/// The CNI view of the pod; `netns_path` is filled in once the namespace is pinned.
fn pod_network(
    config: &PodSandboxConfig,
    meta: &SandboxMeta,
    id: &SandboxId,
) -> Result<PodNetwork, CriError> {
    let port = |what: &str, value: i32| {
        u16::try_from(value).map_err(|_| {
            CriError::InvalidArgument(format!("port mapping: {what} {value} is out of range"))
        })
    };
    let port_mappings = config
        .port_mappings
        .iter()
        .map(|p| {
            let protocol = match k8s_cri::v1::Protocol::try_from(p.protocol) {
                Ok(k8s_cri::v1::Protocol::Udp) => Protocol::Udp,
                Ok(k8s_cri::v1::Protocol::Sctp) => Protocol::Sctp,
                _ => Protocol::Tcp,
            };
            Ok(PortMapping {
                protocol,
                container_port: port("container port", p.container_port)?,
                host_port: port("host port", p.host_port)?,
                host_ip: p.host_ip.clone(),
            })
        })
        .collect::<Result<Vec<_>, CriError>>()?;
    Ok(PodNetwork {
        sandbox_id: id.to_string(),
        netns_path: Default::default(),
        pod_name: meta.name.clone(),
        pod_namespace: meta.namespace.clone(),
        pod_uid: meta.uid.clone(),
        port_mappings,
        bandwidth: None,
        dns: dns_config(config),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use k8s_cri::v1::{DnsConfig as CriDns, PodSandboxMetadata, PortMapping as CriPort};

    fn config() -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: "web".into(),
                uid: "uid-1".into(),
                namespace: "default".into(),
                attempt: 2,
            }),
            hostname: "web-0".into(),
            log_directory: "/var/log/pods/web".into(),
            linux: Some(LinuxPodSandboxConfig::default()),
            ..Default::default()
        }
    }

    fn with_modes(
        network: NamespaceMode,
        pid: NamespaceMode,
        ipc: NamespaceMode,
    ) -> PodSandboxConfig {
        let mut c = config();
        c.linux = Some(LinuxPodSandboxConfig {
            security_context: Some(k8s_cri::v1::LinuxSandboxSecurityContext {
                namespace_options: Some(k8s_cri::v1::NamespaceOption {
                    network: network as i32,
                    pid: pid as i32,
                    ipc: ipc as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        c
    }

    fn spec_of(c: &PodSandboxConfig) -> Result<SandboxSpec, CriError> {
        let meta = sandbox_meta(c, "runc")?;
        sandbox_spec(c, &meta, &SandboxId::new("s1").unwrap(), true)
    }

    fn invalid(r: Result<impl std::fmt::Debug, CriError>, field: &str) {
        match r {
            Err(CriError::InvalidArgument(m)) => assert!(m.contains(field), "{m}"),
            other => panic!("expected InvalidArgument naming {field}: {other:?}"),
        }
    }

    #[test]
    fn namespace_modes_become_host_flags_and_a_pid_mode() {
        let pod = NamespaceMode::Pod;
        let node = NamespaceMode::Node;
        let s = spec_of(&with_modes(pod, pod, pod)).unwrap();
        assert!(!s.host_network && !s.host_ipc);
        assert_eq!(s.pid, SandboxPidMode::Pod);
        let s = spec_of(&with_modes(node, NamespaceMode::Container, node)).unwrap();
        assert!(s.host_network && s.host_ipc);
        assert_eq!(s.pid, SandboxPidMode::Container);
        assert_eq!(
            spec_of(&with_modes(pod, node, pod)).unwrap().pid,
            SandboxPidMode::Host
        );
        // No namespace options at all: CRI's zero values, POD everywhere.
        assert_eq!(spec_of(&config()).unwrap().pid, SandboxPidMode::Pod);
    }

    #[test]
    fn hostname_dns_sysctls_and_meta_are_carried_over() {
        let mut c = config();
        c.dns_config = Some(CriDns {
            servers: vec!["10.96.0.10".into()],
            searches: vec!["svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        });
        c.linux.as_mut().unwrap().sysctls =
            [("net.ipv4.ip_forward".to_owned(), "1".to_owned())].into();
        let s = spec_of(&c).unwrap();
        assert_eq!(s.hostname, "web-0");
        let dns = s.dns.unwrap();
        assert_eq!(dns.servers, ["10.96.0.10"]);
        assert_eq!(dns.options, ["ndots:5"]);
        assert_eq!(s.sysctls["net.ipv4.ip_forward"], "1");
        let meta: SandboxMeta = s.client_data.parse().unwrap();
        assert_eq!(meta.reserved_name(), "web_default_uid-1_2");
        assert_eq!(meta.runtime_handler, "runc");
        assert_eq!(meta.log_directory, "/var/log/pods/web");
    }

    #[test]
    fn cgroup_parent_is_cleaned_refused_outside_the_root_or_left_to_the_runtime() {
        let mut c = config();
        assert_eq!(
            spec_of(&c).unwrap().cgroup_parent,
            "",
            "the runtime chooses"
        );
        c.linux.as_mut().unwrap().cgroup_parent = "/kubepods/burstable/pod1/".into();
        assert_eq!(
            spec_of(&c).unwrap().cgroup_parent,
            "/kubepods/burstable/pod1"
        );
        c.linux.as_mut().unwrap().cgroup_parent = "../../escape".into();
        invalid(spec_of(&c), "cgroup_parent");
    }

    #[test]
    fn missing_metadata_fields_and_bad_hostnames_are_named() {
        for field in ["name", "namespace", "uid"] {
            let mut c = config();
            let m = c.metadata.as_mut().unwrap();
            match field {
                "name" => m.name.clear(),
                "namespace" => m.namespace.clear(),
                _ => m.uid.clear(),
            }
            invalid(sandbox_meta(&c, ""), &format!("metadata.{field}"));
        }
        let mut c = config();
        c.metadata = None;
        invalid(sandbox_meta(&c, ""), "metadata");
        for bad in ["a b", "x".repeat(65).as_str(), "pod/1"] {
            invalid(check_hostname(bad), "config.hostname");
        }
        assert!(check_hostname("").is_ok(), "empty keeps the node's");
        assert!(check_hostname(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn pod_network_maps_ports_protocols_and_names_a_bad_port() {
        let mut c = config();
        c.port_mappings = vec![
            CriPort {
                protocol: k8s_cri::v1::Protocol::Udp as i32,
                container_port: 53,
                host_port: 5353,
                host_ip: "127.0.0.1".into(),
            },
            CriPort {
                protocol: k8s_cri::v1::Protocol::Tcp as i32,
                container_port: 80,
                host_port: 0,
                host_ip: String::new(),
            },
        ];
        c.dns_config = Some(CriDns {
            servers: vec!["1.1.1.1".into()],
            ..Default::default()
        });
        let meta = sandbox_meta(&c, "").unwrap();
        let id = SandboxId::new("s1").unwrap();
        let net = pod_network(&c, &meta, &id).unwrap();
        assert_eq!(net.sandbox_id, "s1");
        assert_eq!(
            (net.pod_name.as_str(), net.pod_namespace.as_str()),
            ("web", "default")
        );
        assert_eq!(net.pod_uid, "uid-1");
        assert_eq!(net.port_mappings[0].protocol, Protocol::Udp);
        assert_eq!(net.port_mappings[0].host_port, 5353);
        assert_eq!(net.port_mappings[1].protocol, Protocol::Tcp);
        assert_eq!(net.dns.unwrap().servers, ["1.1.1.1"]);
        c.port_mappings[1].container_port = 70_000;
        invalid(pod_network(&c, &meta, &id), "container port 70000");
    }
}
