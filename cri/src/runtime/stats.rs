//! ContainerStats, ListContainerStats, PodSandboxStats, ListPodSandboxStats: cgroup counters
//! read per call (a few small files), the CPU rate since the previous call, the writable
//! layer from the runtime's cache, and the pod's interfaces over netlink in its network
//! namespace. A pod's numbers are the runtime's `sandbox_usage`: its own cgroup, which is
//! hierarchical and so covers its containers (and anything else kubelet put there), or the
//! sum of its containers when the pod cgroup cannot be read.
//!
//! Only running containers are reported, as containerd does: an exited container has no
//! cgroup left to read, and kubelet takes its last numbers from its own cache.

use k8s_cri::v1::{
    ContainerAttributes, ContainerStats, ContainerStatsRequest, ContainerStatsResponse, CpuUsage,
    FilesystemIdentifier, FilesystemUsage, LinuxPodSandboxStats, ListContainerStatsRequest,
    ListContainerStatsResponse, ListPodSandboxStatsRequest, ListPodSandboxStatsResponse,
    MemoryUsage, NetworkInterfaceUsage, NetworkUsage, PodSandboxAttributes, PodSandboxStats,
    PodSandboxStatsRequest, PodSandboxStatsResponse, ProcessUsage, UInt64Value,
};
use std::path::Path;

use rootstock_cni::netns::{self, InterfaceStats};
use rootstock_runtime::stats::{CgroupUsage, CpuRates};
use rootstock_runtime::{ContainerInfo, ContainerState, ContainerUsage, SandboxInfo};

use super::meta::{ContainerMeta, SandboxMeta, sandbox_of};
use super::{RuntimeApi, labels_match};
use crate::error::CriError;

fn u64v(v: Option<u64>) -> Option<UInt64Value> {
    v.map(|value| UInt64Value { value })
}

/// CPU counters; `key` names the container or pod whose previous sample gives the rate.
fn cpu(rates: &CpuRates, key: &str, u: &CgroupUsage) -> CpuUsage {
    CpuUsage {
        timestamp: u.timestamp_unix_nanos,
        usage_core_nano_seconds: u64v(u.cpu_usage_ns),
        usage_nano_cores: u
            .cpu_usage_ns
            .and_then(|ns| rates.rate(key, u.timestamp_unix_nanos, ns))
            .map(|value| UInt64Value { value }),
    }
}

fn memory(u: &CgroupUsage) -> MemoryUsage {
    MemoryUsage {
        timestamp: u.timestamp_unix_nanos,
        working_set_bytes: u64v(u.memory_working_set_bytes),
        available_bytes: u64v(u.memory_available_bytes()),
        usage_bytes: u64v(u.memory_usage_bytes),
        rss_bytes: u64v(u.memory_rss_bytes),
        page_faults: u64v(u.page_faults),
        major_page_faults: u64v(u.major_page_faults),
    }
}

/// A pod's key in the CPU rate samples (container and sandbox ids share one map).
pub(super) fn pod_rate_key(sandbox_id: &str) -> String {
    format!("pod/{sandbox_id}")
}

/// The pod's default interface, as kubelet names it (CNI's `CNI_IFNAME`).
const DEFAULT_INTERFACE: &str = "eth0";

/// The pod's interfaces from its pinned network namespace (netlink), so a pod whose
/// containers have all exited still reports them. `None` when they cannot be read.
fn network(sandbox: &SandboxInfo, netns: &Path) -> Option<NetworkUsage> {
    let timestamp = rootstock_runtime::util::now_unix_nanos();
    let interfaces = match netns::interface_stats(netns) {
        Ok(i) => i,
        // Stopped meanwhile (namespace unpinned): no numbers this time.
        Err(e) => {
            tracing::debug!(sandbox = %sandbox.record.id, "network stats: {e}");
            return None;
        }
    };
    let cri = |i: &InterfaceStats| NetworkInterfaceUsage {
        name: i.name.clone(),
        rx_bytes: Some(UInt64Value { value: i.rx_bytes }),
        rx_errors: Some(UInt64Value { value: i.rx_errors }),
        tx_bytes: Some(UInt64Value { value: i.tx_bytes }),
        tx_errors: Some(UInt64Value { value: i.tx_errors }),
    };
    Some(NetworkUsage {
        timestamp,
        default_interface: interfaces
            .iter()
            .find(|i| i.name == DEFAULT_INTERFACE)
            .map(cri),
        interfaces: interfaces.iter().map(cri).collect(),
    })
}

impl RuntimeApi {
    /// One container's stats from its usage.
    fn stats_of(&self, info: &ContainerInfo, usage: &ContainerUsage) -> ContainerStats {
        let meta = ContainerMeta::of(info);
        let layer = usage.writable_layer.map(|l| FilesystemUsage {
            timestamp: l.timestamp_unix_nanos,
            fs_id: Some(FilesystemIdentifier {
                mountpoint: usage.upper_dir.display().to_string(),
            }),
            used_bytes: Some(UInt64Value { value: l.bytes }),
            inodes_used: Some(UInt64Value { value: l.inodes }),
        });
        ContainerStats {
            attributes: Some(ContainerAttributes {
                id: info.record.id.to_string(),
                metadata: Some(meta.metadata()),
                labels: meta.labels,
                annotations: meta.annotations,
            }),
            cpu: Some(cpu(&self.cpu_rates, info.record.id.as_str(), &usage.cgroup)),
            memory: Some(memory(&usage.cgroup)),
            writable_layer: layer,
            swap: None,
        }
    }

    /// One container's stats, its usage read now.
    fn one_container_stats(&self, info: &ContainerInfo) -> Result<ContainerStats, CriError> {
        let usage = self.rt.container_usage(&info.record.id)?;
        Ok(self.stats_of(info, &usage))
    }

    fn running_containers(&self) -> impl Iterator<Item = ContainerInfo> + use<> {
        self.rt
            .list_containers()
            .into_iter()
            .filter(|c| matches!(c.record.state, ContainerState::Running))
    }

    pub(super) fn handle_container_stats(
        &self,
        req: ContainerStatsRequest,
    ) -> Result<ContainerStatsResponse, CriError> {
        let id = self.container_id(&req.container_id)?;
        let info = self.rt.container(&id)?;
        Ok(ContainerStatsResponse {
            stats: Some(self.one_container_stats(&info)?),
        })
    }

    pub(super) fn handle_list_container_stats(
        &self,
        req: ListContainerStatsRequest,
    ) -> Result<ListContainerStatsResponse, CriError> {
        let mut filter = req.filter.unwrap_or_default();
        filter.id = self.container_filter(&filter.id)?;
        filter.pod_sandbox_id = self.sandbox_filter(&filter.pod_sandbox_id)?;
        let mut stats = Vec::new();
        for c in self.running_containers() {
            if !filter.id.is_empty() && c.record.id.as_str() != filter.id {
                continue;
            }
            let meta = ContainerMeta::of(&c);
            if (!filter.pod_sandbox_id.is_empty() && sandbox_of(&c) != filter.pod_sandbox_id)
                || !labels_match(&meta.labels, &filter.label_selector)
            {
                continue;
            }
            match self.one_container_stats(&c) {
                Ok(s) => stats.push(s),
                // Removed between the listing and the read: not an error for a list.
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(ListContainerStatsResponse { stats })
    }

    fn one_sandbox_stats(&self, sandbox: &SandboxInfo) -> Result<PodSandboxStats, CriError> {
        let meta = SandboxMeta::of(sandbox);
        let id = sandbox.record.id.to_string();
        let pod = self.rt.sandbox_usage(sandbox)?;
        let containers = pod
            .containers
            .iter()
            .map(|(info, usage)| self.stats_of(info, usage))
            .collect();
        let usage = pod.cgroup;
        let pod_cpu = cpu(&self.cpu_rates, &pod_rate_key(&id), &usage);
        Ok(PodSandboxStats {
            attributes: Some(PodSandboxAttributes {
                id,
                metadata: Some(meta.metadata()),
                labels: meta.labels,
                annotations: meta.annotations,
            }),
            linux: Some(LinuxPodSandboxStats {
                cpu: Some(pod_cpu),
                memory: Some(memory(&usage)),
                // hostNetwork pods have no namespace of their own: the node's interfaces
                // are not the pod's to report. A stopped pod has none left.
                network: sandbox.netns_path().and_then(|ns| network(sandbox, &ns)),
                process: Some(ProcessUsage {
                    timestamp: usage.timestamp_unix_nanos,
                    process_count: u64v(usage.pids),
                }),
                containers,
            }),
            windows: None,
        })
    }

    pub(super) fn handle_pod_sandbox_stats(
        &self,
        req: PodSandboxStatsRequest,
    ) -> Result<PodSandboxStatsResponse, CriError> {
        let id = self.sandbox_id(&req.pod_sandbox_id)?;
        let sandbox = self.rt.sandbox(&id)?;
        Ok(PodSandboxStatsResponse {
            stats: Some(self.one_sandbox_stats(&sandbox)?),
        })
    }

    pub(super) fn handle_list_pod_sandbox_stats(
        &self,
        req: ListPodSandboxStatsRequest,
    ) -> Result<ListPodSandboxStatsResponse, CriError> {
        let mut filter = req.filter.unwrap_or_default();
        filter.id = self.sandbox_filter(&filter.id)?;
        let mut stats = Vec::new();
        for sandbox in self.rt.list_sandboxes() {
            if !filter.id.is_empty() && sandbox.record.id.as_str() != filter.id {
                continue;
            }
            if !labels_match(&SandboxMeta::of(&sandbox).labels, &filter.label_selector) {
                continue;
            }
            match self.one_sandbox_stats(&sandbox) {
                Ok(s) => stats.push(s),
                // Removed between the listing and the read: not an error for a list.
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(ListPodSandboxStatsResponse { stats })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn cgroup_counters_map_to_cri_usage_with_a_rate_from_the_second_sample() {
        let rates = CpuRates::default();
        let mut u = CgroupUsage {
            timestamp_unix_nanos: 1_000_000_000,
            cpu_usage_ns: Some(2_000_000_000),
            memory_usage_bytes: Some(500),
            memory_working_set_bytes: Some(300),
            memory_limit_bytes: Some(1000),
            pids: Some(3),
            ..Default::default()
        };
        let first = cpu(&rates, &pod_rate_key("s1"), &u);
        assert_eq!(first.usage_core_nano_seconds.unwrap().value, 2_000_000_000);
        assert!(first.usage_nano_cores.is_none(), "one sample has no rate");
        u.timestamp_unix_nanos = 2_000_000_000;
        u.cpu_usage_ns = Some(2_500_000_000);
        let second = cpu(&rates, &pod_rate_key("s1"), &u);
        assert_eq!(second.usage_nano_cores.unwrap().value, 500_000_000);
        // Containers and pods share the map: a container named like the pod's key is not it.
        assert!(cpu(&rates, "s1", &u).usage_nano_cores.is_none());

        let m = memory(&u);
        assert_eq!(m.working_set_bytes.unwrap().value, 300);
        assert_eq!(m.available_bytes.unwrap().value, 700);
        assert_eq!(m.usage_bytes.unwrap().value, 500);
        assert!(m.rss_bytes.is_none(), "unread stays unset, not 0");
    }
}
