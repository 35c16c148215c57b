//! RemoveContainer: kill if still running, delete the OCI state, unmount the rootfs, remove
//! its files and record, give the image tree lease and the name back. Idempotent: an
//! unknown id is OK (CRI; critest `idempotence.go`).

use k8s_cri::v1::{RemoveContainerRequest, RemoveContainerResponse};
use rootstock_runtime::ContainerId;

use super::meta::ContainerMeta;
use super::{RuntimeApi, blocking};
use crate::error::CriError;

impl RuntimeApi {
    pub(super) async fn handle_remove_container(
        &self,
        req: RemoveContainerRequest,
    ) -> Result<RemoveContainerResponse, CriError> {
        // CRI: removing an unknown container is OK.
        if let Some(id) = self.known_container_id(&req.container_id)? {
            self.remove_container_by_id(&id).await?;
        }
        Ok(RemoveContainerResponse {})
    }

    /// Shared with RemovePodSandbox.
    pub(super) async fn remove_container_by_id(&self, id: &ContainerId) -> Result<(), CriError> {
        let info = match self.rt.container(id) {
            Ok(info) => info,
            // Removed meanwhile: done. Any other failure is reported.
            Err(e) if e.kind() == rootstock_runtime::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let meta = ContainerMeta::of(&info);
        let rt = self.rt.clone();
        let cid = id.clone();
        blocking(move || rt.remove_container(&cid)).await?;
        rootstock_fsutil::failpoint::hit("container.removed");
        // Only after the overlay is unmounted may the tree go.
        self.release_tree(meta.tree_lease.as_deref()).await;
        self.names.release(&meta.reserved_name(&info), id.as_str());
        self.cpu_rates.forget(id.as_str());
        tracing::info!(container = %id, "container removed");
        Ok(())
    }
}
