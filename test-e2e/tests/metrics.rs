//! What an operator and kubelet's `PodAndContainerStatsFromCRI` read: ListMetricDescriptors
//! and ListPodSandboxMetrics for a running pod on a real bridge network, and the Prometheus
//! endpoint after a pull and a pod start, parsed by Python's `prometheus_client` (a parser
//! we did not write).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use k8s_cri::v1::*;

/// Every metric of the pod (its own and its containers'), by name.
fn by_name(p: &PodSandboxMetrics) -> HashMap<String, Vec<Metric>> {
    let mut out: HashMap<String, Vec<Metric>> = HashMap::new();
    let all = p
        .metrics
        .iter()
        .chain(p.container_metrics.iter().flat_map(|c| c.metrics.iter()));
    for m in all {
        out.entry(m.name.clone()).or_default().push(m.clone());
    }
    out
}

fn value(m: &Metric) -> u64 {
    m.value.as_ref().map(|v| v.value).unwrap_or(0)
}

async fn pod_metrics(rt: &mut Rt, pod_id: &str) -> PodSandboxMetrics {
    rt.list_pod_sandbox_metrics(ListPodSandboxMetricsRequest {})
        .await
        .unwrap_or_else(|e| panic!("ListPodSandboxMetrics: {e}"))
        .into_inner()
        .pod_metrics
        .into_iter()
        .find(|p| p.pod_sandbox_id == pod_id)
        .expect("the running pod in ListPodSandboxMetrics")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_metrics_of_a_running_pod_have_cpu_memory_and_network_and_every_family_is_described() {
    let registry = rootstock_test_e2e::registry::Registry::start().await;
    let net = TestNet::new("podmetrics");
    net.write_conflist(&net.conflist(vec![]));
    let (daemon, image) = daemon_with_busybox(&registry, &net.daemon_config()).await;
    wait_network_ready(&daemon).await;
    let mut rt = daemon.runtime().await;
    let pod = pod_config("podmetrics", NamespaceMode::Container);
    let pod_id = run_pod(&mut rt, pod.clone()).await.unwrap();
    // Traffic on eth0, then CPU: the CPU counter is in whole seconds (a UInt64Value, as
    // CRI-O sends it), so the container spins until it has used more than one.
    let script = format!("ping -c 2 -W 1 {}; while :; do :; done", net.gateway());
    let busy = start_container(
        &mut rt,
        &pod_id,
        &pod,
        container_config("busy", &image, &["sh", "-c", &script]),
    )
    .await;

    let descriptors = rt
        .list_metric_descriptors(ListMetricDescriptorsRequest {})
        .await
        .unwrap()
        .into_inner()
        .descriptors;
    let described: HashMap<&str, &MetricDescriptor> =
        descriptors.iter().map(|d| (d.name.as_str(), d)).collect();

    let deadline = Instant::now() + Duration::from_secs(60);
    let p = loop {
        let p = pod_metrics(&mut rt, &pod_id).await;
        let cpu = by_name(&p)
            .get("container_cpu_usage_seconds_total")
            .map_or(0, |m| m.iter().map(value).sum());
        if cpu >= 1 {
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "no CPU second used in 60 s: {p:#?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let metrics = by_name(&p);
    // Every name returned is described, with as many label keys as the metric has values.
    for (name, ms) in &metrics {
        let d = described
            .get(name.as_str())
            .unwrap_or_else(|| panic!("{name} returned but not described"));
        for m in ms {
            assert_eq!(m.label_values.len(), d.label_keys.len(), "{m:?} vs {d:?}");
        }
    }
    let keys = &described["container_memory_working_set_bytes"].label_keys;
    assert_eq!(keys, &["id", "image", "namespace", "pod", "container"]);

    let container = p
        .container_metrics
        .iter()
        .find(|c| c.container_id == busy)
        .expect("the running container's metrics");
    let of = |name: &str| container.metrics.iter().find(|m| m.name == name);
    let ws = of("container_memory_working_set_bytes").expect("working set");
    assert!(value(ws) > 0, "{ws:?}");
    assert_eq!(
        ws.label_values,
        [
            busy.as_str(),
            ws.label_values[1].as_str(),
            "e2e",
            "podmetrics",
            "busy"
        ],
    );
    assert!(value(of("container_memory_usage_bytes").unwrap()) > 0);
    assert!(value(of("container_processes").unwrap()) >= 1);
    assert!(of("container_oom_events_total").is_some());
    assert!(value(of("container_cpu_usage_seconds_total").unwrap()) >= 1);

    let rx = p
        .metrics
        .iter()
        .find(|m| {
            m.name == "container_network_receive_bytes_total"
                && m.label_values.last().map(String::as_str) == Some("eth0")
        })
        .unwrap_or_else(|| panic!("no eth0 receive bytes at pod level: {:#?}", p.metrics));
    assert!(value(rx) > 0, "{rx:?}");
    assert_eq!(
        &rx.label_values[..5],
        [pod_id.as_str(), "", "e2e", "podmetrics", "POD"]
    );
    let tx_packets = p
        .metrics
        .iter()
        .find(|m| m.name == "container_network_transmit_packets_total")
        .expect("transmit packets");
    assert!(value(tx_packets) > 0, "{tx_packets:?}");

    stop_pod(&mut rt, &pod_id).await;
    remove_pod(&mut rt, &pod_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn included_pod_metrics_limits_the_families_described_and_returned() {
    let registry = rootstock_test_e2e::registry::Registry::start().await;
    let (daemon, image) = daemon_with_busybox(
        &registry,
        "[metrics]\nincluded_pod_metrics = [\"memory\"]\n",
    )
    .await;
    loopback_network(&daemon).await;
    let mut rt = daemon.runtime().await;
    let names: Vec<String> = rt
        .list_metric_descriptors(ListMetricDescriptorsRequest {})
        .await
        .unwrap()
        .into_inner()
        .descriptors
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert!(
        names.contains(&"container_memory_rss".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"container_last_seen".to_owned()),
        "{names:?}"
    );
    assert!(
        !names
            .iter()
            .any(|n| n.contains("cpu") || n.contains("network")),
        "{names:?}"
    );
    let pod = pod_config("fewmetrics", NamespaceMode::Container);
    let pod_id = run_pod(&mut rt, pod.clone()).await.unwrap();
    start_container(
        &mut rt,
        &pod_id,
        &pod,
        container_config("idle", &image, &["sleep", "60"]),
    )
    .await;
    let p = pod_metrics(&mut rt, &pod_id).await;
    for name in by_name(&p).keys() {
        assert!(names.contains(name), "{name} returned but not described");
    }
    stop_pod(&mut rt, &pod_id).await;
    remove_pod(&mut rt, &pod_id).await;
}

/// Python's OpenMetrics parser over `text`: `{sample name: [(labels, value)]}` as JSON.
const PARSE: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.setdefault(s.name, []).append([s.labels, s.value])
print(json.dumps(out))
"#;

type Samples = HashMap<String, Vec<(HashMap<String, String>, f64)>>;

fn parse_with_python(text: &str) -> Samples {
    use std::io::Write;
    let mut child = std::process::Command::new("/usr/bin/python3")
        .args(["-c", PARSE])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        // Debian's interpreter: the package installs the parser there.
        .expect("/usr/bin/python3 (make deps installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client rejected the exposition (Debian python3-prometheus-client): {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The sum of `name`'s samples whose labels include `labels`.
fn sum(s: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.get(name)
        .into_iter()
        .flatten()
        .filter(|(l, _)| {
            labels
                .iter()
                .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| v)
        .sum()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrape_after_a_pull_and_a_pod_start_parses_with_sensible_values() {
    let registry = rootstock_test_e2e::registry::Registry::start().await;
    let port = free_port();
    let (daemon, image) = daemon_with_busybox(
        &registry,
        &format!("[metrics]\naddress = \"127.0.0.1:{port}\"\n"),
    )
    .await;
    loopback_network(&daemon).await;
    let mut rt = daemon.runtime().await;
    let pod = pod_config("scraped", NamespaceMode::Container);
    let pod_id = run_pod(&mut rt, pod.clone()).await.unwrap();
    let id = start_container(
        &mut rt,
        &pod_id,
        &pod,
        container_config("idle", &image, &["sleep", "60"]),
    )
    .await;
    sh(&mut rt, &id, "true").await;
    // A call that fails, to see its code.
    let missing = rt
        .container_status(ContainerStatusRequest {
            container_id: "0123456789abcdef".into(),
            verbose: false,
        })
        .await;
    assert_eq!(missing.unwrap_err().code(), tonic::Code::NotFound);

    let url = format!("http://127.0.0.1:{port}/metrics");
    let resp = reqwest::get(&url).await.unwrap();
    assert!(resp.status().is_success(), "{resp:?}");
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = resp.text().await.unwrap();
    let s = parse_with_python(&text);
    let at_least = |name: &str, labels: &[(&str, &str)], min: f64| {
        let v = sum(&s, name, labels);
        assert!(v >= min, "{name}{labels:?} = {v}, want >= {min}\n{text}");
    };
    let host = registry.host();
    at_least(
        "rootstock_grpc_requests_total",
        &[("method", "PullImage"), ("code", "OK")],
        1.0,
    );
    at_least(
        "rootstock_grpc_requests_total",
        &[("method", "RunPodSandbox"), ("code", "OK")],
        1.0,
    );
    at_least(
        "rootstock_grpc_requests_total",
        &[("method", "ContainerStatus"), ("code", "NotFound")],
        1.0,
    );
    at_least(
        "rootstock_grpc_request_duration_seconds_count",
        &[("method", "PullImage")],
        1.0,
    );
    at_least(
        "rootstock_image_pulls_total",
        &[("registry", host.as_str()), ("result", "ok")],
        1.0,
    );
    // busybox: a ~1 MB static binary in a gzip layer.
    at_least(
        "rootstock_image_pull_bytes_total",
        &[("registry", host.as_str())],
        100_000.0,
    );
    at_least("rootstock_image_pull_duration_seconds_count", &[], 1.0);
    // The first pull into an empty store unpacked busybox's layer.
    at_least("rootstock_image_layers_unpacked_total", &[], 1.0);
    at_least("rootstock_image_store_layers", &[], 1.0);
    at_least(
        "rootstock_pod_sandbox_start_duration_seconds_count",
        &[],
        1.0,
    );
    at_least("rootstock_container_start_duration_seconds_count", &[], 1.0);
    at_least(
        "rootstock_cni_operation_duration_seconds_count",
        &[("operation", "add")],
        1.0,
    );
    at_least(
        "rootstock_exec_sessions_total",
        &[("kind", "exec_sync")],
        1.0,
    );
    at_least("rootstock_image_store_bytes", &[], 100_000.0);
    at_least("rootstock_image_store_images", &[], 1.0);
    at_least("rootstock_image_store_trees", &[], 1.0);
    at_least("rootstock_monitors", &[], 1.0);
    at_least("rootstock_process_resident_memory_bytes", &[], 1_000_000.0);
    at_least("rootstock_process_open_fds", &[], 3.0);
    at_least("rootstock_process_threads", &[], 2.0);
    // One pod and one container started: each step of theirs was timed once, and those
    // CreateContainer runs one after another fit in that call's own latency.
    for step in [
        "pin_namespaces",
        "image_lease",
        "monitor_start",
        "rootfs_mount",
        "spec",
        "runtime_create",
        "runtime_start",
    ] {
        let labels = [("step", step)];
        let count = sum(
            &s,
            "rootstock_pod_start_step_duration_seconds_count",
            &labels,
        );
        assert_eq!(count, 1.0, "{step}\n{text}");
    }
    let create_steps: f64 = ["monitor_start", "rootfs_mount", "spec", "runtime_create"]
        .iter()
        .map(|step| {
            sum(
                &s,
                "rootstock_pod_start_step_duration_seconds_sum",
                &[("step", step)],
            )
        })
        .sum();
    let create = sum(
        &s,
        "rootstock_grpc_request_duration_seconds_sum",
        &[("method", "CreateContainer")],
    );
    assert!(
        create_steps > 0.0 && create_steps < create,
        "steps {create_steps} s, CreateContainer {create} s"
    );
    // A pod start is well under a minute: the latency histogram's sum says so.
    let starts = sum(&s, "rootstock_pod_sandbox_start_duration_seconds_sum", &[]);
    assert!(starts > 0.0 && starts < 60.0, "{starts}");
    assert_eq!(
        sum(&s, "rootstock_cni_operation_failures_total", &[]),
        0.0,
        "{text}"
    );

    // Anything but /metrics is not served.
    let other = reqwest::get(format!("http://127.0.0.1:{port}/"))
        .await
        .unwrap();
    assert_eq!(other.status().as_u16(), 404);
    stop_pod(&mut rt, &pod_id).await;
    remove_pod(&mut rt, &pod_id).await;
}
