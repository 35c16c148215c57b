//! Security contexts over the socket, one test per family as critest exercises them: the
//! identity `id` shows (run_as_user, run_as_username, run_as_group, supplemental groups and
//! the image's /etc/group memberships), capabilities and no_new_privs as /proc/1/status
//! shows them, and the read-only rootfs, masked and read-only paths, lifted when privileged.
//! Then the resources kubelet derives from the same pod spec: limits at create and through
//! UpdateContainerResources (read back from the cgroup), the clamped `oom_score_adj`, OOM;
//! and the stats kubelet reads back (container and pod, with filters, the pod's interfaces).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use k8s_cri::v1::*;

/// Starts `sleep` in a fresh pod with `sc` as its security context; returns the container id.
async fn sleeper(
    rt: &mut Rt,
    image: &str,
    name: &str,
    sc: LinuxContainerSecurityContext,
) -> (String, String) {
    let pod = pod_config(name, NamespaceMode::Container);
    let pod_id = run_pod(rt, pod.clone()).await.unwrap();
    let mut config = container_config(name, image, &["sleep", "3600"]);
    config.linux = Some(LinuxContainerConfig {
        security_context: Some(sc),
        ..Default::default()
    });
    let id = start_container(rt, &pod_id, &pod, config).await;
    (pod_id, id)
}

async fn sh(rt: &mut Rt, id: &str, script: &str) -> ExecSyncResponse {
    exec(rt, id, &["sh", "-c", script], 10).await.unwrap()
}

fn stdout(r: &ExecSyncResponse) -> String {
    String::from_utf8_lossy(&r.stdout).trim().to_owned()
}

/// The hex mask after `key:` in /proc/1/status.
fn status_mask(status: &str, key: &str) -> u64 {
    let v = status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("{key} not in {status}"));
    u64::from_str_radix(v.trim_start_matches(':').trim(), 16).unwrap()
}

const CAP_CHOWN: u32 = 0;
const CAP_NET_RAW: u32 = 13;
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_shows_run_as_user_username_group_and_supplemental_groups() {
    let registry = rootstock_test_e2e::registry::Registry::start().await;
    let (daemon, image) = daemon_with_busybox(&registry, "").await;
    loopback_network(&daemon).await;
    let mut rt = daemon.runtime().await;

    // alice (1000) is in staff (50) and video (44) in the image's /etc/group.
    let (_, alice) = sleeper(
        &mut rt,
        &image,
        "uid",
        LinuxContainerSecurityContext {
            run_as_user: Some(Int64Value { value: 1000 }),
            supplemental_groups: vec![1234],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(stdout(&sh(&mut rt, &alice, "id -u").await), "1000");
    let groups = stdout(&sh(&mut rt, &alice, "id -G").await);
    for g in ["50", "44", "1234"] {
        assert!(groups.split(' ').any(|x| x == g), "{g} not in {groups}");
    }

    let (_, bob) = sleeper(
        &mut rt,
        &image,
        "username",
        LinuxContainerSecurityContext {
            run_as_username: "bob".to_owned(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(stdout(&sh(&mut rt, &bob, "id -u").await), "1001");
    assert!(stdout(&sh(&mut rt, &bob, "id -G").await).contains("50"));

    let (_, www) = sleeper(
        &mut rt,
        &image,
        "group",
        LinuxContainerSecurityContext {
            run_as_user: Some(Int64Value { value: 33 }),
            run_as_group: Some(Int64Value { value: 44 }),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(stdout(&sh(&mut rt, &www, "id -u").await), "33");
    assert_eq!(stdout(&sh(&mut rt, &www, "id -g").await), "44");

    // CRI: run_as_group without run_as_user/run_as_username MUST be an error.
    let pod = pod_config("group-only", NamespaceMode::Container);
    let pod_id = run_pod(&mut rt, pod.clone()).await.unwrap();
    let mut config = container_config("group-only", &image, &["sleep", "3600"]);
    config.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            run_as_group: Some(Int64Value { value: 44 }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let err = rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod_id,
            config: Some(config),
            sandbox_config: Some(pod),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("run_as_group") && err.message().contains("run_as_user"),
        "{}",
        err.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_add_drop_all_privileged_and_no_new_privs_show_in_proc_status() {
    let registry = rootstock_test_e2e::registry::Registry::start().await;
    let (daemon, image) = daemon_with_busybox(&registry, "").await;
    loopback_network(&daemon).await;
    let mut rt = daemon.runtime().await;
    let caps = |add: &[&str], drop: &[&str]| {
        Some(Capability {
            add_capabilities: add.iter().map(|s| s.to_string()).collect(),
            drop_capabilities: drop.iter().map(|s| s.to_string()).collect(),
            add_ambient_capabilities: vec![],
        })
    };
    let status = async |rt: &mut Rt, sc: LinuxContainerSecurityContext, name: &str| {
        let (_, id) = sleeper(rt, &image, name, sc).await;
        stdout(&sh(rt, &id, "cat /proc/1/status").await)
    };

    let s = status(
        &mut rt,
        LinuxContainerSecurityContext {
            capabilities: caps(&["NET_ADMIN"], &["CAP_CHOWN"]),
            no_new_privs: true,
            ..Default::default()
        },
        "adddrop",
    )
    .await;
    for key in ["CapBnd", "CapEff"] {
        let m = status_mask(&s, key);
        assert_ne!(m & (1 << CAP_NET_ADMIN), 0, "{key} {m:x}: NET_ADMIN added");
        assert_eq!(m & (1 << CAP_CHOWN), 0, "{key} {m:x}: CHOWN dropped");
        assert_ne!(
            m & (1 << CAP_NET_RAW),
            0,
            "{key} {m:x}: default NET_RAW kept"
        );
        assert_eq!(m & (1 << CAP_SYS_ADMIN), 0, "{key} {m:x}: no SYS_ADMIN");
    }
    assert!(
        s.lines()
            .any(|l| l.starts_with("NoNewPrivs:") && l.ends_with('1')),
        "{s}"
    );

    let s = status(
        &mut rt,
        LinuxContainerSecurityContext {
            capabilities: caps(&[], &["ALL"]),
            ..Default::default()
        },
        "dropall",
    )
    .await;
    assert_eq!(status_mask(&s, "CapBnd"), 0, "{s}");
    assert_eq!(status_mask(&s, "CapEff"), 0, "{s}");

    let s = status(
        &mut rt,
        LinuxContainerSecurityContext {
            privileged: true,
            ..Default::default()
        },
        "privileged",
    )
    .await;
    // Every capability the host kernel knows (the daemon runs as full root).
    let host = std::fs::read_to_string("/proc/self/status").unwrap();
    let host_bnd = status_mask(&host, "CapBnd");
    assert_eq!(status_mask(&s, "CapBnd"), host_bnd, "{s}");
    assert_eq!(status_mask(&s, "CapEff"), host_bnd, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readonly_rootfs_masked_and_readonly_paths_hold_unless_privileged() {
    let registry = rootstock_test_e2e::registry::Registry::start().await;
    let (daemon, image) = daemon_with_busybox(&registry, "").await;
    loopback_network(&daemon).await;
    let mut rt = daemon.runtime().await;

    let (_, ro) = sleeper(
        &mut rt,
        &image,
        "readonly",
        LinuxContainerSecurityContext {
            readonly_rootfs: true,
            ..Default::default()
        },
    )
    .await;
    let r = sh(&mut rt, &ro, "echo x > /written").await;
    assert_ne!(r.exit_code, 0, "write to a read-only rootfs succeeded");
    assert!(String::from_utf8_lossy(&r.stderr).contains("Read-only"));
    // Mounts stay writable (/dev/shm is the sandbox's).
    assert_eq!(sh(&mut rt, &ro, "echo x > /dev/shm/ok").await.exit_code, 0);

    let (_, plain) = sleeper(
        &mut rt,
        &image,
        "paths",
        LinuxContainerSecurityContext {
            masked_paths: vec!["/proc/timer_list".to_owned()],
            readonly_paths: vec!["/proc/sys".to_owned(), "/proc/sysrq-trigger".to_owned()],
            ..Default::default()
        },
    )
    .await;
    // Masked: /dev/null over a file reads empty (the request's list replaces the defaults).
    let r = sh(&mut rt, &plain, "wc -c < /proc/timer_list").await;
    assert_eq!(r.exit_code, 0, "{r:?}");
    assert_eq!(stdout(&r), "0");
    // Read-only, even for root with the default capabilities.
    let r = sh(&mut rt, &plain, "echo 1 > /proc/sys/kernel/ns_last_pid").await;
    assert_ne!(r.exit_code, 0, "write to a read-only path succeeded");
    // The default rootfs is writable.
    assert_eq!(sh(&mut rt, &plain, "echo x > /written").await.exit_code, 0);

    let (_, privileged) = sleeper(
        &mut rt,
        &image,
        "privileged",
        LinuxContainerSecurityContext {
            privileged: true,
            masked_paths: vec!["/proc/timer_list".to_owned()],
            readonly_paths: vec!["/proc/sys".to_owned()],
            ..Default::default()
        },
    )
    .await;
    // Not masked: /proc/timer_list is the kernel's, never empty.
    let r = sh(&mut rt, &privileged, "wc -c < /proc/timer_list").await;
    assert_ne!(stdout(&r), "0", "{r:?}");
    // /proc/sys is writable: write back the current value of a harmless knob of the
    // container's own UTS namespace.
    let r = sh(
        &mut rt,
        &privileged,
        "cat /proc/sys/kernel/hostname > /proc/sys/kernel/hostname",
    )
    .await;
    assert_eq!(r.exit_code, 0, "{r:?}");
    // sysfs is mounted read-write.
    let r = sh(&mut rt, &privileged, "grep ' /sys sysfs ' /proc/mounts").await;
    assert!(stdout(&r).contains("sysfs rw"), "{r:?}");
    // Host devices are there.
    assert_eq!(
        sh(
            &mut rt,
            &privileged,
            "test -c /dev/kmsg || test -b /dev/loop0 || ls /dev/tty1"
        )
        .await
        .exit_code,
        0
    );
}

/// The container's cgroup path, as ContainerStatus's verbose info reports it.
async fn cgroup_of(rt: &mut Rt, id: &str) -> String {
    let status = rt
        .container_status(ContainerStatusRequest {
            container_id: id.to_owned(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&status.info["info"]).unwrap();
    info["cgroupPath"].as_str().unwrap().to_owned()
}

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

fn val(v: &Option<UInt64Value>) -> u64 {
    v.as_ref().map(|v| v.value).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_report_cpu_memory_and_writable_layer_and_pods_sum_their_containers() {
    let registry = rootstock_test_e2e::registry::Registry::start().await;
    let (daemon, image) = daemon_with_busybox(&registry, "").await;
    loopback_network(&daemon).await;
    let mut rt = daemon.runtime().await;
    let pod = pod_config("stats", NamespaceMode::Container);
    let pod_id = run_pod(&mut rt, pod.clone()).await.unwrap();
    // /tmp is in the writable layer (no tmpfs there).
    let busy = start_container(
        &mut rt,
        &pod_id,
        &pod,
        container_config(
            "busy",
            &image,
            &[
                "sh",
                "-c",
                "dd if=/dev/zero of=/tmp/fill bs=1M count=16 && touch /tmp/done; sleep 3600",
            ],
        ),
    )
    .await;
    let idle = start_container(
        &mut rt,
        &pod_id,
        &pod,
        container_config("idle", &image, &["sleep", "3600"]),
    )
    .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while sh(&mut rt, &busy, "test -e /tmp/done").await.exit_code != 0 {
        assert!(std::time::Instant::now() < deadline, "dd did not finish");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // The writable layer is walked in the background: poll until its numbers are in.
    let list = |filter: ContainerStatsFilter| ListContainerStatsRequest {
        filter: Some(filter),
    };
    let stats = loop {
        let stats = rt
            .list_container_stats(list(ContainerStatsFilter {
                pod_sandbox_id: pod_id.clone(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner()
            .stats;
        let done = stats.len() == 2
            && stats.iter().all(|s| s.writable_layer.is_some())
            && stats.iter().any(|s| {
                s.writable_layer
                    .as_ref()
                    .is_some_and(|l| val(&l.used_bytes) >= 16 << 20)
            });
        if done {
            break stats;
        }
        assert!(std::time::Instant::now() < deadline, "{stats:?}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let of = |id: &str| {
        stats
            .iter()
            .find(|s| s.attributes.as_ref().unwrap().id == id)
            .unwrap()
            .clone()
    };
    let b = of(&busy);
    assert!(
        val(&b.cpu.as_ref().unwrap().usage_core_nano_seconds) > 0,
        "{b:?}"
    );
    assert!(b.cpu.as_ref().unwrap().timestamp > 0);
    let mem = b.memory.as_ref().unwrap();
    assert!(val(&mem.working_set_bytes) > 0, "{b:?}");
    assert!(val(&mem.usage_bytes) >= val(&mem.working_set_bytes));
    assert!(val(&b.writable_layer.as_ref().unwrap().used_bytes) >= 16 << 20);
    assert!(of(&idle).attributes.unwrap().labels["io.kubernetes.container.name"] == "idle");

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
    let one = rt
        .container_stats(ContainerStatsRequest {
            container_id: busy.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert_eq!(one.attributes.unwrap().id, busy);

    // The pod: its cgroup holds both containers. CPU is cumulative and the pod cgroup is
    // read after its containers, so it is at least their sum; memory is not monotonic
    // (pages move between lists between the reads), hence a small tolerance.
    let p = rt
        .pod_sandbox_stats(PodSandboxStatsRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    let linux = p.linux.as_ref().unwrap();
    assert_eq!(linux.containers.len(), 2);
    let sum = |f: &dyn Fn(&ContainerStats) -> u64| linux.containers.iter().map(f).sum::<u64>();
    let cpu_sum = sum(&|c| val(&c.cpu.as_ref().unwrap().usage_core_nano_seconds));
    assert!(
        val(&linux.cpu.as_ref().unwrap().usage_core_nano_seconds) >= cpu_sum,
        "{p:?}"
    );
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
async fn pod_stats_report_the_pod_interface_counters() {
    let registry = rootstock_test_e2e::registry::Registry::start().await;
    let net = TestNet::new("secstats");
    net.write_conflist(&net.conflist(vec![]));
    let (daemon, image) = daemon_with_busybox(&registry, &net.daemon_config()).await;
    wait_network_ready(&daemon).await;
    let mut rt = daemon.runtime().await;
    let pod = pod_config("netstats", NamespaceMode::Container);
    let pod_id = run_pod(&mut rt, pod.clone()).await.unwrap();
    let script = format!("ping -c 2 -W 1 {} ; sleep 3600", net.gateway());
    start_container(
        &mut rt,
        &pod_id,
        &pod,
        container_config("pinger", &image, &["sh", "-c", &script]),
    )
    .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let p = rt
            .pod_sandbox_stats(PodSandboxStatsRequest {
                pod_sandbox_id: pod_id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .stats
            .unwrap();
        let network = p.linux.unwrap().network;
        let eth0 = network
            .as_ref()
            .and_then(|n| n.default_interface.clone())
            .filter(|i| val(&i.tx_bytes) > 0 && val(&i.rx_bytes) > 0);
        if let Some(eth0) = eth0 {
            assert_eq!(eth0.name, "eth0");
            let n = network.unwrap();
            assert!(n.timestamp > 0);
            assert!(n.interfaces.iter().all(|i| i.name != "lo"), "{n:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{network:?}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    stop_pod(&mut rt, &pod_id).await;
    remove_pod(&mut rt, &pod_id).await;
}
