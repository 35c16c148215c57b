//! The Prometheus endpoint: `GET /metrics` on `[metrics] address`, one short-lived HTTP/1.1
//! exchange per connection (what Prometheus and curl do). Written on tokio directly rather
//! than pulling an HTTP server in for one read-only path: it reads the request head
//! (bounded), answers and closes. Anything else is a 404 (unknown path) or 405 (method).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rootstock_imagestore::ImageStore;
use rootstock_runtime::Runtime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::DaemonMetrics;
use crate::blocking::blocking;

/// A request head larger than this is refused (Prometheus sends a few hundred bytes).
const MAX_HEAD: usize = 16 * 1024;
/// A client that has not sent its request head by then is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// OpenMetrics text, which `prometheus-client` writes (Prometheus negotiates it too).
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What a scrape reads.
#[derive(Clone)]
pub struct Sources {
    pub metrics: Arc<DaemonMetrics>,
    pub rt: Arc<Runtime>,
    pub store: Arc<ImageStore>,
}

/// Binds `addr` and serves it on a task of its own until the daemon exits. Returns the
/// bound address (a port 0 is resolved).
pub async fn start(addr: SocketAddr, sources: Sources) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((conn, _)) => {
                    let sources = sources.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve(conn, sources).await {
                            tracing::debug!("metrics endpoint: {e}");
                        }
                    });
                }
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning on accept.
                    tracing::warn!("metrics endpoint: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(local)
}

async fn serve(mut conn: TcpStream, sources: Sources) -> std::io::Result<()> {
    let head = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut conn)).await {
        Ok(head) => head?,
        Err(_) => return Ok(()),
    };
    let (status, body) = match route(&head) {
        Route::Metrics => {
            let Sources { metrics, rt, store } = sources;
            // Reads /proc and the runtime's and store's memory: off the async workers.
            match blocking(move || Ok::<_, crate::error::CriError>(metrics.scrape(&rt, &store)))
                .await
            {
                Ok(text) => ("200 OK", text),
                Err(e) => ("500 Internal Server Error", format!("scrape failed: {e}\n")),
            }
        }
        Route::NotFound => ("404 Not Found", "only /metrics is served here\n".to_owned()),
        Route::BadMethod => ("405 Method Not Allowed", "only GET\n".to_owned()),
        Route::Bad => ("400 Bad Request", "malformed request\n".to_owned()),
    };
    let content_type = if status.starts_with("200") {
        CONTENT_TYPE
    } else {
        "text/plain; charset=utf-8"
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(body.as_bytes()).await?;
    conn.shutdown().await
}

/// Reads up to the blank line that ends the request head.
async fn read_head(conn: &mut TcpStream) -> std::io::Result<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_HEAD {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    NotFound,
    BadMethod,
    Bad,
}

fn route(head: &str) -> Route {
    let mut parts = head.lines().next().unwrap_or_default().split(' ');
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Route::Bad;
    };
    // A query string (`?name[]=…`) is accepted and ignored: everything is served.
    let path = target.split('?').next().unwrap_or_default();
    match (method, path) {
        ("GET", "/metrics") => Route::Metrics,
        ("GET", _) => Route::NotFound,
        ("", _) => Route::Bad,
        _ => Route::BadMethod,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_metrics_is_served() {
        assert_eq!(
            route("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics
        );
        assert_eq!(route("GET /metrics?x=1 HTTP/1.1\r\n\r\n"), Route::Metrics);
        assert_eq!(route("GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route("POST /metrics HTTP/1.1\r\n\r\n"), Route::BadMethod);
        assert_eq!(route(""), Route::Bad);
    }
}
