//! A token issuer for docker-registry's token auth, on 127.0.0.1.
//!
//! A registry configured with `auth: token:` ([`crate::registry::RegistryOptions::token_auth`])
//! answers an unauthenticated request with 401 and
//! `WWW-Authenticate: Bearer realm="…",service="…",scope="repository:<name>:pull"`. The client
//! then fetches a JWT from the realm — `GET /token?service=…&scope=…` with Basic credentials,
//! or anonymously — and retries with `Authorization: Bearer <token>`. [`TokenServer`] is that
//! realm: it checks the credentials against its users, signs an ES256 JWT (header `x5c` = its
//! self-signed certificate, which the registry trusts through `rootcertbundle`), and records
//! every request so a test can assert that a client fetched a token.
//!
//! Policy, deliberately simple: a known user with the right password gets every action it asks
//! for; an anonymous request gets a token with no access (the registry then answers 401
//! `insufficient_scope`); a wrong user or password gets 401. The OAuth2 form is served too:
//! `POST /token` with `grant_type=password` (same policy; `access_type=offline` adds a
//! `refresh_token` to the answer, as does `offline_token=true` on a `GET`) or
//! `grant_type=refresh_token` with a refresh token this server issued
//! ([`TokenServer::refresh_token`]); an unknown refresh token gets 401.
//!
//! The server runs on its own OS threads with blocking I/O, so it keeps answering whatever the
//! test does on its async runtime (even blocking calls on a current-thread runtime).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod serve;

use std::collections::HashMap;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::Serialize;
use serde_json::{Value, json};

/// The `service` the registry names in its challenge and expects as the tokens' `aud`.
pub const SERVICE: &str = "rootstock-test-registry";
/// The tokens' `iss`, which the registry must be configured to trust.
pub const ISSUER: &str = "rootstock-test-token-issuer";
/// How long an issued token is valid (`expires_in`), in seconds.
pub const TOKEN_LIFETIME_SECS: u64 = 300;

/// One entry of a token's `access` claim: `actions` on the resource `type`/`name`
/// (`repository`/`busybox`, `["pull"]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Access {
    /// `repository`, `registry`…
    #[serde(rename = "type")]
    pub resource_type: String,
    /// The repository name (`busybox`, `library/alpine`) or `catalog`.
    pub name: String,
    /// `pull`, `push`, `delete`, `*`.
    pub actions: Vec<String>,
}

impl Access {
    /// Parses a scope `type:name:action[,action…]` (the name may contain `:`). `None` if the
    /// scope has fewer than three parts.
    pub fn parse_scope(scope: &str) -> Option<Access> {
        let (resource_type, rest) = scope.split_once(':')?;
        let (name, actions) = rest.rsplit_once(':')?;
        if resource_type.is_empty() || name.is_empty() {
            return None;
        }
        Some(Access {
            resource_type: resource_type.to_owned(),
            name: name.to_owned(),
            actions: actions
                .split(',')
                .filter(|a| !a.is_empty())
                .map(str::to_owned)
                .collect(),
        })
    }
}

/// One request the token server answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRequest {
    /// `GET` or `POST`.
    pub method: String,
    /// The request target, path and query.
    pub target: String,
    /// The user name presented (Basic auth or the OAuth2 form), right or wrong, or the user
    /// a valid refresh token belongs to; `None` if the request was anonymous (or its refresh
    /// token unknown).
    pub user: Option<String>,
    /// The OAuth2 `grant_type` of a `POST` (`password`, `refresh_token`); `None` for `GET`.
    pub grant_type: Option<String>,
    /// The `service` parameter.
    pub service: Option<String>,
    /// The `scope` parameters, in order (a space-separated scope is split).
    pub scopes: Vec<String>,
    /// The response status: 200 with a token, 401 for bad credentials, 400/404/405 otherwise.
    pub status: u16,
    /// The client's `User-Agent` (the harness sends
    /// [`crate::registry::HARNESS_USER_AGENT`]).
    pub user_agent: String,
    /// What the issued token grants (empty for anonymous tokens and errors).
    pub granted: Vec<Access>,
}

/// What the server threads share.
struct Shared {
    key: EcdsaKeyPair,
    /// `x5c[0]`: base64 (standard, padded) of the certificate's DER.
    x5c: String,
    users: Vec<(String, String)>,
    requests: Mutex<Vec<TokenRequest>>,
    /// Refresh token → user.
    refresh_tokens: Mutex<HashMap<String, String>>,
    stop: AtomicBool,
    jti: AtomicU64,
}

/// A running token issuer. Dropping it stops the server (connections being served finish).
pub struct TokenServer {
    port: u16,
    cert_pem: String,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl TokenServer {
    /// Starts a token server on a free port of 127.0.0.1 that knows `users`
    /// (`(name, password)`); the first one is what the harness's own requests use
    /// ([`TokenServer::harness_credentials`]).
    pub async fn start(users: &[(&str, &str)]) -> Self {
        let (cert_pem, cert_der, key) = signing_identity();
        // Bound before anyone learns the port, so no other process can take it in between.
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the token server");
        let port = listener.local_addr().expect("token server address").port();
        let shared = Arc::new(Shared {
            key,
            x5c: STANDARD.encode(cert_der),
            users: users
                .iter()
                .map(|(u, p)| ((*u).to_owned(), (*p).to_owned()))
                .collect(),
            requests: Mutex::new(Vec::new()),
            refresh_tokens: Mutex::new(HashMap::new()),
            stop: AtomicBool::new(false),
            jti: AtomicU64::new(0),
        });
        let accept_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("token-server-{port}"))
            .spawn(move || serve::accept_loop(&listener, &accept_shared))
            .expect("spawning the token server thread");
        TokenServer {
            port,
            cert_pem,
            shared,
            thread: Some(thread),
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT/token`, the registry's `realm`.
    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    /// The registry's `service` ([`SERVICE`]).
    pub fn service(&self) -> &str {
        SERVICE
    }

    /// The registry's `issuer` ([`ISSUER`]).
    pub fn issuer(&self) -> &str {
        ISSUER
    }

    /// The PEM certificate the tokens are signed with: the registry's `rootcertbundle`.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The first user, which the harness's own registry requests authenticate as.
    pub fn harness_credentials(&self) -> Option<(String, String)> {
        self.shared.users.first().cloned()
    }

    /// Every request served so far, oldest first. A request is recorded before its response
    /// is written, so once a client has its answer the request is here.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// The requests whose `User-Agent` is not `user_agent` (e.g. not the harness's).
    pub fn requests_not_from(&self, user_agent: &str) -> Vec<TokenRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.user_agent != user_agent)
            .collect()
    }

    /// A refresh token for `user` (a known user), as `docker login` would have stored it for
    /// a registry with OAuth: what a CRI `AuthConfig.identity_token` carries. The server
    /// exchanges it (`POST` with `grant_type=refresh_token`) for access tokens granting
    /// whatever `user` asks for.
    pub fn refresh_token(&self, user: &str) -> String {
        assert!(
            self.shared.users.iter().any(|(u, _)| u == user),
            "{user} is not a user of this token server"
        );
        self.shared.refresh_token(user)
    }

    /// Signs a token for `subject` granting `access`, `aud` = [`SERVICE`], valid from now for
    /// [`TOKEN_LIFETIME_SECS`] — what the server would issue, without a request.
    pub fn issue(&self, subject: &str, access: &[Access]) -> String {
        self.shared.sign(subject, SERVICE, access, now_secs())
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept(); join only if that worked, so a drop never hangs.
        let woken = TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], self.port)),
            Duration::from_secs(2),
        )
        .is_ok();
        if let Some(thread) = self.thread.take()
            && woken
        {
            let _ = thread.join();
        }
    }
}

/// Decodes the claims of a JWT without verifying it (for assertions on issued tokens).
pub fn claims(token: &str) -> Value {
    let part = token.split('.').nth(1).expect("a JWT has three parts");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("claims are base64url"))
        .expect("claims are JSON")
}

/// Decodes the header of a JWT.
pub fn header(token: &str) -> Value {
    let part = token.split('.').next().expect("a JWT has three parts");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("header is base64url"))
        .expect("header is JSON")
}

/// A fresh P-256 key and a self-signed certificate for it: (PEM, DER, signing key).
///
/// distribution verifies `x5c[0]` with Go's `x509.Certificate.Verify` against the
/// `rootcertbundle`; a certificate that is itself in the roots verifies as a one-element
/// chain, so no separate CA is needed (the `token_auth` tests prove it against the real
/// registry).
fn signing_identity() -> (String, Vec<u8>, EcdsaKeyPair) {
    use rcgen::{CertificateParams, DnType, KeyPair, KeyUsagePurpose};
    let key = KeyPair::generate().expect("generating the token signing key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("token cert params");
    params
        .distinguished_name
        .push(DnType::CommonName, "rootstock test token issuer");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = params
        .self_signed(&key)
        .expect("self-signing the token cert");
    // rcgen's default key is ECDSA P-256; JWS ES256 wants the fixed-size r||s signature,
    // which aws-lc-rs makes from the same PKCS#8 key.
    let signer = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key.serialize_der())
        .expect("loading the token key into aws-lc-rs");
    (cert.pem(), cert.der().to_vec(), signer)
}

impl Shared {
    /// A new opaque refresh token for `user`.
    fn refresh_token(&self, user: &str) -> String {
        let n = self.jti.fetch_add(1, Ordering::Relaxed);
        let mut random = [0u8; 16];
        aws_lc_rs::rand::fill(&mut random).expect("random bytes");
        let token = format!("rootstock-refresh-{n}-{}", URL_SAFE_NO_PAD.encode(random));
        self.refresh_tokens
            .lock()
            .unwrap()
            .insert(token.clone(), user.to_owned());
        token
    }

    fn sign(&self, subject: &str, audience: &str, access: &[Access], now: u64) -> String {
        let header = json!({"alg": "ES256", "typ": "JWT", "x5c": [self.x5c]});
        let jti = format!(
            "rootstock-{now}-{}",
            self.jti.fetch_add(1, Ordering::Relaxed)
        );
        let claims = json!({
            "iss": ISSUER,
            "sub": subject,
            "aud": audience,
            "exp": now + TOKEN_LIFETIME_SECS,
            "nbf": now,
            "iat": now,
            "jti": jti,
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .expect("signing the token");
        format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        )
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
}

/// Seconds since the epoch as RFC 3339 UTC (`2026-11-23T20:25:00Z`).
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_465_500), "2026-11-23T20:25:00Z");
    }
}
