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
//!
//! Here: the client and its per-endpoint `oci_client::Client` cache, endpoints and retries;
//! [`credentials`] resolves pull secrets, [`session`] talks to one endpoint, [`identity`] is
//! the identity-token exchange and [`errors`] the error mapping.

mod credentials;
mod errors;
mod identity;
mod session;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use oci_client::Reference;
use oci_client::secrets::RegistryAuth;
use tracing::{debug, info, warn};

use crate::config::{ImagesConfig, parse_mirror};
use crate::error::{Error, Result};
use crate::reference::{Digest, ImageRef};
pub use credentials::Credentials;
pub(crate) use credentials::decode_basic_auth;
use credentials::{Auth, resolve_credentials, server_host};
pub(crate) use session::Session;

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
    /// Per endpoint and credential: `oci-client`'s client (authentication, tags) and the
    /// HTTP client our own requests (manifests, blobs) share, so a pull's requests reuse
    /// connections rather than opening one each.
    clients: Mutex<HashMap<String, (oci_client::Client, reqwest::Client)>>,
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

    fn client(&self, ep: &Endpoint) -> Result<(oci_client::Client, reqwest::Client)> {
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
        let http = session::build_http(ep, true)?;
        if clients.len() >= MAX_CLIENTS {
            clients.clear();
        }
        clients.insert(key, (client.clone(), http.clone()));
        Ok((client, http))
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
            let (client, http) = self.client(&ep)?;
            let session = Session {
                client,
                http,
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
        for (status, attempts) in [(404, 1), (503, ATTEMPTS)] {
            let mut calls = 0;
            let r: Result<()> = retry("x", || {
                calls += 1;
                async move {
                    Err(Error::Registry {
                        host: "h".into(),
                        status,
                        url: String::new(),
                        message: String::new(),
                    })
                }
            })
            .await;
            assert!(r.is_err());
            assert_eq!(calls, attempts, "status {status}");
        }
    }
}
