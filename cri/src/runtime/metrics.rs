//! ListMetricDescriptors and ListPodSandboxMetrics: the cAdvisor-compatible metrics kubelet
//! serves on `/metrics/cadvisor` when `PodAndContainerStatsFromCRI` is on
//! (`pkg/kubelet/metrics/collectors/cri_metrics.go` turns each `Metric` into a Prometheus
//! sample named by its descriptor). The names, help texts, label keys and families are
//! CRI-O's (`internal/lib/statsserver/descriptors.go`), from the same cgroup and netlink
//! reads as the stats RPCs:
//!
//! - labels `id, image, namespace, pod, container` on every metric, plus `cpu`
//!   (`total`: per-CPU usage is not read), `interface`, or `failure_type, scope`;
//! - network metrics are the pod's (its namespace's interfaces), with `container="POD"`
//!   as cAdvisor labels the pod's own cgroup; everything else is per running container.
//!   Unlike CRI-O, containers carry their pod's namespace and name too, so
//!   `container_memory_working_set_bytes{namespace=…,pod=…}` selects as it does on cAdvisor;
//! - values are `UInt64Value`s, so seconds are whole seconds, as CRI-O sends them;
//! - `container_last_seen` is always there; `[metrics] included_pod_metrics` picks the
//!   families (CRI-O's names: cpu, memory, network, oom, process, disk).

use k8s_cri::v1::{
    ContainerMetrics, ListMetricDescriptorsResponse, ListPodSandboxMetricsResponse, Metric,
    MetricDescriptor, MetricType, PodSandboxMetrics, UInt64Value,
};
use rootstock_cni::netns;
use rootstock_runtime::{ContainerInfo, ContainerUsage, SandboxInfo, SandboxState};

use super::RuntimeApi;
use super::meta::{ContainerMeta, SandboxMeta};
use crate::error::CriError;
use crate::metrics::PodMetricFamily as F;

const BASE: &[&str] = &["id", "image", "namespace", "pod", "container"];

/// One metric: its family, name, help, the labels after [`BASE`], and its type.
struct Desc {
    family: Option<F>,
    name: &'static str,
    help: &'static str,
    extra: &'static [&'static str],
    kind: MetricType,
}

const fn desc(
    family: Option<F>,
    name: &'static str,
    help: &'static str,
    extra: &'static [&'static str],
    kind: MetricType,
) -> Desc {
    Desc {
        family,
        name,
        help,
        extra,
        kind,
    }
}

use MetricType::{Counter, Gauge};

const IFACE: &[&str] = &["interface"];
const NONE: &[&str] = &[];

/// Every metric served; `family: None` is always on.
#[rustfmt::skip]
const DESCS: &[Desc] = &[
    desc(None, "container_last_seen", "Last time a container was seen by the exporter", NONE, Gauge),
    desc(Some(F::Cpu), "container_cpu_usage_seconds_total", "Cumulative CPU time consumed in seconds.", &["cpu"], Counter),
    desc(Some(F::Memory), "container_memory_cache", "Number of bytes of page cache memory.", NONE, Gauge),
    desc(Some(F::Memory), "container_memory_rss", "Size of RSS in bytes.", NONE, Gauge),
    desc(Some(F::Memory), "container_memory_usage_bytes", "Current memory usage in bytes, including all memory regardless of when it was accessed", NONE, Gauge),
    desc(Some(F::Memory), "container_memory_working_set_bytes", "Current working set in bytes.", NONE, Gauge),
    desc(Some(F::Memory), "container_memory_failures_total", "Cumulative count of memory allocation failures.", &["failure_type", "scope"], Counter),
    desc(Some(F::Network), "container_network_receive_bytes_total", "Cumulative count of bytes received", IFACE, Counter),
    desc(Some(F::Network), "container_network_receive_packets_total", "Cumulative count of packets received", IFACE, Counter),
    desc(Some(F::Network), "container_network_receive_packets_dropped_total", "Cumulative count of packets dropped while receiving", IFACE, Counter),
    desc(Some(F::Network), "container_network_receive_errors_total", "Cumulative count of errors encountered while receiving", IFACE, Counter),
    desc(Some(F::Network), "container_network_transmit_bytes_total", "Cumulative count of bytes transmitted", IFACE, Counter),
    desc(Some(F::Network), "container_network_transmit_packets_total", "Cumulative count of packets transmitted", IFACE, Counter),
    desc(Some(F::Network), "container_network_transmit_packets_dropped_total", "Cumulative count of packets dropped while transmitting", IFACE, Counter),
    desc(Some(F::Network), "container_network_transmit_errors_total", "Cumulative count of errors encountered while transmitting", IFACE, Counter),
    desc(Some(F::Oom), "container_oom_events_total", "Count of out of memory events observed for the container", NONE, Counter),
    desc(Some(F::Process), "container_processes", "Number of processes running inside the container.", NONE, Gauge),
    desc(Some(F::Disk), "container_fs_usage_bytes", "Current filesystem usage in bytes.", NONE, Gauge),
];

/// The metrics of one object (a pod or a container) under one set of base label values.
struct Out<'a> {
    families: &'a [F],
    base: [String; 5],
    metrics: Vec<Metric>,
}

impl Out<'_> {
    /// Adds `name` with `value` (nothing when the value could not be read or the family is
    /// not included).
    fn push(&mut self, name: &str, extra: &[&str], value: Option<u64>) {
        let Some(value) = value else { return };
        let Some(d) = DESCS.iter().find(|d| d.name == name) else {
            return;
        };
        if d.family.is_some_and(|f| !self.families.contains(&f)) {
            return;
        }
        let mut label_values = self.base.to_vec();
        label_values.extend(extra.iter().map(|v| (*v).to_owned()));
        self.metrics.push(Metric {
            name: name.to_owned(),
            // Gathered live for this call: 0, as the CRI asks.
            timestamp: 0,
            metric_type: d.kind as i32,
            label_values,
            value: Some(UInt64Value { value }),
        });
    }
}

impl RuntimeApi {
    pub(super) fn handle_list_metric_descriptors(&self) -> ListMetricDescriptorsResponse {
        let families = &self.config.metrics.included_pod_metrics;
        ListMetricDescriptorsResponse {
            descriptors: DESCS
                .iter()
                .filter(|d| d.family.is_none_or(|f| families.contains(&f)))
                .map(|d| MetricDescriptor {
                    name: d.name.to_owned(),
                    help: d.help.to_owned(),
                    label_keys: BASE
                        .iter()
                        .chain(d.extra)
                        .map(|k| (*k).to_owned())
                        .collect(),
                })
                .collect(),
        }
    }

    /// Reads cgroup files and netlink: the caller runs it off the async workers.
    pub(super) fn handle_list_pod_sandbox_metrics(
        &self,
    ) -> Result<ListPodSandboxMetricsResponse, CriError> {
        let mut pod_metrics = Vec::new();
        for sandbox in self.rt.list_sandboxes() {
            if sandbox.record.state != SandboxState::Ready {
                continue;
            }
            match self.rt.sandbox_usage(&sandbox) {
                Ok(usage) => pod_metrics.push(self.pod_metrics(&sandbox, &usage.containers)),
                // Removed meanwhile: not an error for a list.
                Err(e) if e.kind() == rootstock_runtime::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(ListPodSandboxMetricsResponse { pod_metrics })
    }

    fn pod_metrics(
        &self,
        sandbox: &SandboxInfo,
        containers: &[(ContainerInfo, ContainerUsage)],
    ) -> PodSandboxMetrics {
        let families = &self.config.metrics.included_pod_metrics;
        let meta = SandboxMeta::of(sandbox);
        let (namespace, pod) = (meta.namespace.clone(), meta.name.clone());
        let now_secs = (rootstock_runtime::util::now_unix_nanos() / 1_000_000_000) as u64;
        let mut own = Out {
            families,
            base: [
                sandbox.record.id.to_string(),
                String::new(),
                namespace.clone(),
                pod.clone(),
                "POD".to_owned(),
            ],
            metrics: Vec::new(),
        };
        own.push("container_last_seen", &[], Some(now_secs));
        // hostNetwork pods have no interfaces of their own to report.
        if families.contains(&F::Network)
            && let Some(ns) = sandbox.netns_path()
        {
            match netns::interface_stats(&ns) {
                Ok(interfaces) => {
                    for i in &interfaces {
                        let iface: &[&str] = &[i.name.as_str()];
                        for (name, v) in [
                            ("container_network_receive_bytes_total", i.rx_bytes),
                            ("container_network_receive_packets_total", i.rx_packets),
                            (
                                "container_network_receive_packets_dropped_total",
                                i.rx_dropped,
                            ),
                            ("container_network_receive_errors_total", i.rx_errors),
                            ("container_network_transmit_bytes_total", i.tx_bytes),
                            ("container_network_transmit_packets_total", i.tx_packets),
                            (
                                "container_network_transmit_packets_dropped_total",
                                i.tx_dropped,
                            ),
                            ("container_network_transmit_errors_total", i.tx_errors),
                        ] {
                            own.push(name, iface, Some(v));
                        }
                    }
                }
                Err(e) => tracing::debug!(sandbox = %sandbox.record.id, "network metrics: {e}"),
            }
        }
        let container_metrics = containers
            .iter()
            .map(|(info, usage)| {
                let cmeta = ContainerMeta::of(info);
                let mut out = Out {
                    families,
                    base: [
                        info.record.id.to_string(),
                        cmeta.image_tag.clone(),
                        namespace.clone(),
                        pod.clone(),
                        cmeta.name.clone(),
                    ],
                    metrics: Vec::new(),
                };
                container_values(&mut out, usage, now_secs);
                ContainerMetrics {
                    container_id: info.record.id.to_string(),
                    metrics: out.metrics,
                }
            })
            .collect();
        PodSandboxMetrics {
            pod_sandbox_id: sandbox.record.id.to_string(),
            metrics: own.metrics,
            container_metrics,
        }
    }
}

fn container_values(out: &mut Out<'_>, usage: &ContainerUsage, now_secs: u64) {
    let u = &usage.cgroup;
    out.push("container_last_seen", &[], Some(now_secs));
    out.push(
        "container_cpu_usage_seconds_total",
        &["total"],
        u.cpu_usage_ns.map(|ns| ns / 1_000_000_000),
    );
    out.push("container_memory_cache", &[], u.memory_cache_bytes);
    out.push("container_memory_rss", &[], u.memory_rss_bytes);
    out.push("container_memory_usage_bytes", &[], u.memory_usage_bytes);
    out.push(
        "container_memory_working_set_bytes",
        &[],
        u.memory_working_set_bytes,
    );
    // cAdvisor's pairs: the counters are hierarchical, so both scopes read the same.
    for scope in ["container", "hierarchy"] {
        out.push(
            "container_memory_failures_total",
            &["pgfault", scope],
            u.page_faults,
        );
        out.push(
            "container_memory_failures_total",
            &["pgmajfault", scope],
            u.major_page_faults,
        );
    }
    out.push("container_oom_events_total", &[], u.oom_kills);
    out.push("container_processes", &[], u.pids);
    out.push(
        "container_fs_usage_bytes",
        &[],
        usage.writable_layer.map(|l| l.bytes),
    );
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn every_descriptor_is_unique_and_cadvisor_named() {
        let mut names: Vec<&str> = DESCS.iter().map(|d| d.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DESCS.len());
        assert!(names.iter().all(|n| n.starts_with("container_")));
        // Counters end in _total, as Prometheus (and kubelet's collector) expect.
        for d in DESCS {
            assert_eq!(d.kind == Counter, d.name.ends_with("_total"), "{}", d.name);
        }
    }

    #[test]
    fn an_excluded_family_and_an_unread_value_add_nothing() {
        let families = [F::Memory];
        let mut out = Out {
            families: &families,
            base: Default::default(),
            metrics: Vec::new(),
        };
        out.push("container_cpu_usage_seconds_total", &["total"], Some(3));
        out.push("container_memory_rss", &[], None);
        out.push("container_memory_cache", &[], Some(4096));
        out.push("container_last_seen", &[], Some(1));
        let names: Vec<&str> = out.metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["container_memory_cache", "container_last_seen"]);
        assert_eq!(out.metrics[0].label_values.len(), BASE.len());
    }
}
