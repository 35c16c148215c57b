//! [`Session`]: one pull's conversation with one endpoint — authentication, manifests (read
//! with a bound), small blobs whole, layer blobs as streams — each request under
//! `images.request_timeout_secs` and retried while it fails transiently.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use oci_client::RegistryOperation;
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;

use super::credentials::Auth;
use super::errors::{Target, classify_reqwest, map_stream_err};
use super::{CONNECT_TIMEOUT, Endpoint, MAX_DOCUMENT, READ_TIMEOUT, USER_AGENT, retry, split_pem};
use crate::error::{Error, Result};
use crate::manifest::{ACCEPTED_MANIFESTS, Descriptor};
use crate::reference::{Digest, ImageRef};

/// One pull's conversation with one endpoint.
pub(crate) struct Session {
    pub(super) client: oci_client::Client,
    /// The endpoint's HTTP client for the requests we make ourselves (manifests, blobs).
    pub(super) http: reqwest::Client,
    pub(super) endpoint: Endpoint,
    pub(super) image: ImageRef,
    pub(super) auth: RegistryAuth,
    /// The bearer token `oci-client` obtained, for the requests we make ourselves.
    pub(super) bearer: Option<String>,
    /// `images.request_timeout_secs`: each request that is not a blob body.
    pub(super) timeout: Duration,
}

impl Session {
    /// The endpoint host serving this pull.
    pub fn host(&self) -> &str {
        &self.endpoint.host
    }

    pub(super) async fn start(&self) -> Result<(Session, Bytes, Digest)> {
        let auth = match &self.endpoint.auth {
            Auth::Anonymous => RegistryAuth::Anonymous,
            Auth::Basic(u, p) => RegistryAuth::Basic(u.clone(), p.clone()),
            Auth::Bearer(t) => RegistryAuth::Bearer(t.clone()),
            Auth::IdentityToken(t) => RegistryAuth::Bearer(
                retry("identity token", || {
                    self.timed("identity token exchange", self.exchange_identity(t))
                })
                .await?,
            ),
        };
        let mut session = Session {
            client: self.client.clone(),
            http: self.http.clone(),
            endpoint: self.endpoint.clone(),
            image: self.image.clone(),
            auth,
            bearer: None,
            timeout: self.timeout,
        };
        let tag_or_digest = self.image.registry_reference().to_string();
        let reference = session
            .endpoint
            .reference(self.image.repository(), &tag_or_digest);
        session.bearer = retry("authenticate", || {
            session.timed("authentication", async {
                session
                    .client
                    .auth(&reference, &session.auth, RegistryOperation::Pull)
                    .await
                    .map_err(|e| session.map_err(e, Target::Auth))
            })
        })
        .await?;
        let (bytes, digest) = session.fetch_manifest(&tag_or_digest).await?;
        Ok((session, bytes, digest))
    }

    /// Fetch a manifest by tag or digest; verifies the digest when asked by digest.
    pub async fn fetch_manifest(&self, tag_or_digest: &str) -> Result<(Bytes, Digest)> {
        let result = retry("fetch manifest", || {
            self.timed("manifest request", async {
                self.fetch_manifest_bounded(tag_or_digest)
                    .await
                    .map(|b| (b, ()))
            })
        })
        .await;
        let (bytes, _) = match result {
            Err(Error::ManifestNotFound { .. }) if !tag_or_digest.contains(':') => {
                return Err(self.not_found(tag_or_digest).await);
            }
            other => other?,
        };
        let digest = Digest::of(&bytes);
        if let Ok(wanted) = tag_or_digest.parse::<Digest>()
            && wanted != digest
        {
            return Err(Error::BlobDigestMismatch {
                digest: wanted,
                actual: digest,
            });
        }
        Ok((bytes, digest))
    }

    /// Run one registry request under `images.request_timeout_secs`: a server that answers
    /// slowly (or drips its answer) cannot hold a pull longer than that.
    async fn timed<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(Error::RegistryTimeout {
                host: self.endpoint.host.clone(),
                what: what.to_string(),
                detail: format!(
                    "no complete answer within {}s (images.request_timeout_secs)",
                    self.timeout.as_secs()
                ),
            }),
        }
    }

    /// A client without redirects (the identity-token exchange, see [`build_http`]).
    pub(super) fn http_client(&self, follow_redirects: bool) -> Result<reqwest::Client> {
        build_http(&self.endpoint, follow_redirects)
    }

    /// A request to this endpoint with the pull's credentials: the bearer token
    /// `oci-client` obtained, or the Basic or Bearer credentials themselves.
    fn authorized(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match (&self.bearer, &self.auth) {
            (Some(token), _) => req.bearer_auth(token),
            (None, RegistryAuth::Basic(u, p)) => req.basic_auth(u, Some(p)),
            (None, RegistryAuth::Bearer(t)) => req.bearer_auth(t),
            _ => req,
        }
    }

    /// The error for a registry answer other than 200, as `oci-client` makes it (its
    /// `validate_registry_response`), so it maps to the same [`Error`]s.
    async fn status_error(
        &self,
        resp: reqwest::Response,
        url: String,
        target: Target<'_>,
    ) -> Error {
        let status = resp.status();
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(Ok(chunk)) = stream.next().await {
            body.extend_from_slice(&chunk);
            if body.len() > 64 << 10 {
                break;
            }
        }
        let message = String::from_utf8_lossy(&body).into_owned();
        let e = match status {
            reqwest::StatusCode::UNAUTHORIZED => OciDistributionError::UnauthorizedError { url },
            s if s.is_success() => OciDistributionError::SpecViolationError(format!(
                "Expected HTTP Status 200 OK, got {s} instead"
            )),
            s if s.is_client_error() => {
                match serde_json::from_slice::<oci_client::errors::OciEnvelope>(&body) {
                    Ok(envelope) => OciDistributionError::RegistryError { envelope, url },
                    Err(_) => OciDistributionError::ServerError {
                        code: s.as_u16(),
                        url,
                        message,
                    },
                }
            }
            s => OciDistributionError::ServerError {
                code: s.as_u16(),
                url,
                message,
            },
        };
        self.map_err(e, target)
    }

    /// GET a manifest reading at most [`MAX_DOCUMENT`] bytes of it (containerd's bound on
    /// manifests and configs): `oci-client` reads a body whole, so a hostile registry could
    /// make it hold gigabytes. Errors become the `OciDistributionError`s `oci-client` makes
    /// of them (its `validate_registry_response`), so they map to the same [`Error`]s.
    /// Redirects are followed by reqwest, which drops `Authorization` when one leaves the
    /// host.
    async fn fetch_manifest_bounded(&self, tag_or_digest: &str) -> Result<Bytes> {
        let url = format!(
            "{}/v2/{}/manifests/{}",
            self.endpoint.base_url(),
            self.image.repository(),
            tag_or_digest
        );
        let req = self
            .http
            .get(&url)
            .header(reqwest::header::ACCEPT, ACCEPTED_MANIFESTS.join(", "));
        let resp = self
            .authorized(req)
            .send()
            .await
            .map_err(|e| classify_reqwest(&e, &self.endpoint.host))?;
        if resp.status() != reqwest::StatusCode::OK {
            return Err(self
                .status_error(resp, url, Target::Manifest(tag_or_digest))
                .await);
        }
        let header_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok());
        let too_large = || Error::DocumentTooLarge {
            reference: self.image.to_string(),
            what: format!("manifest {tag_or_digest}"),
            limit: MAX_DOCUMENT,
        };
        if resp.content_length().is_some_and(|l| l > MAX_DOCUMENT) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| classify_reqwest(&e, &self.endpoint.host))?;
            if (body.len() + chunk.len()) as u64 > MAX_DOCUMENT {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        // As oci-client does: a registry that names the manifest's digest must be right.
        if let Some(named) = header_digest {
            let actual = Digest::of(&body);
            if named != actual {
                return Err(Error::BlobDigestMismatch {
                    digest: named,
                    actual,
                });
            }
        }
        Ok(Bytes::from(body))
    }

    /// Tell an unknown repository from an unknown tag.
    async fn not_found(&self, tag: &str) -> Error {
        let reference = self.endpoint.reference(self.image.repository(), tag);
        let manifest_missing = Error::ManifestNotFound {
            reference: self.image.to_string(),
            tag_or_digest: tag.to_string(),
        };
        match self
            .client
            .list_tags(&reference, &self.auth, Some(1), None)
            .await
        {
            Err(OciDistributionError::RegistryError { envelope, .. })
                if envelope
                    .errors
                    .iter()
                    .any(|e| e.code == OciErrorCode::NameUnknown) =>
            {
                Error::RepositoryNotFound {
                    host: self.endpoint.host.clone(),
                    repository: self.image.repository().to_string(),
                }
            }
            _ => manifest_missing,
        }
    }

    /// Fetch a small blob (config) whole, verifying size and digest.
    pub async fn fetch_small_blob(&self, desc: &Descriptor, limit: u64) -> Result<Bytes> {
        if desc.size > limit {
            return Err(Error::TooLarge {
                what: "config blob".into(),
                digest: desc.digest.clone(),
                size: desc.size,
                limit,
            });
        }
        retry("fetch blob", || async {
            let mut stream = self.open_blob(desc).await?;
            let deadline = tokio::time::Instant::now() + self.timeout;
            let mut buf = Vec::with_capacity(usize::try_from(desc.size).unwrap_or(0));
            loop {
                let next = tokio::time::timeout_at(deadline, stream.next()).await;
                let Ok(next) = next else {
                    return Err(Error::RegistryTimeout {
                        host: self.endpoint.host.clone(),
                        what: format!("blob {}", desc.digest),
                        detail: format!(
                            "not received within {}s (images.request_timeout_secs)",
                            self.timeout.as_secs()
                        ),
                    });
                };
                let Some(chunk) = next else { break };
                let chunk = chunk?;
                buf.extend_from_slice(&chunk);
                if buf.len() as u64 > desc.size {
                    return Err(Error::BlobSizeMismatch {
                        digest: desc.digest.clone(),
                        expected: desc.size,
                        actual: buf.len() as u64,
                    });
                }
            }
            if buf.len() as u64 != desc.size {
                return Err(Error::BlobSizeMismatch {
                    digest: desc.digest.clone(),
                    expected: desc.size,
                    actual: buf.len() as u64,
                });
            }
            let actual = Digest::of(&buf);
            if actual != desc.digest {
                return Err(Error::BlobDigestMismatch {
                    digest: desc.digest.clone(),
                    actual,
                });
            }
            Ok(Bytes::from(buf))
        })
        .await
    }

    /// Open a blob as a stream of chunks, retrying the request (not the body) on transient
    /// errors. The stream's errors are already mapped; the caller verifies size and digest
    /// (the one hash of the compressed bytes: `oci-client`'s own verifying stream would be
    /// a second one, so blobs are fetched with our client on the authenticated session;
    /// only a layer with foreign `urls` goes through `oci-client`, which knows them).
    pub async fn open_blob(
        &self,
        desc: &Descriptor,
    ) -> Result<futures_util::stream::BoxStream<'static, Result<Bytes>>> {
        if desc.urls.as_ref().is_some_and(|u| !u.is_empty()) {
            return self.open_foreign_blob(desc).await;
        }
        let url = format!(
            "{}/v2/{}/blobs/{}",
            self.endpoint.base_url(),
            self.image.repository(),
            desc.digest
        );
        let resp = retry("open blob", || {
            self.timed("blob request", async {
                // Redirects (to a CDN) are followed; reqwest drops `Authorization` when one
                // leaves the host.
                let resp = self
                    .authorized(self.http.get(&url))
                    .send()
                    .await
                    .map_err(|e| classify_reqwest(&e, &self.endpoint.host))?;
                if resp.status() != reqwest::StatusCode::OK {
                    return Err(self
                        .status_error(resp, url.clone(), Target::Blob(&desc.digest))
                        .await);
                }
                Ok(resp)
            })
        })
        .await?;
        let host = self.endpoint.host.clone();
        Ok(resp
            .bytes_stream()
            .map(move |item| item.map_err(|e| classify_reqwest(&e, &host)))
            .boxed())
    }

    /// A blob with foreign `urls` (non-distributable layers), through `oci-client`.
    async fn open_foreign_blob(
        &self,
        desc: &Descriptor,
    ) -> Result<futures_util::stream::BoxStream<'static, Result<Bytes>>> {
        let reference = self
            .endpoint
            .reference(self.image.repository(), desc.digest.as_str());
        let oci_desc = oci_client::manifest::OciDescriptor {
            media_type: desc.media_type.clone(),
            digest: desc.digest.to_string(),
            size: i64::try_from(desc.size).unwrap_or(i64::MAX),
            urls: desc.urls.clone(),
            ..Default::default()
        };
        let stream = retry("open blob", || {
            self.timed("blob request", async {
                self.client
                    .pull_blob_stream(&reference, &oci_desc)
                    .await
                    .map_err(|e| self.map_err(e, Target::Blob(&desc.digest)))
            })
        })
        .await?;
        let host = self.endpoint.host.clone();
        let digest = desc.digest.clone();
        Ok(stream
            .map(move |item| item.map_err(|e| map_stream_err(e, &host, &digest)))
            .boxed())
    }
}

/// An HTTP client for our own requests to `endpoint`: its CA roots, a connect timeout, and
/// redirects followed or not at all (the identity-token exchange posts a refresh token,
/// which a redirect must never carry anywhere).
pub(super) fn build_http(endpoint: &Endpoint, follow_redirects: bool) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .user_agent(USER_AGENT);
    if !follow_redirects {
        builder = builder.redirect(reqwest::redirect::Policy::none());
    }
    let mut certs = Vec::new();
    for path in &endpoint.ca_files {
        let pem = std::fs::read(path).map_err(|e| Error::io("read CA file", path, e))?;
        for cert in split_pem(&pem) {
            let c = reqwest::Certificate::from_pem(&cert).map_err(|e| Error::Config {
                key: format!("registries.\"{}\".ca_files", endpoint.host),
                reason: format!("{}: {e}", path.display()),
            })?;
            certs.push(c);
        }
    }
    if !certs.is_empty() {
        builder = builder.tls_certs_merge(certs);
    }
    builder.build().map_err(|e| Error::Config {
        key: format!("registries.\"{}\"", endpoint.host),
        reason: format!("cannot build an HTTP client: {e}"),
    })
}
