//! Pod sandboxes over the socket, against the real daemon, runtime and monitor: status and
//! list echo what kubelet gave (also after a SIGKILL and restart), names stay reserved,
//! Stop/Remove are idempotent and leave nothing behind, a default pod has no process of its
//! own, host namespaces are honoured, and 50 cycles keep the daemon's resources flat.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use k8s_cri::v1::*;
use rootstock_test_e2e::daemon::Daemon;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_status_and_list_echo_kubelet_values_across_a_daemon_kill() {
    let mut daemon = Daemon::start().await;
    loopback_network(&daemon).await;
    let mut rt = daemon.runtime().await;
    let config = pod_config("echo", NamespaceMode::Container);
    let id = run_pod(&mut rt, config.clone()).await.unwrap();

    let check = |resp: &PodSandboxStatusResponse| {
        let s = resp.status.as_ref().unwrap();
        assert_eq!(s.id, id);
        assert_eq!(s.state, PodSandboxState::SandboxReady as i32);
        assert_eq!(s.metadata, config.metadata);
        assert_eq!(s.labels, config.labels);
        assert_eq!(s.annotations, config.annotations);
        assert!(s.created_at > 0);
        let opts = s
            .linux
            .as_ref()
            .and_then(|l| l.namespaces.as_ref())
            .and_then(|n| n.options.as_ref())
            .unwrap();
        assert_eq!(opts.network, NamespaceMode::Pod as i32);
        assert_eq!(opts.pid, NamespaceMode::Container as i32);
        assert_eq!(opts.ipc, NamespaceMode::Pod as i32);
        // The loopback-only network still yields an address: never empty for a pod network.
        assert!(!s.network.as_ref().unwrap().ip.is_empty(), "{s:?}");
        for v in resp.info.values() {
            let parsed: serde_json::Value = serde_json::from_str(v).unwrap();
            assert!(parsed.is_object(), "info values must be JSON objects: {v}");
        }
    };
    check(&pod_status(&mut rt, &id).await);

    daemon.kill_and_restart().await;
    let mut rt = daemon.runtime().await;
    check(&pod_status(&mut rt, &id).await);
    // The name reservation is rebuilt from disk too.
    let err = run_pod(&mut rt, config.clone()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err:?}");

    // Filters: id, state, label selector.
    let other = run_pod(&mut rt, pod_config("other", NamespaceMode::Container))
        .await
        .unwrap();
    assert_eq!(list_pods(&mut rt, None).await.len(), 2);
    let by_id = list_pods(
        &mut rt,
        Some(PodSandboxFilter {
            id: id.clone(),
            ..Default::default()
        }),
    )
    .await;
    assert_eq!(by_id.len(), 1);
    assert_eq!(by_id[0].metadata, config.metadata);
    assert_eq!(by_id[0].annotations, config.annotations);
    let by_label = list_pods(
        &mut rt,
        Some(PodSandboxFilter {
            label_selector: HashMap::from([("app".to_owned(), "other".to_owned())]),
            ..Default::default()
        }),
    )
    .await;
    assert_eq!(by_label.iter().map(|p| &p.id).collect::<Vec<_>>(), [&other]);
    stop_pod(&mut rt, &other).await;
    let not_ready = list_pods(
        &mut rt,
        Some(PodSandboxFilter {
            state: Some(PodSandboxStateValue {
                state: PodSandboxState::SandboxNotready as i32,
            }),
            ..Default::default()
        }),
    )
    .await;
    assert_eq!(
        not_ready.iter().map(|p| &p.id).collect::<Vec<_>>(),
        [&other]
    );

    for pod in [&id, &other] {
        stop_pod(&mut rt, pod).await;
        remove_pod(&mut rt, pod).await;
    }
    assert!(list_pods(&mut rt, None).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_sandbox_name_is_refused_naming_its_holder_until_removed() {
    let daemon = Daemon::start().await;
    loopback_network(&daemon).await;
    let mut rt = daemon.runtime().await;
    let config = pod_config("dup", NamespaceMode::Container);
    let id = run_pod(&mut rt, config.clone()).await.unwrap();
    let err = run_pod(&mut rt, config.clone()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err:?}");
    assert!(err.message().contains(&id), "{}", err.message());
    // Stopped is still reserved (kubelet moves on to the next attempt); removed is free.
    stop_pod(&mut rt, &id).await;
    let err = run_pod(&mut rt, config.clone()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    let mut next = config.clone();
    next.metadata.as_mut().unwrap().attempt = 1;
    let id2 = run_pod(&mut rt, next).await.unwrap();
    remove_pod(&mut rt, &id).await;
    let id3 = run_pod(&mut rt, config).await.unwrap();
    for pod in [&id2, &id3] {
        stop_pod(&mut rt, pod).await;
        remove_pod(&mut rt, pod).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_and_remove_are_idempotent_and_leave_nothing() {
    let daemon = Daemon::start().await;
    loopback_network(&daemon).await;
    let mut rt = daemon.runtime().await;
    // Never-known ids are OK (CRI idempotence, critest idempotence.go).
    let unknown = "0123456789abcdef".repeat(4);
    stop_pod(&mut rt, &unknown).await;
    remove_pod(&mut rt, &unknown).await;

    let id = run_pod(&mut rt, pod_config("idem", NamespaceMode::Container))
        .await
        .unwrap();
    let sandbox_dir = daemon.state_dir.join("sandboxes").join(&id);
    assert!(sandbox_dir.exists());
    assert!(!mounts_under(&daemon.state_dir).is_empty());
    stop_pod(&mut rt, &id).await;
    stop_pod(&mut rt, &id).await;
    let status = pod_status(&mut rt, &id).await.status.unwrap();
    assert_eq!(status.state, PodSandboxState::SandboxNotready as i32);
    remove_pod(&mut rt, &id).await;
    remove_pod(&mut rt, &id).await;

    assert!(!sandbox_dir.exists());
    assert_eq!(mounts_under(&daemon.state_dir), Vec::<String>::new());
    assert_eq!(mounts_under(&daemon.root_dir), Vec::<String>::new());
    let cgroups: Vec<_> = rootstock_cgroups()
        .into_iter()
        .filter(|p| p.ends_with(&id))
        .collect();
    assert!(cgroups.is_empty(), "{cgroups:?}");
    let err = rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: id.clone(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_pod_has_no_process_of_its_own_and_pulls_nothing() {
    let daemon = Daemon::start().await;
    loopback_network(&daemon).await;
    let mut rt = daemon.runtime().await;
    let mut images = daemon.images().await;
    let before = images
        .list_images(ListImagesRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .images;
    let id = run_pod(&mut rt, pod_config("quiet", NamespaceMode::Container))
        .await
        .unwrap();
    for kind in ["net", "ipc", "uts"] {
        let ns = pinned_ns(&daemon, &id, kind);
        assert!(ns.exists(), "{kind} namespace is pinned");
        let pids = processes_in_ns(&ns, kind);
        assert!(
            pids.is_empty(),
            "processes in the pod's {kind} namespace: {pids:?}"
        );
    }
    let status = pod_status(&mut rt, &id).await;
    let info: serde_json::Value = serde_json::from_str(&status.info["info"]).unwrap();
    assert_eq!(info["pid"], 0, "a default pod has no init: {info}");
    // Nor anything in its cgroup (created only when its first container is).
    let cgroup = info["cgroupParent"].as_str().unwrap().to_owned();
    let procs = std::fs::read_to_string(format!("/sys/fs/cgroup/pids{cgroup}/cgroup.procs"))
        .unwrap_or_default();
    assert!(procs.trim().is_empty(), "processes in {cgroup}: {procs}");
    let after = images
        .list_images(ListImagesRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(before, after, "no pause image is pulled");
    stop_pod(&mut rt, &id).await;
    remove_pod(&mut rt, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_pid_pod_has_one_init_that_stop_ends() {
    let daemon = Daemon::start().await;
    loopback_network(&daemon).await;
    let mut rt = daemon.runtime().await;
    let id = run_pod(&mut rt, pod_config("shared", NamespaceMode::Pod))
        .await
        .unwrap();
    let status = pod_status(&mut rt, &id).await;
    let info: serde_json::Value = serde_json::from_str(&status.info["info"]).unwrap();
    let pid = info["pid"].as_i64().expect("a shared-PID pod has an init") as i32;
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    stop_pod(&mut rt, &id).await;
    // Orphans are reaped lazily on this machine: poll with a deadline.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while is_live(pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "pod init {pid} survived StopPodSandbox"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    remove_pod(&mut rt, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_namespace_pods_pin_nothing_and_echo_their_modes() {
    let daemon = Daemon::start().await;
    // No network config at all: a hostNetwork pod needs none (kubelet runs CNI pods only
    // once the network is ready, and host-network pods before).
    let mut rt = daemon.runtime().await;
    let config = with_modes(
        pod_config("hostns", NamespaceMode::Node),
        NamespaceMode::Node,
        NamespaceMode::Node,
        NamespaceMode::Node,
    );
    let id = run_pod(&mut rt, config).await.unwrap();
    for kind in ["net", "ipc", "uts"] {
        assert!(!pinned_ns(&daemon, &id, kind).exists(), "{kind} pinned");
    }
    let s = pod_status(&mut rt, &id).await.status.unwrap();
    let opts = s.linux.unwrap().namespaces.unwrap().options.unwrap();
    assert_eq!(
        (opts.network, opts.pid, opts.ipc),
        (
            NamespaceMode::Node as i32,
            NamespaceMode::Node as i32,
            NamespaceMode::Node as i32
        )
    );
    // hostNetwork: kubelet uses the node's IP; the runtime reports none.
    assert!(s.network.is_none_or(|n| n.ip.is_empty()));
    stop_pod(&mut rt, &id).await;
    remove_pod(&mut rt, &id).await;

    // A default pod does get namespaces other than the host's.
    loopback_network(&daemon).await;
    let id = run_pod(&mut rt, pod_config("private", NamespaceMode::Container))
        .await
        .unwrap();
    use std::os::unix::fs::MetadataExt;
    for kind in ["net", "ipc", "uts"] {
        let pod = std::fs::metadata(pinned_ns(&daemon, &id, kind))
            .unwrap()
            .ino();
        let host = std::fs::metadata(format!("/proc/self/ns/{kind}"))
            .unwrap()
            .ino();
        assert_ne!(pod, host, "{kind}");
    }
    stop_pod(&mut rt, &id).await;
    remove_pod(&mut rt, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_runtime_handler_is_refused_plainly() {
    let daemon = Daemon::start().await;
    loopback_network(&daemon).await;
    let mut rt = daemon.runtime().await;
    let err = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod_config("nohandler", NamespaceMode::Container)),
            runtime_handler: "kata-nope".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("kata-nope"), "{}", err.message());
    assert!(list_pods(&mut rt, None).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_pod_cycles_keep_fds_mounts_and_cgroups_flat() {
    let registry = rootstock_test_e2e::registry::Registry::start().await;
    let (daemon, image) = daemon_with_busybox(&registry, "").await;
    loopback_network(&daemon).await;
    let mut rt = daemon.runtime().await;
    let pid = daemon.pid();
    // Unreadable must fail the test, not read as 0: "0 -> 0" would pass without measuring.
    let fds = || {
        let n = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap_or_else(|e| panic!("/proc/{pid}/fd of the daemon: {e}"))
            .count();
        // A live daemon holds at least stdio, its socket, the root lock and the epoll fd.
        assert!(
            n > 3,
            "daemon {pid} shows only {n} fds: not measuring the daemon"
        );
        n
    };
    let mut ids = Vec::new();
    // Warm-up (3 cycles: the first calls open lazily created files and threads), then 50.
    let mut before = (0, 0);
    for n in 0..53u32 {
        if n == 3 {
            before = (fds(), mount_count());
        }
        // Alternate PID modes: the shared one has a pod init process to clean up too.
        let mode = if n % 2 == 0 {
            NamespaceMode::Pod
        } else {
            NamespaceMode::Container
        };
        let pod = pod_config(&format!("cycle{n}"), mode);
        let id = run_pod(&mut rt, pod.clone()).await.unwrap();
        start_container(
            &mut rt,
            &id,
            &pod,
            container_config("c", &image, &["sleep", "3600"]),
        )
        .await;
        stop_pod(&mut rt, &id).await;
        remove_pod(&mut rt, &id).await;
        ids.push(id);
    }
    // Stopped pods' network namespaces are held a moment to be let go together
    // (runtime/src/netns_reaper.rs), then every one must be let go.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while namespace_fds(pid) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon still holds {} stopped pods' network namespaces",
            namespace_fds(pid)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (fds0, mounts0) = before;
    let (fds1, mounts1) = (fds(), mount_count());
    eprintln!("50 cycles: daemon fds {fds0} -> {fds1}, host mounts {mounts0} -> {mounts1}");
    // A couple of fds come and go with gRPC connections and blocking-pool threads.
    assert!(fds1 <= fds0 + 2, "daemon fds grew: {fds0} -> {fds1}");
    // Other tests mount in parallel: the exact check is on this daemon's own dirs.
    assert_eq!(mounts_under(&daemon.state_dir), Vec::<String>::new());
    assert_eq!(mounts_under(&daemon.root_dir), Vec::<String>::new());
    let left: Vec<_> = rootstock_cgroups()
        .into_iter()
        .filter(|p| ids.iter().any(|id| p.ends_with(id)))
        .collect();
    assert!(left.is_empty(), "pod cgroups left: {left:?}");
}
