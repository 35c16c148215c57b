//! ExecSync: run a command in a running container and collect its output. On timeout the
//! exec'd process itself is killed (the runtime crate learns its pid) and the call returns
//! DeadlineExceeded, which kubelet maps to a probe timeout.
//!
//! Exec, Attach and PortForward: validate, then hand out a single-use URL on the streaming server.

use std::time::Duration;

use k8s_cri::v1::{
    AttachRequest, AttachResponse, ExecRequest as CriExecRequest, ExecResponse, ExecSyncRequest,
    ExecSyncResponse, PortForwardRequest, PortForwardResponse,
};
use rootstock_runtime::oci::ExecRequest;

use super::{RuntimeApi, blocking};
use crate::error::CriError;
use crate::streaming::{ExecSpec, Pending, PortForwardSpec};

impl RuntimeApi {
    pub(super) async fn handle_exec_sync(
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

    pub(super) async fn handle_exec(&self, req: CriExecRequest) -> Result<ExecResponse, CriError> {
        if req.cmd.is_empty() {
            return Err(CriError::InvalidArgument(
                "Exec: no command given".to_owned(),
            ));
        }
        let stdio = (req.stdin, req.stdout, req.stderr, req.tty);
        let url = self
            .stdio_url("Exec", &req.container_id, req.cmd, stdio, Pending::Exec)
            .await?;
        Ok(ExecResponse { url })
    }

    /// Exec and Attach: checks the stdio flags `(stdin, stdout, stderr, tty)` and that the
    /// container exists now (whether it still runs is checked when the URL is used: it may
    /// stop in between, as with any runtime), then hands out the URL.
    async fn stdio_url(
        &self,
        rpc: &str,
        container_id: &str,
        cmd: Vec<String>,
        (stdin, stdout, stderr, tty): (bool, bool, bool, bool),
        pending: fn(ExecSpec) -> Pending,
    ) -> Result<String, CriError> {
        let id = self.container_id(container_id)?;
        if !(stdin || stdout || stderr) {
            return Err(CriError::InvalidArgument(format!(
                "{rpc}: one of stdin, stdout and stderr must be set"
            )));
        }
        if tty && stderr {
            return Err(CriError::InvalidArgument(format!(
                "{rpc}: tty and stderr cannot both be set (a terminal merges stderr into stdout)"
            )));
        }
        // Memory only: a probe that the container exists before a URL is handed out.
        self.rt.container(&id)?;
        let spec = ExecSpec {
            container: id,
            cmd,
            stdin,
            stdout,
            stderr,
            tty,
        };
        self.streaming
            .url_for(pending(spec))
            .map_err(|e| CriError::Internal(format!("{rpc}: cannot make a token: {e}")))
    }

    /// PortForward: the URL serves any port of the pod (the streams name it, as kubelet's
    /// do; the request's port list is advisory).
    pub(super) async fn handle_port_forward(
        &self,
        req: PortForwardRequest,
    ) -> Result<PortForwardResponse, CriError> {
        let id = self.sandbox_id(&req.pod_sandbox_id)?;
        if let Some(bad) = req.port.iter().find(|p| !(1..=65535).contains(*p)) {
            return Err(CriError::InvalidArgument(format!(
                "PortForward: port {bad} is not a TCP port"
            )));
        }
        self.rt.sandbox(&id)?;
        let url = self
            .streaming
            .url_for(Pending::PortForward(PortForwardSpec {
                sandbox: id,
                // In 1..=65535, checked above.
                ports: req
                    .port
                    .iter()
                    .filter_map(|p| u16::try_from(*p).ok())
                    .collect(),
            }))
            .map_err(|e| CriError::Internal(format!("PortForward: cannot make a token: {e}")))?;
        Ok(PortForwardResponse { url })
    }

    /// Attach: the container's own stdio (see `streaming::attach`).
    pub(super) async fn handle_attach(
        &self,
        req: AttachRequest,
    ) -> Result<AttachResponse, CriError> {
        let stdio = (req.stdin, req.stdout, req.stderr, req.tty);
        let url = self
            .stdio_url(
                "Attach",
                &req.container_id,
                Vec::new(),
                stdio,
                Pending::Attach,
            )
            .await?;
        Ok(AttachResponse { url })
    }
}
