//! A private docker-registry on 127.0.0.1.
//!
//! [`Registry::start`] runs Debian's `/usr/bin/docker-registry` (distribution 2.8) on a free
//! loopback port with filesystem storage in its own temp dir; dropping the value kills it and
//! removes the dir. Options ([`RegistryOptions`]) add htpasswd Basic auth, token auth (with a
//! [`crate::token::TokenServer`]), TLS and raw config.
//! The harness pushes fixture images ([`crate::fixtures`]) over the real Distribution HTTP API
//! and reads the registry's access log so tests can count what a client fetched.
//!
//! Here: starting, stopping and the access log; `options` (how it is set up), `auth` (the
//! harness's own credentials), `push` (pushing and reading images).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod auth;
mod options;
mod push;

use std::collections::HashMap;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub use options::{RegistryOptions, TestCa, TlsFiles, TokenAuth};
pub use push::FetchedManifest;

/// The registry binary (Debian package `docker-registry`).
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// How long the registry may take to answer `GET /v2/` after being spawned.
const START_DEADLINE: Duration = Duration::from_secs(15);

/// How many fresh ports to try when another process takes ours between probe and bind.
const PORT_ATTEMPTS: usize = 5;

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
    // A test process killed by SIGKILL (or a harness timeout) leaves no registry behind.
    crate::process::die_with_parent(&mut cmd);
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
}
