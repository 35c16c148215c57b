//! systemd's readiness protocol (`Type=notify`): one datagram to `$NOTIFY_SOCKET`.
//!
//! Hand-written rather than a crate: the protocol is a `sendto` of `KEY=VALUE` lines, and a
//! failure to notify must never stop the daemon (it is logged, and without `$NOTIFY_SOCKET`
//! — not started by systemd — nothing is sent).
//!
//! The variable is taken out of the environment at start-up ([`take_socket`]): runc and crun
//! treat an inherited `NOTIFY_SOCKET` as a request to proxy the *container's* readiness
//! (`runc start` then fails or waits), and no monitor or plugin should talk to systemd for us.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::OnceLock;

use tracing::warn;

static SOCKET: OnceLock<Option<String>> = OnceLock::new();

/// Reads `$NOTIFY_SOCKET` and removes it from the environment. Call first thing in `main`,
/// while the process has one thread.
pub fn take_socket() {
    let socket = std::env::var_os("NOTIFY_SOCKET").map(|s| s.to_string_lossy().into_owned());
    if socket.is_some() {
        // SAFETY: called at the start of `main`, before any other thread exists, so nothing
        // reads the environment concurrently.
        unsafe { std::env::remove_var("NOTIFY_SOCKET") };
    }
    let _ = SOCKET.set(socket);
}

/// Sends `state` (e.g. `READY=1`) to the service manager, if there is one.
pub fn notify(state: &str) {
    let Some(Some(path)) = SOCKET.get() else {
        return;
    };
    if let Err(e) = send(path, state) {
        warn!(socket = %path, state, error = %e, "could not notify the service manager");
    }
}

fn send(path: &str, state: &str) -> std::io::Result<()> {
    // "@name" is a socket in the abstract namespace (systemd's default for user managers).
    let addr = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
        None => SocketAddr::from_pathname(path)?,
    };
    let socket = UnixDatagram::unbound()?;
    socket.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn sends_one_datagram_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        send(path.to_str().unwrap(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
}
