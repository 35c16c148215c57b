//! Mapping transport and registry failures to [`Error`] variants a user can act on: an
//! unknown host, a refused connection, an untrusted certificate, missing credentials, an
//! unknown repository or tag.

use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;

use super::Session;
use crate::error::Error;
use crate::reference::Digest;

/// What a request was for, to name it in errors.
#[derive(Clone, Copy)]
pub(super) enum Target<'a> {
    Auth,
    Manifest(&'a str),
    Blob(&'a Digest),
}

impl Session {
    pub(super) fn map_err(&self, e: OciDistributionError, target: Target<'_>) -> Error {
        let host = self.endpoint.host.clone();
        let repository = self.image.repository().to_string();
        let anonymous = matches!(self.auth, RegistryAuth::Anonymous);
        let auth_failed = |detail: String| Error::AuthenticationFailed {
            host: host.clone(),
            repository: repository.clone(),
            detail: if anonymous {
                format!("the registry requires credentials and none were given ({detail})")
            } else {
                format!("the registry rejected the credentials ({detail})")
            },
        };
        let not_found = |url: &str, message: String| match target {
            Target::Manifest(t) => Error::ManifestNotFound {
                reference: self.image.to_string(),
                tag_or_digest: t.to_string(),
            },
            Target::Blob(d) => Error::BlobNotFound {
                reference: self.image.to_string(),
                digest: d.clone(),
            },
            Target::Auth => Error::Registry {
                host: host.clone(),
                status: 404,
                url: url.to_string(),
                message,
            },
        };
        match e {
            OciDistributionError::RequestError(e) => classify_reqwest(&e, &host),
            OciDistributionError::UnauthorizedError { url } => {
                auth_failed(format!("401 from {url}"))
            }
            OciDistributionError::AuthenticationFailure(reason) => {
                auth_failed(format!("token request refused: {}", reason.trim()))
            }
            OciDistributionError::RegistryError { envelope, url } => {
                let first = envelope.errors.first();
                let message = first
                    .map(|e| format!("{:?}: {}", e.code, e.message))
                    .unwrap_or_default();
                match first.map(|e| &e.code) {
                    Some(OciErrorCode::Unauthorized) => auth_failed(message),
                    Some(OciErrorCode::Denied) => Error::AccessDenied {
                        host,
                        repository,
                        detail: message,
                    },
                    Some(OciErrorCode::NameUnknown) => {
                        Error::RepositoryNotFound { host, repository }
                    }
                    Some(OciErrorCode::ManifestUnknown | OciErrorCode::BlobUnknown) => {
                        not_found(&url, message)
                    }
                    Some(OciErrorCode::Toomanyrequests) => Error::Registry {
                        host,
                        status: 429,
                        url,
                        message,
                    },
                    _ => Error::Registry {
                        host,
                        status: 400,
                        url,
                        message,
                    },
                }
            }
            OciDistributionError::ServerError { code, url, message } => match code {
                401 => auth_failed(format!("401 from {url}")),
                403 => Error::AccessDenied {
                    host,
                    repository,
                    detail: message,
                },
                404 => not_found(&url, message),
                _ => Error::Registry {
                    host,
                    status: code,
                    url,
                    message,
                },
            },
            OciDistributionError::DigestError(
                oci_client::errors::DigestError::VerificationError { expected, actual },
            ) => match (expected.parse::<Digest>(), actual.parse::<Digest>()) {
                (Ok(digest), Ok(actual)) => Error::BlobDigestMismatch { digest, actual },
                _ => Error::Registry {
                    host,
                    status: 0,
                    url: String::new(),
                    message: format!(
                        "digest verification failed: expected {expected}, got {actual}"
                    ),
                },
            },
            OciDistributionError::IoError(e) => Error::Unreachable {
                host,
                detail: e.to_string(),
            },
            other => {
                let digest = match target {
                    Target::Blob(d) => d.clone(),
                    _ => Digest::of(b""),
                };
                Error::InvalidContent {
                    reference: self.image.to_string(),
                    what: match target {
                        Target::Auth => "registry answer".into(),
                        Target::Manifest(_) => "manifest".into(),
                        Target::Blob(_) => "blob".into(),
                    },
                    digest,
                    reason: other.to_string(),
                }
            }
        }
    }
}

pub(super) fn map_stream_err(e: std::io::Error, host: &str, digest: &Digest) -> Error {
    if let Some(inner) = e.get_ref() {
        if let Some(oci_client::errors::DigestError::VerificationError { actual, .. }) =
            inner.downcast_ref::<oci_client::errors::DigestError>()
            && let Ok(actual) = actual.parse::<Digest>()
        {
            return Error::BlobDigestMismatch {
                digest: digest.clone(),
                actual,
            };
        }
        if let Some(re) = inner.downcast_ref::<reqwest::Error>() {
            return classify_reqwest(re, host);
        }
    }
    Error::Unreachable {
        host: host.to_string(),
        detail: format!("reading blob {digest}: {e}"),
    }
}

/// Classify a transport error: certificate, DNS, connection.
pub(super) fn classify_reqwest(e: &reqwest::Error, host: &str) -> Error {
    let mut messages = Vec::new();
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Error::TlsUntrusted {
                host: host.to_string(),
                detail: tls.to_string(),
            };
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
        {
            return Error::TlsUntrusted {
                host: host.to_string(),
                detail: tls.to_string(),
            };
        }
        messages.push(err.to_string());
        source = err.source();
    }
    let chain = messages.join(": ");
    if chain.contains("dns error") || chain.contains("failed to lookup address") {
        let detail = messages.last().cloned().unwrap_or_default();
        return Error::UnknownHost {
            host: host.to_string(),
            detail,
        };
    }
    if chain.contains("certificate") || chain.contains("InvalidCertificate") {
        return Error::TlsUntrusted {
            host: host.to_string(),
            detail: chain,
        };
    }
    if let Some(status) = e.status() {
        return Error::Registry {
            host: host.to_string(),
            status: status.as_u16(),
            url: e.url().map(|u| u.to_string()).unwrap_or_default(),
            message: chain,
        };
    }
    Error::Unreachable {
        host: host.to_string(),
        detail: chain,
    }
}
