//! RemovePodSandbox: remove the pod's containers, CNI DEL if Stop did not run it, then the
//! runtime releases the namespaces and files (and the pod cgroup when it chose it). Idempotent: an
//! unknown id is OK (CRI; critest `idempotence.go`).

use k8s_cri::v1::{RemovePodSandboxRequest, RemovePodSandboxResponse};
use rootstock_runtime::SandboxState;
use rootstock_runtime::events::EventKind;

use super::meta::SandboxMeta;
use super::{RuntimeApi, blocking};
use crate::error::CriError;

impl RuntimeApi {
    pub(super) async fn handle_remove_pod_sandbox(
        &self,
        req: RemovePodSandboxRequest,
    ) -> Result<RemovePodSandboxResponse, CriError> {
        let id = self.sandbox_id_or_given(&req.pod_sandbox_id)?;
        let locked = self.lock_sandbox(id.as_str()).await;
        let known = self.rt.sandbox(&id).ok();
        let meta = known.as_ref().map(SandboxMeta::of);
        for c in self.rt.containers_of(&id) {
            self.remove_container_by_id(&c.record.id).await?;
        }
        rootstock_fsutil::failpoint::hit("sandbox-remove.containers-removed");
        self.stop_sandbox_by_id(&id).await?;
        let rt = self.rt.clone();
        let sid = id.clone();
        blocking(move || rt.remove_sandbox(&sid)).await?;
        if known.is_some() {
            // As of now (stopped): the sandbox is gone by the time a subscriber reads it.
            let last = known.map(|mut info| {
                info.record.state = SandboxState::NotReady;
                info
            });
            self.rt
                .events()
                .publish_sandbox(EventKind::Deleted, id.clone(), last);
        }
        if let Some(meta) = meta {
            self.names.release(&meta.reserved_name(), id.as_str());
        }
        self.cpu_rates
            .forget(&super::stats::pod_rate_key(id.as_str()));
        drop(locked);
        self.forget_sandbox_lock(id.as_str());
        tracing::info!(sandbox = %id, "pod sandbox removed");
        Ok(RemovePodSandboxResponse {})
    }
}
