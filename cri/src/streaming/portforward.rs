//! Port forwarding over a SPDY session (kubelet's `portforward.k8s.io` protocol): for each
//! connection the client opens a pair of streams sharing a `requestID` header, `error` and
//! `data`, both naming the `port`. The data stream is spliced to a TCP connection to
//! `localhost:port` inside the pod's network namespace (the host's for hostNetwork pods);
//! a failure is written as text on the error stream; both streams are then closed.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rootstock_runtime::Runtime;
use rootstock_runtime::id::SandboxId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use super::session::{DATA_CHUNK, Incoming, Sender, Session};
use super::spdy::header;

/// How long connecting to the port may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What a token's PortForward request named.
#[derive(Debug, Clone)]
pub struct PortForwardSpec {
    pub sandbox: SandboxId,
    /// The request's ports: what a WebSocket client forwards when its URL names none.
    pub ports: Vec<u16>,
}

/// The two streams of one forwarded connection, as they arrive.
#[derive(Default)]
struct Pair {
    error: Option<Incoming>,
    data: Option<Incoming>,
}

/// Serves the client's connections. Over SPDY (`expected` is `None`) the session lasts as
/// long as the client keeps it, with as many connections as it opens; over WebSocket its
/// channels are `expected` connections, one per port, and it ends when they have.
pub async fn serve(
    mut session: Session,
    spec: PortForwardSpec,
    rt: Arc<Runtime>,
    expected: Option<usize>,
) {
    let tx = session.sender();
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut conns = JoinSet::new();
    let mut started = 0;
    while expected.is_none_or(|n| started < n)
        && let Some(s) = session.incoming.recv().await
    {
        let Some(request) = header(&s.headers, "requestid").map(str::to_owned) else {
            tracing::debug!("port-forward: a stream without requestID; ignored");
            continue;
        };
        let pair = pairs.entry(request.clone()).or_default();
        match header(&s.headers, "streamtype") {
            Some("error") => pair.error = Some(s),
            Some("data") => pair.data = Some(s),
            _ => continue,
        }
        if pair.error.is_some() && pair.data.is_some() {
            let Some(Pair {
                error: Some(error),
                data: Some(data),
            }) = pairs.remove(&request)
            else {
                continue;
            };
            let (tx, rt, sandbox) = (tx.clone(), rt.clone(), spec.sandbox.clone());
            conns.spawn(forward(error, data, sandbox, rt, tx));
            started += 1;
        }
        // Connections that ended are reaped as we go.
        while conns.try_join_next().is_some() {}
    }
    if expected.is_some() {
        // Every connection has started: they run to their end, or until the client leaves.
        tokio::select! {
            () = async { while conns.join_next().await.is_some() {} } => {}
            () = tx.closed() => {}
        }
    }
    conns.abort_all();
    drop(tx);
    session.close(Duration::from_secs(1)).await;
}

/// One connection: connect, splice, report.
async fn forward(
    error: Incoming,
    data: Incoming,
    sandbox: SandboxId,
    rt: Arc<Runtime>,
    tx: Sender,
) {
    let port = header(&data.headers, "port").unwrap_or_default().to_owned();
    let result = match port.parse::<u16>() {
        Ok(p) if p > 0 => match connect(&sandbox, &rt, p).await {
            Ok(conn) => splice(conn, data, &tx).await,
            Err(e) => {
                let _ = tx.fin(data.id).await;
                Err(e)
            }
        },
        _ => {
            let _ = tx.fin(data.id).await;
            Err(format!("invalid port {port:?}"))
        }
    };
    if let Err(e) = result {
        let msg = format!("error forwarding port {port} to pod {sandbox}: {e}");
        let _ = tx.data(error.id, msg.as_bytes()).await;
    }
    let _ = tx.fin(error.id).await;
}

/// Connects to localhost:`port` in the pod's network namespace: IPv4 first, then IPv6
/// (kubelet's and containerd's order).
async fn connect(sandbox: &SandboxId, rt: &Arc<Runtime>, port: u16) -> Result<TcpStream, String> {
    let info = rt.sandbox(sandbox).map_err(|e| e.to_string())?;
    let netns = match info.netns_path() {
        Some(p) => Some(p),
        None if info.record.host_network => None,
        None => return Err("the pod's network namespace is gone (pod not ready)".to_owned()),
    };
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    // A thread of its own: setns changes the calling thread's namespace for good, and a
    // socket stays in the namespace it was created in. The thread ends right after.
    std::thread::Builder::new()
        .name("port-forward-connect".to_owned())
        .spawn(move || {
            let _ = done_tx.send(connect_in(netns, port));
        })
        .map_err(|e| format!("spawning a thread: {e}"))?;
    let conn = done_rx
        .await
        .map_err(|_| "the connect thread died".to_owned())??;
    conn.set_nonblocking(true).map_err(|e| e.to_string())?;
    TcpStream::from_std(conn).map_err(|e| e.to_string())
}

fn connect_in(netns: Option<PathBuf>, port: u16) -> Result<std::net::TcpStream, String> {
    if let Some(ns) = netns {
        let f = std::fs::File::open(&ns).map_err(|e| format!("{}: {e}", ns.display()))?;
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("entering {}: {e}", ns.display()))?;
    }
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    std::net::TcpStream::connect_timeout(&v4, CONNECT_TIMEOUT).or_else(|e4| {
        std::net::TcpStream::connect_timeout(&v6, CONNECT_TIMEOUT)
            .map_err(|e6| format!("connect to localhost:{port}: {e4} (IPv4), {e6} (IPv6)"))
    })
}

/// Copies both ways until both are done: the client's FIN half-closes the connection, the
/// connection's EOF sends FIN on the data stream.
async fn splice(conn: TcpStream, mut data: Incoming, tx: &Sender) -> Result<(), String> {
    let (mut rd, mut wr) = conn.into_split();
    let id = data.id;
    let inbound = async move {
        while let Some(chunk) = data.data.recv().await {
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    };
    let outbound = async move {
        loop {
            let mut buf = Vec::with_capacity(DATA_CHUNK);
            match rd.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if !tx.data_vec(id, buf).await {
                        return;
                    }
                }
            }
        }
        let _ = tx.fin(id).await;
    };
    tokio::join!(inbound, outbound);
    Ok(())
}
