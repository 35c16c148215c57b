//! The stats RPCs over the socket, as kubelet's CRI stats provider reads them: container
//! and pod CPU (cumulative and the rate between two calls), memory (working set, RSS,
//! faults, what is left under the limit), the writable layer from the first call on,
//! filters; and the pod's interfaces, read in its network namespace, still there when no
//! container of the pod is running.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use k8s_cri::v1::*;

fn val(v: &Option<UInt64Value>) -> u64 {
    v.as_ref().map(|v| v.value).unwrap_or(0)
}

async fn pod_stats(rt: &mut Rt, pod_id: &str) -> PodSandboxStats {
    rt.pod_sandbox_stats(PodSandboxStatsRequest {
        pod_sandbox_id: pod_id.to_owned(),
    })
    .await
    .unwrap()
    .into_inner()
    .stats
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_report_cpu_memory_and_writable_layer_and_pods_sum_their_containers() {
    let registry = rootstock_test_e2e::registry::Registry::start().await;
    let (daemon, image) = daemon_with_busybox(&registry, "").await;
    loopback_network(&daemon).await;
    let mut rt = daemon.runtime().await;
    let pod = pod_config("stats", NamespaceMode::Container);
    let pod_id = run_pod(&mut rt, pod.clone()).await.unwrap();
    // /tmp is in the writable layer (no tmpfs there). After writing it spins, so its CPU
    // rate is well above zero.
    let mut busy_config = container_config(
        "busy",
        &image,
        &[
            "sh",
            "-c",
            "dd if=/dev/zero of=/tmp/fill bs=1M count=16 && touch /tmp/done; while :; do :; done",
        ],
    );
    const LIMIT: u64 = 256 << 20;
    busy_config.linux = Some(LinuxContainerConfig {
        resources: Some(LinuxContainerResources {
            memory_limit_in_bytes: LIMIT as i64,
            ..Default::default()
        }),
        ..Default::default()
    });
    let busy = start_container(&mut rt, &pod_id, &pod, busy_config).await;
    let idle = start_container(
        &mut rt,
        &pod_id,
        &pod,
        container_config("idle", &image, &["sleep", "3600"]),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while sh(&mut rt, &busy, "test -e /tmp/done").await.exit_code != 0 {
        assert!(Instant::now() < deadline, "dd did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The very first call already has the writable layer, and no CPU rate yet.
    let list = |filter: ContainerStatsFilter| ListContainerStatsRequest {
        filter: Some(filter),
    };
    let by_pod = || ContainerStatsFilter {
        pod_sandbox_id: pod_id.clone(),
        ..Default::default()
    };
    let stats = rt
        .list_container_stats(list(by_pod()))
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(stats.len(), 2, "{stats:?}");
    assert!(
        stats.iter().all(|s| s.writable_layer.is_some()),
        "{stats:?}"
    );
    assert!(
        stats
            .iter()
            .all(|s| s.cpu.as_ref().unwrap().usage_nano_cores.is_none()),
        "{stats:?}"
    );
    let of = |stats: &[ContainerStats], id: &str| {
        stats
            .iter()
            .find(|s| s.attributes.as_ref().unwrap().id == id)
            .unwrap()
            .clone()
    };
    let b = of(&stats, &busy);
    assert!(
        val(&b.cpu.as_ref().unwrap().usage_core_nano_seconds) > 0,
        "{b:?}"
    );
    assert!(b.cpu.as_ref().unwrap().timestamp > 0);
    let mem = b.memory.as_ref().unwrap();
    assert!(val(&mem.working_set_bytes) > 0, "{b:?}");
    assert!(val(&mem.usage_bytes) >= val(&mem.working_set_bytes));
    assert!(
        mem.rss_bytes.is_some() && val(&mem.page_faults) > 0,
        "{b:?}"
    );
    assert!(mem.major_page_faults.is_some(), "{b:?}");
    // Under a limit: what is left of it.
    assert_eq!(
        val(&mem.available_bytes),
        LIMIT - val(&mem.working_set_bytes),
        "{b:?}"
    );
    assert!(val(&b.writable_layer.as_ref().unwrap().used_bytes) >= 16 << 20);
    let i = of(&stats, &idle);
    assert!(i.attributes.as_ref().unwrap().labels["io.kubernetes.container.name"] == "idle");
    assert!(
        i.memory.as_ref().unwrap().available_bytes.is_none(),
        "{i:?}"
    );

    // The second call has the rate since the first: the spinning container uses most of a
    // core, the sleeping one next to nothing.
    let first_pod = pod_stats(&mut rt, &pod_id).await;
    let first_pod_cpu = first_pod.linux.as_ref().unwrap().cpu.unwrap();
    assert!(
        first_pod_cpu.usage_nano_cores.is_none(),
        "{first_pod_cpu:?}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stats = rt
        .list_container_stats(list(by_pod()))
        .await
        .unwrap()
        .into_inner()
        .stats;
    let rate = |s: &ContainerStats| s.cpu.as_ref().unwrap().usage_nano_cores.map(|v| v.value);
    let busy_rate = rate(&of(&stats, &busy)).expect("busy rate");
    let idle_rate = rate(&of(&stats, &idle)).expect("idle rate");
    assert!(busy_rate > 300_000_000, "busy {busy_rate}");
    assert!(idle_rate < 50_000_000, "idle {idle_rate}");

    // Filters: id, labels; ContainerStats for one.
    let by_label = rt
        .list_container_stats(list(ContainerStatsFilter {
            label_selector: [("io.kubernetes.container.name".to_owned(), "busy".to_owned())].into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(by_label.len(), 1);
    assert_eq!(by_label[0].attributes.as_ref().unwrap().id, busy);
    let by_id = rt
        .list_container_stats(list(ContainerStatsFilter {
            id: idle.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(by_id.len(), 1);
    let one = container_stats(&mut rt, &busy).await;
    assert_eq!(one.attributes.unwrap().id, busy);

    // The pod: its cgroup holds both containers. CPU is cumulative and the pod cgroup is
    // read after its containers, so it is at least their sum; memory is not monotonic
    // (pages move between lists between the reads), hence a small tolerance.
    let p = pod_stats(&mut rt, &pod_id).await;
    let linux = p.linux.as_ref().unwrap();
    assert_eq!(linux.containers.len(), 2);
    let sum = |f: &dyn Fn(&ContainerStats) -> u64| linux.containers.iter().map(f).sum::<u64>();
    let cpu_sum = sum(&|c| val(&c.cpu.as_ref().unwrap().usage_core_nano_seconds));
    let pod_cpu = linux.cpu.as_ref().unwrap();
    assert!(val(&pod_cpu.usage_core_nano_seconds) >= cpu_sum, "{p:?}");
    assert!(val(&pod_cpu.usage_nano_cores) > 300_000_000, "{p:?}");
    let mem_sum = sum(&|c| val(&c.memory.as_ref().unwrap().working_set_bytes));
    let pod_mem = val(&linux.memory.as_ref().unwrap().working_set_bytes);
    assert!(pod_mem + (1 << 20) >= mem_sum, "{pod_mem} < {mem_sum}");
    assert!(
        val(&linux.process.as_ref().unwrap().process_count) >= 2,
        "{p:?}"
    );
    let listed = rt
        .list_pod_sandbox_stats(ListPodSandboxStatsRequest {
            filter: Some(PodSandboxStatsFilter {
                id: pod_id.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].attributes.as_ref().unwrap().id, pod_id);
    stop_pod(&mut rt, &pod_id).await;
    remove_pod(&mut rt, &pod_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_network_stats_come_from_its_namespace_even_with_no_container_running() {
    let registry = rootstock_test_e2e::registry::Registry::start().await;
    let net = TestNet::new("netstats");
    net.write_conflist(&net.conflist(vec![]));
    let (daemon, image) = daemon_with_busybox(&registry, &net.daemon_config()).await;
    wait_network_ready(&daemon).await;
    let mut rt = daemon.runtime().await;
    let pod = pod_config("netstats", NamespaceMode::Container);
    let pod_id = run_pod(&mut rt, pod.clone()).await.unwrap();
    // Traffic, then the only container exits: no process is left in the pod's namespace.
    let script = format!("ping -c 2 -W 1 {}", net.gateway());
    let pinger = start_container(
        &mut rt,
        &pod_id,
        &pod,
        container_config("pinger", &image, &["sh", "-c", &script]),
    )
    .await;
    let exited = wait_exited(&mut rt, &pinger, Duration::from_secs(15)).await;
    assert_eq!(exited.exit_code, 0, "ping failed: {exited:?}");

    let p = pod_stats(&mut rt, &pod_id).await;
    let linux = p.linux.unwrap();
    assert!(
        linux.containers.is_empty(),
        "exited containers are not reported"
    );
    let n = linux.network.expect("network stats");
    assert!(n.timestamp > 0);
    let eth0 = n.default_interface.clone().expect("eth0");
    assert_eq!(eth0.name, "eth0");
    assert!(
        val(&eth0.rx_bytes) > 0 && val(&eth0.tx_bytes) > 0,
        "{eth0:?}"
    );
    assert!(eth0.rx_errors.is_some() && eth0.tx_errors.is_some());
    assert!(n.interfaces.iter().any(|i| i.name == "eth0"), "{n:?}");
    assert!(n.interfaces.iter().all(|i| i.name != "lo"), "{n:?}");

    // Stopped: the namespace is released, there is nothing to report.
    stop_pod(&mut rt, &pod_id).await;
    let p = pod_stats(&mut rt, &pod_id).await;
    assert!(p.linux.unwrap().network.is_none());
    remove_pod(&mut rt, &pod_id).await;
}
