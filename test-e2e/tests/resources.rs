//! Container resources over the socket, as kubelet sends them: limits at create and through
//! UpdateContainerResources read back from the container's cgroup (v1 on these nodes; the
//! v2 path is proven against a synthetic cgroup2 tree in `runtime/src/cgroup.rs`), the
//! `oom_score_adj` kubelet asks for a Guaranteed pod clamped to what the node allows, and a
//! container over its memory limit reported OOMKilled.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use k8s_cri::v1::*;

fn cgroup_file(controller: &str, cgroup: &str, file: &str) -> String {
    std::fs::read_to_string(format!("/sys/fs/cgroup/{controller}{cgroup}/{file}"))
        .unwrap_or_else(|e| panic!("{controller}{cgroup}/{file}: {e}"))
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_apply_at_create_update_and_oom_is_reported() {
    let registry = rootstock_test_e2e::registry::Registry::start().await;
    let (daemon, image) = daemon_with_busybox(&registry, "").await;
    loopback_network(&daemon).await;
    let mut rt = daemon.runtime().await;
    let pod = pod_config("resources", NamespaceMode::Container);
    let pod_id = run_pod(&mut rt, pod.clone()).await.unwrap();
    let with = |name: &str, command: &[&str], r: LinuxContainerResources| {
        let mut c = container_config(name, &image, command);
        c.linux = Some(LinuxContainerConfig {
            resources: Some(r),
            ..Default::default()
        });
        c
    };

    // At create: what kubelet sends for a Guaranteed pod (oom_score_adj -997 included,
    // which this node cannot grant: clamped, one warning).
    let guaranteed = LinuxContainerResources {
        cpu_shares: 512,
        cpu_quota: 50_000,
        cpu_period: 100_000,
        memory_limit_in_bytes: 128 << 20,
        oom_score_adj: -997,
        cpuset_cpus: "0".to_owned(),
        hugepage_limits: vec![HugepageLimit {
            page_size: "2MB".to_owned(),
            limit: 4 << 20,
        }],
        ..Default::default()
    };
    let a = start_container(
        &mut rt,
        &pod_id,
        &pod,
        with("a", &["sleep", "3600"], guaranteed.clone()),
    )
    .await;
    let b = start_container(
        &mut rt,
        &pod_id,
        &pod,
        with("b", &["sleep", "3600"], guaranteed),
    )
    .await;
    let cg = cgroup_of(&mut rt, &a).await;
    assert_eq!(cgroup_file("cpu", &cg, "cpu.shares"), "512");
    assert_eq!(cgroup_file("cpu", &cg, "cpu.cfs_quota_us"), "50000");
    assert_eq!(cgroup_file("cpu", &cg, "cpu.cfs_period_us"), "100000");
    assert_eq!(cgroup_file("cpuset", &cg, "cpuset.cpus"), "0");
    assert_eq!(
        cgroup_file("memory", &cg, "memory.limit_in_bytes"),
        (128u64 << 20).to_string()
    );
    assert_eq!(
        cgroup_file("hugetlb", &cg, "hugetlb.2MB.limit_in_bytes"),
        (4u64 << 20).to_string()
    );
    for id in [&a, &b] {
        let adj = stdout(&sh(&mut rt, id, "cat /proc/1/oom_score_adj").await);
        let daemon_adj =
            std::fs::read_to_string(format!("/proc/{}/oom_score_adj", daemon.pid())).unwrap();
        assert_eq!(adj, daemon_adj.trim(), "clamped to the daemon's own value");
    }
    let warnings = daemon
        .log()
        .lines()
        .filter(|l| l.contains("oom_score_adj -997"))
        .count();
    assert_eq!(warnings, 1, "{}", daemon.log());

    // UpdateContainerResources on the running container, read back from its cgroup.
    rt.update_container_resources(UpdateContainerResourcesRequest {
        container_id: a.clone(),
        linux: Some(LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            cpu_quota: 20_000,
            cpu_period: 100_000,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        cgroup_file("memory", &cg, "memory.limit_in_bytes"),
        (64u64 << 20).to_string()
    );
    assert_eq!(cgroup_file("cpu", &cg, "cpu.cfs_quota_us"), "20000");
    // A limit lifted in place (negative quota): unlimited again.
    rt.update_container_resources(UpdateContainerResourcesRequest {
        container_id: a.clone(),
        linux: Some(LinuxContainerResources {
            cpu_quota: -1,
            cpu_period: 100_000,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(cgroup_file("cpu", &cg, "cpu.cfs_quota_us"), "-1");

    // `unified` names cgroup v2 files: refused plainly on this v1 node, at create and update.
    let unified = LinuxContainerResources {
        unified: [("memory.high".to_owned(), "1000000".to_owned())].into(),
        ..Default::default()
    };
    let err = rt
        .update_container_resources(UpdateContainerResourcesRequest {
            container_id: b.clone(),
            linux: Some(unified.clone()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("cgroup v2"), "{}", err.message());
    let err = rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(with("unified", &["sleep", "3600"], unified)),
            sandbox_config: Some(pod.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

    // Over its memory limit: OOMKilled, 137.
    let hog = start_container(
        &mut rt,
        &pod_id,
        &pod,
        with(
            "hog",
            &["dd", "if=/dev/zero", "of=/dev/null", "bs=256M", "count=1"],
            LinuxContainerResources {
                memory_limit_in_bytes: 32 << 20,
                ..Default::default()
            },
        ),
    )
    .await;
    let s = wait_exited(&mut rt, &hog, std::time::Duration::from_secs(30)).await;
    assert_eq!(s.reason, "OOMKilled", "{s:?}");
    assert_eq!(s.exit_code, 137, "{s:?}");
    stop_pod(&mut rt, &pod_id).await;
    remove_pod(&mut rt, &pod_id).await;
}
