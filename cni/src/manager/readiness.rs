//! Network readiness: the conf dirs read lazily (at most once per poll interval) or by a
//! watcher, the network in use, and the CRI `NetworkReady` condition.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{CniManager, NetworkStatus, lock};
use crate::config::CniConfig;
use crate::conflist::{self, NetworkConfigList};
use crate::error::{CniError, Result};

#[derive(Debug, Default)]
pub(super) struct NetState {
    network: Option<Arc<NetworkConfigList>>,
    rejected: Vec<(PathBuf, String)>,
    scanned_at: Option<Instant>,
}

impl CniManager {
    /// Re-reads the conf dirs now (off the async runtime) and returns the new readiness.
    pub async fn refresh(&self) -> NetworkStatus {
        let dirs = self.config.conf_dirs.clone();
        let scan = tokio::task::spawn_blocking(move || conflist::scan(&dirs))
            .await
            .unwrap_or_default();
        self.apply_scan(scan)
    }

    fn apply_scan(&self, scan: conflist::ScanResult) -> NetworkStatus {
        for (path, why) in &scan.rejected {
            tracing::debug!(path = %path.display(), %why, "CNI config rejected");
        }
        let network = match scan.network {
            Some(n) => Some(n),
            None if self.config.default_network => match NetworkConfigList::builtin_default() {
                Ok(n) => Some(n),
                Err(err) => {
                    tracing::error!(%err, "built-in CNI network is invalid");
                    None
                }
            },
            None => None,
        };
        let mut st = lock(&self.state);
        let old = st
            .network
            .as_ref()
            .map(|n| (n.name.clone(), n.source.clone(), n.raw.clone()));
        let new = network
            .as_ref()
            .map(|n| (n.name.clone(), n.source.clone(), n.raw.clone()));
        if old != new {
            match &network {
                Some(n) => {
                    tracing::info!(network = %n.name, source = %n.source.display(), "CNI network config loaded")
                }
                None => {
                    tracing::warn!(dirs = ?self.config.conf_dirs, "no valid CNI network config")
                }
            }
        }
        st.network = network.map(Arc::new);
        st.rejected = scan.rejected;
        st.scanned_at = Some(Instant::now());
        Self::status_of(&st, &self.config)
    }

    fn status_of(st: &NetState, config: &CniConfig) -> NetworkStatus {
        match &st.network {
            Some(n) => NetworkStatus {
                ready: true,
                reason: String::new(),
                message: format!("network {} from {}", n.name, n.source.display()),
                network: Some(n.name.clone()),
                source: Some(n.source.clone()),
            },
            None => {
                let mut message = format!("no valid CNI network config in {:?}", config.conf_dirs);
                for (path, why) in &st.rejected {
                    message.push_str(&format!("; {}: {why}", path.display()));
                }
                NetworkStatus {
                    ready: false,
                    reason: "NetworkPluginNotReady".into(),
                    message,
                    network: None,
                    source: None,
                }
            }
        }
    }

    fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.config.poll_interval_ms.max(100))
    }

    /// Network readiness. The conf dirs are re-read when the last read is older than the poll
    /// interval, so a config written after start-up is seen without a restart even when no
    /// watcher runs.
    pub async fn status(&self) -> NetworkStatus {
        {
            let st = lock(&self.state);
            if st
                .scanned_at
                .is_some_and(|t| t.elapsed() < self.poll_interval())
            {
                return Self::status_of(&st, &self.config);
            }
        }
        self.refresh().await
    }

    /// Polls the conf dirs every `poll_interval_ms` on the caller's runtime, logging changes.
    /// Stops by itself when the manager is dropped.
    pub fn spawn_watcher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        let interval = self.poll_interval();
        tokio::spawn(async move {
            loop {
                let Some(me) = weak.upgrade() else { return };
                me.refresh().await;
                drop(me);
                tokio::time::sleep(interval).await;
            }
        })
    }

    pub(super) async fn current_network(&self) -> Result<Arc<NetworkConfigList>> {
        let status = self.status().await;
        let st = lock(&self.state);
        st.network.clone().ok_or(CniError::NetworkNotReady {
            reason: status.message,
        })
    }
}
