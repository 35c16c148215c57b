//! The streaming server: an HTTP/1.1 listener (loopback by default, as containerd's; TLS
//! when configured, see `tls`) that serves each URL handed out by Exec once. A URL is `/exec/<token>`: the token is
//! random, single-use and expires; the request it stands for is kept here, so the URL
//! carries nothing a client could alter. Only the upgrade request is HTTP: it is small
//! and fixed in shape, so it is parsed here rather than pulling in an HTTP server.

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rootstock_runtime::Runtime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::StreamingConfig;
use super::attach;
use super::conn::Conn;
use super::exec::{self, ExecSpec, Protocol};
use super::portforward::{self, PortForwardSpec};
use super::session::{Session, Timeouts};
use super::tls::{self, TlsError};
use super::websocket;
use tokio_tungstenite::WebSocketStream;

/// How long a client may take to finish the TLS handshake and send its upgrade request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest upgrade request read (client-go's is well under 1 KiB).
const MAX_REQUEST: usize = 16 * 1024;
/// Exec protocols served, preferred first (kubelet's order).
const EXEC_PROTOCOLS: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
/// Port-forward protocols served.
const PORT_FORWARD_PROTOCOLS: &[&str] = &["portforward.k8s.io"];

/// What a token stands for.
#[derive(Debug, Clone)]
pub enum Pending {
    Exec(ExecSpec),
    /// Attach: an [`ExecSpec`] without a command.
    Attach(ExecSpec),
    PortForward(PortForwardSpec),
}

/// Why the server did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

pub struct StreamingServer {
    base_url: String,
    ttl: Duration,
    timeouts: Timeouts,
    tokens: Mutex<HashMap<String, (Pending, Instant)>>,
    rt: Arc<Runtime>,
}

impl StreamingServer {
    /// Binds `addr` (port 0: a random free port) and serves on a background task.
    /// With `enable_tls` it serves HTTPS only.
    pub async fn start(
        config: &StreamingConfig,
        rt: Arc<Runtime>,
    ) -> Result<Arc<Self>, StartError> {
        let tls = tls::setup(config)?;
        let addr = config.listen_addr();
        let listen_err = |source| StartError::Listen { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(listen_err)?;
        let local = listener.local_addr().map_err(listen_err)?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let server = Arc::new(Self {
            base_url: format!("{scheme}://{local}"),
            ttl: config.token_ttl(),
            timeouts: config.timeouts(),
            tokens: Mutex::default(),
            rt,
        });
        match &tls {
            Some(t) if t.self_signed => tracing::info!(
                sha256 = %t.fingerprint,
                "streaming server on https://{local}, self-signed certificate made at start"
            ),
            Some(t) => {
                tracing::info!(sha256 = %t.fingerprint, "streaming server on https://{local}")
            }
            None => tracing::info!("streaming server on http://{local}"),
        }
        let acceptor = tls.map(|t| t.acceptor);
        tokio::spawn(accept_loop(listener, acceptor, server.clone()));
        Ok(server)
    }

    /// Registers `req` and returns the URL that serves it once, within the TTL.
    pub fn url_for(&self, req: Pending) -> std::io::Result<String> {
        let token = random_token()?;
        let kind = match req {
            Pending::Exec(_) => "exec",
            Pending::Attach(_) => "attach",
            Pending::PortForward(_) => "portforward",
        };
        let now = Instant::now();
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        // Expired tokens go when new ones come: the map stays bounded by the request rate.
        tokens.retain(|_, (_, expires)| *expires > now);
        tokens.insert(token.clone(), (req, now + self.ttl));
        Ok(format!("{}/{kind}/{token}", self.base_url))
    }

    /// Takes the token's request: a token is good for one connection, used or not.
    fn take(&self, token: &str) -> Option<Pending> {
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        let (req, expires) = tokens.remove(token)?;
        (expires > Instant::now()).then_some(req)
    }
}

/// 128 random bits, hex: not guessable within a token's lifetime.
fn random_token() -> std::io::Result<String> {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    server: Arc<StreamingServer>,
) {
    loop {
        match listener.accept().await {
            Ok((conn, _)) => {
                tokio::spawn(serve_tcp(conn, tls.clone(), server.clone()));
            }
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                tracing::warn!("streaming server: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The upgrade request, as much of it as matters.
#[derive(Debug, PartialEq, Eq)]
struct UpgradeRequest {
    method: String,
    path: String,
    /// The query string (after `?`), raw.
    query: String,
    /// Header names lowercase; repeated headers kept in order.
    headers: Vec<(String, String)>,
}

impl UpgradeRequest {
    /// Every value of header `name`, comma-separated lists split.
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
    }
}

/// Parses the request head (up to the blank line).
fn parse_request(head: &str) -> Option<UpgradeRequest> {
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_owned();
    let target = first.next()?;
    if !first.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (path, query) = (path.to_owned(), query.to_owned());
    let headers = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(':')?;
            Some((n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        })
        .collect::<Option<Vec<_>>>()?;
    Some(UpgradeRequest {
        method,
        path,
        query,
        headers,
    })
}

/// Reads the request head; returns it and whatever followed it.
async fn read_head(conn: &mut Conn) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            buf.truncate(end);
            return Some((String::from_utf8(buf).ok()?, rest));
        }
        if buf.len() > MAX_REQUEST {
            return None;
        }
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn respond(conn: &mut Conn, status: &str, body: &str) {
    let msg = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(msg.as_bytes()).await;
    let _ = conn.shutdown().await;
}

/// A TLS record starts with this content type (handshake); plain HTTP with a method.
const TLS_HANDSHAKE: u8 = 0x16;

/// Serves one TCP connection: the TLS handshake (when on), then the upgrade request, all
/// within [`REQUEST_TIMEOUT`] (a client that connects and sends nothing is dropped).
async fn serve_tcp(tcp: TcpStream, tls: Option<TlsAcceptor>, server: Arc<StreamingServer>) {
    let opened = async {
        let mut conn = match tls {
            None => Conn::Plain(tcp),
            Some(acceptor) => {
                let mut first = [0u8; 1];
                if matches!(tcp.peek(&mut first).await, Ok(1) if first[0] != TLS_HANDSHAKE) {
                    // Plain HTTP on the TLS port: say so (as Go's servers do), not a TLS alert.
                    let mut plain = Conn::Plain(tcp);
                    let body = "client sent an HTTP request to an HTTPS server\n";
                    respond(&mut plain, "400 Bad Request", body).await;
                    return None;
                }
                match acceptor.accept(tcp).await {
                    Ok(s) => Conn::Tls(Box::new(s)),
                    Err(e) => {
                        tracing::debug!("streaming server: TLS handshake: {e}");
                        return None;
                    }
                }
            }
        };
        let (head, early) = read_head(&mut conn).await?;
        Some((conn, head, early))
    };
    if let Ok(Some((conn, head, early))) = tokio::time::timeout(REQUEST_TIMEOUT, opened).await {
        serve_conn(conn, &head, early, server).await;
    }
}

async fn serve_conn(mut conn: Conn, head: &str, early: Vec<u8>, server: Arc<StreamingServer>) {
    let Some(req) = parse_request(head) else {
        respond(&mut conn, "400 Bad Request", "malformed HTTP request\n").await;
        return;
    };
    if req.method != "GET" && req.method != "POST" {
        respond(&mut conn, "405 Method Not Allowed", "use GET or POST\n").await;
        return;
    }
    // Never serve without a valid token: an unknown, used or expired one is the same 404.
    let pending = match req.path.rsplit_once('/') {
        Some((kind, token)) if !token.is_empty() => match (kind, server.take(token)) {
            ("/exec", Some(p @ Pending::Exec(_))) => Some(p),
            ("/attach", Some(p @ Pending::Attach(_))) => Some(p),
            ("/portforward", Some(p @ Pending::PortForward(_))) => Some(p),
            _ => None,
        },
        _ => None,
    };
    let Some(pending) = pending else {
        respond(
            &mut conn,
            "404 Not Found",
            "unknown or expired streaming URL\n",
        )
        .await;
        return;
    };
    let websocket = req
        .values("upgrade")
        .any(|v| v.eq_ignore_ascii_case("websocket"));
    if websocket {
        serve_websocket(conn, &req, early, pending, &server).await;
        return;
    }
    let spdy = req
        .values("upgrade")
        .any(|v| v.eq_ignore_ascii_case("SPDY/3.1"));
    if !spdy {
        respond(
            &mut conn,
            "400 Bad Request",
            "this URL needs an upgrade to SPDY/3.1 or websocket\n",
        )
        .await;
        return;
    }
    let supported = match pending {
        Pending::Exec(_) | Pending::Attach(_) => EXEC_PROTOCOLS,
        Pending::PortForward(_) => PORT_FORWARD_PROTOCOLS,
    };
    let offered: Vec<&str> = req.values("x-stream-protocol-version").collect();
    // A client that offers no version gets the first one (kubelet's fallback), unnamed.
    let protocol = if offered.is_empty() {
        ""
    } else if let Some(p) = supported.iter().find(|p| offered.contains(p)) {
        p
    } else {
        let body = format!(
            "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, \
             server supports {supported:?}\n"
        );
        respond(&mut conn, "403 Forbidden", &body).await;
        return;
    };
    let version_header = if protocol.is_empty() {
        String::new()
    } else {
        format!("X-Stream-Protocol-Version: {protocol}\r\n")
    };
    let upgrade = format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
         {version_header}\r\n"
    );
    if conn.write_all(upgrade.as_bytes()).await.is_err() {
        return;
    }
    let session = Session::start(conn, early, server.timeouts);
    // Every name in EXEC_PROTOCOLS (and "") is known to `for_spdy`.
    let proto = Protocol::for_spdy(protocol).unwrap_or(Protocol::CURRENT);
    match pending {
        Pending::Exec(spec) => exec::serve(session, spec, server.rt.clone(), proto).await,
        Pending::Attach(spec) => attach::serve(session, spec, server.rt.clone(), proto).await,
        Pending::PortForward(spec) => {
            portforward::serve(session, spec, server.rt.clone(), None).await;
        }
    }
}

/// The WebSocket upgrade (RFC 6455 section 4.2.2), for Exec, Attach and PortForward.
async fn serve_websocket(
    mut conn: Conn,
    req: &UpgradeRequest,
    early: Vec<u8>,
    pending: Pending,
    server: &StreamingServer,
) {
    let Some(key) = req.values("sec-websocket-key").next() else {
        respond(&mut conn, "400 Bad Request", "no Sec-WebSocket-Key\n").await;
        return;
    };
    // Port forwarding names its ports in the query (kubelet's `port`), else the request's.
    let tunnel = req
        .values("sec-websocket-protocol")
        .any(|p| p == websocket::SPDY_TUNNEL_PORT_FORWARD);
    let ports = match &pending {
        // The tunnelled SPDY streams name their ports.
        Pending::PortForward(_) if tunnel => Vec::new(),
        Pending::PortForward(spec) => match query_ports(&req.query) {
            Ok(p) if p.is_empty() && spec.ports.is_empty() => {
                let body = "port forwarding over WebSocket needs the query parameter \"port\"\n";
                respond(&mut conn, "400 Bad Request", body).await;
                return;
            }
            Ok(p) if p.is_empty() => spec.ports.clone(),
            Ok(p) => p,
            Err(e) => {
                respond(&mut conn, "400 Bad Request", &format!("{e}\n")).await;
                return;
            }
        },
        _ => Vec::new(),
    };
    let supported = match pending {
        Pending::PortForward(_) => websocket::PORT_FORWARD_SUBPROTOCOLS,
        _ => websocket::EXEC_SUBPROTOCOLS,
    };
    let offered: Vec<&str> = req.values("sec-websocket-protocol").collect();
    // No subprotocol offered: binary channels, the oldest status format (kubelet's "").
    let protocol = if offered.is_empty() {
        ""
    } else if let Some(p) = supported.iter().find(|p| offered.contains(p)) {
        p
    } else {
        let body = format!(
            "unable to upgrade: client offers {offered:?}, server supports {supported:?}\n"
        );
        respond(&mut conn, "403 Forbidden", &body).await;
        return;
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let protocol_header = if protocol.is_empty() {
        String::new()
    } else {
        format!("Sec-WebSocket-Protocol: {protocol}\r\n")
    };
    let upgrade = format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Accept: {accept}\r\n{protocol_header}\r\n"
    );
    if conn.write_all(upgrade.as_bytes()).await.is_err() {
        return;
    }
    conn.set_nodelay();
    let role = tokio_tungstenite::tungstenite::protocol::Role::Server;
    let ws = WebSocketStream::from_partially_read(conn, early, role, None).await;
    let framing = websocket::Framing::of(protocol);
    let proto = websocket::exec_protocol(protocol);
    let rt = server.rt.clone();
    match pending {
        Pending::Exec(spec) => {
            let session = websocket::exec_session(ws, &spec, framing, server.timeouts);
            exec::serve(session, spec, rt, proto).await;
        }
        Pending::Attach(spec) => {
            let session = websocket::exec_session(ws, &spec, framing, server.timeouts);
            attach::serve(session, spec, rt, proto).await;
        }
        Pending::PortForward(spec) if protocol == websocket::SPDY_TUNNEL_PORT_FORWARD => {
            let session = websocket::spdy_tunnel_session(ws, server.timeouts);
            portforward::serve(session, spec, rt, None).await;
        }
        Pending::PortForward(spec) => {
            let session = websocket::port_forward_session(ws, &ports, framing, server.timeouts);
            portforward::serve(session, spec, rt, Some(ports.len())).await;
        }
    }
}

/// The `port` query parameters (each may list several, comma-separated), as kubelet reads
/// them; at most 127 (two channels each must fit the channel byte).
fn query_ports(query: &str) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for (k, v) in query.split('&').filter_map(|kv| kv.split_once('=')) {
        if k != "port" {
            continue;
        }
        for p in v.split("%2C").flat_map(|p| p.split(',')) {
            match p.parse::<u16>() {
                Ok(n) if n > 0 => ports.push(n),
                _ => return Err(format!("query parameter \"port\": {p:?} is not a TCP port")),
            }
        }
    }
    if ports.len() > 127 {
        return Err("at most 127 ports per connection".to_owned());
    }
    Ok(ports)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_client_go_upgrade_requests() {
        let head = "POST /exec/abc?x=1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\nConnection: Upgrade\r\n\
                    Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v5.channel.k8s.io\r\n\
                    X-Stream-Protocol-Version: v4.channel.k8s.io, channel.k8s.io";
        let req = parse_request(head).unwrap();
        assert_eq!(req.method, "POST");
        assert_eq!(req.path, "/exec/abc");
        let v: Vec<_> = req.values("x-stream-protocol-version").collect();
        assert_eq!(
            v,
            ["v5.channel.k8s.io", "v4.channel.k8s.io", "channel.k8s.io"]
        );
        assert!(parse_request("GET /x\r\n").is_none());
        assert_eq!(req.query, "x=1");
        assert_eq!(query_ports("port=80&port=81,82&x=1"), Ok(vec![80, 81, 82]));
        assert_eq!(query_ports(""), Ok(vec![]));
        assert!(query_ports("port=0").is_err());
        assert!(query_ports("port=http").is_err());
        assert!(parse_request("GET /x HTTP/1.1\r\nno colon").is_none());
    }

    #[test]
    fn tokens_are_random_and_distinct() {
        let a = random_token().unwrap();
        assert_eq!(a.len(), 32);
        assert_ne!(a, random_token().unwrap());
    }
}
