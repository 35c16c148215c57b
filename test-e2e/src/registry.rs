//! A private docker-registry on 127.0.0.1.
//!
//! [`Registry::start`] runs Debian's `/usr/bin/docker-registry` (distribution 2.8) on a free
//! loopback port with filesystem storage in its own temp dir; dropping the value kills it and
//! removes the dir. Options ([`RegistryOptions`]) add htpasswd Basic auth, token auth (with a
//! [`crate::token::TokenServer`]), TLS and raw config.
//! The harness pushes fixture images ([`crate::fixtures`]) over the real Distribution HTTP API
//! and reads the registry's access log so tests can count what a client fetched.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::fs;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::header::{AUTHORIZATION, HeaderValue, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use tempfile::TempDir;

use crate::fixtures::{Image, Index, sha256_digest};
use crate::token::TokenServer;

/// The registry binary (Debian package `docker-registry`).
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// How long the registry may take to answer `GET /v2/` after being spawned.
const START_DEADLINE: Duration = Duration::from_secs(15);

/// How many fresh ports to try when another process takes ours between probe and bind.
const PORT_ATTEMPTS: usize = 5;

/// How the registry is set up. `RegistryOptions::default()` is a plain HTTP registry with no
/// auth.
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// Basic auth from an htpasswd file with this one `(user, password)`; the harness's own
    /// requests (push, manifest, blob) send it.
    pub basic_auth: Option<(String, String)>,
    /// Serve HTTPS with this certificate and key.
    pub tls: Option<TlsFiles>,
    /// Raw YAML appended to the generated config at top level (for sections the options do
    /// not cover, e.g. `notifications:`). It must not repeat a top-level key the harness
    /// writes: `version`, `log`, `storage`, `http`, and `auth` when `basic_auth` or
    /// `token_auth` is set.
    pub extra_yaml: String,
    /// Token auth (`auth: token:`) against a token server; the harness's own requests answer
    /// the registry's Bearer challenges with tokens fetched as `TokenAuth::credentials`.
    /// Exclusive with `basic_auth`.
    pub token_auth: Option<TokenAuth>,
    /// Keep the registry's storage in this directory (created if missing, kept after the
    /// registry stops) instead of its temp dir: benchmark fixtures pushed once are served on
    /// later runs.
    pub storage_dir: Option<PathBuf>,
}

/// The registry's `auth: token:` section, and the credentials the harness fetches its own
/// tokens with.
#[derive(Clone, Debug)]
pub struct TokenAuth {
    /// Where clients fetch tokens (`http://127.0.0.1:PORT/token`).
    pub realm: String,
    /// The `service` of the challenge, the tokens' `aud`.
    pub service: String,
    /// The tokens' `iss` the registry trusts.
    pub issuer: String,
    /// PEM certificates the token signatures must chain to (`rootcertbundle`); written into
    /// the registry's dir, so the token server need not outlive the registry's start.
    pub root_cert_pem: String,
    /// `(user, password)` the harness sends to the realm; `None` fetches anonymous tokens.
    pub credentials: Option<(String, String)>,
}

/// The server certificate the registry presents, and the CA a client must trust for it.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// PEM server certificate (chain) file.
    pub cert: PathBuf,
    /// PEM private key file.
    pub key: PathBuf,
    /// PEM CA certificate the harness's client trusts (the only root it trusts).
    pub ca: PathBuf,
}

impl RegistryOptions {
    /// Requires Basic auth as `user`/`password`.
    pub fn basic_auth(mut self, user: &str, password: &str) -> Self {
        self.basic_auth = Some((user.to_owned(), password.to_owned()));
        self
    }
    /// Serves HTTPS (see [`TlsFiles`]; [`TestCa`] makes them).
    pub fn tls(mut self, tls: TlsFiles) -> Self {
        self.tls = Some(tls);
        self
    }
    /// Requires tokens from `server` (its realm, service, issuer and certificate); the
    /// harness's own requests fetch them as the server's first user.
    pub fn token_auth(mut self, server: &TokenServer) -> Self {
        self.token_auth = Some(TokenAuth {
            realm: server.realm(),
            service: server.service().to_owned(),
            issuer: server.issuer().to_owned(),
            root_cert_pem: server.cert_pem().to_owned(),
            credentials: server.harness_credentials(),
        });
        self
    }
    /// Keeps the storage in `dir` across runs (see [`RegistryOptions::storage_dir`]).
    pub fn storage_dir(mut self, dir: &Path) -> Self {
        self.storage_dir = Some(dir.to_owned());
        self
    }
    /// Appends raw top-level YAML to the config.
    pub fn extra_yaml(mut self, yaml: &str) -> Self {
        self.extra_yaml.push_str(yaml);
        if !self.extra_yaml.ends_with('\n') {
            self.extra_yaml.push('\n');
        }
        self
    }
}

/// A test certificate authority and a server certificate it signed for `127.0.0.1`, `::1` and
/// `localhost`, written as PEM files in a temp dir that lives as long as the value.
pub struct TestCa {
    dir: TempDir,
    /// The CA certificate (PEM), what a client must trust.
    pub ca_pem: String,
}

impl TestCa {
    /// Generates a fresh CA and server certificate (ECDSA P-256).
    pub fn new() -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let dir = tempfile::Builder::new()
            .prefix("rootstock-test-ca.")
            .tempdir()
            .expect("creating the test CA's temp dir");

        let ca_key = KeyPair::generate().expect("generating the CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "rootstock test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key).expect("self-signing the CA");
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate().expect("generating the server key");
        let mut params = CertificateParams::new(vec![
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
            "localhost".to_owned(),
        ])
        .expect("server cert params");
        params
            .distinguished_name
            .push(DnType::CommonName, "127.0.0.1");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = params
            .signed_by(&server_key, &issuer)
            .expect("signing the server cert");

        let ca_pem = ca_cert.pem();
        fs::write(dir.path().join("ca.pem"), &ca_pem).expect("writing ca.pem");
        fs::write(dir.path().join("server.pem"), server_cert.pem()).expect("writing server.pem");
        fs::write(dir.path().join("server.key"), server_key.serialize_pem())
            .expect("writing server.key");
        TestCa { dir, ca_pem }
    }

    /// The CA certificate file.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The files for [`RegistryOptions::tls`].
    pub fn tls_files(&self) -> TlsFiles {
        TlsFiles {
            cert: self.dir.path().join("server.pem"),
            key: self.dir.path().join("server.key"),
            ca: self.ca_path(),
        }
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

/// One line of the registry's access log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedRequest {
    /// `GET`, `HEAD`, `PUT`…
    pub method: String,
    /// The request URI: path and query (`/v2/busybox/blobs/sha256:…`).
    pub path: String,
    /// The response status.
    pub status: u16,
    /// The client's `User-Agent`.
    pub user_agent: String,
}

/// A manifest as the registry serves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchedManifest {
    /// The body.
    pub bytes: Vec<u8>,
    /// The `Docker-Content-Digest` header.
    pub digest: String,
    /// The `Content-Type` header.
    pub content_type: String,
}

/// A running private registry. Dropping it kills the registry and removes its storage.
pub struct Registry {
    child: Option<Child>,
    // Dropped after `child` is killed (see `Drop`), so the registry never writes into a
    // removed dir.
    dir: TempDir,
    port: u16,
    scheme: &'static str,
    options: RegistryOptions,
    client: reqwest::Client,
    syncs: AtomicU64,
    /// Token auth: the harness's tokens by repository name (`""` for `/v2/` itself).
    tokens: Mutex<HashMap<String, String>>,
}

/// Every manifest and index type the fixtures write, for `Accept`.
const MANIFEST_ACCEPT: [&str; 4] = [
    crate::fixtures::MEDIA_OCI_MANIFEST,
    crate::fixtures::MEDIA_OCI_INDEX,
    crate::fixtures::MEDIA_DOCKER_MANIFEST,
    crate::fixtures::MEDIA_DOCKER_LIST,
];

/// The User-Agent of the harness's own requests, so tests can tell them from the daemon's.
pub const HARNESS_USER_AGENT: &str = "rootstock-test-harness";

/// Marks the log-sync requests, which [`Registry::requests`] leaves out.
const SYNC_QUERY: &str = "rootstock-harness-sync=";

impl Registry {
    /// Starts a plain HTTP registry without auth.
    pub async fn start() -> Self {
        Self::start_with(RegistryOptions::default()).await
    }

    /// Starts a registry with `options`; panics (with the registry's log) if it does not
    /// answer within 15 s.
    ///
    /// The registry gets `PR_SET_PDEATHSIG` = SIGKILL, which the kernel ties to the *thread*
    /// that spawned it: start one per test, inside the test. A registry shared through a
    /// `static` would die when the test thread that happened to start it ends.
    pub async fn start_with(options: RegistryOptions) -> Self {
        assert!(
            Path::new(REGISTRY_BIN).exists(),
            "{REGISTRY_BIN} is missing: `apt-get install -y docker-registry`"
        );
        let dir = tempfile::Builder::new()
            .prefix("rootstock-registry.")
            .tempdir()
            .expect("creating the registry's temp dir");
        match &options.storage_dir {
            Some(storage) => fs::create_dir_all(storage),
            None => fs::create_dir(dir.path().join("storage")),
        }
        .expect("creating the storage dir");
        assert!(
            options.basic_auth.is_none() || options.token_auth.is_none(),
            "RegistryOptions: basic_auth and token_auth exclude each other"
        );
        if let Some(token) = &options.token_auth {
            fs::write(dir.path().join("token-roots.pem"), &token.root_cert_pem)
                .expect("writing the token rootcertbundle");
        }
        if let Some((user, password)) = &options.basic_auth {
            let hash = bcrypt::hash(password, 4).expect("bcrypt-hashing the test password");
            fs::write(dir.path().join("htpasswd"), format!("{user}:{hash}\n"))
                .expect("writing htpasswd");
        }
        let client = build_client(&options);
        let scheme = if options.tls.is_some() {
            "https"
        } else {
            "http"
        };

        let mut last_log = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            let config = config_yaml(dir.path(), port, &options);
            let mut child = spawn(dir.path(), &config);
            let url = format!("{scheme}://127.0.0.1:{port}/v2/");
            match wait_ready(&client, &url, &mut child, dir.path()).await {
                Ok(()) => {
                    return Registry {
                        child: Some(child),
                        dir,
                        port,
                        scheme,
                        options,
                        client,
                        syncs: AtomicU64::new(0),
                        tokens: Mutex::new(HashMap::new()),
                    };
                }
                Err(log) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    assert!(
                        log.contains("address already in use"),
                        "docker-registry on 127.0.0.1:{port} did not come up; \
                         config:\n{config}\nlog:\n{log}"
                    );
                    last_log = log;
                    let _ = fs::remove_file(dir.path().join("registry.log"));
                }
            }
        }
        panic!(
            "docker-registry: no free port after {PORT_ATTEMPTS} attempts; last log:\n{last_log}"
        )
    }

    /// `"127.0.0.1:PORT"`: the registry part of an image reference (`{host}/busybox:latest`).
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http(s)://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}://127.0.0.1:{}{path}", self.scheme, self.port)
    }

    /// `{host}/{repo}:{tag}`, an image reference a CRI client can pull.
    pub fn image_ref(&self, repo: &str, tag: &str) -> String {
        format!("{}/{repo}:{tag}", self.host())
    }

    /// `{host}/{repo}@{digest}`.
    pub fn digest_ref(&self, repo: &str, digest: &str) -> String {
        format!("{}/{repo}@{digest}", self.host())
    }

    /// The registry's `rootdirectory` (its filesystem storage).
    pub fn storage_dir(&self) -> PathBuf {
        self.options
            .storage_dir
            .clone()
            .unwrap_or_else(|| self.dir.path().join("storage"))
    }

    /// Where the registry keeps the blob `digest` (`sha256:…`): overwrite it to serve a
    /// corrupted blob under the right digest (the registry does not re-verify on reads).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest
            .strip_prefix("sha256:")
            .unwrap_or_else(|| panic!("{digest}: not a sha256 digest"));
        self.storage_dir()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// The generated config file (for the log of a failing test).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.yml")
    }

    /// The HTTP client the harness uses: it trusts the TLS CA, if any, and nothing else.
    /// It sends no credentials by itself; see [`Registry::request`].
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// A request to `path` with the harness's credentials: Basic if the registry has Basic
    /// auth; with token auth, the Bearer token the harness already holds for the path's
    /// repository, if any (send it with [`Registry::send`] to get one on a challenge).
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.authorize(self.client.request(method, self.url(path)), path)
    }

    /// Adds the harness's credentials for `path` (see [`Registry::request`]).
    fn authorize(&self, req: reqwest::RequestBuilder, path: &str) -> reqwest::RequestBuilder {
        if let Some((user, password)) = &self.options.basic_auth {
            return req.basic_auth(user, Some(password));
        }
        if self.options.token_auth.is_some() {
            let repo = repository_of(path).unwrap_or_default();
            if let Some(token) = self.tokens.lock().unwrap().get(repo) {
                return req.bearer_auth(token);
            }
        }
        req
    }

    /// Sends `req` (built by [`Registry::request`] or on [`Registry::client`]). With token
    /// auth, a 401 carrying a Bearer challenge makes the harness fetch a token from the
    /// challenge's realm with its credentials — asking for `pull,push,delete` on each
    /// challenged repository — and send the request once more with it. Any other response,
    /// or a failed token fetch, is returned as is. Panics if the request fails at the HTTP
    /// level (or, with token auth, has a streaming body that cannot be resent).
    pub async fn send(&self, req: reqwest::RequestBuilder) -> reqwest::Response {
        let (client, request) = req.build_split();
        let request = request.expect("building the request");
        let Some(token_auth) = &self.options.token_auth else {
            return client.execute(request).await.expect("sending the request");
        };
        let mut retry = request
            .try_clone()
            .expect("with token auth, request bodies must be resendable (not streams)");
        let res = client.execute(request).await.expect("sending the request");
        if res.status() != StatusCode::UNAUTHORIZED {
            return res;
        }
        let Some(challenge) = res
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_bearer_challenge)
        else {
            return res;
        };
        let Some(token) = self.fetch_token(token_auth, &challenge).await else {
            return res;
        };
        {
            let mut tokens = self.tokens.lock().unwrap();
            if challenge.repositories.is_empty() {
                tokens.insert(String::new(), token.clone());
            }
            for repo in &challenge.repositories {
                tokens.insert(repo.clone(), token.clone());
            }
        }
        retry.headers_mut().insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).expect("a JWT is a header value"),
        );
        client.execute(retry).await.expect("resending the request")
    }

    /// Fetches a token for `challenge` as the harness; `None` if the realm refuses.
    async fn fetch_token(&self, auth: &TokenAuth, challenge: &BearerChallenge) -> Option<String> {
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(service) = &challenge.service {
            query.push(("service", service.clone()));
        }
        for scope in &challenge.scopes {
            // The harness is the registry's administrator: ask for everything on a repository
            // so one token serves HEAD, upload and PUT alike.
            let scope = match crate::token::Access::parse_scope(scope) {
                Some(a) if a.resource_type == "repository" => {
                    format!("repository:{}:pull,push,delete", a.name)
                }
                _ => scope.clone(),
            };
            query.push(("scope", scope));
        }
        let realm = challenge.realm.as_deref().unwrap_or(&auth.realm);
        let query: Vec<String> = query
            .iter()
            .map(|(name, value)| format!("{name}={}", url_encode(value)))
            .collect();
        let separator = if realm.contains('?') { '&' } else { '?' };
        let url = format!("{realm}{separator}{}", query.join("&"));
        let mut req = self.client.get(url);
        if let Some((user, password)) = &auth.credentials {
            req = req.basic_auth(user, Some(password));
        }
        let res = req.send().await.expect("fetching a token from the realm");
        if res.status() != StatusCode::OK {
            return None;
        }
        let body: serde_json::Value = res.json().await.expect("the token response is JSON");
        body.get("token")
            .or_else(|| body.get("access_token"))
            .and_then(|t| t.as_str())
            .map(str::to_owned)
    }

    /// The registry's stdout and stderr so far (logrus lines and the access log).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Every request the registry has logged, oldest first.
    ///
    /// The registry writes an access-log line just after it sends the response, so a client
    /// can see the response before the line exists. This first makes a request of its own and
    /// waits until that one is logged: every request that completed before the call is then
    /// in the log too.
    pub async fn requests(&self) -> Vec<LoggedRequest> {
        let n = self.syncs.fetch_add(1, Ordering::Relaxed);
        let marker = format!("{SYNC_QUERY}{n}");
        self.client
            .get(self.url(&format!("/v2/?{marker}")))
            .send()
            .await
            .expect("log-sync request to the registry");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = self.log();
            if log.contains(&marker) {
                return log
                    .lines()
                    .filter_map(parse_access_line)
                    .filter(|r| !r.path.contains(SYNC_QUERY))
                    .collect();
            }
            assert!(
                Instant::now() < deadline,
                "the registry did not log request {marker} within 5 s; log:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// How many logged requests had `method` and a path containing `path_contains`
    /// (e.g. `("GET", "/blobs/sha256:ab12…")` counts fetches of one blob, 200s, 206s and
    /// errors alike). See [`Registry::requests`].
    pub async fn count_requests(&self, method: &str, path_contains: &str) -> usize {
        self.requests()
            .await
            .iter()
            .filter(|r| r.method == method && r.path.contains(path_contains))
            .count()
    }

    /// Uploads `bytes` as a blob of `repo` unless the registry has it, and returns its digest.
    /// Uses a monolithic upload: `POST …/blobs/uploads/` then `PUT <Location>?digest=…`.
    pub async fn push_blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = sha256_digest(bytes);
        let head = self
            .send(self.request(Method::HEAD, &format!("/v2/{repo}/blobs/{digest}")))
            .await;
        if head.status() == StatusCode::OK {
            return digest;
        }
        let post = self
            .send(self.request(Method::POST, &format!("/v2/{repo}/blobs/uploads/")))
            .await;
        assert_eq!(
            post.status(),
            StatusCode::ACCEPTED,
            "starting an upload to {repo}: {}",
            post.text().await.unwrap_or_default()
        );
        let location = post
            .headers()
            .get("location")
            .expect("upload response has a Location")
            .to_str()
            .expect("Location is ASCII")
            .to_owned();
        // Location may be absolute or a path, and already carries the upload state in a query.
        let mut url = if location.starts_with('/') {
            self.url(&location)
        } else {
            location
        };
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str("digest=");
        url.push_str(&digest);
        let put = self.client.put(url);
        let put = self
            .authorize(put, &format!("/v2/{repo}/blobs/uploads/"))
            .header("content-type", "application/octet-stream")
            .body(bytes.to_vec());
        let put = self.send(put).await;
        assert_eq!(
            put.status(),
            StatusCode::CREATED,
            "uploading blob {digest} to {repo}: {}",
            put.text().await.unwrap_or_default()
        );
        digest
    }

    /// Puts a manifest (or index) under `reference` (a tag or its digest) with `media_type`
    /// as its Content-Type, and returns the digest the registry reports.
    pub async fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> String {
        let res = self
            .send(
                self.request(Method::PUT, &format!("/v2/{repo}/manifests/{reference}"))
                    .header("content-type", media_type)
                    .body(bytes.to_vec()),
            )
            .await;
        let status = res.status();
        let digest = res
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        assert_eq!(
            status,
            StatusCode::CREATED,
            "pushing manifest {repo}:{reference}: {}",
            res.text().await.unwrap_or_default()
        );
        digest.expect("the registry returned no Docker-Content-Digest")
    }

    /// Pushes the image's blobs and manifest as `repo:tag` and returns the manifest digest.
    pub async fn push(&self, repo: &str, tag: &str, image: &Image) -> String {
        self.push_image_blobs(repo, image).await;
        let digest = self
            .push_manifest(repo, tag, &image.media_type, &image.manifest)
            .await;
        assert_eq!(
            digest, image.manifest_digest,
            "the registry's digest for {repo}:{tag} differs from the manifest's sha256"
        );
        digest
    }

    /// Pushes the image like [`Registry::push`], but `streams` blobs at a time (an image of
    /// a thousand small layers is mostly round trips).
    pub async fn push_concurrently(
        &self,
        repo: &str,
        tag: &str,
        image: &Image,
        streams: usize,
    ) -> String {
        let blobs = image.blobs();
        let next = AtomicUsize::new(0);
        let worker = || async {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((digest, bytes)) = blobs.get(i) else {
                    return;
                };
                let pushed = self.push_blob(repo, bytes).await;
                debug_assert_eq!(&pushed, digest);
            }
        };
        // Workers on one task: the registry (its own process) does the work in parallel.
        let mut workers: Vec<_> = (0..streams.max(1)).map(|_| Box::pin(worker())).collect();
        std::future::poll_fn(|cx| {
            workers.retain_mut(|w| w.as_mut().poll(cx).is_pending());
            if workers.is_empty() {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await;
        let digest = self
            .push_manifest(repo, tag, &image.media_type, &image.manifest)
            .await;
        assert_eq!(
            digest, image.manifest_digest,
            "the registry's digest for {repo}:{tag} differs from the manifest's sha256"
        );
        digest
    }

    /// The digest the registry holds under `repo:reference` (HEAD of the manifest, any
    /// manifest or index type the fixtures write); `None` if it has none.
    pub async fn manifest_digest(&self, repo: &str, reference: &str) -> Option<String> {
        let res = self
            .send(
                self.request(Method::HEAD, &format!("/v2/{repo}/manifests/{reference}"))
                    .header("accept", MANIFEST_ACCEPT.join(", ")),
            )
            .await;
        match res.status() {
            StatusCode::OK => Some(
                res.headers()
                    .get("docker-content-digest")
                    .and_then(|v| v.to_str().ok())
                    .expect("a manifest HEAD answers with Docker-Content-Digest")
                    .to_owned(),
            ),
            StatusCode::NOT_FOUND => None,
            status => panic!("HEAD manifest {repo}:{reference}: {status}"),
        }
    }

    /// Whether the registry holds a manifest under `repo:reference` (tag or digest).
    pub async fn has_manifest(&self, repo: &str, reference: &str) -> bool {
        self.manifest_digest(repo, reference).await.is_some()
    }

    async fn push_image_blobs(&self, repo: &str, image: &Image) {
        for (digest, bytes) in image.blobs() {
            let pushed = self.push_blob(repo, bytes).await;
            debug_assert_eq!(pushed, digest);
        }
    }

    /// Pushes every image of the index (blobs, then manifest by digest), then the index as
    /// `repo:tag`; returns the index digest.
    pub async fn push_index(&self, repo: &str, tag: &str, index: &Index) -> String {
        for image in &index.images {
            self.push_image_blobs(repo, image).await;
            self.push_manifest(
                repo,
                &image.manifest_digest,
                &image.media_type,
                &image.manifest,
            )
            .await;
        }
        let digest = self
            .push_manifest(repo, tag, &index.media_type, &index.manifest)
            .await;
        assert_eq!(
            digest, index.digest,
            "the registry's digest for {repo}:{tag} differs from the index's sha256"
        );
        digest
    }

    /// Fetches the manifest `repo:reference` (tag or digest), accepting every manifest and
    /// index type the fixtures write.
    pub async fn manifest(&self, repo: &str, reference: &str) -> FetchedManifest {
        let accept = MANIFEST_ACCEPT.join(", ");
        let res = self
            .send(
                self.request(Method::GET, &format!("/v2/{repo}/manifests/{reference}"))
                    .header("accept", accept),
            )
            .await;
        assert_eq!(
            res.status(),
            StatusCode::OK,
            "fetching manifest {repo}:{reference}"
        );
        let header = |name: &str| {
            res.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let digest = header("docker-content-digest");
        let content_type = header("content-type");
        let bytes = res.bytes().await.expect("reading manifest body").to_vec();
        FetchedManifest {
            bytes,
            digest,
            content_type,
        }
    }

    /// Fetches the blob `digest` of `repo`.
    pub async fn blob(&self, repo: &str, digest: &str) -> Vec<u8> {
        let res = self
            .send(self.request(Method::GET, &format!("/v2/{repo}/blobs/{digest}")))
            .await;
        assert_eq!(
            res.status(),
            StatusCode::OK,
            "fetching blob {digest} of {repo}"
        );
        res.bytes().await.expect("reading blob body").to_vec()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // `dir` (a TempDir) is removed after this, with the registry gone.
    }
}

/// The registry's config for `port`, storage under `dir`.
fn config_yaml(dir: &Path, port: u16, options: &RegistryOptions) -> String {
    // The access log is on by default; say so, since `Registry::requests` depends on it.
    // Upload purging is off so no background job touches the storage while a test looks at it.
    // A fixed http.secret silences the warning about a random one.
    let mut yaml = format!(
        "version: 0.1\n\
         log:\n  level: info\n  accesslog:\n    disabled: false\n\
         storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
         \x20 maintenance:\n    uploadpurging:\n      enabled: false\n\
         http:\n  addr: 127.0.0.1:{port}\n  secret: rootstock-test-secret\n",
        storage = options
            .storage_dir
            .clone()
            .unwrap_or_else(|| dir.join("storage"))
            .display(),
    );
    if let Some(tls) = &options.tls {
        yaml.push_str(&format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            tls.cert.display(),
            tls.key.display()
        ));
    }
    if options.basic_auth.is_some() {
        yaml.push_str(&format!(
            "auth:\n  htpasswd:\n    realm: rootstock-test\n    path: {}\n",
            dir.join("htpasswd").display()
        ));
    }
    if let Some(token) = &options.token_auth {
        // JSON strings are valid YAML scalars: the realm's `:` and `/` need quoting.
        let q = |s: &str| serde_json::Value::from(s).to_string();
        yaml.push_str(&format!(
            "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    \
             rootcertbundle: {}\n",
            q(&token.realm),
            q(&token.service),
            q(&token.issuer),
            q(&dir.join("token-roots.pem").display().to_string()),
        ));
    }
    yaml.push_str(&options.extra_yaml);
    yaml
}

/// Writes `config` into `dir` and starts the registry on it, its output in `dir/registry.log`.
fn spawn(dir: &Path, config: &str) -> Child {
    let config_path = dir.join("config.yml");
    fs::write(&config_path, config).expect("writing the registry config");
    // One file for both streams, opened in append mode so the access log (stdout) and
    // logrus (stderr) lines never overwrite each other.
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("registry.log"))
        .expect("creating the registry log");
    let mut cmd = Command::new(REGISTRY_BIN);
    cmd.arg("serve")
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup of the log file"))
        .stderr(log)
        // The environment can override any config key (REGISTRY_HTTP_ADDR…): start clean.
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2), which
    // is async-signal-safe; it touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            // The kernel kills the registry when the thread that spawned it dies, so a test
            // process killed by SIGKILL (or a harness timeout) leaves no registry behind.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().expect("spawning docker-registry")
}

/// Waits until the registry logs that it bound its port and `url` (`/v2/`) answers with any
/// status (401 means up, with auth). Only the "listening on" line proves the answer comes from
/// *this* registry: when a parallel test's registry grabbed the port first, that one would
/// answer while ours is about to exit with "address already in use". On failure returns why,
/// with the log.
async fn wait_ready(
    client: &reqwest::Client,
    url: &str,
    child: &mut Child,
    dir: &Path,
) -> Result<(), String> {
    let log = || fs::read_to_string(dir.join("registry.log")).unwrap_or_default();
    let deadline = Instant::now() + START_DEADLINE;
    let mut last_error = String::from("never bound its port");
    loop {
        if log().contains("msg=\"listening on ") {
            match client.get(url).timeout(Duration::from_secs(2)).send().await {
                Ok(_) => return Ok(()),
                Err(e) => last_error = format!("{e:?}"),
            }
        }
        if let Some(status) = child.try_wait().expect("polling docker-registry") {
            return Err(format!("(exited: {status})\n{}", log()));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "(not ready after {START_DEADLINE:?}; last error: {last_error})\n{}",
                log()
            ));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A client that trusts only the test CA when there is one (a registry with a self-signed
/// chain must fail for anything else), with short timeouts so a hung registry fails the test.
fn build_client(options: &RegistryOptions) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .user_agent(HARNESS_USER_AGENT)
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60))
        // No proxy from the environment may stand between a test and loopback.
        .no_proxy();
    if let Some(tls) = &options.tls {
        let pem = fs::read(&tls.ca)
            .unwrap_or_else(|e| panic!("reading the CA {}: {e}", tls.ca.display()));
        let ca = reqwest::Certificate::from_pem(&pem).expect("parsing the CA PEM");
        builder = builder.tls_certs_only([ca]);
    }
    builder.build().expect("building the HTTP client")
}

/// A port free on 127.0.0.1 right now. Another process may take it before the registry binds
/// it; [`Registry::start_with`] retries then.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0 to find a free port")
        .port()
}

/// The repository a Distribution API path names: `/v2/<name>/{manifests,blobs,tags}/…`.
fn repository_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v2/")?;
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    ["/manifests/", "/blobs/", "/tags/"]
        .iter()
        .filter_map(|marker| rest.rfind(marker).map(|i| &rest[..i]))
        .max_by_key(|name| name.len())
        .filter(|name| !name.is_empty())
}

/// Percent-encodes a query value (everything but RFC 3986 unreserved characters).
fn url_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The parameters of a `WWW-Authenticate: Bearer …` challenge.
#[derive(Debug, Default, PartialEq, Eq)]
struct BearerChallenge {
    realm: Option<String>,
    service: Option<String>,
    /// The `scope` parameter split at spaces (`repository:foo:pull,push`).
    scopes: Vec<String>,
    /// The repositories the scopes name.
    repositories: Vec<String>,
}

/// Parses `Bearer realm="…",service="…",scope="…"[,error="…"]`; `None` for other schemes.
fn parse_bearer_challenge(header: &str) -> Option<BearerChallenge> {
    let (scheme, mut rest) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut challenge = BearerChallenge::default();
    loop {
        rest = rest.trim_start_matches([' ', ',']);
        let Some((name, after)) = rest.split_once('=') else {
            break;
        };
        let (value, after) = if let Some(quoted) = after.strip_prefix('"') {
            // A quoted string; `\x` escapes `x`.
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, e)) = chars.next() {
                            value.push(e);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].to_owned(), &after[end..])
        };
        match name.trim().to_ascii_lowercase().as_str() {
            "realm" => challenge.realm = Some(value),
            "service" => challenge.service = Some(value),
            "scope" => challenge.scopes.extend(
                value
                    .split(' ')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
            ),
            _ => {}
        }
        rest = after;
    }
    challenge.repositories = challenge
        .scopes
        .iter()
        .filter_map(|s| crate::token::Access::parse_scope(s))
        .filter(|a| a.resource_type == "repository")
        .map(|a| a.name)
        .collect();
    Some(challenge)
}

/// Parses an access-log line (Apache combined format, as gorilla/handlers writes it):
/// `127.0.0.1 - - [23/Nov/2026:20:02:53 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "curl/7.88.1"`.
/// The registry's logrus lines (`time="…" level=…`) give `None`.
fn parse_access_line(line: &str) -> Option<LoggedRequest> {
    if line.starts_with("time=") {
        return None;
    }
    let (_, rest) = line.split_once("] \"")?;
    let (request, rest) = rest.split_once('"')?;
    let mut parts = request.split(' ');
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let status = rest.trim_start().split(' ').next()?.parse().ok()?;
    // The user agent is the last quoted field.
    let user_agent = rest
        .trim_end()
        .strip_suffix('"')
        .and_then(|r| r.rsplit_once('"'))
        .map(|(_, ua)| ua.to_owned())
        .unwrap_or_default();
    Some(LoggedRequest {
        method,
        path,
        status,
        user_agent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_log_lines_parse_and_logrus_lines_do_not() {
        let line = r#"127.0.0.1 - - [23/Nov/2026:20:02:53 +0000] "HEAD /v2/foo/blobs/sha256:00 HTTP/1.1" 404 157 "" "curl/7.88.1""#;
        assert_eq!(
            parse_access_line(line),
            Some(LoggedRequest {
                method: "HEAD".into(),
                path: "/v2/foo/blobs/sha256:00".into(),
                status: 404,
                user_agent: "curl/7.88.1".into(),
            })
        );
        let logrus = r#"time="2026-11-23T20:02:53Z" level=info msg="response completed" http.request.uri=/v2/"#;
        assert_eq!(parse_access_line(logrus), None);
    }

    #[test]
    fn bearer_challenges_parse() {
        let c = parse_bearer_challenge(
            r#"Bearer realm="http://127.0.0.1:9/token",service="reg",scope="repository:a/b:push,pull repository:c:pull",error="insufficient_scope""#,
        )
        .unwrap();
        assert_eq!(c.realm.as_deref(), Some("http://127.0.0.1:9/token"));
        assert_eq!(c.service.as_deref(), Some("reg"));
        assert_eq!(c.scopes, ["repository:a/b:push,pull", "repository:c:pull"]);
        assert_eq!(c.repositories, ["a/b", "c"]);
        assert_eq!(parse_bearer_challenge(r#"Basic realm="x""#), None);
        let bare = parse_bearer_challenge(r#"Bearer realm="r",service="s""#).unwrap();
        assert!(bare.scopes.is_empty() && bare.repositories.is_empty());
    }

    #[test]
    fn repositories_of_api_paths() {
        assert_eq!(
            repository_of("/v2/busybox/manifests/latest"),
            Some("busybox")
        );
        assert_eq!(repository_of("/v2/a/b/blobs/sha256:00"), Some("a/b"));
        assert_eq!(repository_of("/v2/a/blobs/uploads/"), Some("a"));
        assert_eq!(repository_of("/v2/a/tags/list?n=1"), Some("a"));
        assert_eq!(repository_of("/v2/"), None);
    }
}
