//! ExecSync: run a command in a running container and collect its output. On timeout the
//! exec'd process itself is killed (the runtime crate learns its pid) and the call returns
//! DeadlineExceeded, which kubelet maps to a probe timeout.

use std::time::Duration;

use k8s_cri::v1::{ExecSyncRequest, ExecSyncResponse};
use rootstock_runtime::oci::ExecRequest;

use super::{RuntimeApi, blocking};
use crate::error::CriError;

impl RuntimeApi {
    pub(super) async fn exec_sync_in(
        &self,
        req: ExecSyncRequest,
    ) -> Result<ExecSyncResponse, CriError> {
        let id = self.container_id(&req.container_id)?;
        if req.cmd.is_empty() {
            return Err(CriError::InvalidArgument(
                "ExecSync: no command given".to_owned(),
            ));
        }
        let exec = ExecRequest {
            args: req.cmd,
            env: Vec::new(),
            cwd: None,
        };
        // CRI: a timeout of 0 (or less) means none.
        let timeout = u64::try_from(req.timeout)
            .ok()
            .filter(|t| *t > 0)
            .map(Duration::from_secs);
        let rt = self.rt.clone();
        let out = blocking(move || rt.exec_sync(&id, &exec, timeout)).await?;
        Ok(ExecSyncResponse {
            stdout: out.stdout,
            stderr: out.stderr,
            exit_code: out.exit_code,
        })
    }
}
