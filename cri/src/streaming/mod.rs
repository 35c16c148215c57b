//! CRI streaming (`Exec`, `Attach`, `PortForward`): the RPC hands out a single-use
//! URL on our own HTTP server, and the client (kubelet's proxy, crictl) upgrades a request
//! there to a multiplexed SPDY/3.1 connection carrying the command's stdio.
//!
//! - `spdy`: frames, header compression, stream table (no I/O).
//! - `session`: one SPDY connection over a socket.
//! - `exec`: the remotecommand protocol (v4/v5) for Exec.
//! - `attach`: Attach, on the same protocol (stdin relay, output followed from the log).
//! - `portforward`: the portforward.k8s.io protocol for PortForward.
//! - `websocket`: exec over WebSocket (v4/v5 binary channels), bridged to a session.
//! - `server`: listener, upgrade, tokens.

mod attach;
mod dictionary;
mod exec;
mod portforward;
mod server;
mod session;
mod spdy;
mod websocket;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
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
    /// it; it serves no TLS yet.
    pub address: IpAddr,
    /// 0: a free port chosen at start (the URL names it).
    pub port: u16,
    /// How long a URL stays valid (containerd: 1 minute).
    pub token_ttl_secs: u64,
    /// A connection with no data either way for this long is closed, and what it served
    /// (an exec'd command) ended; kubelet's `streamingConnectionIdleTimeout` is 4 h.
    pub idle_timeout_secs: u64,
}

impl Default for StreamingConfig {
    fn default() -> Self {
        Self {
            address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            token_ttl_secs: 60,
            idle_timeout_secs: 4 * 3600,
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

    /// 0 is taken as 1 s: a session must have some time to start.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs.max(1))
    }
}
