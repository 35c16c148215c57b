//! The one place where errors become gRPC statuses. Handlers return `Result<_, CriError>`;
//! the service tables pass results through [`reply`], so every code is chosen here and every
//! failure is logged once, inside the RPC's span.

use tonic::{Code, Response, Status};

/// Every failure a CRI handler can report.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    /// An RPC rootstock does not serve yet; named so the caller knows which.
    #[error("{0} is not implemented by rootstock yet")]
    Unimplemented(&'static str),
    /// A bug or an environment failure the caller cannot fix by changing the request.
    #[error("{0}")]
    Internal(String),
}

impl From<CriError> for Status {
    fn from(err: CriError) -> Self {
        let code = match &err {
            CriError::Unimplemented(_) => Code::Unimplemented,
            CriError::Internal(_) => Code::Internal,
        };
        Status::new(code, err.to_string())
    }
}

/// Converts a handler's result into the gRPC answer.
pub fn reply<T>(result: Result<T, CriError>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(|err| {
        let status = Status::from(err);
        match status.code() {
            Code::Unimplemented => tracing::debug!(message = status.message(), "unimplemented"),
            code => tracing::warn!(?code, message = status.message(), "failed"),
        }
        status
    })
}

/// The answer of an RPC that does not exist yet.
pub fn not_yet<T>(rpc: &'static str) -> Result<Response<T>, Status> {
    reply(Err(CriError::Unimplemented(rpc)))
}
