//! The daemon's Prometheus metrics (`prometheus-client`, OpenMetrics text). Counters and
//! histograms are updated where things happen (the gRPC layer, the pull, sandbox and
//! container start, CNI, exec, RemoveImage's collection); gauges that describe a state
//! (store size, monitors, the daemon's own RSS, fds and threads) are sampled at each scrape
//! from what the runtime and the store already keep, so an idle daemon does no work for
//! them.
//!
//! Names follow containerd's and CRI-O's habits: a `rootstock_` prefix, seconds and bytes
//! in the name, `_total` on counters (added by the encoder).

use std::fmt::Write as _;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use rootstock_imagestore::ImageStore;
use rootstock_runtime::steps::Step;
use rootstock_runtime::{ContainerState, Runtime, SandboxState};

/// `method` (the gRPC method's last segment, `RunPodSandbox`) and `code` (`OK`, `NotFound`…).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcLabels {
    pub method: String,
    pub code: String,
}

/// One gRPC method.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: String,
}

/// The registry host an image came from (`docker.io`, `127.0.0.1:5000`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegistryLabels {
    pub registry: String,
}

/// A pull's registry and whether it succeeded (`ok`, `error`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PullLabels {
    pub registry: String,
    pub result: String,
}

/// A CNI operation (`add`, `del`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CniLabels {
    pub operation: String,
}

/// A step of a pod's start (`pin_namespaces`, `image_lease`, `runtime_create`…).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    pub step: &'static str,
}

/// What kind of exec session (`exec_sync`, `exec`, `attach`, `port_forward`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExecLabels {
    pub kind: String,
}

fn latency() -> Histogram {
    // 1 ms … ~33 s: RPCs that answer from memory up to pod starts behind a slow CNI plugin.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

fn step_latency() -> Histogram {
    // 50 µs … ~1.6 s: the steps of a pod start, most of them well under a millisecond.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

fn long_latency() -> Histogram {
    // 50 ms … ~27 min: pulls.
    Histogram::new(exponential_buckets(0.05, 2.0, 16))
}

/// Every metric of the daemon, and the registry that encodes them.
#[derive(Debug)]
pub struct DaemonMetrics {
    registry: Registry,
    /// gRPC calls finished, by method and status code.
    pub grpc_requests: Family<GrpcLabels, Counter>,
    /// gRPC call latency (for streams: their lifetime), by method.
    pub grpc_seconds: Family<MethodLabels, Histogram, fn() -> Histogram>,
    /// Pulls finished, by registry and result.
    pub pulls: Family<PullLabels, Counter>,
    /// Compressed layer bytes pulls downloaded.
    pub pull_bytes: Family<RegistryLabels, Counter>,
    /// Successful pull durations, by registry.
    pub pull_seconds: Family<RegistryLabels, Histogram, fn() -> Histogram>,
    /// Layers pulls unpacked (those already in the store not counted).
    pub layers_unpacked: Counter,
    /// RemoveImage calls that removed an image (each runs the store's collection).
    pub gc_runs: Counter,
    /// Bytes the store shrank by across those collections.
    pub gc_freed_bytes: Counter,
    /// RunPodSandbox latency, successful calls.
    pub sandbox_start_seconds: Histogram,
    /// StartContainer latency, successful calls.
    pub container_start_seconds: Histogram,
    /// Exec sessions handed out or run, by kind.
    pub exec_sessions: Family<ExecLabels, Counter>,
    /// CNI ADD/DEL latency, successful calls.
    pub cni_seconds: Family<CniLabels, Histogram, fn() -> Histogram>,
    /// CNI ADD/DEL failures.
    pub cni_failures: Family<CniLabels, Counter>,
    /// Durations of the steps of pod starts that succeeded, by step.
    pub step_seconds: Family<StepLabels, Histogram, fn() -> Histogram>,
    store_bytes: Gauge,
    store_inodes: Gauge,
    store_images: Gauge,
    store_trees: Gauge,
    store_layers: Gauge,
    monitors: Gauge,
    event_subscribers: Gauge,
    resident_bytes: Gauge,
    open_fds: Gauge,
    threads: Gauge,
}

impl Default for DaemonMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl DaemonMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("rootstock");
        let m = Self {
            grpc_requests: Family::default(),
            grpc_seconds: Family::new_with_constructor(latency),
            pulls: Family::default(),
            pull_bytes: Family::default(),
            pull_seconds: Family::new_with_constructor(long_latency),
            layers_unpacked: Counter::default(),
            gc_runs: Counter::default(),
            gc_freed_bytes: Counter::default(),
            sandbox_start_seconds: latency(),
            container_start_seconds: latency(),
            exec_sessions: Family::default(),
            cni_seconds: Family::new_with_constructor(latency),
            cni_failures: Family::default(),
            step_seconds: Family::new_with_constructor(step_latency),
            store_bytes: Gauge::default(),
            store_inodes: Gauge::default(),
            store_images: Gauge::default(),
            store_trees: Gauge::default(),
            store_layers: Gauge::default(),
            monitors: Gauge::default(),
            event_subscribers: Gauge::default(),
            resident_bytes: Gauge::default(),
            open_fds: Gauge::default(),
            threads: Gauge::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "grpc_requests",
            "CRI calls finished, by method and gRPC status code",
            m.grpc_requests.clone(),
        );
        r.register(
            "grpc_request_duration_seconds",
            "CRI call latency in seconds (streams: their lifetime), by method",
            m.grpc_seconds.clone(),
        );
        r.register(
            "image_pulls",
            "Image pulls finished, by registry and result",
            m.pulls.clone(),
        );
        r.register(
            "image_pull_bytes",
            "Compressed layer bytes pulls downloaded (layers the store had are not fetched), by registry",
            m.pull_bytes.clone(),
        );
        r.register(
            "image_pull_duration_seconds",
            "Duration of successful image pulls in seconds, by registry",
            m.pull_seconds.clone(),
        );
        r.register(
            "image_layers_unpacked",
            "Layers pulls unpacked into the store (layers it already had not counted)",
            m.layers_unpacked.clone(),
        );
        r.register(
            "image_gc_runs",
            "Image removals that ran the store's collection",
            m.gc_runs.clone(),
        );
        r.register(
            "image_gc_freed_bytes",
            "Bytes the image store shrank by in those collections",
            m.gc_freed_bytes.clone(),
        );
        r.register(
            "pod_sandbox_start_duration_seconds",
            "RunPodSandbox latency in seconds (successful calls)",
            m.sandbox_start_seconds.clone(),
        );
        r.register(
            "container_start_duration_seconds",
            "StartContainer latency in seconds (successful calls)",
            m.container_start_seconds.clone(),
        );
        r.register(
            "exec_sessions",
            "Exec sessions run (exec_sync) or handed out (exec, attach, port_forward)",
            m.exec_sessions.clone(),
        );
        r.register(
            "cni_operation_duration_seconds",
            "CNI ADD and DEL latency in seconds (successful calls)",
            m.cni_seconds.clone(),
        );
        r.register(
            "pod_start_step_duration_seconds",
            "Duration of each step of RunPodSandbox, CreateContainer and StartContainer in \
             seconds, successful steps only, by step",
            m.step_seconds.clone(),
        );
        r.register(
            "cni_operation_failures",
            "CNI ADD and DEL failures",
            m.cni_failures.clone(),
        );
        r.register(
            "image_store_bytes",
            "Bytes the image store uses on disk",
            m.store_bytes.clone(),
        );
        r.register(
            "image_store_inodes",
            "Inodes the image store uses (file objects, layer and image trees)",
            m.store_inodes.clone(),
        );
        r.register(
            "image_store_images",
            "Images in the store",
            m.store_images.clone(),
        );
        r.register(
            "image_store_trees",
            "Flattened image trees in the store",
            m.store_trees.clone(),
        );
        r.register(
            "image_store_layers",
            "Unpacked layer trees in the store",
            m.store_layers.clone(),
        );
        r.register(
            "monitors",
            "Live rootstock-monitor processes (containers not exited, pod inits)",
            m.monitors.clone(),
        );
        r.register(
            "container_event_subscribers",
            "GetContainerEvents streams open",
            m.event_subscribers.clone(),
        );
        r.register(
            "process_resident_memory_bytes",
            "The daemon's resident set size in bytes",
            m.resident_bytes.clone(),
        );
        r.register(
            "process_open_fds",
            "The daemon's open file descriptors",
            m.open_fds.clone(),
        );
        r.register("process_threads", "The daemon's threads", m.threads.clone());
        Self { registry, ..m }
    }

    /// One gRPC call finished.
    pub fn grpc_done(&self, method: &str, code: tonic::Code, took: Duration) {
        self.grpc_requests
            .get_or_create(&GrpcLabels {
                method: method.to_owned(),
                code: code_name(code),
            })
            .inc();
        self.grpc_seconds
            .get_or_create(&MethodLabels {
                method: method.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// One pull finished: `Ok((bytes, layers unpacked))` or an error.
    pub fn pull_done(&self, registry: &str, result: Result<(u64, usize), ()>, took: Duration) {
        let ok = result.is_ok();
        self.pulls
            .get_or_create(&PullLabels {
                registry: registry.to_owned(),
                result: if ok { "ok" } else { "error" }.to_owned(),
            })
            .inc();
        if let Ok((bytes, layers)) = result {
            let labels = RegistryLabels {
                registry: registry.to_owned(),
            };
            self.pull_bytes.get_or_create(&labels).inc_by(bytes);
            self.pull_seconds
                .get_or_create(&labels)
                .observe(took.as_secs_f64());
            self.layers_unpacked.inc_by(layers as u64);
        }
    }

    /// One CNI ADD or DEL finished.
    pub fn cni_done(&self, operation: &str, ok: bool, took: Duration) {
        let labels = CniLabels {
            operation: operation.to_owned(),
        };
        if ok {
            self.cni_seconds
                .get_or_create(&labels)
                .observe(took.as_secs_f64());
        } else {
            self.cni_failures.get_or_create(&labels).inc();
        }
    }

    /// A step of a pod's start took `took`.
    pub fn step_done(&self, step: Step, took: Duration) {
        self.step_seconds
            .get_or_create(&StepLabels { step: step.name() })
            .observe(took.as_secs_f64());
    }

    /// One exec session of `kind`.
    pub fn exec_session(&self, kind: &str) {
        self.exec_sessions
            .get_or_create(&ExecLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Samples the gauges, then encodes everything (OpenMetrics text). Reads memory, a
    /// few `/proc/self` files and one directory: cheap, but not for an async worker.
    pub fn scrape(&self, rt: &Runtime, store: &ImageStore) -> String {
        let usage = store.fs_usage();
        self.store_bytes.set(gauge(usage.used_bytes));
        self.store_inodes.set(gauge(usage.inodes_used));
        self.store_images.set(gauge(store.list().len() as u64));
        // The metadata database (redb, in memory pages mostly): a read, never a walk.
        match (store.metadata().trees(), store.metadata().layers()) {
            (Ok(trees), Ok(layers)) => {
                self.store_trees.set(gauge(trees.len() as u64));
                self.store_layers.set(gauge(layers.len() as u64));
            }
            (Err(e), _) | (_, Err(e)) => tracing::debug!("metrics: store metadata: {e}"),
        }
        let containers = rt
            .list_containers()
            .iter()
            .filter(|c| {
                c.record.monitor.is_some()
                    && matches!(
                        c.record.state,
                        ContainerState::Created | ContainerState::Running
                    )
            })
            .count();
        let pod_inits = rt
            .list_sandboxes()
            .iter()
            .filter(|s| s.record.pod_init.is_some() && s.record.state == SandboxState::Ready)
            .count();
        self.monitors.set(gauge((containers + pod_inits) as u64));
        self.event_subscribers
            .set(gauge(rt.events().subscriber_count() as u64));
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let kb = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        self.resident_bytes
            .set(gauge(kb("VmRSS:").saturating_mul(1024)));
        self.threads.set(gauge(kb("Threads:")));
        let fds = std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count);
        self.open_fds.set(gauge(fds as u64));
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            // Only a formatter error, which writing to a String never returns.
            let _ = writeln!(out, "# encoding failed: {e}");
        }
        out
    }
}

/// gRPC's own names for codes (`OK`, `Canceled`, `NotFound`), as grpc-go's and so
/// containerd's and CRI-O's metrics spell them; tonic's Debug says `Ok`, `Cancelled`.
fn code_name(code: tonic::Code) -> String {
    match code {
        tonic::Code::Ok => "OK".to_owned(),
        tonic::Code::Cancelled => "Canceled".to_owned(),
        other => format!("{other:?}"),
    }
}

fn gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn calls_pulls_and_cni_are_counted_with_their_labels() {
        let m = DaemonMetrics::new();
        m.grpc_done("PullImage", tonic::Code::Ok, Duration::from_millis(30));
        m.grpc_done("PullImage", tonic::Code::NotFound, Duration::from_millis(3));
        m.pull_done("127.0.0.1:5000", Ok((2048, 3)), Duration::from_millis(200));
        m.cni_done("add", false, Duration::ZERO);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &m.registry).unwrap();
        for want in [
            r#"rootstock_grpc_requests_total{method="PullImage",code="OK"} 1"#,
            r#"rootstock_grpc_requests_total{method="PullImage",code="NotFound"} 1"#,
            r#"rootstock_grpc_request_duration_seconds_count{method="PullImage"} 2"#,
            r#"rootstock_image_pull_bytes_total{registry="127.0.0.1:5000"} 2048"#,
            "rootstock_image_layers_unpacked_total 3",
            r#"rootstock_cni_operation_failures_total{operation="add"} 1"#,
            "# EOF",
        ] {
            assert!(out.contains(want), "{want} missing from\n{out}");
        }
    }
}
