//! The crate's one error type. Every variant names the object it is about, so a message read
//! in kubelet's events or the daemon's log says which container failed and why.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// How the gRPC layer should classify an [`Error`] (it maps these onto `tonic::Code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The named object does not exist.
    NotFound,
    /// The request itself is malformed.
    InvalidArgument,
    /// The object is not in a state that allows the operation.
    FailedPrecondition,
    /// An object with that identity already exists.
    AlreadyExists,
    /// The operation ran out of time (ExecSync's timeout: kubelet maps it to a probe timeout).
    DeadlineExceeded,
    /// Everything else: I/O, the OCI runtime failing, the kernel refusing.
    Internal,
}

/// Errors of the runtime crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An identifier failed validation at the boundary.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidId {
        /// What kind of identifier (`container id`, `sandbox id`).
        what: &'static str,
        /// The rejected value.
        value: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A request field is unusable.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The RuntimeClass handler is not configured.
    #[error("unknown runtime handler {0:?} (configured handlers: {1})")]
    UnknownHandler(String, String),
    /// No container with this id.
    #[error("container {id}: not found")]
    ContainerNotFound {
        /// Container id.
        id: String,
    },
    /// A container with this id exists already.
    #[error("container {id}: already exists")]
    ContainerExists {
        /// Container id.
        id: String,
    },
    /// The container's state forbids the operation.
    #[error("container {id}: cannot {action} (state {state})")]
    BadState {
        /// Container id.
        id: String,
        /// What was attempted (`start`, `exec in`).
        action: &'static str,
        /// The state it is in.
        state: String,
    },
    /// A file-system operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// The operation (`create directory`, `read`).
        op: &'static str,
        /// The path it was applied to.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Persisting a state record failed; the transition was not acknowledged.
    #[error("write state {path}: {source}")]
    WriteState {
        /// The state file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A persisted state record could not be read or parsed.
    #[error("read state {path}: {message}")]
    ReadState {
        /// The state file.
        path: PathBuf,
        /// What was wrong with it.
        message: String,
    },
    /// A helper program could not be started at all.
    #[error("spawn {program}: {source}")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The OCI runtime failed a command.
    #[error("container {id}: {runtime} {action}: {message}")]
    Runtime {
        /// Container id.
        id: String,
        /// The runtime binary (handler) that failed.
        runtime: String,
        /// The OCI command (`start`, `kill`, `delete`, `state`, `exec`, `update`).
        action: &'static str,
        /// The runtime's error message.
        message: String,
    },
    /// `create` failed: the OCI runtime rejected the spec or could not set up the container.
    #[error("container {id}: create failed: {message}")]
    CreateFailed {
        /// Container id.
        id: String,
        /// The OCI runtime's (or the monitor's) error message.
        message: String,
    },
    /// ExecSync did not finish in time; the exec'd process was killed.
    #[error("container {id}: exec timed out after {timeout:?}")]
    ExecTimeout {
        /// Container id.
        id: String,
        /// The timeout that elapsed.
        timeout: Duration,
    },
    /// The OCI spec could not be built from the request.
    #[error("container {id}: build OCI spec: {message}")]
    Spec {
        /// Container id.
        id: String,
        /// Why.
        message: String,
    },
    /// A user or group of the security context / image config is not in the image.
    #[error("user {user:?}: {message}")]
    User {
        /// The user or group as given.
        user: String,
        /// Why it could not be resolved.
        message: String,
    },
    /// A mount or unmount failed.
    #[error("{op} {target}: {source}")]
    Mount {
        /// `mount overlay at`, `unmount`, `bind-mount namespace to`.
        op: &'static str,
        /// The mount point.
        target: PathBuf,
        /// The kernel's answer.
        source: nix::Error,
    },
    /// A cgroup could not be configured.
    #[error("cgroup {cgroup}: {message}")]
    Cgroup {
        /// The cgroup path (`/kubepods/pod1/<id>`).
        cgroup: String,
        /// What failed.
        message: String,
    },
    /// A sandbox's namespaces could not be created or pinned.
    #[error("sandbox {id}: {message}")]
    Sandbox {
        /// Sandbox id.
        id: String,
        /// What went wrong.
        message: String,
    },
    /// No sandbox with this id.
    #[error("sandbox {id}: not found")]
    SandboxNotFound {
        /// Sandbox id.
        id: String,
    },
    /// A sandbox with this id exists already.
    #[error("sandbox {id}: already exists")]
    SandboxExists {
        /// Sandbox id.
        id: String,
    },
}

impl Error {
    /// The classification the gRPC layer maps to a status code.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidId { .. }
            | Error::InvalidArgument(_)
            | Error::UnknownHandler(..)
            | Error::User { .. }
            | Error::Spec { .. } => ErrorKind::InvalidArgument,
            Error::ContainerNotFound { .. } | Error::SandboxNotFound { .. } => ErrorKind::NotFound,
            Error::ContainerExists { .. } | Error::SandboxExists { .. } => ErrorKind::AlreadyExists,
            Error::BadState { .. } => ErrorKind::FailedPrecondition,
            Error::ExecTimeout { .. } => ErrorKind::DeadlineExceeded,
            Error::Io { .. }
            | Error::WriteState { .. }
            | Error::ReadState { .. }
            | Error::Spawn { .. }
            | Error::Runtime { .. }
            | Error::CreateFailed { .. }
            | Error::Mount { .. }
            | Error::Cgroup { .. }
            | Error::Sandbox { .. } => ErrorKind::Internal,
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// One value of every variant with its kind (`kind()` is exhaustive, so a new variant
    /// cannot go unclassified; this pins what each one is classified as, and so the gRPC
    /// code `cri` answers with).
    #[test]
    fn every_variant_has_its_kind() {
        let s = String::new;
        let p = PathBuf::new;
        let io = || io::Error::other("boom");
        use ErrorKind as K;
        let cases = [
            (
                Error::InvalidId {
                    what: "container id",
                    value: s(),
                    reason: "empty",
                },
                K::InvalidArgument,
            ),
            (Error::InvalidArgument(s()), K::InvalidArgument),
            (Error::UnknownHandler(s(), s()), K::InvalidArgument),
            (Error::ContainerNotFound { id: s() }, K::NotFound),
            (Error::ContainerExists { id: s() }, K::AlreadyExists),
            (
                Error::BadState {
                    id: s(),
                    action: "start",
                    state: s(),
                },
                K::FailedPrecondition,
            ),
            (
                Error::Io {
                    op: "read",
                    path: p(),
                    source: io(),
                },
                K::Internal,
            ),
            (
                Error::WriteState {
                    path: p(),
                    source: io(),
                },
                K::Internal,
            ),
            (
                Error::ReadState {
                    path: p(),
                    message: s(),
                },
                K::Internal,
            ),
            (
                Error::Spawn {
                    program: p(),
                    source: io(),
                },
                K::Internal,
            ),
            (
                Error::Runtime {
                    id: s(),
                    runtime: s(),
                    action: "start",
                    message: s(),
                },
                K::Internal,
            ),
            (
                Error::CreateFailed {
                    id: s(),
                    message: s(),
                },
                K::Internal,
            ),
            (
                Error::ExecTimeout {
                    id: s(),
                    timeout: Duration::from_secs(1),
                },
                K::DeadlineExceeded,
            ),
            (
                Error::Spec {
                    id: s(),
                    message: s(),
                },
                K::InvalidArgument,
            ),
            (
                Error::User {
                    user: s(),
                    message: s(),
                },
                K::InvalidArgument,
            ),
            (
                Error::Mount {
                    op: "mount",
                    target: p(),
                    source: nix::Error::EPERM,
                },
                K::Internal,
            ),
            (
                Error::Cgroup {
                    cgroup: s(),
                    message: s(),
                },
                K::Internal,
            ),
            (
                Error::Sandbox {
                    id: s(),
                    message: s(),
                },
                K::Internal,
            ),
            (Error::SandboxNotFound { id: s() }, K::NotFound),
            (Error::SandboxExists { id: s() }, K::AlreadyExists),
        ];
        for (err, kind) in cases {
            assert_eq!(err.kind(), kind, "{err:?}");
        }
    }
}
