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
    /// The request itself is malformed (a missing field, a bad value).
    #[error("{0}")]
    InvalidArgument(String),
    /// A bug or an environment failure the caller cannot fix by changing the request.
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Image(#[from] rootstock_imagestore::Error),
}

impl From<CriError> for Status {
    fn from(err: CriError) -> Self {
        let code = match &err {
            CriError::Unimplemented(_) => Code::Unimplemented,
            CriError::InvalidArgument(_) => Code::InvalidArgument,
            CriError::Internal(_) => Code::Internal,
            CriError::Image(e) => image_code(e.kind()),
        };
        Status::new(code, err.to_string())
    }
}

fn image_code(kind: rootstock_imagestore::ErrorKind) -> Code {
    use rootstock_imagestore::ErrorKind as K;
    match kind {
        K::NotFound => Code::NotFound,
        K::InvalidArgument => Code::InvalidArgument,
        K::Unauthenticated => Code::Unauthenticated,
        K::PermissionDenied => Code::PermissionDenied,
        K::Unavailable => Code::Unavailable,
        K::FailedPrecondition => Code::FailedPrecondition,
        K::Internal => Code::Internal,
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
