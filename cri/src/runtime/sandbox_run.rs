//! RunPodSandbox: namespaces, hostname, DNS, sysctls and the pod cgroup (runtime crate), then
//! CNI ADD for pods with their own network. Every step taken is undone if a later one fails.

use k8s_cri::v1::{
    LinuxPodSandboxConfig, NamespaceMode, PodSandboxConfig, RunPodSandboxRequest,
    RunPodSandboxResponse,
};
use rootstock_cni::{PodNetwork, PortMapping, Protocol};
use rootstock_runtime::{DnsConfig, SandboxId, SandboxPidMode, SandboxSpec};

use super::meta::{SandboxMeta, new_id, to_json};
use super::{RuntimeApi, blocking};
use crate::error::CriError;

impl RuntimeApi {
    pub(super) async fn run_sandbox(
        &self,
        req: RunPodSandboxRequest,
    ) -> Result<RunPodSandboxResponse, CriError> {
        let config = req.config.ok_or_else(|| {
            CriError::InvalidArgument("RunPodSandbox: no sandbox config given".to_owned())
        })?;
        // An unknown RuntimeClass handler is refused before anything is made.
        self.rt.handler(&req.runtime_handler)?;
        let id = SandboxId::new(new_id()?)?;
        let meta = sandbox_meta(&config, &req.runtime_handler, &id)?;
        let reservation = self
            .names
            .reserve("pod sandbox", &meta.reserved_name(), id.as_str())?;
        let spec = sandbox_spec(&config, &meta, &id);
        let network = (!spec.host_network).then(|| pod_network(&config, &meta, &id));
        let network = network.transpose()?;

        let mut undo = Rollback::new(id.clone());
        let result = self.create_sandbox(spec, network, &mut undo).await;
        match result {
            Ok(()) => {
                undo.disarm();
                reservation.keep();
                tracing::info!(sandbox = %id, name = %meta.reserved_name(), "pod sandbox ready");
                Ok(RunPodSandboxResponse {
                    pod_sandbox_id: id.to_string(),
                })
            }
            Err(err) => {
                undo.run(self).await;
                Err(err)
            }
        }
    }

    async fn create_sandbox(
        &self,
        spec: SandboxSpec,
        network: Option<PodNetwork>,
        undo: &mut Rollback,
    ) -> Result<(), CriError> {
        let rt = self.rt.clone();
        let info = blocking(move || rt.create_sandbox(spec)).await?;
        undo.sandbox = true;
        let Some(mut pod) = network else {
            return Ok(());
        };
        pod.netns_path = info.netns_path().ok_or_else(|| {
            CriError::Internal(format!(
                "sandbox {}: no network namespace was pinned",
                info.record.id
            ))
        })?;
        undo.network = true;
        let status = self.cni.setup(&pod).await?;
        let ips = status.ips.iter().map(ToString::to_string).collect();
        self.pod_ips().insert(info.record.id.to_string(), ips);
        Ok(())
    }

    pub(super) fn pod_ips(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Vec<String>>> {
        // Entries are replaced whole; a poisoned map is still consistent.
        self.pod_ips.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Undo steps of a RunPodSandbox that has not completed (STYLE 8), run in reverse order.
struct Rollback {
    id: SandboxId,
    armed: bool,
    sandbox: bool,
    network: bool,
}

impl Rollback {
    fn new(id: SandboxId) -> Self {
        Self {
            id,
            armed: true,
            sandbox: false,
            network: false,
        }
    }

    fn disarm(&mut self) {
        self.armed = false;
    }

    /// Undoes what was done; failures are logged, the caller reports the original error.
    async fn run(self, api: &RuntimeApi) {
        if !self.armed {
            return;
        }
        // A failed ADD already ran DEL itself; teardown is idempotent and covers the case
        // where ADD succeeded and a later step failed.
        if self.network
            && let Err(e) = api.cni.teardown(self.id.as_str()).await
        {
            tracing::warn!(sandbox = %self.id, "rollback: CNI teardown: {e}");
        }
        api.pod_ips().remove(self.id.as_str());
        if self.sandbox {
            let rt = api.rt.clone();
            let id = self.id.clone();
            if let Err(e) = blocking(move || rt.remove_sandbox(&id)).await {
                tracing::warn!(sandbox = %self.id, "rollback: removing the sandbox: {e}");
            }
        }
    }
}

fn sandbox_meta(
    config: &PodSandboxConfig,
    runtime_handler: &str,
    id: &SandboxId,
) -> Result<SandboxMeta, CriError> {
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
    // kubelet always sends its pod cgroup; a bare client (crictl without one) gets a pod
    // cgroup of rootstock's own, which rootstock then also removes.
    if linux.cgroup_parent.is_empty() {
        meta.cgroup_parent = format!("/rootstock/{id}");
        meta.own_cgroup = true;
    } else {
        // Cleaned, and refused when it would leave the cgroup root (`../../x`).
        meta.cgroup_parent = rootstock_runtime::cgroup_join::clean_cgroup_parent(
            &linux.cgroup_parent,
        )
        .map_err(|e| CriError::InvalidArgument(format!("RunPodSandbox: config.linux.{e}")))?;
    }
    Ok(meta)
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

fn sandbox_spec(config: &PodSandboxConfig, meta: &SandboxMeta, id: &SandboxId) -> SandboxSpec {
    let node = NamespaceMode::Node as i32;
    let pid = match NamespaceMode::try_from(meta.pid_mode) {
        Ok(NamespaceMode::Node) => SandboxPidMode::Host,
        // CRI's zero value is POD: a sandbox without namespace options shares one PID
        // namespace, as with containerd's pause container. kubelet always sets the mode.
        Ok(NamespaceMode::Pod) => SandboxPidMode::Pod,
        _ => SandboxPidMode::Container,
    };
    SandboxSpec {
        id: id.clone(),
        // Empty: the node's hostname, as containerd (the pod name can be longer than a
        // hostname may be).
        hostname: config.hostname.clone(),
        host_network: meta.network_mode == node,
        host_ipc: meta.ipc_mode == node,
        pid,
        dns: config.dns_config.as_ref().map(|d| DnsConfig {
            servers: d.servers.clone(),
            searches: d.searches.clone(),
            options: d.options.clone(),
        }),
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
        cgroup_parent: meta.cgroup_parent.clone(),
        client_data: to_json(meta),
    }
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
        dns: config
            .dns_config
            .as_ref()
            .map(|d| rootstock_cni::DnsConfig {
                servers: d.servers.clone(),
                searches: d.searches.clone(),
                options: d.options.clone(),
            }),
    })
}
