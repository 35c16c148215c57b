//! CNI for rootstock: network config loading, plugin execution (CNI spec 1.x and 0.3/0.4
//! results), a crash-safe result cache, network readiness, and helpers for a namespace the
//! runtime has pinned (loopback up, interface counters).
//!
//! The runtime holds one [`CniManager`] (in an `Arc`) and calls
//! [`CniManager::setup`] in RunPodSandbox, [`CniManager::teardown`] in StopPodSandbox /
//! RemovePodSandbox / start-up recovery, [`CniManager::check`] on demand, and
//! [`CniManager::status`] for the CRI `NetworkReady` condition. No gRPC here.
//!
//! ```no_run
//! # async fn demo() -> rootstock_cni::Result<()> {
//! use std::{path::Path, sync::Arc};
//! use rootstock_cni::{CniConfig, CniManager, PodNetwork};
//!
//! let cni = Arc::new(CniManager::new(CniConfig::default(), Path::new("/var/lib/rootstock")));
//! let _watcher = cni.spawn_watcher(); // optional: status() also re-reads lazily
//! let ready = cni.status().await.ready; // -> NetworkReady
//!
//! // RunPodSandbox (not for hostNetwork pods): the runtime has created the sandbox and
//! // pinned its netns (CNI does not create namespaces); then ADD.
//! let ns = Path::new("/run/rootstock/sandboxes/0123abcd/ns/net");
//! let status = cni
//!     .setup(&PodNetwork {
//!         sandbox_id: "0123abcd".into(),
//!         netns_path: ns.into(),
//!         pod_name: "web".into(),
//!         pod_namespace: "default".into(),
//!         pod_uid: "6f1c…".into(),
//!         port_mappings: vec![],
//!         bandwidth: None,
//!         dns: None,
//!     })
//!     .await?; // on error: remove the sandbox and fail RunPodSandbox with the message
//! let _primary_ip = status.ips.first();
//!
//! // StopPodSandbox, RemovePodSandbox and start-up recovery: DEL, then the runtime unpins.
//! cni.teardown("0123abcd").await?;
//! # let _ = ready; Ok(()) }
//! ```

pub mod cache;
pub mod config;
pub mod conflist;
pub mod error;
pub mod exec;
pub mod manager;
pub mod netns;
pub mod result;

pub use cache::CacheEntry;
pub use config::CniConfig;
pub use conflist::NetworkConfigList;
pub use error::{CniError, ErrorKind, Result};
pub use exec::CniCommand;
pub use manager::{
    Bandwidth, CniManager, DnsConfig, NetworkStatus, POD_IFNAME, PodNetwork, PodNetworkStatus,
    PortMapping, Protocol,
};
pub use result::{CniResult, Interface, IpConfig};
