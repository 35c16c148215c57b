//! StopContainer: the image's StopSignal (else SIGTERM), SIGKILL once the timeout has passed.
//! Idempotent: an unknown or stopped container is OK (CRI; critest `idempotence.go`).

use std::time::Duration;

use k8s_cri::v1::{StopContainerRequest, StopContainerResponse};

use super::meta::ContainerMeta;
use super::{RuntimeApi, blocking};
use crate::error::CriError;

impl RuntimeApi {
    pub(super) async fn handle_stop_container(
        &self,
        req: StopContainerRequest,
    ) -> Result<StopContainerResponse, CriError> {
        // CRI: stopping an unknown container is OK; any other failure is reported.
        let Some(id) = self.known_container_id(&req.container_id)? else {
            return Ok(StopContainerResponse {});
        };
        let info = match self.rt.container(&id) {
            Ok(info) => info,
            Err(e) if e.kind() == rootstock_runtime::ErrorKind::NotFound => {
                return Ok(StopContainerResponse {});
            }
            Err(e) => return Err(e.into()),
        };
        let signal = ContainerMeta::of(&info).stop_signal();
        // A negative timeout is what kubelet never sends; read it as "kill now".
        let timeout = Duration::from_secs(u64::try_from(req.timeout).unwrap_or(0));
        let rt = self.rt.clone();
        blocking(move || rt.stop_container(&id, signal, timeout)).await?;
        Ok(StopContainerResponse {})
    }
}
