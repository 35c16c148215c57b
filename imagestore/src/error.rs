//! The crate's one error type. Every variant names the object it is about, and
//! [`Error::kind`] tells the gRPC layer which status code to answer with.

use std::path::PathBuf;

use crate::reference::{Digest, ReferenceError};

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The class of an error, for the gRPC layer to turn into a `tonic::Code` in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// `Code::NotFound`: the repository, tag, manifest or platform does not exist.
    NotFound,
    /// `Code::InvalidArgument`: the caller's input is malformed (reference, ambiguous id).
    InvalidArgument,
    /// `Code::Unauthenticated`: the registry rejected the credentials (HTTP 401).
    Unauthenticated,
    /// `Code::PermissionDenied`: the credentials are valid but not allowed (HTTP 403).
    PermissionDenied,
    /// `Code::Unavailable`: the registry could not be reached or failed (DNS, connect, 5xx).
    Unavailable,
    /// `Code::FailedPrecondition`: the content or setup is unusable as is (untrusted
    /// certificate, corrupt or unsupported content, store held by another process); retrying
    /// without a change will fail again.
    FailedPrecondition,
    /// `Code::ResourceExhausted`: the disk holding the store is full (`ENOSPC`, `EDQUOT`);
    /// retrying after space was freed succeeds.
    ResourceExhausted,
    /// `Code::Internal`: a local I/O or database failure.
    Internal,
}

/// Everything that can go wrong in the image store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A reference, digest or id did not parse.
    #[error("invalid image reference {input:?}: {source}")]
    InvalidReference {
        /// What the caller gave.
        input: String,
        /// What is wrong with it.
        source: ReferenceError,
    },
    /// An id prefix matches more than one image.
    #[error("image id prefix {prefix:?} is ambiguous: it matches {count} images")]
    AmbiguousId {
        /// The prefix given.
        prefix: String,
        /// How many images it matches.
        count: usize,
    },
    /// The configuration is invalid.
    #[error("invalid images configuration: {key}: {reason}")]
    Config {
        /// The TOML key at fault, e.g. `registries."docker.io".mirrors[0]`.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The registry host name does not resolve.
    #[error(
        "registry host {host} cannot be resolved (DNS lookup failed: {detail}); check the \
         image name and the node's DNS"
    )]
    UnknownHost {
        /// The host (with port) that was asked for.
        host: String,
        /// The resolver's message.
        detail: String,
    },
    /// The registry could not be reached (connection refused, reset, timed out).
    #[error("registry {host} is unreachable: {detail}")]
    Unreachable {
        /// The host that was tried.
        host: String,
        /// The connection error.
        detail: String,
    },
    /// The registry's TLS certificate is not trusted (or otherwise invalid).
    #[error(
        "TLS certificate of registry {host} is not trusted ({detail}); add the CA that signed it \
         to registries.\"{host}\".ca_files in the rootstock config"
    )]
    TlsUntrusted {
        /// The host whose certificate failed.
        host: String,
        /// The verifier's reason.
        detail: String,
    },
    /// The registry rejected the credentials, or needs some and none were given (HTTP 401).
    #[error(
        "authentication failed for {host}/{repository}: {detail} (check the pull secret or \
         registries.\"{host}\" credentials)"
    )]
    AuthenticationFailed {
        /// The registry host.
        host: String,
        /// The repository.
        repository: String,
        /// What the registry or token server said.
        detail: String,
    },
    /// The credentials were accepted but do not grant pull access (HTTP 403).
    #[error("access to {host}/{repository} denied: {detail}")]
    AccessDenied {
        /// The registry host.
        host: String,
        /// The repository.
        repository: String,
        /// What the registry said.
        detail: String,
    },
    /// The repository does not exist on the registry.
    #[error("repository {repository} not found on registry {host}")]
    RepositoryNotFound {
        /// The registry host.
        host: String,
        /// The repository.
        repository: String,
    },
    /// The repository exists but the tag or digest does not.
    #[error(
        "manifest {reference} not found: the repository has no tag or digest {tag_or_digest:?}"
    )]
    ManifestNotFound {
        /// The full reference.
        reference: String,
        /// The tag or digest that is missing.
        tag_or_digest: String,
    },
    /// A blob the manifest names is missing from the registry.
    #[error("blob {digest} of {reference} not found on the registry")]
    BlobNotFound {
        /// The reference being pulled.
        reference: String,
        /// The missing blob.
        digest: Digest,
    },
    /// The index has no manifest for linux/amd64.
    #[error("{reference} has no image for platform {platform} (it offers: {available})")]
    NoMatchingPlatform {
        /// The reference being pulled.
        reference: String,
        /// The platform wanted.
        platform: String,
        /// The platforms the index lists.
        available: String,
    },
    /// The registry served a Docker schema 1 manifest.
    #[error(
        "{reference} is a Docker schema 1 image, which is deprecated and not supported; push it \
         again with a current Docker or buildah to get a schema 2 / OCI manifest"
    )]
    Schema1 {
        /// The reference being pulled.
        reference: String,
    },
    /// A manifest, config or layer has a media type the store does not handle.
    #[error("{what} of {reference} has unsupported media type {media_type:?}")]
    UnsupportedMediaType {
        /// The reference being pulled.
        reference: String,
        /// Which object: "manifest", "config", "layer 2".
        what: String,
        /// The media type found.
        media_type: String,
    },
    /// A manifest or config is not what it claims to be.
    #[error("invalid {what} {digest} of {reference}: {reason}")]
    InvalidContent {
        /// The reference being pulled.
        reference: String,
        /// "manifest", "index", "config".
        what: String,
        /// Its digest.
        digest: Digest,
        /// What is wrong.
        reason: String,
    },
    /// The bytes received do not hash to the digest they were asked for.
    #[error(
        "digest mismatch: blob {digest} received from the registry hashes to {actual} (corrupt \
         in the registry or in transit); nothing of it was stored"
    )]
    BlobDigestMismatch {
        /// The digest that was asked for.
        digest: Digest,
        /// What the received bytes hash to.
        actual: Digest,
    },
    /// The blob has more or fewer bytes than its descriptor says.
    #[error("blob {digest} has {actual} bytes, its descriptor says {expected}")]
    BlobSizeMismatch {
        /// The blob.
        digest: Digest,
        /// The size the descriptor declares.
        expected: u64,
        /// The size received (so far, when it exceeded the declared size).
        actual: u64,
    },
    /// A layer's uncompressed content does not match the config's diff_id for it.
    #[error(
        "layer {index} ({digest}) uncompresses to {actual}, but the image config says its \
         diff_id is {expected}"
    )]
    DiffIdMismatch {
        /// Index of the layer in the manifest.
        index: usize,
        /// The compressed blob's digest.
        digest: Digest,
        /// The diff_id in the config.
        expected: Digest,
        /// The digest of the uncompressed tar.
        actual: Digest,
    },
    /// The layer could not be decompressed.
    #[error("layer {digest} could not be decompressed as {media_type}: {detail}")]
    Decompress {
        /// The blob.
        digest: Digest,
        /// Its media type.
        media_type: String,
        /// The decoder's message.
        detail: String,
    },
    /// The manifest and the config disagree about the number of layers.
    #[error(
        "{reference}: the manifest lists {layers} layers but the config has {diff_ids} diff_ids"
    )]
    LayerCountMismatch {
        /// The reference being pulled.
        reference: String,
        /// Layers in the manifest.
        layers: usize,
        /// diff_ids in the config.
        diff_ids: usize,
    },
    /// Some object is larger than the store accepts without streaming.
    #[error("{what} {digest} is {size} bytes, more than the {limit} accepted")]
    TooLarge {
        /// Which object.
        what: String,
        /// Its digest.
        digest: Digest,
        /// Its declared size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The registry answered with an error the other variants do not cover.
    #[error("registry {host} answered {status} for {url}: {message}")]
    Registry {
        /// The host.
        host: String,
        /// The HTTP status (0 when not an HTTP error).
        status: u16,
        /// The URL requested.
        url: String,
        /// The body or error envelope.
        message: String,
    },
    /// A local filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("write blob", "rename", …).
        op: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The metadata database failed.
    #[error("metadata database {op}: {detail}")]
    Metadata {
        /// What was being done.
        op: &'static str,
        /// redb's message.
        detail: String,
    },
    /// Another process holds the store.
    #[error("the image store {path} is in use by another process (metadata database locked)")]
    StoreLocked {
        /// The database file.
        path: PathBuf,
    },
    /// A layer entry would escape its tree or is otherwise unsafe or malformed; the layer
    /// is refused as a whole.
    #[error("layer {index} ({digest}) refused: entry {entry:?}: {reason}")]
    LayerRefused {
        /// The compressed blob's digest.
        digest: Digest,
        /// Index of the layer in the manifest.
        index: usize,
        /// The entry's path as the tar names it ("" when the stream itself is bad).
        entry: String,
        /// Why.
        reason: String,
    },
    /// A layer exceeded one of the store's limits (record size, image size or entry count,
    /// path depth); the pull fails and nothing of it is kept.
    #[error("layer {index} ({digest}) exceeds the limit {limit}: {detail}")]
    LayerLimit {
        /// The compressed blob's digest.
        digest: Digest,
        /// Index of the layer in the manifest.
        index: usize,
        /// The limit, by its config key (or its fixed value).
        limit: &'static str,
        /// By how much.
        detail: String,
    },
    /// A registry did not answer (or finish answering) within its deadline, or a blob
    /// arrived slower than the minimum rate.
    #[error("registry {host}: {what}: {detail}")]
    RegistryTimeout {
        /// The host.
        host: String,
        /// Which request.
        what: String,
        /// The deadline or rate and its config key.
        detail: String,
    },
    /// A manifest, index or config larger than the store reads.
    #[error("{what} of {reference} is larger than the {limit} bytes the store reads")]
    DocumentTooLarge {
        /// The image reference.
        reference: String,
        /// Manifest, index or config, with its digest when known.
        what: String,
        /// The cap.
        limit: u64,
    },
    /// Rendering an image's flattened tree failed on its content (not on I/O).
    #[error("tree {chain_id}: layer {diff_id}: {reason}")]
    Render {
        /// The chain id being rendered.
        chain_id: String,
        /// The layer being applied.
        diff_id: Digest,
        /// What went wrong.
        reason: String,
    },
    /// No image by that name or id.
    #[error("image {reference:?} not found")]
    ImageNotFound {
        /// What the caller gave.
        reference: String,
    },
    /// The store was closed (clean shutdown under way).
    #[error("the image store is closed")]
    Closed,
    /// The file system holding the store ran out of space (or quota) during a pull; what
    /// the pull had written is gone again.
    #[error(
        "no space left on the disk holding the image store {root}: {source}; free space there \
         (remove unused images or containers) and pull again"
    )]
    DiskFull {
        /// The store's root directory (`root_dir`).
        root: PathBuf,
        /// The failing operation.
        source: Box<Error>,
    },
    /// A background task panicked or was cancelled.
    #[error("{what} was interrupted: {detail}")]
    Interrupted {
        /// What was running.
        what: String,
        /// Why it stopped.
        detail: String,
    },
}

impl Error {
    /// The status class for the gRPC layer.
    pub fn kind(&self) -> ErrorKind {
        use Error::*;
        match self {
            InvalidReference { .. } | AmbiguousId { .. } => ErrorKind::InvalidArgument,
            RepositoryNotFound { .. }
            | ManifestNotFound { .. }
            | BlobNotFound { .. }
            | NoMatchingPlatform { .. } => ErrorKind::NotFound,
            AuthenticationFailed { .. } => ErrorKind::Unauthenticated,
            AccessDenied { .. } => ErrorKind::PermissionDenied,
            UnknownHost { .. } | Unreachable { .. } | RegistryTimeout { .. } => {
                ErrorKind::Unavailable
            }
            Registry { status, .. } if *status >= 500 || *status == 0 || *status == 429 => {
                ErrorKind::Unavailable
            }
            Registry { .. }
            | Config { .. }
            | TlsUntrusted { .. }
            | Schema1 { .. }
            | UnsupportedMediaType { .. }
            | InvalidContent { .. }
            | BlobDigestMismatch { .. }
            | BlobSizeMismatch { .. }
            | DiffIdMismatch { .. }
            | Decompress { .. }
            | LayerCountMismatch { .. }
            | TooLarge { .. }
            | LayerRefused { .. }
            | LayerLimit { .. }
            | DocumentTooLarge { .. }
            | Render { .. }
            | Closed
            | StoreLocked { .. } => ErrorKind::FailedPrecondition,
            ImageNotFound { .. } => ErrorKind::NotFound,
            DiskFull { .. } => ErrorKind::ResourceExhausted,
            Io { .. } if self.is_disk_full() => ErrorKind::ResourceExhausted,
            Io { .. } | Metadata { .. } | Interrupted { .. } => ErrorKind::Internal,
        }
    }

    /// Whether the error is the file system running out of space or quota: an `ENOSPC` or
    /// `EDQUOT` from a write, or from redb (whose errors reach us as text: its `StorageError`
    /// displays the OS error, `… (os error 28)`).
    pub fn is_disk_full(&self) -> bool {
        const ENOSPC: i32 = rustix::io::Errno::NOSPC.raw_os_error();
        const EDQUOT: i32 = rustix::io::Errno::DQUOT.raw_os_error();
        match self {
            Error::DiskFull { .. } => true,
            Error::Io { source, .. } => {
                matches!(source.raw_os_error(), Some(ENOSPC | EDQUOT))
                    || source
                        .get_ref()
                        .and_then(|i| i.downcast_ref::<Error>())
                        .is_some_and(Error::is_disk_full)
            }
            Error::Metadata { detail, .. } => {
                detail.contains(&format!("(os error {ENOSPC})"))
                    || detail.contains(&format!("(os error {EDQUOT})"))
            }
            _ => false,
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn metadata(op: &'static str, e: impl std::fmt::Display) -> Self {
        Error::Metadata {
            op,
            detail: e.to_string(),
        }
    }

    pub(crate) fn invalid_reference(input: &str, source: ReferenceError) -> Self {
        Error::InvalidReference {
            input: input.to_string(),
            source,
        }
    }

    /// Whether retrying the same request might succeed (connection errors and 5xx); never
    /// for 4xx or content errors.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            Error::Unreachable { .. } => true,
            Error::Registry { status, .. } => *status >= 500 || *status == 429 || *status == 0,
            _ => false,
        }
    }

    /// An `io::Error` carrying this error, so it can travel through `Read` and come out typed.
    pub(crate) fn into_io(self) -> std::io::Error {
        std::io::Error::other(self)
    }

    /// Recover an [`Error`] that travelled inside an `io::Error`, or wrap the I/O error.
    pub(crate) fn from_io(e: std::io::Error, op: &'static str, path: &std::path::Path) -> Self {
        if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
            match e.into_inner().map(|inner| inner.downcast::<Error>()) {
                Some(Ok(err)) => *err,
                Some(Err(other)) => Error::io(op, path, std::io::Error::other(other)),
                None => Error::io(op, path, std::io::Error::other("unknown")),
            }
        } else {
            Error::io(op, path, e)
        }
    }
}

#[cfg(test)]
mod tests;
