//! ReopenContainerLog: kubelet's log rotation renamed the file; the monitor reopens the path.

use k8s_cri::v1::{ReopenContainerLogRequest, ReopenContainerLogResponse};

use super::{RuntimeApi, blocking};
use crate::error::CriError;

impl RuntimeApi {
    pub(super) async fn handle_reopen_container_log(
        &self,
        req: ReopenContainerLogRequest,
    ) -> Result<ReopenContainerLogResponse, CriError> {
        let id = self.container_id(&req.container_id)?;
        let rt = self.rt.clone();
        blocking(move || rt.reopen_container_log(&id)).await?;
        Ok(ReopenContainerLogResponse {})
    }
}
