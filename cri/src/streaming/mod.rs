//! CRI streaming (`Exec`, later `Attach` and `PortForward`): the RPC hands out a single-use
//! URL on our own HTTP server, and the client (kubelet's proxy, crictl) upgrades a request
//! there to a multiplexed SPDY/3.1 connection carrying the command's stdio.
//!
//! - `spdy`: frames, header compression, stream table (no I/O).
//! - `session`: one SPDY connection over a socket.
//! - `exec`: the remotecommand protocol (v4/v5) for Exec.
//! - `server`: listener, upgrade, tokens.

mod dictionary;
mod exec;
mod server;
mod session;
mod spdy;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

pub use exec::ExecSpec;
pub use server::{Pending, StreamingServer};

/// Where the server listens until `[streaming]` config exists: loopback, a random port
/// (containerd's default), so only local clients (kubelet's proxy) can reach it.
pub const DEFAULT_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
/// How long a URL stays valid (containerd: 1 minute).
pub const TOKEN_TTL: Duration = Duration::from_secs(60);
