//! Version, Status and RuntimeConfig: what kubelet asks before anything else.

use std::collections::HashMap;

use k8s_cri::v1::*;

use super::RuntimeApi;
use crate::config::CgroupDriver;
use crate::error::CriError;

/// kubelet refuses any other value (`kubeRuntimeAPIVersion` in kuberuntime_manager.go).
const KUBELET_API_VERSION: &str = "0.1.0";

impl RuntimeApi {
    pub(super) fn handle_version(&self, _req: VersionRequest) -> Result<VersionResponse, CriError> {
        Ok(VersionResponse {
            version: KUBELET_API_VERSION.to_owned(),
            runtime_name: "rootstock".to_owned(),
            runtime_version: env!("CARGO_PKG_VERSION").to_owned(),
            runtime_api_version: "v1".to_owned(),
        })
    }

    pub(super) async fn handle_status(
        &self,
        req: StatusRequest,
    ) -> Result<StatusResponse, CriError> {
        let network = self.cni.status().await;
        let conditions = vec![
            RuntimeCondition {
                r#type: "RuntimeReady".to_owned(),
                status: true,
                reason: String::new(),
                message: String::new(),
            },
            RuntimeCondition {
                r#type: "NetworkReady".to_owned(),
                status: network.ready,
                reason: network.reason.clone(),
                message: network.message.clone(),
            },
        ];
        // crictl >= 1.30 decodes every info value as a JSON object and drops anything else.
        let mut info = HashMap::new();
        if req.verbose {
            let mut config = serde_json::to_value(&*self.config)
                .map_err(|e| CriError::Internal(format!("encoding the configuration: {e}")))?;
            redact(&mut config);
            info.insert("config".to_owned(), config.to_string());
            let cni = serde_json::json!({
                "ready": network.ready,
                "network": network.network,
                "source": network.source,
                "message": network.message,
            });
            info.insert("cni".to_owned(), cni.to_string());
            let userns = match self.rt.user_namespaces() {
                Ok(()) => serde_json::json!({ "supported": true }),
                Err(missing) => serde_json::json!({ "supported": false, "missing": missing }),
            };
            info.insert("userNamespaces".to_owned(), userns.to_string());
        }
        // Both handlers (runc, crun) take the `rro` mount option; the kernel must have
        // mount_setattr for it. User namespaces: both join one by path, and rootstock makes
        // the idmapped mounts itself, so the kernel probe at start-up decides for both.
        let features = Some(RuntimeHandlerFeatures {
            recursive_read_only_mounts: rootstock_runtime::util::mount_setattr_supported(),
            user_namespaces: self.rt.user_namespaces().is_ok(),
        });
        // The handler named "" is the default one (CRI `RuntimeHandler.name`).
        let runtime_handlers = std::iter::once(String::new())
            .chain(self.config.runtime.handlers.keys().cloned())
            .map(|name| RuntimeHandler { name, features })
            .collect();
        Ok(StatusResponse {
            status: Some(RuntimeStatus { conditions }),
            info,
            runtime_handlers,
            features: Some(RuntimeFeatures {
                // `Strict` is honoured and ContainerStatus.user is reported.
                supplemental_groups_policy: true,
            }),
        })
    }

    /// kubelet sends the node's pod CIDR on every node-status sync once `podCIDR` is set.
    /// The CNI configuration already carries the pod network, so the CIDR is only checked
    /// and recorded (logged when it changes), as containerd does without a conf template.
    pub(super) fn handle_update_runtime_config(
        &self,
        req: UpdateRuntimeConfigRequest,
    ) -> Result<UpdateRuntimeConfigResponse, CriError> {
        let cidr = req
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        for part in cidr.split(',').filter(|p| !p.trim().is_empty()) {
            let valid = part.trim().split_once('/').is_some_and(|(ip, len)| {
                let len = len.parse::<u8>().ok();
                match ip.parse::<std::net::IpAddr>() {
                    Ok(std::net::IpAddr::V4(_)) => len.is_some_and(|l| l <= 32),
                    Ok(std::net::IpAddr::V6(_)) => len.is_some_and(|l| l <= 128),
                    Err(_) => false,
                }
            });
            if !valid {
                return Err(CriError::InvalidArgument(format!(
                    "UpdateRuntimeConfig: runtime_config.network_config.pod_cidr {cidr:?}: \
                     {part:?} is not an address/prefix-length CIDR"
                )));
            }
        }
        let mut current = self.pod_cidr.lock().unwrap_or_else(|p| p.into_inner());
        if *current != cidr {
            tracing::info!(pod_cidr = %cidr, "pod CIDR from kubelet");
            *current = cidr;
        }
        Ok(UpdateRuntimeConfigResponse {})
    }

    pub(super) fn handle_runtime_config(&self) -> Result<RuntimeConfigResponse, CriError> {
        let cgroup_driver = match self.config.cgroup_driver {
            CgroupDriver::Cgroupfs => k8s_cri::v1::CgroupDriver::Cgroupfs,
            CgroupDriver::Systemd => k8s_cri::v1::CgroupDriver::Systemd,
        };
        Ok(RuntimeConfigResponse {
            linux: Some(LinuxRuntimeConfiguration {
                cgroup_driver: cgroup_driver.into(),
            }),
        })
    }
}

/// Keys whose values are secrets, wherever they sit in the configuration (registry
/// `password` and `auth` today; token-like names for what a later section may add).
const SECRET_KEYS: [&str; 6] = [
    "password",
    "auth",
    "token",
    "identity_token",
    "registry_token",
    "secret",
];

/// Replaces every secret value of `value` (anyone allowed on the socket may read
/// `crictl info`; a registry password must not be shown).
fn redact(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if SECRET_KEYS.contains(&k.to_ascii_lowercase().as_str()) && !v.is_null() {
                    *v = serde_json::Value::String("<redacted>".to_owned());
                } else {
                    redact(v);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_at_any_depth() {
        let mut v = serde_json::json!({
            "images": {"registries": {"r:5000": {
                "username": "u", "password": "hunter2", "auth": "dTpo", "mirrors": ["m"]
            }}},
            "list": [{"token": "t"}]
        });
        redact(&mut v);
        let text = v.to_string();
        for secret in ["hunter2", "dTpo", "\"t\""] {
            assert!(!text.contains(secret), "{text}");
        }
        assert!(text.contains("\"username\":\"u\""), "{text}");
    }
}
