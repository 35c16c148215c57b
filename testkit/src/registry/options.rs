//! How a registry is set up: auth (Basic or token), TLS from a test CA, raw config, kept
//! storage.

use std::fs;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use crate::token::TokenServer;

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
