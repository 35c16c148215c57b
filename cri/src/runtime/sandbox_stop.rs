//! StopPodSandbox: stop the pod's containers, CNI DEL, release the namespaces. Idempotent:
//! an unknown or already stopped sandbox is OK (CRI; critest `idempotence.go`).

use std::time::Duration;

use k8s_cri::v1::{StopPodSandboxRequest, StopPodSandboxResponse};
use rootstock_runtime::{SandboxId, Signal};

use super::{RuntimeApi, blocking};
use crate::error::CriError;

impl RuntimeApi {
    pub(super) async fn handle_stop_pod_sandbox(
        &self,
        req: StopPodSandboxRequest,
    ) -> Result<StopPodSandboxResponse, CriError> {
        let id = self.sandbox_id_or_given(&req.pod_sandbox_id)?;
        let _locked = self.lock_sandbox(id.as_str()).await;
        self.stop_sandbox_by_id(&id).await?;
        Ok(StopPodSandboxResponse {})
    }

    /// Shared with RemovePodSandbox, which must leave nothing running either.
    pub(super) async fn stop_sandbox_by_id(&self, id: &SandboxId) -> Result<(), CriError> {
        // Containers first, as containerd does: they must not see their network vanish
        // while they run. kubelet has already stopped them gracefully; this is the backstop.
        // The pod is going away: its containers get no grace period here (containerd does
        // the same; kubelet has already stopped them with theirs).
        for c in self.rt.containers_of(id) {
            let rt = self.rt.clone();
            let cid = c.record.id.clone();
            blocking(move || rt.stop_container(&cid, Signal::KILL, Duration::ZERO)).await?;
        }
        // DEL runs also for a sandbox this daemon does not know (a crash between ADD and the
        // record, or a record already removed): the CNI cache decides, so an IP is never
        // leaked. Without a cache entry it does nothing.
        rootstock_fsutil::failpoint::hit("sandbox-stop.before-cni-del");
        self.cni.teardown(id.as_str()).await?;
        rootstock_fsutil::failpoint::hit("sandbox-stop.after-cni-del");
        self.pod_ips().remove(id.as_str());
        let rt = self.rt.clone();
        let sid = id.clone();
        blocking(move || rt.stop_sandbox(&sid)).await?;
        Ok(())
    }
}
