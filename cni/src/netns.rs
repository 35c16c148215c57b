//! Network namespace helpers: tell a pinned namespace from a leftover file, bring `lo` up
//! inside a namespace and read its interfaces' counters with netlink. Creating and pinning
//! the namespace is not CNI's job: the runtime pins the sandbox's (tests that drive CNI
//! directly use `rootstock_testkit::netns`).
//!
//! `setns(2)` changes only the calling *thread*. Doing it on a tokio worker
//! would leave that worker (and every task later scheduled on it) in the pod's namespace, so
//! each operation runs on a fresh OS thread that exits afterwards.

use std::fs::File;
use std::path::Path;

use futures_util::TryStreamExt;
use nix::sched::CloneFlags;

use crate::error::{CniError, Result};

fn netns_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(nix::Error) -> CniError + 'a {
    move |e| CniError::Netns {
        path: path.to_path_buf(),
        op,
        source: std::io::Error::from(e),
    }
}

/// Runs `f` on a dedicated OS thread and awaits its answer without blocking the runtime.
async fn on_own_thread<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("rootstock-netns".into())
        .spawn(move || {
            let _ = tx.send(f());
            rootstock_fsutil::release_dead_stack();
        })
        .map_err(|source| CniError::Netns {
            path: path.to_path_buf(),
            op: "spawn thread",
            source,
        })?;
    rx.await.map_err(|_| CniError::Netns {
        path: path.to_path_buf(),
        op: "netns thread",
        source: std::io::Error::other("the thread ended without an answer"),
    })?
}

/// True when `path` is a mounted network namespace (nsfs). A plain file left behind, or a
/// missing path, is not: DEL then runs without `CNI_NETNS` (plugins reject a non-nsfs path).
pub fn is_netns(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
        .unwrap_or(false)
}

/// Brings the loopback interface up inside the namespace at `netns` (a new namespace has `lo`
/// down; CNI plugins only configure `eth0`).
pub async fn loopback_up(netns: &Path) -> Result<()> {
    let path = netns.to_path_buf();
    on_own_thread(netns, move || loopback_up_blocking(&path)).await
}

/// Blocking form of [`loopback_up`]; must be called on a thread that may change namespace and
/// is discarded afterwards (it is left in `netns`).
fn loopback_up_blocking(netns: &Path) -> Result<()> {
    let nl_err = |e: String| CniError::Netlink {
        path: netns.to_path_buf(),
        reason: e,
    };
    with_netlink(netns, |handle| async move {
        let link = handle
            .link()
            .get()
            .match_name("lo".to_string())
            .execute()
            .try_next()
            .await
            .map_err(|e| nl_err(format!("get lo: {e}")))?
            .ok_or_else(|| nl_err("no lo interface".into()))?;
        handle
            .link()
            .set(
                rtnetlink::LinkUnspec::new_with_index(link.header.index)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| nl_err(format!("set lo up: {e}")))
    })
}

/// Enters `netns` with the calling thread and runs `f` with an rtnetlink handle whose socket
/// lives in that namespace. The thread stays in `netns`: callers run this on a thread of
/// its own that ends afterwards.
fn with_netlink<T, F, Fut>(netns: &Path, f: F) -> Result<T>
where
    F: FnOnce(rtnetlink::Handle) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let f_ns = File::open(netns).map_err(|source| CniError::Netns {
        path: netns.to_path_buf(),
        op: "open",
        source,
    })?;
    nix::sched::setns(&f_ns, CloneFlags::CLONE_NEWNET).map_err(netns_err(netns, "setns"))?;
    // The netlink socket belongs to the namespace of the thread that creates it, hence a
    // runtime of this thread's own (current-thread: it starts no other threads).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|source| CniError::Netns {
            path: netns.to_path_buf(),
            op: "netlink runtime",
            source,
        })?;
    rt.block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| CniError::Netlink {
            path: netns.to_path_buf(),
            reason: e.to_string(),
        })?;
        let conn_task = tokio::spawn(conn);
        let res = f(handle).await;
        conn_task.abort();
        res
    })
}

/// One interface's counters (the kernel's 64-bit `IFLA_STATS64`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceStats {
    /// Interface name.
    pub name: String,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Transmit errors.
    pub tx_errors: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Received packets dropped.
    pub rx_dropped: u64,
    /// Packets dropped while sending.
    pub tx_dropped: u64,
}

/// The counters of every interface in the network namespace pinned at `netns`, but `lo`
/// (kubelet and cAdvisor leave it out), read with `RTM_GETLINK`. Works whether or not any
/// process is in the namespace, so a pod whose containers all exited still reports them.
/// Blocks: it runs on a thread of its own (setns must not touch the caller's thread).
pub fn interface_stats(netns: &Path) -> Result<Vec<InterfaceStats>> {
    let path = netns.to_path_buf();
    std::thread::Builder::new()
        .name("rootstock-netstats".into())
        .spawn(move || {
            let stats = interface_stats_here(&path);
            rootstock_fsutil::release_dead_stack();
            stats
        })
        .map_err(|source| CniError::Netns {
            path: netns.to_path_buf(),
            op: "spawn thread",
            source,
        })?
        .join()
        .map_err(|_| CniError::Netns {
            path: netns.to_path_buf(),
            op: "netns thread",
            source: std::io::Error::other("the thread panicked"),
        })?
}

fn interface_stats_here(netns: &Path) -> Result<Vec<InterfaceStats>> {
    use rtnetlink::packet_route::link::LinkAttribute;
    let nl_err = |e: rtnetlink::Error| CniError::Netlink {
        path: netns.to_path_buf(),
        reason: format!("dump links: {e}"),
    };
    with_netlink(netns, |handle| async move {
        let mut links = handle.link().get().execute();
        let mut out = Vec::new();
        while let Some(msg) = links.try_next().await.map_err(nl_err)? {
            let mut stats = InterfaceStats::default();
            for attr in msg.attributes {
                match attr {
                    LinkAttribute::IfName(name) => stats.name = name,
                    LinkAttribute::Stats64(s) => {
                        stats.rx_bytes = s.rx_bytes;
                        stats.rx_errors = s.rx_errors;
                        stats.tx_bytes = s.tx_bytes;
                        stats.tx_errors = s.tx_errors;
                        stats.rx_packets = s.rx_packets;
                        stats.tx_packets = s.tx_packets;
                        stats.rx_dropped = s.rx_dropped;
                        stats.tx_dropped = s.tx_dropped;
                    }
                    _ => {}
                }
            }
            if stats.name != "lo" {
                out.push(stats);
            }
        }
        Ok(out)
    })
}
