//! CRI streaming (`Exec`, `Attach`, `PortForward`): the RPC hands out a single-use
//! URL on our own HTTP server, and the client (kubelet's proxy, crictl) upgrades a request
//! there to a multiplexed SPDY/3.1 connection carrying the command's stdio.
//!
//! - `spdy`: frames, header compression, stream table (no I/O).
//! - `session`: one SPDY connection over a socket; `flow`: its send windows.
//! - `exec`: the remotecommand protocol (v1 to v5) for Exec.
//! - `attach`: Attach, on the same protocol (through the container's monitor).
//! - `portforward`: the portforward.k8s.io protocol for PortForward.
//! - `websocket`: exec, attach and port forwarding over WebSocket channels, bridged to a
//!   session.
//! - `server`: listener, upgrade, tokens; `tls` and `conn`: its optional TLS.

mod attach;
mod conn;
mod dictionary;
mod exec;
mod flow;
mod portforward;
mod server;
mod session;
mod spdy;
pub mod tls;
mod websocket;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use exec::ExecSpec;
pub use portforward::PortForwardSpec;
pub use server::{Pending, StreamingServer};

/// `[streaming]`: where the server listens and how long its URLs live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamingConfig {
    /// Loopback by default (containerd's too): only kubelet, on this node, needs to reach
    /// it.
    pub address: IpAddr,
    /// 0: a free port chosen at start (the URL names it).
    pub port: u16,
    /// Serve HTTPS (the URLs say `https://`): with the files below, or else with a
    /// self-signed certificate made at start (containerd's `enable_tls_streaming`).
    pub enable_tls: bool,
    /// The certificate (PEM, chain after the leaf); with `tls_key_file`, or neither.
    pub tls_cert_file: Option<PathBuf>,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub tls_key_file: Option<PathBuf>,
    /// How long a URL stays valid (containerd: 1 minute).
    pub token_ttl_secs: u64,
    /// A connection with no data either way for this long is closed, and what it served
    /// (an exec'd command) ended; kubelet's `streamingConnectionIdleTimeout` is 4 h.
    pub idle_timeout_secs: u64,
    /// Every session is ended this long after it started, however busy (0: never), so
    /// a forgotten `kubectl port-forward` cannot hold a pod open for ever.
    pub session_timeout_secs: u64,
}

impl Default for StreamingConfig {
    fn default() -> Self {
        Self {
            address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            enable_tls: false,
            tls_cert_file: None,
            tls_key_file: None,
            token_ttl_secs: 60,
            idle_timeout_secs: 4 * 3600,
            session_timeout_secs: 0,
        }
    }
}

impl StreamingConfig {
    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.port)
    }

    pub fn token_ttl(&self) -> Duration {
        Duration::from_secs(self.token_ttl_secs)
    }

    /// The idle timeout (0 is taken as 1 s: a session must have some time to start) and
    /// the overall one.
    pub fn timeouts(&self) -> session::Timeouts {
        session::Timeouts {
            idle: Duration::from_secs(self.idle_timeout_secs.max(1)),
            overall: (self.session_timeout_secs > 0)
                .then(|| Duration::from_secs(self.session_timeout_secs)),
        }
    }
}
