//! Every error variant's kind, pinned (kept beside `error.rs` for its length).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

/// One value of every variant with its kind (`kind()` is exhaustive, so a new variant
/// cannot go unclassified; this pins what each one is classified as, and so the gRPC
/// code `cri` answers with).
#[test]
fn every_variant_has_its_kind() {
    let s = String::new;
    let d = || Digest::of(b"");
    let p = PathBuf::new;
    let reference_error = crate::ImageRef::parse("Not A Name").unwrap_err();
    let registry = |status| Error::Registry {
        host: s(),
        status,
        url: s(),
        message: s(),
    };
    use ErrorKind as K;
    let cases = [
        (
            Error::InvalidReference {
                input: s(),
                source: reference_error,
            },
            K::InvalidArgument,
        ),
        (
            Error::AmbiguousId {
                prefix: s(),
                count: 2,
            },
            K::InvalidArgument,
        ),
        (
            Error::Config {
                key: s(),
                reason: s(),
            },
            K::FailedPrecondition,
        ),
        (
            Error::UnknownHost {
                host: s(),
                detail: s(),
            },
            K::Unavailable,
        ),
        (
            Error::Unreachable {
                host: s(),
                detail: s(),
            },
            K::Unavailable,
        ),
        (
            Error::TlsUntrusted {
                host: s(),
                detail: s(),
            },
            K::FailedPrecondition,
        ),
        (
            Error::AuthenticationFailed {
                host: s(),
                repository: s(),
                detail: s(),
            },
            K::Unauthenticated,
        ),
        (
            Error::AccessDenied {
                host: s(),
                repository: s(),
                detail: s(),
            },
            K::PermissionDenied,
        ),
        (
            Error::RepositoryNotFound {
                host: s(),
                repository: s(),
            },
            K::NotFound,
        ),
        (
            Error::ManifestNotFound {
                reference: s(),
                tag_or_digest: s(),
            },
            K::NotFound,
        ),
        (
            Error::BlobNotFound {
                reference: s(),
                digest: d(),
            },
            K::NotFound,
        ),
        (
            Error::NoMatchingPlatform {
                reference: s(),
                platform: s(),
                available: s(),
            },
            K::NotFound,
        ),
        (Error::Schema1 { reference: s() }, K::FailedPrecondition),
        (
            Error::UnsupportedMediaType {
                reference: s(),
                what: s(),
                media_type: s(),
            },
            K::FailedPrecondition,
        ),
        (
            Error::InvalidContent {
                reference: s(),
                what: s(),
                digest: d(),
                reason: s(),
            },
            K::FailedPrecondition,
        ),
        (
            Error::BlobDigestMismatch {
                digest: d(),
                actual: d(),
            },
            K::FailedPrecondition,
        ),
        (
            Error::BlobSizeMismatch {
                digest: d(),
                expected: 1,
                actual: 2,
            },
            K::FailedPrecondition,
        ),
        (
            Error::DiffIdMismatch {
                index: 0,
                digest: d(),
                expected: d(),
                actual: d(),
            },
            K::FailedPrecondition,
        ),
        (
            Error::Decompress {
                digest: d(),
                media_type: s(),
                detail: s(),
            },
            K::FailedPrecondition,
        ),
        (
            Error::LayerCountMismatch {
                reference: s(),
                layers: 1,
                diff_ids: 2,
            },
            K::FailedPrecondition,
        ),
        (
            Error::TooLarge {
                what: s(),
                digest: d(),
                size: 2,
                limit: 1,
            },
            K::FailedPrecondition,
        ),
        // A registry's answer: 5xx, 429 and "no status" may pass, other 4xx will not.
        (registry(503), K::Unavailable),
        (registry(429), K::Unavailable),
        (registry(0), K::Unavailable),
        (registry(400), K::FailedPrecondition),
        (
            Error::Io {
                op: "read",
                path: p(),
                source: std::io::Error::other("boom"),
            },
            K::Internal,
        ),
        (
            Error::Metadata {
                op: "open",
                detail: s(),
            },
            K::Internal,
        ),
        (Error::StoreLocked { path: p() }, K::FailedPrecondition),
        (
            Error::LayerRefused {
                digest: d(),
                index: 0,
                entry: s(),
                reason: s(),
            },
            K::FailedPrecondition,
        ),
        (
            Error::LayerLimit {
                digest: d(),
                index: 0,
                limit: "images.max_image_bytes",
                detail: s(),
            },
            K::FailedPrecondition,
        ),
        (
            Error::RegistryTimeout {
                host: s(),
                what: s(),
                detail: s(),
            },
            K::Unavailable,
        ),
        (
            Error::DocumentTooLarge {
                reference: s(),
                what: s(),
                limit: 1,
            },
            K::FailedPrecondition,
        ),
        (
            Error::Render {
                chain_id: s(),
                diff_id: d(),
                reason: s(),
            },
            K::FailedPrecondition,
        ),
        (Error::ImageNotFound { reference: s() }, K::NotFound),
        (Error::Closed, K::FailedPrecondition),
        (
            Error::Interrupted {
                what: s(),
                detail: s(),
            },
            K::Internal,
        ),
    ];
    for (err, kind) in cases {
        assert_eq!(err.kind(), kind, "{err:?}");
    }
}
