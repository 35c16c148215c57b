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
    /// The named object does not exist (a sandbox a container is created in, an image).
    #[error("{0}")]
    NotFound(String),
    /// A name in use by a live object; the message names the holder (kubelet then retries
    /// with the next attempt).
    #[error("{0}")]
    AlreadyExists(String),
    /// The object is in a state that forbids the call (a container in a stopped sandbox).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The caller's deadline (its `grpc-timeout`) passed before the call finished.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A bounded resource of the daemon's ran out (an event subscriber's queue).
    #[error("{0}")]
    ResourceExhausted(String),
    #[error(transparent)]
    Image(#[from] rootstock_imagestore::Error),
    // Boxed: these variants are large and every handler's `Result` carries the enum.
    #[error(transparent)]
    Runtime(Box<rootstock_runtime::Error>),
    #[error(transparent)]
    Cni(Box<rootstock_cni::CniError>),
}

impl From<rootstock_runtime::Error> for CriError {
    fn from(err: rootstock_runtime::Error) -> Self {
        CriError::Runtime(Box::new(err))
    }
}

impl From<rootstock_cni::CniError> for CriError {
    fn from(err: rootstock_cni::CniError) -> Self {
        CriError::Cni(Box::new(err))
    }
}

impl CriError {
    /// Whether the error says the object does not exist (whichever layer found out).
    pub fn is_not_found(&self) -> bool {
        match self {
            CriError::NotFound(_) => true,
            CriError::Runtime(e) => e.kind() == rootstock_runtime::ErrorKind::NotFound,
            CriError::Image(e) => e.kind() == rootstock_imagestore::ErrorKind::NotFound,
            _ => false,
        }
    }
}

impl From<CriError> for Status {
    fn from(err: CriError) -> Self {
        let code = match &err {
            CriError::Unimplemented(_) => Code::Unimplemented,
            CriError::InvalidArgument(_) => Code::InvalidArgument,
            CriError::Internal(_) => Code::Internal,
            CriError::NotFound(_) => Code::NotFound,
            CriError::AlreadyExists(_) => Code::AlreadyExists,
            CriError::FailedPrecondition(_) => Code::FailedPrecondition,
            CriError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            CriError::ResourceExhausted(_) => Code::ResourceExhausted,
            CriError::Image(e) => image_code(e.kind()),
            CriError::Runtime(e) => runtime_code(e.kind()),
            CriError::Cni(e) => cni_code(e.kind()),
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
        // The disk under root_dir is full (#19): kubelet retries the pull with back-off.
        K::ResourceExhausted => Code::ResourceExhausted,
        K::Internal => Code::Internal,
    }
}

fn runtime_code(kind: rootstock_runtime::ErrorKind) -> Code {
    use rootstock_runtime::ErrorKind as K;
    match kind {
        K::NotFound => Code::NotFound,
        K::InvalidArgument => Code::InvalidArgument,
        K::FailedPrecondition => Code::FailedPrecondition,
        K::AlreadyExists => Code::AlreadyExists,
        // kubelet maps an ExecSync DeadlineExceeded to a probe timeout (remote_runtime.go).
        K::DeadlineExceeded => Code::DeadlineExceeded,
        K::Internal => Code::Internal,
    }
}

/// CNI failures are the node's (plugins, config, cache), except a bad id or a missing
/// attachment, which the caller can act on (`CniError::kind` decides which is which).
fn cni_code(kind: rootstock_cni::ErrorKind) -> Code {
    use rootstock_cni::ErrorKind as K;
    match kind {
        K::InvalidArgument => Code::InvalidArgument,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Each CNI kind becomes its gRPC code, also through the whole `CriError` → `Status` path.
    #[test]
    fn cni_kinds_map_to_grpc_codes() {
        use rootstock_cni::{CniError, ErrorKind as K};
        for (kind, code) in [
            (K::InvalidArgument, Code::InvalidArgument),
            (K::FailedPrecondition, Code::FailedPrecondition),
            (K::Internal, Code::Internal),
        ] {
            assert_eq!(cni_code(kind), code, "{kind:?}");
        }
        let status = Status::from(CriError::from(CniError::NotAttached {
            sandbox_id: "abc".into(),
        }));
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert!(status.message().contains("abc"), "{}", status.message());
    }
}
