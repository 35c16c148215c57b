//! StartContainer: the OCI runtime's `start`; Running is persisted before the reply.

use k8s_cri::v1::{StartContainerRequest, StartContainerResponse};

use super::{RuntimeApi, blocking};
use crate::error::CriError;

impl RuntimeApi {
    pub(super) async fn handle_start_container(
        &self,
        req: StartContainerRequest,
    ) -> Result<StartContainerResponse, CriError> {
        let id = self.container_id(&req.container_id)?;
        let rt = self.rt.clone();
        blocking(move || rt.start_container(&id)).await?;
        Ok(StartContainerResponse {})
    }
}
