//! PodSandboxStatus and ListPodSandbox, from the runtime's in-memory records (kubelet's PLEG
//! lists every second) and the pod IPs kept since ADD.

use std::collections::HashMap;

use k8s_cri::v1::{
    LinuxPodSandboxStatus, ListPodSandboxRequest, ListPodSandboxResponse, Namespace, PodIp,
    PodSandbox, PodSandboxNetworkStatus, PodSandboxState, PodSandboxStatus,
    PodSandboxStatusRequest, PodSandboxStatusResponse,
};
use rootstock_runtime::{SandboxId, SandboxInfo, SandboxState};

use super::meta::{SandboxListed, SandboxMeta};
use super::{RuntimeApi, labels_match};
use crate::error::CriError;

impl RuntimeApi {
    pub(super) async fn handle_pod_sandbox_status(
        &self,
        req: PodSandboxStatusRequest,
    ) -> Result<PodSandboxStatusResponse, CriError> {
        let id = self.sandbox_id(&req.pod_sandbox_id)?;
        let info = self.rt.sandbox(&id)?;
        // Both as of now: with the EventedPLEG gate kubelet takes the pod's containers from
        // this answer (not from ListContainers) once `timestamp` is set, and keeps the status
        // only when it is newer than what an event told it.
        let timestamp = rootstock_runtime::util::now_unix_nanos();
        let containers_statuses = self.container_statuses_of(&id);
        let status = self.sandbox_status(&info).await?;
        let mut info_map = HashMap::new();
        if req.verbose {
            let meta = SandboxMeta::of(&info);
            // containerd's keys first (`cniResult`, `runtimeSpec`, `config`), then ours.
            // crictl decodes every info value as a JSON object.
            let cni_result = match self.cni.attachment(id.as_str()).await {
                Ok(a) => a.map(|a| serde_json::json!({"network": a.network, "result": a.result})),
                Err(e) => {
                    tracing::debug!(sandbox = %id, "verbose status: CNI result: {e}");
                    None
                }
            };
            let verbose = serde_json::json!({
                "pid": info.record.pod_init.map(|p| p.pid).unwrap_or_default(),
                "cniResult": cni_result,
                "runtimeSpec": info.runtime_spec(&meta.annotations),
                "config": meta.config,
                "runtimeHandler": meta.runtime_handler,
                "id": id.as_str(),
                "state": format!("{:?}", info.record.state),
                "hostname": info.record.hostname,
                "netnsPath": info.netns_path(),
                "cgroupParent": info.record.cgroup_parent,
                "stateDir": info.dir,
            });
            info_map.insert("info".to_owned(), verbose.to_string());
        }
        Ok(PodSandboxStatusResponse {
            status: Some(status),
            info: info_map,
            containers_statuses,
            timestamp,
        })
    }

    /// Sandbox `info`'s CRI status, from memory (the IPs from the CNI cache once after a
    /// restart).
    pub(super) async fn sandbox_status(
        &self,
        info: &SandboxInfo,
    ) -> Result<PodSandboxStatus, CriError> {
        let meta = SandboxMeta::of(info);
        let ready = info.record.state == SandboxState::Ready;
        // Always present, empty for hostNetwork or a stopped pod: kubelet logs an error at
        // every status read of a sandbox without one (containerd also always sets it).
        let ips = if info.record.host_network || !ready {
            Vec::new()
        } else {
            self.ips_of(&info.record.id).await?
        };
        let mut ips = ips.into_iter();
        let network = Some(PodSandboxNetworkStatus {
            ip: ips.next().unwrap_or_default(),
            additional_ips: ips.map(|ip| PodIp { ip }).collect(),
        });
        Ok(PodSandboxStatus {
            id: info.record.id.to_string(),
            metadata: Some(meta.metadata()),
            state: sandbox_state(info) as i32,
            created_at: info.record.created_at_unix_nanos,
            network,
            linux: Some(LinuxPodSandboxStatus {
                namespaces: Some(Namespace {
                    options: Some(meta.namespace_options()),
                }),
            }),
            labels: meta.labels,
            annotations: meta.annotations,
            runtime_handler: meta.runtime_handler,
        })
    }

    /// The pod's IPs: from memory, else (after a restart) from the CNI cache.
    async fn ips_of(&self, id: &SandboxId) -> Result<Vec<String>, CriError> {
        if let Some(ips) = self.pod_ips().get(id.as_str()) {
            return Ok(ips.clone());
        }
        let ips: Vec<String> = match self.cni.attachment(id.as_str()).await? {
            Some(status) => status.ips.iter().map(ToString::to_string).collect(),
            None => Vec::new(),
        };
        if !ips.is_empty() {
            self.pod_ips().insert(id.to_string(), ips.clone());
        }
        Ok(ips)
    }

    pub(super) fn handle_list_pod_sandbox(
        &self,
        req: ListPodSandboxRequest,
    ) -> Result<ListPodSandboxResponse, CriError> {
        let mut filter = req.filter.unwrap_or_default();
        filter.id = self.sandbox_filter(&filter.id)?;
        let items = self
            .rt
            .list_sandboxes()
            .into_iter()
            .filter(|info| filter.id.is_empty() || info.record.id.as_str() == filter.id)
            .filter(|info| {
                filter
                    .state
                    .as_ref()
                    .is_none_or(|s| s.state == sandbox_state(info) as i32)
            })
            .filter_map(|info| {
                // The list's fields only: the pod config in the meta is skipped, not built.
                let meta = SandboxListed::of(&info.record);
                labels_match(&meta.labels, &filter.label_selector).then(|| PodSandbox {
                    id: info.record.id.to_string(),
                    metadata: Some(meta.metadata()),
                    state: sandbox_state(&info) as i32,
                    created_at: info.record.created_at_unix_nanos,
                    labels: meta.labels,
                    annotations: meta.annotations,
                    runtime_handler: meta.runtime_handler,
                })
            })
            .collect();
        Ok(ListPodSandboxResponse { items })
    }
}

fn sandbox_state(info: &SandboxInfo) -> PodSandboxState {
    match info.record.state {
        SandboxState::Ready => PodSandboxState::SandboxReady,
        SandboxState::NotReady => PodSandboxState::SandboxNotready,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use rootstock_runtime::SandboxState;
    use rootstock_runtime::sandbox::SandboxRecord;

    #[test]
    fn ready_and_not_ready_map_to_their_cri_states() {
        let mut record = SandboxRecord::unknown(SandboxId::new("s1").unwrap());
        record.state = SandboxState::Ready;
        let mut info = SandboxInfo {
            record,
            dir: Default::default(),
        };
        assert_eq!(sandbox_state(&info), PodSandboxState::SandboxReady);
        info.record.state = SandboxState::NotReady;
        assert_eq!(sandbox_state(&info), PodSandboxState::SandboxNotready);
    }
}
