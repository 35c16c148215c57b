//! StopContainer: the image's StopSignal (else SIGTERM), SIGKILL once the timeout has passed.
//! Idempotent: an unknown or stopped container is OK (CRI; critest `idempotence.go`).

use std::time::Duration;

use k8s_cri::v1::{StopContainerRequest, StopContainerResponse};
use rootstock_runtime::ContainerId;

use super::meta::ContainerMeta;
use super::{RuntimeApi, blocking};
use crate::error::CriError;

/// SIGTERM, for records written before the stop signal was kept.
const DEFAULT_STOP_SIGNAL: i32 = 15;

impl RuntimeApi {
    pub(super) async fn stop(
        &self,
        req: StopContainerRequest,
    ) -> Result<StopContainerResponse, CriError> {
        let id = ContainerId::new(req.container_id)?;
        let Ok(info) = self.rt.container(&id) else {
            return Ok(StopContainerResponse {});
        };
        let signal = match ContainerMeta::of(&info).stop_signal {
            0 => DEFAULT_STOP_SIGNAL,
            s => s,
        };
        // A negative timeout is what kubelet never sends; read it as "kill now".
        let timeout = Duration::from_secs(u64::try_from(req.timeout).unwrap_or(0));
        let rt = self.rt.clone();
        blocking(move || rt.stop_container(&id, signal, timeout)).await?;
        Ok(StopContainerResponse {})
    }
}
