//! RemovePodSandbox: remove the pod's containers, CNI DEL if Stop did not run it, release
//! the namespaces and files, and the pod cgroup when rootstock made it. Idempotent: an
//! unknown id is OK (CRI; critest `idempotence.go`).

use k8s_cri::v1::{RemovePodSandboxRequest, RemovePodSandboxResponse};
use rootstock_runtime::cgroup::CgroupLayout;

use super::meta::SandboxMeta;
use super::{RuntimeApi, blocking};
use crate::error::CriError;

impl RuntimeApi {
    pub(super) async fn remove_sandbox(
        &self,
        req: RemovePodSandboxRequest,
    ) -> Result<RemovePodSandboxResponse, CriError> {
        let id = self.sandbox_id_or_given(&req.pod_sandbox_id)?;
        let locked = self.lock_sandbox(id.as_str()).await;
        let meta = self.rt.sandbox(&id).ok().map(|info| SandboxMeta::of(&info));
        for c in self.containers_of(&id) {
            self.remove_container_by_id(&c.record.id).await?;
        }
        self.stop_sandbox_by_id(&id).await?;
        let rt = self.rt.clone();
        let sid = id.clone();
        blocking(move || rt.remove_sandbox(&sid)).await?;
        if let Some(meta) = meta {
            if meta.own_cgroup {
                let cgroup = meta.cgroup_parent.clone();
                tokio::task::spawn_blocking(move || remove_cgroup(&cgroup))
                    .await
                    .map_err(|e| CriError::Internal(format!("removing the pod cgroup: {e}")))??;
            }
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

/// Removes a pod cgroup rootstock created, in every hierarchy (v1 has one per controller).
/// Its container cgroups are gone by now (the OCI runtime removes them at delete).
fn remove_cgroup(cgroup: &str) -> Result<(), CriError> {
    for dir in CgroupLayout::detect().dirs(cgroup) {
        match std::fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(CriError::Internal(format!(
                    "removing the pod cgroup {}: {e}",
                    dir.display()
                )));
            }
        }
    }
    Ok(())
}
