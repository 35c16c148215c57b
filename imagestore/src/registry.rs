//! Registry client: endpoints (mirrors, then the registry), credentials, retries, and the
//! mapping of transport and registry errors to [`Error`] variants a user can act on.
//!
//! The distribution protocol itself (URLs, `Accept` headers, the Basic and Bearer token flows
//! from the `WWW-Authenticate` challenge, streamed blobs with digest verification, foreign
//! layer URLs) is `oci-client`'s. One `oci_client::Client` exists per endpoint host *and*
//! credential: the client keeps a per-registry credential and token cache, so sharing one
//! client between pulls with different pull secrets would let the first secret's token serve
//! the second pull. Each client carries its host's TLS roots (system roots plus the host's
//! `ca_files`) and protocol (plain HTTP only for `insecure` hosts).
//!
//! Added here on `reqwest`, because `oci-client` does not do it: the **identity-token flow**.
//! A CRI `AuthConfig.identity_token` is an OAuth2 refresh token (what `docker login` stores for
//! registries with OAuth); it must be exchanged at the token realm with a `POST`
//! (`grant_type=refresh_token`), while `oci-client` only knows the `GET` token request with
//! Basic credentials. We parse the challenge (with `http-auth`, the parser `oci-client` uses),
//! do the exchange, and hand the access token to `oci-client` as a Bearer credential.
//!
//! Also ours: mirror fallback, retries with exponential back-off on connection errors and 5xx
//! (never on 4xx), telling "repository not found" from "tag not found" (docker-registry answers
//! `MANIFEST_UNKNOWN` for both; a `tags/list` probe answers `NAME_UNKNOWN` for an unknown
//! repository), and classifying DNS, connect and certificate failures.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt;
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Reference, RegistryOperation};
use sha2::{Digest as _, Sha256};
use tracing::{debug, info, warn};

use crate::config::{ImagesConfig, parse_mirror};
use crate::error::{Error, Result};
use crate::manifest::{ACCEPTED_MANIFESTS, Descriptor};
use crate::reference::{Digest, ImageRef};

const ATTEMPTS: u32 = 4;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest manifest or index read (containerd's `limits.MaxManifestSize`-like bound).
pub(crate) const MAX_DOCUMENT: u64 = 4 << 20;
const USER_AGENT: &str = concat!("rootstock/", env!("CARGO_PKG_VERSION"));
/// Clients kept; past this the cache is emptied (clients are cheap to rebuild, and pull
/// secrets are not a set that should grow without bound).
const MAX_CLIENTS: usize = 128;

/// Credentials for one pull, as the CRI `AuthConfig` carries them. Empty strings mean "not
/// given". Precedence: `registry_token`, then `identity_token`, then `username`/`password`,
/// then `auth`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// User name for Basic auth or the token request.
    pub username: String,
    /// Password for `username`.
    pub password: String,
    /// `base64(username:password)`.
    pub auth: String,
    /// The registry the credentials are for (`AuthConfig.server_address`); empty means the
    /// image's registry. Credentials are never sent to another host (e.g. a mirror).
    pub server_address: String,
    /// An OAuth2 refresh token, exchanged for an access token at the token realm.
    pub identity_token: String,
    /// A bearer token sent as is.
    pub registry_token: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("server_address", &self.server_address)
            .field(
                "password",
                &(!self.password.is_empty()).then_some("<redacted>"),
            )
            .field("auth", &(!self.auth.is_empty()).then_some("<redacted>"))
            .field(
                "identity_token",
                &(!self.identity_token.is_empty()).then_some("<redacted>"),
            )
            .field(
                "registry_token",
                &(!self.registry_token.is_empty()).then_some("<redacted>"),
            )
            .finish()
    }
}

/// Credentials resolved to what is sent.
#[derive(Clone, PartialEq, Eq)]
enum Auth {
    Anonymous,
    Basic(String, String),
    Bearer(String),
    IdentityToken(String),
}

impl Auth {
    fn fingerprint(&self) -> String {
        let material = match self {
            Auth::Anonymous => return "anonymous".into(),
            Auth::Basic(u, p) => format!("basic\0{u}\0{p}"),
            Auth::Bearer(t) => format!("bearer\0{t}"),
            Auth::IdentityToken(t) => format!("identity\0{t}"),
        };
        hex::encode(Sha256::digest(material.as_bytes()))
    }
}

/// Decode Docker's `auth` field, `base64(username:password)`.
pub(crate) fn decode_basic_auth(auth: &str) -> std::result::Result<(String, String), String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .map_err(|e| format!("auth is not valid base64: {e}"))?;
    let text = String::from_utf8(bytes).map_err(|_| "auth is not UTF-8".to_string())?;
    let (user, pass) = text
        .split_once(':')
        .ok_or_else(|| "auth does not decode to username:password".to_string())?;
    Ok((user.to_string(), pass.to_string()))
}

fn resolve_credentials(c: &Credentials) -> Result<Auth> {
    let bad = |reason: String| Error::AuthenticationFailed {
        host: c.server_address.clone(),
        repository: String::new(),
        detail: reason,
    };
    if !c.registry_token.is_empty() {
        Ok(Auth::Bearer(c.registry_token.clone()))
    } else if !c.identity_token.is_empty() {
        Ok(Auth::IdentityToken(c.identity_token.clone()))
    } else if !c.username.is_empty() {
        Ok(Auth::Basic(c.username.clone(), c.password.clone()))
    } else if !c.auth.is_empty() {
        let (u, p) = decode_basic_auth(&c.auth).map_err(bad)?;
        Ok(Auth::Basic(u, p))
    } else {
        Ok(Auth::Anonymous)
    }
}

/// Normalise a `server_address` (which Docker writes as `https://index.docker.io/v1/`) to a
/// registry host as image names spell it.
fn server_host(address: &str) -> String {
    let s = address
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = s.split('/').next().unwrap_or(s);
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".into(),
        other => other.to_string(),
    }
}

/// One host to try, with everything needed to talk to it.
#[derive(Clone)]
pub(crate) struct Endpoint {
    /// The host as configured (`docker.io`, `127.0.0.1:5000`).
    pub host: String,
    /// The host actually contacted (`registry-1.docker.io` for `docker.io`).
    connect_host: String,
    plain_http: bool,
    ca_files: Vec<PathBuf>,
    auth: Auth,
    is_mirror: bool,
}

impl Endpoint {
    fn reference(&self, repository: &str, tag_or_digest: &str) -> Reference {
        if tag_or_digest.contains(':') {
            Reference::with_digest(
                self.connect_host.clone(),
                repository.to_string(),
                tag_or_digest.to_string(),
            )
        } else {
            Reference::with_tag(
                self.connect_host.clone(),
                repository.to_string(),
                tag_or_digest.to_string(),
            )
        }
    }

    fn base_url(&self) -> String {
        let scheme = if self.plain_http { "http" } else { "https" };
        format!("{scheme}://{}", self.connect_host)
    }
}

/// The registry client shared by all pulls.
pub struct RegistryClient {
    config: ImagesConfig,
    clients: Mutex<HashMap<String, oci_client::Client>>,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient").finish_non_exhaustive()
    }
}

impl RegistryClient {
    /// A client for `config` (validated by the caller).
    pub fn new(config: &ImagesConfig) -> Self {
        RegistryClient {
            config: config.clone(),
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// The endpoints for `image`: its registry's mirrors in order, then the registry.
    fn endpoints(&self, image: &ImageRef, creds: Option<&Credentials>) -> Result<Vec<Endpoint>> {
        let upstream = image.registry();
        let cri_auth = match creds {
            Some(c) => Some((server_host(&c.server_address), resolve_credentials(c)?)),
            None => None,
        };
        // CRI credentials apply to the host they name (the image's registry when unnamed);
        // config credentials to their own host.
        let auth_for = |host: &str| -> Result<Auth> {
            if let Some((server, auth)) = &cri_auth
                && auth != &Auth::Anonymous
                && ((server.is_empty() && host == upstream) || server == host)
            {
                return Ok(auth.clone());
            }
            let cfg = self.config.registry(host);
            if let (Some(u), Some(p)) = (&cfg.username, &cfg.password) {
                return Ok(Auth::Basic(u.clone(), p.clone()));
            }
            if let Some(a) = &cfg.auth {
                let (u, p) = decode_basic_auth(a).map_err(|reason| Error::Config {
                    key: format!("registries.\"{host}\".auth"),
                    reason,
                })?;
                return Ok(Auth::Basic(u, p));
            }
            Ok(Auth::Anonymous)
        };
        let mut out = Vec::new();
        let upstream_cfg = self.config.registry(upstream);
        for (i, mirror) in upstream_cfg.mirrors.iter().enumerate() {
            let spec = parse_mirror(mirror).map_err(|reason| Error::Config {
                key: format!("registries.\"{upstream}\".mirrors[{i}]"),
                reason,
            })?;
            let cfg = self.config.registry(&spec.host);
            out.push(Endpoint {
                host: spec.host.clone(),
                connect_host: spec.host.clone(),
                plain_http: spec.plain_http.unwrap_or(cfg.insecure),
                ca_files: cfg.ca_files.clone(),
                auth: auth_for(&spec.host)?,
                is_mirror: true,
            });
        }
        out.push(Endpoint {
            host: upstream.to_string(),
            connect_host: if upstream == "docker.io" {
                "registry-1.docker.io".into()
            } else {
                upstream.to_string()
            },
            plain_http: upstream_cfg.insecure,
            ca_files: upstream_cfg.ca_files.clone(),
            auth: auth_for(upstream)?,
            is_mirror: false,
        });
        Ok(out)
    }

    fn client(&self, ep: &Endpoint) -> Result<oci_client::Client> {
        let key = format!(
            "{}|{}|{}|{}",
            ep.connect_host,
            ep.plain_http,
            ep.auth.fingerprint(),
            ep.ca_files
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        // A panic while holding the lock cannot leave the map inconsistent (single inserts).
        let mut clients = match self.clients.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let mut extra = Vec::new();
        for path in &ep.ca_files {
            let pem = std::fs::read(path).map_err(|e| Error::Config {
                key: format!("registries.\"{}\".ca_files", ep.host),
                reason: format!("{}: {e}", path.display()),
            })?;
            for cert in split_pem(&pem) {
                extra.push(oci_client::client::Certificate {
                    encoding: oci_client::client::CertificateEncoding::Pem,
                    data: cert,
                });
            }
        }
        let config = oci_client::client::ClientConfig {
            protocol: if ep.plain_http {
                oci_client::client::ClientProtocol::Http
            } else {
                oci_client::client::ClientProtocol::Https
            },
            extra_root_certificates: extra,
            // We choose from indexes ourselves (manifest::choose_platform).
            platform_resolver: None,
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            user_agent: USER_AGENT,
            ..Default::default()
        };
        let client = oci_client::Client::try_from(config).map_err(|e| Error::Config {
            key: format!("registries.\"{}\"", ep.host),
            reason: format!("cannot build an HTTP client: {e}"),
        })?;
        if clients.len() >= MAX_CLIENTS {
            clients.clear();
        }
        clients.insert(key, client.clone());
        Ok(client)
    }

    /// Resolve `image` to its manifest bytes on the first endpoint that has it, and return a
    /// [`Session`] bound to that endpoint for the rest of the pull. Mirrors that fail are
    /// logged and skipped; the registry's own error is the one returned.
    pub(crate) async fn resolve(
        &self,
        image: &ImageRef,
        creds: Option<&Credentials>,
    ) -> Result<(Session, Bytes, Digest)> {
        let endpoints = self.endpoints(image, creds)?;
        let mut last_err = None;
        for ep in endpoints {
            let client = self.client(&ep)?;
            let session = Session {
                client,
                endpoint: ep,
                image: image.clone(),
                auth: RegistryAuth::Anonymous,
                bearer: None,
                timeout: Duration::from_secs(self.config.request_timeout_secs),
            };
            match session.start().await {
                Ok((session, bytes, digest)) => return Ok((session, bytes, digest)),
                Err(e) => {
                    if session.endpoint.is_mirror {
                        warn!(mirror = %session.endpoint.host, image = %image, error = %e,
                            "mirror failed, trying the next endpoint");
                    }
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| Error::Config {
            key: "registries".into(),
            reason: "no endpoint".into(),
        }))
    }
}

/// Split a PEM bundle into one PEM block per certificate (reqwest parses one per call).
fn split_pem(pem: &[u8]) -> Vec<Vec<u8>> {
    let text = String::from_utf8_lossy(pem);
    let mut out = Vec::new();
    let mut rest = text.as_ref();
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    while let Some(start) = rest.find(BEGIN) {
        let Some(end) = rest[start..].find(END) else {
            break;
        };
        let stop = start + end + END.len();
        out.push(format!("{}\n", &rest[start..stop]).into_bytes());
        rest = &rest[stop..];
    }
    out
}

/// What a request was for, to name it in errors.
#[derive(Clone, Copy)]
enum Target<'a> {
    Auth,
    Manifest(&'a str),
    Blob(&'a Digest),
}

/// One pull's conversation with one endpoint.
pub(crate) struct Session {
    client: oci_client::Client,
    endpoint: Endpoint,
    image: ImageRef,
    auth: RegistryAuth,
    /// The bearer token `oci-client` obtained, for the requests we make ourselves.
    bearer: Option<String>,
    /// `images.request_timeout_secs`: each request that is not a blob body.
    timeout: Duration,
}

impl Session {
    /// The endpoint host serving this pull.
    pub fn host(&self) -> &str {
        &self.endpoint.host
    }

    async fn start(&self) -> Result<(Session, Bytes, Digest)> {
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

    /// An HTTP client for our own requests to this endpoint: its CA roots, a connect
    /// timeout, and no redirects at all (the identity-token exchange posts a refresh token,
    /// which a redirect must never carry anywhere).
    fn http_client(&self, follow_redirects: bool) -> Result<reqwest::Client> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(USER_AGENT);
        if !follow_redirects {
            builder = builder.redirect(reqwest::redirect::Policy::none());
        }
        let mut certs = Vec::new();
        for path in &self.endpoint.ca_files {
            let pem = std::fs::read(path).map_err(|e| Error::io("read CA file", path, e))?;
            for cert in split_pem(&pem) {
                let c = reqwest::Certificate::from_pem(&cert).map_err(|e| Error::Config {
                    key: format!("registries.\"{}\".ca_files", self.endpoint.host),
                    reason: format!("{}: {e}", path.display()),
                })?;
                certs.push(c);
            }
        }
        if !certs.is_empty() {
            builder = builder.tls_certs_merge(certs);
        }
        builder.build().map_err(|e| Error::Config {
            key: format!("registries.\"{}\"", self.endpoint.host),
            reason: format!("cannot build an HTTP client: {e}"),
        })
    }

    /// GET a manifest reading at most [`MAX_DOCUMENT`] bytes of it (containerd's bound on
    /// manifests and configs): `oci-client` reads a body whole, so a hostile registry could
    /// make it hold gigabytes. Errors become the `OciDistributionError`s `oci-client` makes
    /// of them (its `validate_registry_response`), so they map to the same [`Error`]s.
    /// Redirects are followed by reqwest, which drops `Authorization` when one leaves the
    /// host.
    async fn fetch_manifest_bounded(&self, tag_or_digest: &str) -> Result<Bytes> {
        let http = self.http_client(true)?;
        let url = format!(
            "{}/v2/{}/manifests/{}",
            self.endpoint.base_url(),
            self.image.repository(),
            tag_or_digest
        );
        let mut req = http
            .get(&url)
            .header(reqwest::header::ACCEPT, ACCEPTED_MANIFESTS.join(", "));
        match (&self.bearer, &self.auth) {
            (Some(token), _) => req = req.bearer_auth(token),
            (None, RegistryAuth::Basic(u, p)) => req = req.basic_auth(u, Some(p)),
            (None, RegistryAuth::Bearer(t)) => req = req.bearer_auth(t),
            _ => {}
        }
        let resp = req
            .send()
            .await
            .map_err(|e| classify_reqwest(&e, &self.endpoint.host))?;
        let status = resp.status();
        if status != reqwest::StatusCode::OK {
            let target = Target::Manifest(tag_or_digest);
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
                reqwest::StatusCode::UNAUTHORIZED => {
                    OciDistributionError::UnauthorizedError { url }
                }
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
            return Err(self.map_err(e, target));
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
    /// errors. The stream's errors are already mapped; the caller verifies size and digest.
    pub async fn open_blob(
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

    async fn exchange_identity(&self, token: &str) -> Result<String> {
        let http = self.http_client(false)?;
        let host = &self.endpoint.host;
        let repository = self.image.repository();
        let auth_failed = |detail: String| Error::AuthenticationFailed {
            host: host.clone(),
            repository: repository.to_string(),
            detail,
        };
        let probe = http
            .get(format!("{}/v2/", self.endpoint.base_url()))
            .send()
            .await
            .map_err(|e| classify_reqwest(&e, host))?;
        let header = probe
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| {
                auth_failed(
                    "an identity token was given but the registry asks for no token auth".into(),
                )
            })?;
        let challenge = parse_bearer_challenge(&header).ok_or_else(|| {
            auth_failed(format!(
                "an identity token needs a Bearer challenge, the registry sent {header:?}"
            ))
        })?;
        let scope = format!("repository:{repository}:pull");
        let mut form = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", token),
            ("client_id", "rootstock"),
            ("scope", scope.as_str()),
        ];
        if let Some(service) = &challenge.service {
            form.push(("service", service.as_str()));
        }
        let resp = http
            .post(&challenge.realm)
            .form(&form)
            .send()
            .await
            .map_err(|e| classify_reqwest(&e, host))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| classify_reqwest(&e, host))?;
        if status.is_server_error() {
            return Err(Error::Registry {
                host: host.clone(),
                status: status.as_u16(),
                url: challenge.realm.clone(),
                message: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        if !status.is_success() {
            return Err(auth_failed(format!(
                "token server {} refused the identity token ({status}): {}",
                challenge.realm,
                String::from_utf8_lossy(&body)
            )));
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            access_token: Option<String>,
            token: Option<String>,
        }
        let parsed: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| auth_failed(format!("token server answer is not JSON: {e}")))?;
        parsed
            .access_token
            .or(parsed.token)
            .ok_or_else(|| auth_failed("token server answer has no access_token".into()))
    }

    fn map_err(&self, e: OciDistributionError, target: Target<'_>) -> Error {
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

fn map_stream_err(e: std::io::Error, host: &str, digest: &Digest) -> Error {
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
fn classify_reqwest(e: &reqwest::Error, host: &str) -> Error {
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

/// `realm` and `service` of a Bearer challenge.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BearerChallenge {
    pub realm: String,
    pub service: Option<String>,
}

/// Parse the first Bearer challenge of a `WWW-Authenticate` header.
pub(crate) fn parse_bearer_challenge(header: &str) -> Option<BearerChallenge> {
    let challenges = http_auth::parse_challenges(header).ok()?;
    let bearer = challenges
        .iter()
        .find(|c| c.scheme.eq_ignore_ascii_case("bearer"))?;
    let mut realm = None;
    let mut service = None;
    for (k, v) in &bearer.params {
        if k.eq_ignore_ascii_case("realm") {
            realm = Some(v.to_unescaped());
        } else if k.eq_ignore_ascii_case("service") {
            service = Some(v.to_unescaped());
        }
    }
    Some(BearerChallenge {
        realm: realm?,
        service,
    })
}

/// Run `f`, retrying with exponential back-off while it fails transiently.
async fn retry<T, F, Fut>(what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut delay = FIRST_BACKOFF;
    let mut attempt = 1;
    loop {
        match f().await {
            Err(e) if e.is_transient() && attempt < ATTEMPTS => {
                info!(attempt, error = %e, "{what} failed, retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            Err(e) => {
                debug!(attempt, error = %e, "{what} failed");
                return Err(e);
            }
            ok => return ok,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_parse() {
        let c = parse_bearer_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a:pull""#,
        )
        .unwrap();
        assert_eq!(c.realm, "https://auth.example/token");
        assert_eq!(c.service.as_deref(), Some("registry.example"));
        let c = parse_bearer_challenge(r#"Basic realm="x", Bearer realm="https://t/""#).unwrap();
        assert_eq!(c.realm, "https://t/");
        assert_eq!(c.service, None);
        assert!(parse_bearer_challenge(r#"Basic realm="Registry Realm""#).is_none());
        assert!(parse_bearer_challenge("Bearer service=\"x\"").is_none());
    }

    #[test]
    fn credentials_resolve_in_cri_precedence() {
        let c = Credentials {
            auth: base64::engine::general_purpose::STANDARD.encode("u:p:x"),
            ..Default::default()
        };
        assert!(resolve_credentials(&c).unwrap() == Auth::Basic("u".into(), "p:x".into()));
        let c = Credentials {
            username: "a".into(),
            password: "b".into(),
            identity_token: "it".into(),
            ..Default::default()
        };
        assert!(resolve_credentials(&c).unwrap() == Auth::IdentityToken("it".into()));
        let c = Credentials {
            registry_token: "rt".into(),
            identity_token: "it".into(),
            ..Default::default()
        };
        assert!(resolve_credentials(&c).unwrap() == Auth::Bearer("rt".into()));
        assert!(resolve_credentials(&Credentials::default()).unwrap() == Auth::Anonymous);
        let bad = Credentials {
            auth: "!!".into(),
            ..Default::default()
        };
        assert!(resolve_credentials(&bad).is_err());
    }

    #[test]
    fn credentials_go_only_to_their_host() {
        let mut config = ImagesConfig::default();
        config.registries.insert(
            "docker.io".into(),
            crate::config::RegistryConfig {
                mirrors: vec!["http://127.0.0.1:5000".into()],
                ..Default::default()
            },
        );
        let client = RegistryClient::new(&config);
        let image = ImageRef::parse("busybox").unwrap();
        let creds = Credentials {
            username: "u".into(),
            password: "p".into(),
            server_address: "https://index.docker.io/v1/".into(),
            ..Default::default()
        };
        let eps = client.endpoints(&image, Some(&creds)).unwrap();
        assert_eq!(eps.len(), 2);
        assert!(eps[0].is_mirror && eps[0].plain_http && eps[0].auth == Auth::Anonymous);
        assert_eq!(eps[1].connect_host, "registry-1.docker.io");
        assert!(eps[1].auth == Auth::Basic("u".into(), "p".into()));
        assert!(!eps[1].plain_http);
    }

    #[test]
    fn pem_bundles_split_per_certificate() {
        let pem = b"junk\n-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nBBB\n-----END CERTIFICATE-----\n";
        let certs = split_pem(pem);
        assert_eq!(certs.len(), 2);
        assert!(String::from_utf8_lossy(&certs[1]).contains("BBB"));
    }

    #[tokio::test]
    async fn retries_stop_at_4xx() {
        let mut calls = 0;
        let r: Result<()> = retry("x", || {
            calls += 1;
            async {
                Err(Error::Registry {
                    host: "h".into(),
                    status: 404,
                    url: String::new(),
                    message: String::new(),
                })
            }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls, 1);
        let mut calls = 0;
        let r: Result<()> = retry("x", || {
            calls += 1;
            async {
                Err(Error::Registry {
                    host: "h".into(),
                    status: 503,
                    url: String::new(),
                    message: String::new(),
                })
            }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls, ATTEMPTS);
    }
}
