//! Shared by the imagestore tests: a store config for the plain-HTTP test registry, rendered
//! trees as the fidelity tests compare them (`tree`), and a small HTTP front for a real
//! `docker-registry`, for what the registry cannot do itself: token auth (a Bearer challenge
//! on `/v2/`, tokens at `/token`: GET with Basic credentials, POST with
//! `grant_type=refresh_token` for identity tokens) and injected failures (503s, connections
//! cut mid-blob). Authorised (or, without token auth, all) `/v2/` requests are
//! forwarded to the registry.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // shared by several test files

pub mod tree;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use rootstock_imagestore::{ImageStore, ImagesConfig, RegistryConfig};
use rootstock_testkit::fixtures::busybox_image;
use rootstock_testkit::registry::Registry;

/// A store config that talks plain HTTP to the test registry at `host`.
pub fn insecure(host: &str) -> ImagesConfig {
    let mut config = ImagesConfig::default();
    config.registries.insert(
        host.to_owned(),
        RegistryConfig {
            insecure: true,
            ..Default::default()
        },
    );
    config
}

pub const IDENTITY_TOKEN: &str = "refresh-me";
pub const ACCESS_TOKEN: &str = "access-granted";
pub const USER: &str = "user";
pub const PASSWORD: &str = "pass";

/// What the front does.
#[derive(Default, Clone)]
pub struct FrontOptions {
    /// Require a Bearer token from `/token`.
    pub token_auth: bool,
    /// Answer this many blob requests with 503 before forwarding.
    pub blob_503s: usize,
    /// Cut this many responses of blobs over 4 KiB (layers) after half their body.
    pub blob_cuts: usize,
}

struct State {
    host: String,
    upstream: String,
    options: FrontOptions,
    http: reqwest::Client,
    events: Mutex<Vec<String>>,
    blob_503s: AtomicUsize,
    blob_cuts: AtomicUsize,
}

/// A running front.
pub struct Front {
    /// `127.0.0.1:PORT`.
    pub host: String,
    state: Arc<State>,
}

impl Front {
    /// What the front saw: token requests (`POST /token ok=true`) and forwarded requests
    /// (`GET /v2/…`), plus `503 …` and `cut …` for injected failures.
    pub fn events(&self) -> Vec<String> {
        self.state.events.lock().unwrap().clone()
    }
}

/// busybox pushed as `repo:latest` to a fresh registry, a front with `options` over it, and a
/// store in a temp dir that talks plain HTTP to the front (the registry and the dir live as
/// long as the caller keeps them).
pub async fn store_behind_front(
    repo: &str,
    options: FrontOptions,
) -> (Registry, Front, ImageStore, tempfile::TempDir) {
    let registry = Registry::start().await;
    registry
        .push(repo, "latest", &busybox_image().build())
        .await;
    let front = start_front(registry.url(""), options).await;
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&dir.path().join("store"), &insecure(&front.host)).unwrap();
    (registry, front, store, dir)
}

pub async fn start_front(upstream: String, options: FrontOptions) -> Front {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let state = Arc::new(State {
        host: host.clone(),
        upstream,
        blob_503s: AtomicUsize::new(options.blob_503s),
        blob_cuts: AtomicUsize::new(options.blob_cuts),
        options,
        http: reqwest::Client::new(),
        events: Mutex::new(Vec::new()),
    });
    let s = state.clone();
    tokio::spawn(async move {
        loop {
            let (conn, _) = listener.accept().await.unwrap();
            let s = s.clone();
            tokio::spawn(async move { handle(conn, &s).await });
        }
    });
    Front { host, state }
}

struct Request {
    method: String,
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

async fn read_request(conn: &mut TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, path) = (first.next()?.to_string(), first.next()?.to_string());
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Request {
        method,
        path,
        headers,
        body,
    })
}

/// Writes a response; with `cut`, only half the body, then closes.
async fn respond(
    conn: &mut TcpStream,
    status: u16,
    headers: &[(&str, String)],
    body: &[u8],
    cut: bool,
) {
    let mut out = format!(
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(if cut { &body[..body.len() / 2] } else { body });
    let _ = conn.write_all(&bytes).await;
    let _ = conn.shutdown().await;
}

fn form(body: &[u8]) -> HashMap<String, String> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.replace("%3A", ":").replace("%2F", "/")))
        .collect()
}

async fn handle(mut conn: TcpStream, s: &State) {
    let Some(req) = read_request(&mut conn).await else {
        return;
    };
    let event = |e: String| s.events.lock().unwrap().push(e);
    let token_json = format!(r#"{{"access_token":"{ACCESS_TOKEN}"}}"#);
    if req.method == "POST" && req.path == "/token" {
        let f = form(&req.body);
        let ok = f.get("grant_type").map(String::as_str) == Some("refresh_token")
            && f.get("refresh_token").map(String::as_str) == Some(IDENTITY_TOKEN)
            && f.get("scope").is_some_and(|s| s.contains(":pull"));
        event(format!("POST /token ok={ok}"));
        let status = if ok { 200 } else { 401 };
        respond(&mut conn, status, &[], token_json.as_bytes(), false).await;
        return;
    }
    if req.method == "GET" && req.path.starts_with("/token") {
        let want = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
        );
        let ok = req.headers.get("authorization") == Some(&want);
        event(format!("GET /token ok={ok}"));
        let status = if ok { 200 } else { 401 };
        respond(&mut conn, status, &[], token_json.as_bytes(), false).await;
        return;
    }
    let authorised = !s.options.token_auth
        || req.headers.get("authorization") == Some(&format!("Bearer {ACCESS_TOKEN}"));
    if !authorised {
        let challenge = format!(r#"Bearer realm="http://{}/token",service="front""#, s.host);
        respond(
            &mut conn,
            401,
            &[("WWW-Authenticate", challenge)],
            b"{}",
            false,
        )
        .await;
        return;
    }
    let is_blob = req.path.contains("/blobs/");
    if is_blob
        && s.blob_503s
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    {
        event(format!("503 {}", req.path));
        respond(&mut conn, 503, &[], b"try later", false).await;
        return;
    }
    event(format!("{} {}", req.method, req.path));
    let mut forward = s.http.get(format!("{}{}", s.upstream, req.path));
    if let Some(accept) = req.headers.get("accept") {
        forward = forward.header("accept", accept);
    }
    let res = forward.send().await.unwrap();
    let status = res.status().as_u16();
    let mut headers = Vec::new();
    for name in ["content-type", "docker-content-digest", "www-authenticate"] {
        if let Some(v) = res.headers().get(name).and_then(|v| v.to_str().ok()) {
            headers.push((name, v.to_string()));
        }
    }
    let body = res.bytes().await.unwrap();
    // Only big blobs (layers, not configs) are cut, to exercise the layer restart.
    let cut = is_blob
        && status == 200
        && body.len() > 4096
        && s.blob_cuts
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
    if cut {
        event(format!("cut {}", req.path));
    }
    respond(&mut conn, status, &headers, &body, cut).await;
}
