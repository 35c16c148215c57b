//! StopPodSandbox: stop the pod's containers, CNI DEL, release the namespaces. Idempotent:
//! an unknown or already stopped sandbox is OK (CRI; critest `idempotence.go`).

use std::time::Duration;

use k8s_cri::v1::{StopPodSandboxRequest, StopPodSandboxResponse};
use rootstock_runtime::events::EventKind;
use rootstock_runtime::{SandboxId, SandboxState, Signal};

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
        // Stopping a stopped sandbox is OK, and no event: nothing changed.
        let was_ready = self
            .rt
            .sandbox(id)
            .is_ok_and(|s| s.record.state == SandboxState::Ready);
        // The containers are SIGKILLed (kubelet has already stopped them gracefully, with
        // their grace periods; this is the backstop, and containerd gives none either), so
        // nothing in them can tell their network go: CNI DEL runs meanwhile rather than
        // after, and the two take as long as the longer one. The namespaces are released
        // only once both are done (DEL enters the network namespace).
        let containers = async {
            for c in self.rt.containers_of(id) {
                let rt = self.rt.clone();
                let cid = c.record.id.clone();
                // Once it is gone, its runtime state goes too, still beside DEL: the
                // removal that follows (RemovePodSandbox) then runs no OCI runtime.
                blocking(move || {
                    rt.stop_container(&cid, Signal::KILL, Duration::ZERO)?;
                    rt.release_oci_state(&cid)
                })
                .await?;
            }
            Ok::<(), CriError>(())
        };
        // DEL runs also for a sandbox this daemon does not know (a crash between ADD and the
        // record, or a record already removed): the CNI cache decides, so an IP is never
        // leaked. Without a cache entry it does nothing.
        let network = async {
            rootstock_fsutil::failpoint::hit("sandbox-stop.before-cni-del");
            let deleted = std::time::Instant::now();
            let del = self.cni.teardown(id.as_str()).await;
            self.metrics.cni_done("del", del.is_ok(), deleted.elapsed());
            del?;
            rootstock_fsutil::failpoint::hit("sandbox-stop.after-cni-del");
            self.pod_ips().remove(id.as_str());
            Ok::<(), CriError>(())
        };
        let (stopped, deleted) = tokio::join!(containers, network);
        stopped?;
        deleted?;
        let rt = self.rt.clone();
        let sid = id.clone();
        blocking(move || rt.stop_sandbox(&sid)).await?;
        if was_ready {
            let info = self.rt.sandbox(id).ok();
            self.rt
                .events()
                .publish_sandbox(EventKind::Stopped, id.clone(), info);
        }
        Ok(())
    }
}
