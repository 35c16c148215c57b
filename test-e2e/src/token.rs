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

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
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

/// How long a connection may stay silent before the server drops it.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request head (request line and headers) or body the server reads.
const MAX_REQUEST: usize = 64 * 1024;

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
            .spawn(move || accept_loop(&listener, &accept_shared))
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

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let shared = Arc::clone(shared);
        // One thread per connection: a client that connects and says nothing holds only its
        // own thread, for at most IO_TIMEOUT.
        let _ = std::thread::Builder::new()
            .name("token-server-conn".to_owned())
            .spawn(move || {
                let _ = serve_connection(stream, &shared);
            });
    }
}

/// A parsed request: what the handler needs of it.
struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Serves one request on `stream` and closes it (`Connection: close`).
fn serve_connection(stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let (status, body, extra_headers) = match read_request(&mut reader)? {
        Some(request) => handle(&request, shared),
        None => (
            400,
            error_body("UNSUPPORTED", "malformed request"),
            Vec::new(),
        ),
    };
    let mut out = stream;
    let mut response = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n",
        reason(status),
        body.len()
    );
    for (name, value) in extra_headers {
        response.push_str(&format!("{name}: {value}\r\n"));
    }
    response.push_str("\r\n");
    out.write_all(response.as_bytes())?;
    out.write_all(body.as_bytes())?;
    out.flush()?;
    let _ = out.shutdown(Shutdown::Write);
    // Let the client read the response before the socket goes away: drain what it still
    // sends until it closes (bounded by the read timeout).
    let mut sink = [0u8; 1024];
    while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
    Ok(())
}

/// Reads a request head and its `Content-Length` body. `Ok(None)` if it is malformed or
/// too large.
fn read_request(reader: &mut impl BufRead) -> std::io::Result<Option<Request>> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = reader
            .by_ref()
            .take((MAX_REQUEST + 1 - head.len().min(MAX_REQUEST)) as u64)
            .read_until(b'\n', &mut line)?;
        if n == 0 || head.len() + line.len() > MAX_REQUEST {
            return Ok(None);
        }
        let blank = line == b"\r\n" || line == b"\n";
        head.extend_from_slice(&line);
        if blank {
            break;
        }
    }
    let Ok(head) = String::from_utf8(head) else {
        return Ok(None);
    };
    let mut lines = head.lines();
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let (Some(method), Some(target)) = (request_line.next(), request_line.next()) else {
        return Ok(None);
    };
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut request = Request {
        method: method.to_owned(),
        target: target.to_owned(),
        headers,
        body: Vec::new(),
    };
    if let Some(len) = request.header("content-length") {
        let Ok(len) = len.parse::<usize>() else {
            return Ok(None);
        };
        if len > MAX_REQUEST {
            return Ok(None);
        }
        request.body = vec![0; len];
        reader.read_exact(&mut request.body)?;
    }
    Ok(Some(request))
}

/// Who a token request authenticates as.
enum Caller {
    Anonymous,
    User(String),
    /// Wrong credentials or an unknown refresh token.
    Refused,
}

/// Answers `request`: (status, JSON body, extra headers). Records it.
fn handle(request: &Request, shared: &Shared) -> (u16, String, Vec<(String, String)>) {
    let (path, query) = request
        .target
        .split_once('?')
        .unwrap_or((&request.target, ""));
    let mut params = parse_form(query);
    let is_post = request.method == "POST";
    if is_post {
        params.extend(parse_form(&String::from_utf8_lossy(&request.body)));
    }
    let param = |name: &str| {
        params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let service = param("service");
    let scopes: Vec<String> = params
        .iter()
        .filter(|(n, _)| n == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_owned).collect::<Vec<_>>())
        .filter(|s| !s.is_empty())
        .collect();
    let grant_type = if is_post { param("grant_type") } else { None };

    let basic = request
        .header("authorization")
        .and_then(|v| {
            v.strip_prefix("Basic ")
                .or_else(|| v.strip_prefix("basic "))
        })
        .and_then(|b64| STANDARD.decode(b64.trim()).ok())
        .and_then(|raw| String::from_utf8(raw).ok())
        .map(|s| match s.split_once(':') {
            Some((u, p)) => (u.to_owned(), p.to_owned()),
            None => (s, String::new()),
        });
    let check = |(user, password): (String, String)| {
        if shared
            .users
            .iter()
            .any(|(u, p)| *u == user && *p == password)
        {
            (Some(user.clone()), Caller::User(user))
        } else {
            (Some(user), Caller::Refused)
        }
    };
    // (the user name presented, who that is), or an error answer.
    let caller = match (is_post, grant_type.as_deref()) {
        (false, _) => Ok(basic.map_or((None, Caller::Anonymous), check)),
        (true, Some("password")) => {
            let form = param("username").map(|u| (u, param("password").unwrap_or_default()));
            Ok(form.or(basic).map_or((None, Caller::Refused), check))
        }
        (true, Some("refresh_token")) => {
            let known = param("refresh_token")
                .and_then(|t| shared.refresh_tokens.lock().unwrap().get(&t).cloned());
            Ok(match known {
                Some(user) => (Some(user.clone()), Caller::User(user)),
                None => (None, Caller::Refused),
            })
        }
        (true, _) => Err((
            400,
            json!({"error": "unsupported_grant_type"}).to_string(),
            Vec::new(),
        )),
    };
    let wants_refresh_token = param("access_type").as_deref() == Some("offline")
        || param("offline_token").as_deref() == Some("true");

    let mut record = TokenRequest {
        method: request.method.clone(),
        target: request.target.clone(),
        user: caller.as_ref().ok().and_then(|(u, _)| u.clone()),
        grant_type: grant_type.clone(),
        service: service.clone(),
        scopes: scopes.clone(),
        status: 0,
        user_agent: request.header("user-agent").unwrap_or_default().to_owned(),
        granted: Vec::new(),
    };

    let result = if path != "/token" {
        (404, error_body("NOT_FOUND", "no such endpoint"), Vec::new())
    } else if request.method != "GET" && !is_post {
        (
            405,
            error_body("UNSUPPORTED", "method not allowed"),
            vec![("Allow".to_owned(), "GET, POST".to_owned())],
        )
    } else {
        match caller {
            Err(answer) => answer,
            Ok((_, Caller::Refused)) => (
                401,
                error_body("UNAUTHORIZED", "authentication required"),
                vec![(
                    "WWW-Authenticate".to_owned(),
                    "Basic realm=\"rootstock-test-token\"".to_owned(),
                )],
            ),
            Ok((_, caller)) => {
                let (subject, granted) = match caller {
                    // A known user gets what it asked for.
                    Caller::User(user) => (
                        user,
                        scopes
                            .iter()
                            .filter_map(|s| Access::parse_scope(s))
                            .collect(),
                    ),
                    // Anonymous: a valid token that grants nothing.
                    _ => (String::new(), Vec::new()),
                };
                let now = now_secs();
                let audience = service.as_deref().unwrap_or(SERVICE);
                let token = shared.sign(&subject, audience, &granted, now);
                record.granted = granted;
                let mut body = json!({
                    "token": token,
                    "access_token": token,
                    "expires_in": TOKEN_LIFETIME_SECS,
                    "issued_at": rfc3339(now),
                });
                if wants_refresh_token && !subject.is_empty() {
                    body["refresh_token"] = Value::from(shared.refresh_token(&subject));
                }
                (200, body.to_string(), Vec::new())
            }
        }
    };
    record.status = result.0;
    shared.requests.lock().unwrap().push(record);
    result
}

fn error_body(code: &str, message: &str) -> String {
    json!({"errors": [{"code": code, "message": message}]}).to_string()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Unknown",
    }
}

/// `a=1&b=x+y%20z` → `[("a","1"), ("b","x y z")]`.
fn parse_form(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (n, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(n), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(hi), Some(lo)) => {
                        out.push((hi * 16 + lo) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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

    #[test]
    fn forms_and_scopes_parse() {
        assert_eq!(
            parse_form("service=reg&scope=repository%3Afoo%2Fbar%3Apull%2Cpush&scope=a+b&x=%zz"),
            vec![
                ("service".into(), "reg".into()),
                ("scope".into(), "repository:foo/bar:pull,push".into()),
                ("scope".into(), "a b".into()),
                ("x".into(), "%zz".into()),
            ]
        );
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(
            Access::parse_scope("repository:127.0.0.1:5000/foo:pull,push"),
            Some(Access {
                resource_type: "repository".into(),
                name: "127.0.0.1:5000/foo".into(),
                actions: vec!["pull".into(), "push".into()],
            })
        );
        assert_eq!(Access::parse_scope("registry:catalog"), None);
    }
}
