//! What an operator sees besides the CRI: the `[metrics]` and `[events]` configuration, the
//! daemon's Prometheus registry ([`registry`]), the tower layer that counts and times every
//! gRPC call ([`grpc`]) and the HTTP endpoint that serves the registry ([`server`]).
//! The CRI metrics RPCs (ListMetricDescriptors, ListPodSandboxMetrics) are in
//! `runtime/metrics.rs`, with the RPC family they belong to.

pub mod grpc;
pub mod registry;
pub mod server;

use serde::{Deserialize, Serialize};

pub use registry::DaemonMetrics;

/// The metric families ListPodSandboxMetrics can serve, named as CRI-O's
/// `included_pod_metrics` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PodMetricFamily {
    /// `container_cpu_usage_seconds_total`.
    Cpu,
    /// `container_memory_{usage,working_set,rss,cache}`, `container_memory_failures_total`.
    Memory,
    /// `container_network_{receive,transmit}_{bytes,packets,errors,packets_dropped}_total`,
    /// per interface, at the pod level.
    Network,
    /// `container_oom_events_total`.
    Oom,
    /// `container_processes`.
    Process,
    /// `container_fs_usage_bytes`, `container_fs_inodes_total`: the writable layer.
    Disk,
}

impl PodMetricFamily {
    /// Every family, the default.
    pub const ALL: [PodMetricFamily; 6] = [
        PodMetricFamily::Cpu,
        PodMetricFamily::Memory,
        PodMetricFamily::Network,
        PodMetricFamily::Oom,
        PodMetricFamily::Process,
        PodMetricFamily::Disk,
    ];
}

/// `[metrics]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `host:port` of the Prometheus endpoint (`GET /metrics`); empty: no endpoint.
    pub address: String,
    /// The families ListPodSandboxMetrics returns.
    pub included_pod_metrics: Vec<PodMetricFamily>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            address: String::new(),
            included_pod_metrics: PodMetricFamily::ALL.to_vec(),
        }
    }
}

impl MetricsConfig {
    /// The endpoint's address, if one is configured; an error names the bad value.
    pub fn socket_addr(&self) -> Result<Option<std::net::SocketAddr>, String> {
        if self.address.is_empty() {
            return Ok(None);
        }
        self.address.parse().map(Some).map_err(|e| {
            format!(
                "{:?} is not an address (host:port, e.g. 127.0.0.1:1338): {e}",
                self.address
            )
        })
    }
}

/// `[events]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Events queued per GetContainerEvents subscriber before it is dropped as too slow.
    pub subscriber_buffer: usize,
}

impl Default for EventsConfig {
    fn default() -> Self {
        // kubelet's evented PLEG reads into a channel of 1000 events; as many here lets a
        // busy node's burst through while a stuck reader is still noticed.
        Self {
            subscriber_buffer: 1000,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn the_address_is_off_when_empty_and_checked_otherwise() {
        let mut c = MetricsConfig::default();
        assert_eq!(c.socket_addr(), Ok(None));
        c.address = "127.0.0.1:1338".into();
        assert_eq!(c.socket_addr().unwrap().unwrap().port(), 1338);
        c.address = "localhost".into();
        assert!(c.socket_addr().unwrap_err().contains("localhost"));
    }
}
