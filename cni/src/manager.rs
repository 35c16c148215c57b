//! The façade the runtime calls: network readiness, and ADD/DEL/CHECK of a pod sandbox.
//!
//! ADD/DEL/CHECK are here; [`readiness`] reads the conf dirs and answers `NetworkReady`,
//! [`plugin_conf`] builds what each plugin is given.

mod plugin_conf;
mod readiness;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cache::{CacheEntry, ResultCache};
use crate::config::CniConfig;
use crate::conflist::NetworkConfigList;
use crate::error::{CniError, Result};
use crate::exec::{self, CniCommand, InvokeArgs};
use crate::netns;
use crate::result::CniResult;
use plugin_conf::{capability_args, cni_args, plugin_stdin};
use readiness::NetState;

/// The interface name inside the pod (kubelet and every CRI runtime use `eth0`).
pub const POD_IFNAME: &str = "eth0";

/// Transport protocol of a port mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

/// A CRI `PortMapping`, passed to plugins declaring the `portMappings` capability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    /// Protocol.
    pub protocol: Protocol,
    /// Port inside the pod.
    pub container_port: u16,
    /// Port on the node; 0 means "no host port" and the mapping is not passed on.
    pub host_port: u16,
    /// Host address to bind; empty means all.
    pub host_ip: String,
}

/// Traffic shaping, passed to plugins declaring the `bandwidth` capability (bits per second
/// and bits, as the `bandwidth` plugin's runtimeConfig expects).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bandwidth {
    /// Ingress rate, bit/s.
    pub ingress_rate: u64,
    /// Ingress burst, bits.
    pub ingress_burst: u64,
    /// Egress rate, bit/s.
    pub egress_rate: u64,
    /// Egress burst, bits.
    pub egress_burst: u64,
}

/// The pod's DNS config, passed to plugins declaring the `dns` capability (one type with
/// the runtime's, which writes it into the sandbox's resolv.conf).
pub use rootstock_fsutil::DnsConfig;

/// What ADD needs to know about a pod sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetwork {
    /// The sandbox id; used as `CNI_CONTAINERID` and `K8S_POD_INFRA_CONTAINER_ID`.
    pub sandbox_id: String,
    /// The pinned network namespace of the sandbox.
    pub netns_path: PathBuf,
    /// Pod name (`K8S_POD_NAME`).
    pub pod_name: String,
    /// Pod namespace (`K8S_POD_NAMESPACE`).
    pub pod_namespace: String,
    /// Pod UID (`K8S_POD_UID`).
    pub pod_uid: String,
    /// Port mappings of the sandbox config.
    pub port_mappings: Vec<PortMapping>,
    /// Traffic shaping, if the pod asks for it.
    pub bandwidth: Option<Bandwidth>,
    /// DNS config, if any.
    pub dns: Option<DnsConfig>,
}

/// The outcome of ADD (also rebuilt from the cache after a restart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetworkStatus {
    /// The network the pod is attached to.
    pub network: String,
    /// The pod's IPs, IPv4 first (the first is kubelet's primary pod IP).
    pub ips: Vec<IpAddr>,
    /// The whole parsed result (interfaces, all IPs, DNS).
    pub result: CniResult,
}

/// Network readiness, for the CRI `Status` `NetworkReady` condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkStatus {
    /// True when a valid network config is loaded.
    pub ready: bool,
    /// CamelCase reason when not ready (`NetworkPluginNotReady`, as containerd says).
    pub reason: String,
    /// Human-readable detail: the network and its file, or why there is none.
    pub message: String,
    /// Name of the network in use.
    pub network: Option<String>,
    /// File it came from (or the built-in marker).
    pub source: Option<PathBuf>,
}

/// Runs CNI for pod sandboxes. `Send + Sync`; share it in an `Arc`. It owns no runtime and
/// starts no task unless [`CniManager::spawn_watcher`] is called.
#[derive(Debug)]
pub struct CniManager {
    config: CniConfig,
    cache: ResultCache,
    state: Mutex<NetState>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave their plain data inconsistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl CniManager {
    /// A manager for `config`; the cache lives in `config.cache_dir` or `<root_dir>/cni/cache`.
    /// The conf dirs are first read on the first `status()`/`setup()` (or `refresh()`).
    pub fn new(config: CniConfig, root_dir: &Path) -> Self {
        let cache = ResultCache::new(config.cache_dir_in(root_dir));
        Self {
            config,
            cache,
            state: Mutex::new(NetState::default()),
            locks: Mutex::new(HashMap::new()),
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &CniConfig {
        &self.config
    }

    async fn lock_sandbox(&self, id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = lock(&self.locks).entry(id.to_string()).or_default().clone();
        m.lock_owned().await
    }

    fn unlock_sandbox(&self, guard: tokio::sync::OwnedMutexGuard<()>) {
        drop(guard);
        lock(&self.locks).retain(|_, m| Arc::strong_count(m) > 1);
    }

    /// Attaches the sandbox to the network: brings `lo` up, runs ADD through the plugin chain
    /// and caches config and result. On failure, DEL is run for every plugin ADD reached, so
    /// nothing is left behind; the error names the plugin. Calling it again for an attached
    /// sandbox returns the cached status.
    pub async fn setup(&self, pod: &PodNetwork) -> Result<PodNetworkStatus> {
        validate_id(&pod.sandbox_id)?;
        let guard = self.lock_sandbox(&pod.sandbox_id).await;
        let r = self.setup_locked(pod).await;
        self.unlock_sandbox(guard);
        r
    }

    async fn setup_locked(&self, pod: &PodNetwork) -> Result<PodNetworkStatus> {
        let id = pod.sandbox_id.as_str();
        if let Some((path, entry)) = self.find_entry(id).await? {
            if entry.netns == pod.netns_path
                && let Some(result) = &entry.result
            {
                return status_from(&entry.network, result, &path);
            }
            // A half-done or stale attachment: undo it before attaching anew.
            self.del_entry(&path, &entry).await?;
        }
        let network = self.current_network().await?;
        if !netns::is_netns(&pod.netns_path) {
            return Err(CniError::Netns {
                path: pod.netns_path.clone(),
                op: "check",
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "not a mounted network namespace",
                ),
            });
        }
        // `lo` comes up beside the chain, which never touches it, rather than before it.
        let (lo, added) = tokio::join!(
            netns::loopback_up(&pod.netns_path),
            self.add_chain(pod, &network)
        );
        let (cache_path, entry, status) = added?;
        if let Err(err) = lo {
            if let Err(del_err) = self.del_entry(&cache_path, &entry).await {
                tracing::error!(sandbox = id, err = %del_err, "CNI DEL after failing to bring lo up failed");
            }
            return Err(err);
        }
        tracing::info!(sandbox = id, network = %network.name, ips = ?status.ips, "CNI ADD done");
        Ok(status)
    }

    /// Writes the intent entry, runs ADD through the chain and caches the result; a failed
    /// plugin is undone with DEL (of every plugin ADD reached) and its error returned.
    async fn add_chain(
        &self,
        pod: &PodNetwork,
        network: &NetworkConfigList,
    ) -> Result<(PathBuf, CacheEntry, PodNetworkStatus)> {
        let id = pod.sandbox_id.as_str();
        // Resolve every binary first: a missing one fails ADD before anything ran.
        let paths = network
            .plugins
            .iter()
            .map(|p| exec::find_plugin(&p.plugin_type, &self.config.bin_dirs))
            .collect::<Result<Vec<_>>>()?;

        let mut entry = CacheEntry::new(
            &network.name,
            id,
            POD_IFNAME,
            &pod.netns_path,
            network.raw.clone(),
            cni_args(pod),
            capability_args(pod),
        );
        let cache_path = self.store(entry.clone()).await?;
        rootstock_fsutil::failpoint::hit("cni.intent-cached");

        let args = InvokeArgs {
            command: CniCommand::Add,
            network: &network.name,
            container_id: id,
            netns: Some(&pod.netns_path),
            ifname: POD_IFNAME,
            cni_args: &entry.cni_args,
            bin_dirs: &self.config.bin_dirs,
            timeout: self.timeout(),
        };
        let mut prev: Option<Value> = None;
        for (i, (plugin, path)) in network.plugins.iter().zip(&paths).enumerate() {
            let stdin = plugin_stdin(network, plugin, prev.as_ref(), &entry.capability_args)?;
            match exec::invoke(&plugin.plugin_type, path, &args, &stdin).await {
                Ok(Some(r)) => prev = Some(r),
                // A plugin printing nothing passes the previous result on.
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(sandbox = id, %err, "CNI ADD failed, running DEL");
                    entry.result = prev;
                    // Cleanup covers the failed plugin too: it may have half-configured.
                    if let Err(del_err) = self
                        .del_plugins(network, &entry, i + 1, Some(&pod.netns_path))
                        .await
                    {
                        // The cache entry stays, so teardown can retry the DEL later.
                        tracing::error!(sandbox = id, err = %del_err, "CNI DEL after failed ADD failed");
                        let _ = self.store(entry).await;
                    } else if let Err(rm_err) = self.remove(&cache_path).await {
                        // Only a stale entry is left; a later teardown finds nothing to undo.
                        tracing::warn!(sandbox = id, err = %rm_err, "removing CNI cache entry");
                    }
                    // The plugin's error is what the caller must see, not the cleanup's.
                    return Err(err);
                }
            }
        }
        let Some(result) = prev else {
            return Err(CniError::InvalidResult {
                plugin: network
                    .plugins
                    .last()
                    .map(|p| p.plugin_type.clone())
                    .unwrap_or_default(),
                reason: "ADD produced no result".into(),
            });
        };
        rootstock_fsutil::failpoint::hit("cni.add-done");
        entry.result = Some(result.clone());
        self.store(entry.clone()).await?;
        rootstock_fsutil::failpoint::hit("cni.result-cached");
        let status = status_from(&network.name, &result, &cache_path)?;
        Ok((cache_path, entry, status))
    }

    /// Detaches the sandbox: DEL through the cached plugin chain in reverse order with the
    /// cached config and result, then drops the cache entry. Idempotent: no entry means
    /// nothing to do (CRI: StopPodSandbox of a stopped sandbox is OK). Works after the netns
    /// is gone: `CNI_NETNS` is then left out, which the spec allows for DEL, and IPAM still
    /// releases the address. On error the entry is kept so a later call retries.
    pub async fn teardown(&self, sandbox_id: &str) -> Result<()> {
        validate_id(sandbox_id)?;
        let guard = self.lock_sandbox(sandbox_id).await;
        let r = async {
            match self.find_entry(sandbox_id).await? {
                Some((path, entry)) => self.del_entry(&path, &entry).await,
                None => Ok(()),
            }
        }
        .await;
        self.unlock_sandbox(guard);
        r
    }

    /// Runs CHECK through the cached chain with the cached result (CNI spec ≥ 0.4.0). A list
    /// with `disableCheck` or an older version passes without running plugins.
    pub async fn check(&self, sandbox_id: &str) -> Result<()> {
        validate_id(sandbox_id)?;
        let guard = self.lock_sandbox(sandbox_id).await;
        let r = self.check_locked(sandbox_id).await;
        self.unlock_sandbox(guard);
        r
    }

    async fn check_locked(&self, id: &str) -> Result<()> {
        let not_attached = || CniError::NotAttached {
            sandbox_id: id.to_string(),
        };
        let (path, entry) = self.find_entry(id).await?.ok_or_else(not_attached)?;
        let result = entry.result.as_ref().ok_or_else(not_attached)?;
        let network = NetworkConfigList::from_value(entry.config.clone(), &path)?;
        if network.disable_check || network.cni_version.starts_with("0.3") {
            return Ok(());
        }
        let args = InvokeArgs {
            command: CniCommand::Check,
            network: &network.name,
            container_id: id,
            netns: Some(&entry.netns),
            ifname: &entry.ifname,
            cni_args: &entry.cni_args,
            bin_dirs: &self.config.bin_dirs,
            timeout: self.timeout(),
        };
        for plugin in &network.plugins {
            let bin = exec::find_plugin(&plugin.plugin_type, &self.config.bin_dirs)?;
            let stdin = plugin_stdin(&network, plugin, Some(result), &entry.capability_args)?;
            exec::invoke(&plugin.plugin_type, &bin, &args, &stdin).await?;
        }
        Ok(())
    }

    /// The cached attachment of a sandbox (its IPs after a daemon restart), if any.
    pub async fn attachment(&self, sandbox_id: &str) -> Result<Option<PodNetworkStatus>> {
        validate_id(sandbox_id)?;
        match self.find_entry(sandbox_id).await? {
            Some((path, entry)) => match &entry.result {
                Some(r) => status_from(&entry.network, r, &path).map(Some),
                None => Ok(None),
            },
            None => Ok(None),
        }
    }

    /// Sandbox ids with a cache entry: at start-up, the runtime tears down those whose sandbox
    /// no longer exists (a crash interrupted their StopPodSandbox).
    pub async fn attached_sandbox_ids(&self) -> Result<Vec<String>> {
        let cache = self.cache.clone();
        tokio::task::spawn_blocking(move || cache.container_ids())
            .await
            .map_err(join_err(&self.config.cache_dir_in(Path::new(""))))?
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.config.plugin_timeout_secs.max(1))
    }

    /// The sandbox's cache entry. One a power loss tore is rebuilt for DEL from what is
    /// known: the id, the network in use now, no netns (it died with the boot), no capability
    /// arguments and no result, which plugins take on DEL (host-local releases by id and
    /// ifname, as after libcni loses its cache).
    async fn find_entry(&self, id: &str) -> Result<Option<(PathBuf, CacheEntry)>> {
        let cache = self.cache.clone();
        let id2 = id.to_string();
        let found = tokio::task::spawn_blocking(move || cache.find(&id2, POD_IFNAME))
            .await
            .map_err(join_err(Path::new(id)))??;
        match found {
            None => Ok(None),
            Some((path, Ok(entry))) => Ok(Some((path, entry))),
            Some((path, Err(err))) => {
                tracing::warn!(sandbox = id, %err, "CNI cache entry unreadable, DEL with the network in use");
                let network = self.current_network().await?;
                let entry = CacheEntry::new(
                    &network.name,
                    id,
                    POD_IFNAME,
                    Path::new(""),
                    network.raw.clone(),
                    // The pod's name and namespace went with the entry.
                    format!("IgnoreUnknown=1;K8S_POD_INFRA_CONTAINER_ID={id}"),
                    serde_json::Map::new(),
                );
                Ok(Some((path, entry)))
            }
        }
    }

    async fn store(&self, entry: CacheEntry) -> Result<PathBuf> {
        let cache = self.cache.clone();
        tokio::task::spawn_blocking(move || cache.store(&entry))
            .await
            .map_err(join_err(Path::new("cache")))?
    }

    async fn remove(&self, path: &Path) -> Result<()> {
        let cache = self.cache.clone();
        let p = path.to_path_buf();
        tokio::task::spawn_blocking(move || cache.remove(&p))
            .await
            .map_err(join_err(path))?
    }

    async fn del_entry(&self, path: &Path, entry: &CacheEntry) -> Result<()> {
        let network = NetworkConfigList::from_value(entry.config.clone(), path)?;
        let netns = netns::is_netns(&entry.netns).then_some(entry.netns.as_path());
        self.del_plugins(&network, entry, network.plugins.len(), netns)
            .await?;
        rootstock_fsutil::failpoint::hit("cni.del-done");
        self.remove(path).await?;
        tracing::info!(sandbox = %entry.container_id, network = %network.name, "CNI DEL done");
        Ok(())
    }

    /// DEL of `plugins[..count]` in reverse order. Every plugin is tried even when one fails
    /// (so a failing portmap does not keep bridge/host-local from releasing the IP); the first
    /// error is returned.
    async fn del_plugins(
        &self,
        network: &NetworkConfigList,
        entry: &CacheEntry,
        count: usize,
        netns: Option<&Path>,
    ) -> Result<()> {
        let args = InvokeArgs {
            command: CniCommand::Del,
            network: &network.name,
            container_id: &entry.container_id,
            netns,
            ifname: &entry.ifname,
            cni_args: &entry.cni_args,
            bin_dirs: &self.config.bin_dirs,
            timeout: self.timeout(),
        };
        // prevResult on DEL exists since spec 0.4.0.
        let prev = entry
            .result
            .as_ref()
            .filter(|_| !network.cni_version.starts_with("0.3"));
        let mut first_err = None;
        for plugin in network.plugins.iter().take(count).rev() {
            let r = async {
                let bin = exec::find_plugin(&plugin.plugin_type, &self.config.bin_dirs)?;
                let stdin = plugin_stdin(network, plugin, prev, &entry.capability_args)?;
                exec::invoke(&plugin.plugin_type, &bin, &args, &stdin).await
            }
            .await;
            if let Err(err) = r {
                tracing::warn!(sandbox = %entry.container_id, %err, "CNI DEL failed");
                first_err.get_or_insert(err);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

fn join_err(path: &Path) -> impl FnOnce(tokio::task::JoinError) -> CniError + '_ {
    move |e| CniError::Cache {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    }
}

fn status_from(network: &str, result: &Value, path: &Path) -> Result<PodNetworkStatus> {
    let result = CniResult::parse(result).map_err(|reason| CniError::CorruptCache {
        path: path.to_path_buf(),
        reason,
    })?;
    Ok(PodNetworkStatus {
        network: network.to_string(),
        ips: result.pod_ips(),
        result,
    })
}

/// The sandbox id becomes `CNI_CONTAINERID`, a cache file name and part of iptables chain
/// names: it must be in rootstock's one id alphabet, which libcni accepts too.
fn validate_id(id: &str) -> Result<()> {
    rootstock_fsutil::validate_id(id).map_err(|e| CniError::InvalidSandboxId {
        sandbox_id: id.to_string(),
        reason: e.reason().to_string(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn sandbox_ids_are_validated() {
        assert!(validate_id("0123abcdef").is_ok());
        for bad in ["", "../x", "a b", "-x", "a/b", "a+b"] {
            let err = validate_id(bad).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument, "{bad}");
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn manager_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<CniManager>();
    }
}
