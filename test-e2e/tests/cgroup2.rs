//! The pod suite on a real cgroup v2 kernel. These machines run cgroup v1, so the tests
//! that need v2 are `#[ignore]`d here and run by `make test-cgroup2`, which boots a
//! cgroup-v2-only VM (scripts/cgroup2-vm.sh) and runs this binary inside with
//! `--include-ignored`; run anywhere else they skip when `/sys/fs/cgroup` is not cgroup2.
//!
//! What they prove, over the socket as kubelet drives it: pods under kubelet's cgroup parent
//! (`/kubepods/burstable/pod<uid>`, made by the test as kubelet makes it), limits written at
//! create and by UpdateContainerResources read back from the v2 files (one shares → weight
//! conversion for both), a private cgroup namespace, no process in an inner node, an OOM
//! kill read from `memory.events`, stats from `cpu.stat`/`memory.current`/`pids.current`,
//! kill-all through the v2 `cgroup.procs`, pod-init in a leaf of its pod cgroup and the
//! monitors in their own cgroup, and no cgroup left after removal. The driver
//! test runs on every host: the daemon's default config serves v1 and v2 alike.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use k8s_cri::v1::*;
use rootstock_test_e2e::daemon::Daemon;

const V2_ONLY: &str = "needs a cgroup v2 node: `make test-cgroup2` runs it in a VM";
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Under TCG emulation everything is 5–20× slower than on the host.
const SLOW: Duration = Duration::from_secs(120);

/// Whether this host is a cgroup v2 node; says why a test does nothing when not.
fn is_v2(test: &str) -> bool {
    let v2 = Path::new(CGROUP_ROOT).join("cgroup.controllers").exists();
    if !v2 {
        eprintln!("{test}: skipped, {CGROUP_ROOT} is not cgroup2 ({V2_ONLY})");
    }
    v2
}

fn dir(cgroup: &str) -> PathBuf {
    Path::new(CGROUP_ROOT).join(cgroup.trim_start_matches('/'))
}

fn read(cgroup: &str, file: &str) -> String {
    let path = dir(cgroup).join(file);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_owned()
}

fn keyed(cgroup: &str, file: &str, key: &str) -> u64 {
    let text = read(cgroup, file);
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{cgroup}/{file} has no {key}: {text}"))
}

/// What kubelet does before RunPodSandbox on a cgroupfs v2 node: the QoS and pod cgroups,
/// each enabling the controllers for the level below (kubelet's `cgroup_parent`).
fn kubelet_pod_cgroup(uid: &str) -> String {
    let cgroup = format!("/kubepods/burstable/pod{uid}");
    let mut path = PathBuf::from(CGROUP_ROOT);
    for level in ["kubepods", "burstable", &format!("pod{uid}")] {
        let controllers = std::fs::read_to_string(path.join("cgroup.controllers")).unwrap();
        let enable: Vec<String> = controllers
            .split_whitespace()
            .filter(|c| ["cpuset", "cpu", "io", "memory", "hugetlb", "pids"].contains(c))
            .map(|c| format!("+{c}"))
            .collect();
        std::fs::write(path.join("cgroup.subtree_control"), enable.join(" ")).unwrap();
        path.push(level);
        match std::fs::create_dir(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                panic!("{}: {e}", path.display())
            }
            _ => {}
        }
    }
    cgroup
}

/// Every cgroup at or under `cgroup` that holds processes while having children: v2 allows
/// processes only in leaves (the "no internal processes" rule; the root is exempt).
fn inner_nodes_with_processes(cgroup: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir(cgroup)];
    while let Some(d) = stack.pop() {
        let children: Vec<PathBuf> = std::fs::read_dir(&d)
            .unwrap()
            .flatten()
            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
            .map(|e| e.path())
            .collect();
        let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
        if !children.is_empty() && !procs.trim().is_empty() {
            out.push(format!("{}: {}", d.display(), procs.trim()));
        }
        stack.extend(children);
    }
    out
}

fn subdirs(cgroup: &str) -> Vec<String> {
    std::fs::read_dir(dir(cgroup))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn pod_under(name: &str, cgroup_parent: &str, pid: NamespaceMode) -> PodSandboxConfig {
    let mut pod = pod_config(name, pid);
    pod.linux.as_mut().unwrap().cgroup_parent = cgroup_parent.to_owned();
    pod
}

fn with_resources(
    name: &str,
    image: &str,
    command: &[&str],
    r: LinuxContainerResources,
) -> ContainerConfig {
    let mut c = container_config(name, image, command);
    c.linux = Some(LinuxContainerConfig {
        resources: Some(r),
        ..Default::default()
    });
    c
}

async fn sh(rt: &mut Rt, id: &str, script: &str) -> String {
    let r = exec(rt, id, &["sh", "-c", script], SLOW.as_secs() as i64)
        .await
        .unwrap();
    assert_eq!(r.exit_code, 0, "{script}: {r:?}");
    String::from_utf8_lossy(&r.stdout).trim().to_owned()
}

/// The `pid` of a verbose status's `info` JSON.
fn verbose_pid(info: &std::collections::HashMap<String, String>) -> i32 {
    let v: serde_json::Value = serde_json::from_str(&info["info"]).unwrap();
    let pid = v["pid"].as_i64().unwrap_or(0) as i32;
    assert!(pid > 0, "no pid in {v}");
    pid
}

async fn container_status_info(rt: &mut Rt, id: &str) -> std::collections::HashMap<String, String> {
    rt.container_status(ContainerStatusRequest {
        container_id: id.to_owned(),
        verbose: true,
    })
    .await
    .unwrap()
    .into_inner()
    .info
}

/// A process's cgroup in the unified hierarchy (`0::<path>`), as the node sees it.
fn cgroup_of_pid(pid: i32) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_else(|| panic!("pid {pid}: {text}"))
        .to_owned()
}

fn parent_pid(pid: i32) -> i32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

async fn update(rt: &mut Rt, id: &str, r: LinuxContainerResources) {
    rt.update_container_resources(UpdateContainerResourcesRequest {
        container_id: id.to_owned(),
        linux: Some(r),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("UpdateContainerResources {id}: {e}"));
}

async fn remove_container(rt: &mut Rt, id: &str) {
    rt.remove_container(RemoveContainerRequest {
        container_id: id.to_owned(),
    })
    .await
    .unwrap_or_else(|e| panic!("RemoveContainer {id}: {e}"));
}

/// The 2 MiB huge pages the node has (the guest reserves a few); none → no hugetlb check.
fn huge_2mb_pages() -> u64 {
    std::fs::read_to_string("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// runc's, crun's (before their 2025 change) and rootstock's shares → weight.
fn weight(shares: u64) -> String {
    (1 + ((shares - 2) * 9999) / 262_142).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cgroup v2 node: `make test-cgroup2` runs it in a VM"]
async fn v2_limits_at_create_and_update_and_no_cgroup_left_after_removal() {
    if !is_v2("v2_limits") {
        return;
    }
    let registry = rootstock_test_e2e::registry::Registry::start().await;
    let (daemon, image) = daemon_with_busybox(&registry, "").await;
    loopback_network(&daemon).await;
    let mut rt = daemon.runtime().await;
    let parent = kubelet_pod_cgroup("limits");
    // A shared PID namespace: the pod's init process exists too, and must sit in a leaf.
    let pod = pod_under("limits", &parent, NamespaceMode::Pod);
    let pod_id = run_pod(&mut rt, pod.clone()).await.unwrap();

    let hugepages = huge_2mb_pages() >= 2;
    let at_create = LinuxContainerResources {
        cpu_shares: 512,
        cpu_quota: 50_000,
        cpu_period: 100_000,
        cpuset_cpus: "0".to_owned(),
        memory_limit_in_bytes: 128 << 20,
        hugepage_limits: if hugepages {
            vec![HugepageLimit {
                page_size: "2MB".to_owned(),
                limit: 4 << 20,
            }]
        } else {
            Vec::new()
        },
        unified: [("memory.high".to_owned(), (100u64 << 20).to_string())].into(),
        ..Default::default()
    };
    let c = start_container(
        &mut rt,
        &pod_id,
        &pod,
        with_resources("limits", &image, &["sleep", "3600"], at_create),
    )
    .await;
    let cg = cgroup_of(&mut rt, &c).await;
    assert!(cg.starts_with(&format!("{parent}/")), "{cg} under {parent}");
    assert_eq!(read(&cg, "cgroup.type"), "domain");
    assert_eq!(read(&cg, "cpu.weight"), weight(512));
    assert_eq!(read(&cg, "cpu.max"), "50000 100000");
    assert_eq!(read(&cg, "cpuset.cpus"), "0");
    assert_eq!(read(&cg, "memory.max"), (128u64 << 20).to_string());
    assert_eq!(read(&cg, "memory.high"), (100u64 << 20).to_string());
    if dir(&cg).join("memory.swap.max").exists() {
        assert_eq!(read(&cg, "memory.swap.max"), "0", "no swap use by default");
    }
    if hugepages {
        assert_eq!(read(&cg, "hugetlb.2MB.max"), (4u64 << 20).to_string());
    }
    // Its own cgroup namespace: the container sees its cgroup as the root, and its limits.
    assert_eq!(sh(&mut rt, &c, "cat /proc/self/cgroup").await, "0::/");
    assert_eq!(
        sh(&mut rt, &c, "cat /sys/fs/cgroup/memory.max").await,
        (128u64 << 20).to_string()
    );

    // UpdateContainerResources, read back from the v2 files; the weight is the one create
    // wrote for the same shares (one conversion).
    update(
        &mut rt,
        &c,
        LinuxContainerResources {
            cpu_shares: 1024,
            cpu_quota: 20_000,
            cpu_period: 100_000,
            memory_limit_in_bytes: 64 << 20,
            unified: [("memory.high".to_owned(), (50u64 << 20).to_string())].into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(read(&cg, "cpu.weight"), weight(1024));
    assert_eq!(read(&cg, "cpu.max"), "20000 100000");
    assert_eq!(read(&cg, "memory.max"), (64u64 << 20).to_string());
    assert_eq!(read(&cg, "memory.high"), (50u64 << 20).to_string());
    assert_eq!(
        sh(&mut rt, &c, "cat /sys/fs/cgroup/memory.max").await,
        (64u64 << 20).to_string()
    );
    update(
        &mut rt,
        &c,
        LinuxContainerResources {
            cpu_shares: 512,
            cpu_quota: -1,
            cpu_period: 100_000,
            memory_limit_in_bytes: 64 << 20,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(read(&cg, "cpu.max"), "max 100000", "quota lifted in place");
    assert_eq!(read(&cg, "cpu.weight"), weight(512), "same as at create");
    // A unified key naming a path is refused, naming the key.
    let err = rt
        .update_container_resources(UpdateContainerResourcesRequest {
            container_id: c.clone(),
            linux: Some(LinuxContainerResources {
                unified: [("../escape.max".to_owned(), "1".to_owned())].into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("escape.max"), "{}", err.message());

    // v2's rule: processes only in leaves (kubelet could not set the pod's limits else).
    assert!(
        !read(&cg, "cgroup.procs").is_empty(),
        "the container runs in {cg}"
    );
    assert_eq!(
        inner_nodes_with_processes("/kubepods"),
        Vec::<String>::new()
    );

    // The pod's init sits in a leaf of the pod cgroup, beside its containers; the monitor
    // (the container's parent) in rootstock's monitors cgroup, out of kubelet's tree.
    let pod_init = verbose_pid(&pod_status(&mut rt, &pod_id).await.info);
    let init_cg = cgroup_of_pid(pod_init);
    assert!(
        init_cg.starts_with(&format!("{parent}/")),
        "pod-init in {init_cg}"
    );
    assert_eq!(
        subdirs(&init_cg),
        Vec::<String>::new(),
        "{init_cg} is a leaf"
    );
    let container_init = verbose_pid(&container_status_info(&mut rt, &c).await);
    let monitor = parent_pid(container_init);
    assert_eq!(
        cgroup_of_pid(monitor),
        "/rootstock-monitors",
        "monitor {monitor}"
    );

    // A pod without a cgroup parent (a bare client): rootstock's own pod cgroup; on crun,
    // which gets the same weight (ours) and the same cgroup namespace.
    let own = pod_config("own-cgroup", NamespaceMode::Container);
    let own_id = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(own.clone()),
            runtime_handler: "crun".to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let oc = start_container(
        &mut rt,
        &own_id,
        &own,
        with_resources(
            "own",
            &image,
            &["sleep", "3600"],
            LinuxContainerResources {
                cpu_shares: 512,
                memory_limit_in_bytes: 64 << 20,
                ..Default::default()
            },
        ),
    )
    .await;
    let own_cg = cgroup_of(&mut rt, &oc).await;
    assert_eq!(read(&own_cg, "cpu.weight"), weight(512), "crun: ours");
    assert_eq!(read(&own_cg, "memory.max"), (64u64 << 20).to_string());
    assert_eq!(sh(&mut rt, &oc, "cat /proc/self/cgroup").await, "0::/");
    let own_parent = own_cg.rsplit_once('/').unwrap().0.to_owned();
    assert!(dir(&own_parent).is_dir(), "{own_parent}");
    assert_eq!(
        inner_nodes_with_processes(&own_parent),
        Vec::<String>::new()
    );

    // Removal: the container cgroups go with their containers, rootstock's pod cgroup with
    // RemovePodSandbox, and kubelet's pod cgroup is left empty for kubelet to remove.
    for (pod_id, id) in [(&pod_id, &c), (&own_id, &oc)] {
        stop_pod(&mut rt, pod_id).await;
        remove_container(&mut rt, id).await;
        remove_pod(&mut rt, pod_id).await;
    }
    assert!(!dir(&cg).exists(), "{cg} left after RemoveContainer");
    assert!(
        !dir(&own_parent).exists(),
        "{own_parent} left after RemovePodSandbox"
    );
    assert_eq!(subdirs(&parent), Vec::<String>::new(), "under {parent}");
    std::fs::remove_dir(dir(&parent)).expect("kubelet removes the empty pod cgroup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cgroup v2 node: `make test-cgroup2` runs it in a VM"]
async fn v2_oom_kill_stats_and_kill_all_read_the_v2_files() {
    if !is_v2("v2_oom_stats") {
        return;
    }
    let registry = rootstock_test_e2e::registry::Registry::start().await;
    let (daemon, image) = daemon_with_busybox(&registry, "").await;
    loopback_network(&daemon).await;
    let mut rt = daemon.runtime().await;
    let parent = kubelet_pod_cgroup("oomstats");
    let pod = pod_under("oomstats", &parent, NamespaceMode::Pod);
    let pod_id = run_pod(&mut rt, pod.clone()).await.unwrap();

    // Over its memory limit: the kernel's OOM killer, counted in memory.events, which the
    // monitor reads before the cgroup is removed.
    let hog = start_container(
        &mut rt,
        &pod_id,
        &pod,
        with_resources(
            "hog",
            &image,
            &["dd", "if=/dev/zero", "of=/dev/null", "bs=256M", "count=1"],
            LinuxContainerResources {
                memory_limit_in_bytes: 32 << 20,
                ..Default::default()
            },
        ),
    )
    .await;
    let s = wait_exited(&mut rt, &hog, SLOW).await;
    assert_eq!(
        (s.reason.as_str(), s.exit_code),
        ("OOMKilled", 137),
        "{s:?}"
    );

    // Stats: a busy container that also fills 16 MiB of memory (its /tmp is the writable
    // layer, page cache charged to it) and an idle one.
    const LIMIT: u64 = 256 << 20;
    let busy = start_container(
        &mut rt,
        &pod_id,
        &pod,
        with_resources(
            "busy",
            &image,
            &[
                "sh",
                "-c",
                "dd if=/dev/zero of=/tmp/fill bs=1M count=16 && touch /tmp/done; while :; do :; done",
            ],
            LinuxContainerResources {
                memory_limit_in_bytes: LIMIT as i64,
                ..Default::default()
            },
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
    let deadline = Instant::now() + SLOW;
    while exec(&mut rt, &busy, &["test", "-e", "/tmp/done"], 60)
        .await
        .unwrap()
        .exit_code
        != 0
    {
        assert!(Instant::now() < deadline, "dd did not finish");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cg = cgroup_of(&mut rt, &busy).await;
    // Cumulative CPU only grows: what the call reports is at least what cpu.stat said
    // before it.
    let usec_before = keyed(&cg, "cpu.stat", "usage_usec");
    let pod_usec_before = keyed(&parent, "cpu.stat", "usage_usec");
    let stats = rt
        .container_stats(ContainerStatsRequest {
            container_id: busy.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    let cpu = stats.cpu.unwrap().usage_core_nano_seconds.unwrap().value;
    assert!(
        cpu >= usec_before * 1000 && cpu > 0,
        "{cpu} vs {usec_before} µs"
    );
    let mem = stats.memory.unwrap();
    let usage = mem.usage_bytes.unwrap().value;
    let working_set = mem.working_set_bytes.unwrap().value;
    assert!((16 << 20..=LIMIT).contains(&usage), "usage {usage}");
    assert!(
        working_set > 0 && working_set <= usage,
        "working set {working_set}"
    );
    assert_eq!(
        mem.available_bytes.unwrap().value,
        LIMIT - working_set,
        "limit from memory.max"
    );
    let pod_stats = rt
        .pod_sandbox_stats(PodSandboxStatsRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap()
        .linux
        .unwrap();
    let pod_cpu = pod_stats
        .cpu
        .unwrap()
        .usage_core_nano_seconds
        .unwrap()
        .value;
    assert!(
        pod_cpu >= pod_usec_before * 1000 && pod_cpu >= cpu,
        "pod {pod_cpu}"
    );
    assert!(pod_stats.memory.unwrap().usage_bytes.unwrap().value >= usage);
    // pids.current of the pod cgroup: busy's shell and idle's sleep at least.
    let processes = pod_stats.process.unwrap().process_count.unwrap().value;
    assert!(processes >= 2, "process count {processes}");
    let ids: Vec<&str> = pod_stats
        .containers
        .iter()
        .filter_map(|c| Some(c.attributes.as_ref()?.id.as_str()))
        .collect();
    assert!(
        ids.contains(&busy.as_str()) && ids.contains(&idle.as_str()),
        "{ids:?}"
    );

    // Kill-all in a shared PID namespace (the pod's init is PID 1, not the container's):
    // init exits, its background child is killed by the monitor through the v2
    // cgroup.procs, and the cgroup goes with the container.
    let leaver = container_config("leaver", &image, &["sh", "-c", "sleep 3600 & exit 3"]);
    let leaver = start_container(&mut rt, &pod_id, &pod, leaver).await;
    let leaver_cg = cgroup_of(&mut rt, &leaver).await;
    let s = wait_exited(&mut rt, &leaver, SLOW).await;
    assert_eq!(s.exit_code, 3, "{s:?}");
    let procs = std::fs::read_to_string(dir(&leaver_cg).join("cgroup.procs")).unwrap_or_default();
    assert_eq!(procs.trim(), "", "processes left in {leaver_cg}");

    assert_eq!(
        inner_nodes_with_processes("/kubepods"),
        Vec::<String>::new()
    );
    stop_pod(&mut rt, &pod_id).await;
    for id in [&hog, &busy, &idle, &leaver] {
        remove_container(&mut rt, id).await;
    }
    remove_pod(&mut rt, &pod_id).await;
    assert_eq!(subdirs(&parent), Vec::<String>::new(), "under {parent}");
    std::fs::remove_dir(dir(&parent)).expect("kubelet removes the empty pod cgroup");
}

/// kubelet's `cgroupDriver` must match what RuntimeConfig reports. The daemon runs with its
/// embedded defaults here, on v1 hosts (`make test`) and in the v2 VM alike: no
/// configuration changes between the two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_config_reports_cgroupfs_with_the_default_config_on_v1_and_v2() {
    let daemon = Daemon::start().await;
    let mut rt = daemon.runtime().await;
    let config = rt
        .runtime_config(RuntimeConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    let driver = config.linux.unwrap().cgroup_driver;
    assert_eq!(driver, CgroupDriver::Cgroupfs as i32, "{driver}");
    let status = rt
        .status(StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    let conditions = status.status.unwrap().conditions;
    assert!(
        conditions
            .iter()
            .any(|c| c.r#type == "RuntimeReady" && c.status),
        "{conditions:?}"
    );
}
