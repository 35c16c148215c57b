//! UpdateContainerResources: new cgroup limits (kubelet's CPU manager and in-place pod
//! resize), through the OCI runtime's `update` on cgroup v1 and written by the runtime crate
//! on cgroup v2. The `oom_score_adj` of a running process is not changed, as with containerd.

use k8s_cri::v1::{UpdateContainerResourcesRequest, UpdateContainerResourcesResponse};
use rootstock_runtime::ContainerId;

use super::container_create::resources;
use super::{RuntimeApi, blocking};
use crate::error::CriError;

impl RuntimeApi {
    pub(super) async fn update_resources(
        &self,
        req: UpdateContainerResourcesRequest,
    ) -> Result<UpdateContainerResourcesResponse, CriError> {
        let id = ContainerId::new(req.container_id)?;
        let resources = resources(req.linux.as_ref());
        let rt = self.rt.clone();
        blocking(move || rt.update_container_resources(&id, &resources)).await?;
        Ok(UpdateContainerResourcesResponse {})
    }
}
