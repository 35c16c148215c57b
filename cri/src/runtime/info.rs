//! Version, Status and RuntimeConfig: what kubelet asks before anything else.

use std::collections::HashMap;

use k8s_cri::v1::*;

use super::RuntimeApi;
use crate::config::CgroupDriver;
use crate::error::CriError;

/// kubelet refuses any other value (`kubeRuntimeAPIVersion` in kuberuntime_manager.go).
const KUBELET_API_VERSION: &str = "0.1.0";

impl RuntimeApi {
    pub(super) fn version_info(&self, _req: VersionRequest) -> Result<VersionResponse, CriError> {
        Ok(VersionResponse {
            version: KUBELET_API_VERSION.to_owned(),
            runtime_name: "rootstock".to_owned(),
            runtime_version: env!("CARGO_PKG_VERSION").to_owned(),
            runtime_api_version: "v1".to_owned(),
        })
    }

    pub(super) async fn runtime_status(
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
            let config = serde_json::to_string(&*self.config)
                .map_err(|e| CriError::Internal(format!("encoding the configuration: {e}")))?;
            info.insert("config".to_owned(), config);
            let cni = serde_json::json!({
                "ready": network.ready,
                "network": network.network,
                "source": network.source,
                "message": network.message,
            });
            info.insert("cni".to_owned(), cni.to_string());
        }
        let features = Some(RuntimeHandlerFeatures {
            recursive_read_only_mounts: false,
            user_namespaces: false,
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
                supplemental_groups_policy: false,
            }),
        })
    }

    pub(super) fn cgroup_config(&self) -> Result<RuntimeConfigResponse, CriError> {
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
