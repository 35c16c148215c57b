//! The CRI contract as kubelet and crictl use it, over the socket: pods without a hostname
//! get the node's, ExecSync timeouts leave nothing running and replies stay under kubelet's
//! 16 MiB limit, the verbose and status fields scripts and kubelet read are there, images in
//! use survive a prune, debug containers and stdin behave as kubectl expects. Ids are in
//! `contract_ids.rs`, bad input in `contract_input.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use k8s_cri::v1::*;
use rootstock_test_e2e::daemon::Daemon;
use rootstock_test_e2e::registry::Registry;
use tonic::Code;

/// kubelet's CRI client accepts replies up to 16 MiB (cri-client `maxMsgSize`).
const KUBELET_MAX_MSG: usize = 16 * 1024 * 1024;

async fn kubelet_client(daemon: &Daemon) -> Rt {
    Rt::new(daemon.channel().await).max_decoding_message_size(KUBELET_MAX_MSG)
}

fn node_hostname() -> String {
    nix::unistd::gethostname()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// A pod and a running container in it; returns (pod id, container id).
async fn pod_with(rt: &mut Rt, pod: PodSandboxConfig, config: ContainerConfig) -> (String, String) {
    let pod_id = run_pod(rt, pod.clone()).await.unwrap();
    let id = start_container(rt, &pod_id, &pod, config).await;
    (pod_id, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_without_hostname_gets_the_nodes_and_an_impossible_hostname_is_refused() {
    let registry = Registry::start().await;
    let (daemon, image) = daemon_with_busybox(&registry, "").await;
    loopback_network(&daemon).await;
    let mut rt = daemon.runtime().await;

    // critest's pods: no hostname, a 68-character name (more than a hostname may hold).
    let name = format!("pod-{}", "n".repeat(64));
    assert_eq!(name.len(), 68);
    let mut pod = pod_config(&name, NamespaceMode::Container);
    pod.hostname = String::new();
    let (pod_id, id) = pod_with(
        &mut rt,
        pod,
        container_config("c", &image, &["sleep", "3600"]),
    )
    .await;
    let node = node_hostname();
    assert_eq!(stdout(&sh(&mut rt, &id, "hostname").await), node);
    assert_eq!(stdout(&sh(&mut rt, &id, "cat /etc/hostname").await), node);
    assert_eq!(stdout(&sh(&mut rt, &id, "echo $HOSTNAME").await), node);
    // Its own UTS namespace all the same: the node's is not shared.
    let ns = stdout(&sh(&mut rt, &id, "readlink /proc/self/ns/uts").await);
    assert_ne!(
        ns,
        std::fs::read_link("/proc/self/ns/uts")
            .unwrap()
            .display()
            .to_string()
    );

    for (hostname, what) in [
        ("h".repeat(70), "70 bytes"),
        ("bad/host".to_owned(), "a slash"),
    ] {
        let mut pod = pod_config("refused", NamespaceMode::Container);
        pod.hostname = hostname;
        let err = run_pod(&mut rt, pod).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert!(
            err.message().contains("hostname"),
            "{what}: {}",
            err.message()
        );
    }
    // Nothing of the refused pods is left: the name is free, only the first pod exists.
    let pods = list_pods(&mut rt, None).await;
    assert_eq!(pods.iter().map(|p| &p.id).collect::<Vec<_>>(), [&pod_id]);
    stop_pod(&mut rt, &pod_id).await;
    remove_pod(&mut rt, &pod_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_sync_timeout_kills_everything_the_command_started_and_output_is_capped() {
    let registry = Registry::start().await;
    let (daemon, image) = daemon_with_busybox(&registry, "").await;
    loopback_network(&daemon).await;
    let mut rt = kubelet_client(&daemon).await;
    // A pod sharing one PID namespace (kubelet's shareProcessNamespace): its init reaps, so
    // `ps` shows every process the exec left, zombies included.
    let (pod_id, id) = pod_with(
        &mut rt,
        pod_config("exec", NamespaceMode::Pod),
        container_config("c", &image, &["tail", "-f", "/dev/null"]),
    )
    .await;
    let err = exec(&mut rt, &id, &["sh", "-c", "sleep 100 & sleep 100"], 1)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ps = stdout(&sh(&mut rt, &id, "ps -o pid,stat,comm").await);
    assert!(!ps.contains("sleep"), "left in the pod:\n{ps}");

    // A private PID namespace whose init (`tail`) never reaps: nothing is left running. A
    // killed child whose parent died first stays a zombie of that init, as with any runtime
    // (the init's job: `tini`, `shareProcessNamespace`).
    let (other_pod, other) = pod_with(
        &mut rt,
        pod_config("exec-private", NamespaceMode::Container),
        container_config("c", &image, &["tail", "-f", "/dev/null"]),
    )
    .await;
    let err = exec(
        &mut rt,
        &other,
        &["sh", "-c", "sleep 200 & sleep 200 & wait"],
        1,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ps = stdout(&sh(&mut rt, &other, "ps -o stat,comm | grep -v '^Z'").await);
    assert!(!ps.contains("sleep"), "running in the container:\n{ps}");

    // 20 MB of output: the reply fits kubelet's limit, and says it was cut.
    let r = exec(&mut rt, &id, &["head", "-c", "20000000", "/dev/zero"], 30)
        .await
        .unwrap();
    assert_eq!(r.exit_code, 0);
    assert!(r.stdout.len() + r.stderr.len() < KUBELET_MAX_MSG);
    assert!(r.stdout.len() > 15 * 1024 * 1024, "{}", r.stdout.len());
    let tail = String::from_utf8_lossy(&r.stdout[r.stdout.len() - 100..]).into_owned();
    assert!(tail.contains("output truncated"), "{tail:?}");
    // Small output is untouched.
    assert_eq!(stdout(&sh(&mut rt, &id, "echo hi").await), "hi");

    for p in [&pod_id, &other_pod] {
        stop_pod(&mut rt, p).await;
        remove_pod(&mut rt, p).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_fields_kubelet_and_crictl_read_are_filled_and_secrets_stay_hidden() {
    let registry = Registry::start().await;
    let config = "[images.registries.\"secret.example:5000\"]\nusername = \"puller\"\n\
                  password = \"hunter2-secret\"\n[images.registries.\"other.example\"]\n\
                  auth = \"cHVsbGVyOnMzY3JldA==\"\n";
    let (daemon, image) = daemon_with_busybox(&registry, config).await;
    loopback_network(&daemon).await;
    let mut rt = daemon.runtime().await;

    // `crictl info`: the configuration without its secrets.
    let status = rt
        .status(StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    let text = format!("{:?}", status.info);
    for secret in ["hunter2-secret", "cHVsbGVyOnMzY3JldA=="] {
        assert!(!text.contains(secret), "{text}");
    }
    assert!(text.contains("puller"), "{text}");

    // kubelet sends the pod CIDR on every node-status sync.
    rt.update_runtime_config(UpdateRuntimeConfigRequest {
        runtime_config: Some(RuntimeConfig {
            network_config: Some(NetworkConfig {
                pod_cidr: "10.244.1.0/24,fd00:10:244:1::/64".to_owned(),
            }),
        }),
    })
    .await
    .unwrap();
    let err = rt
        .update_runtime_config(UpdateRuntimeConfigRequest {
            runtime_config: Some(RuntimeConfig {
                network_config: Some(NetworkConfig {
                    pod_cidr: "10.244.1.0".to_owned(),
                }),
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    let mut pod = pod_config("status", NamespaceMode::Container);
    let logs = tempfile::tempdir().unwrap();
    pod.log_directory = logs.path().display().to_string();
    let pod_id = run_pod(&mut rt, pod.clone()).await.unwrap();
    let mut config = container_config("c", &image, &["sleep", "3600"]);
    config.log_path = "c.log".to_owned();
    config.linux = Some(LinuxContainerConfig {
        resources: Some(LinuxContainerResources {
            cpu_shares: 256,
            memory_limit_in_bytes: 64 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = start_container(&mut rt, &pod_id, &pod, config).await;

    // `crictl inspect`: containerd's keys.
    let resp = rt
        .container_status(ContainerStatusRequest {
            container_id: id.clone(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&resp.info["info"]).unwrap();
    assert!(info["pid"].as_i64().unwrap() > 0, "{info}");
    assert_eq!(info["sandboxID"], pod_id.as_str());
    assert_eq!(info["runtimeSpec"]["process"]["args"][0], "sleep", "{info}");
    assert_eq!(info["config"]["metadata"]["name"], "c", "{info}");
    // The limits in force, then after a resize.
    let linux = |s: &ContainerStatus| s.resources.clone().unwrap().linux.unwrap();
    let s = resp.status.unwrap();
    assert_eq!(linux(&s).cpu_shares, 256);
    assert_eq!(linux(&s).memory_limit_in_bytes, 64 << 20);
    rt.update_container_resources(UpdateContainerResourcesRequest {
        container_id: id.clone(),
        linux: Some(LinuxContainerResources {
            memory_limit_in_bytes: 128 << 20,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    let s = container_status(&mut rt, &id).await;
    assert_eq!(linux(&s).memory_limit_in_bytes, 128 << 20);
    assert_eq!(linux(&s).cpu_shares, 256);

    // `crictl inspectp`: the namespaces by path, and the CNI result.
    let resp = pod_status(&mut rt, &pod_id).await;
    let info: serde_json::Value = serde_json::from_str(&resp.info["info"]).unwrap();
    let namespaces = info["runtimeSpec"]["linux"]["namespaces"]
        .as_array()
        .unwrap();
    let net = namespaces.iter().find(|n| n["type"] == "network").unwrap();
    assert!(Path::new(net["path"].as_str().unwrap()).exists(), "{info}");
    assert!(info["cniResult"]["result"].is_object(), "{info}");
    assert_eq!(info["config"]["metadata"]["name"], "status", "{info}");

    // Exited: a resize and a log reopen are fine (kubelet sends both around exits).
    rt.stop_container(StopContainerRequest {
        container_id: id.clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    rt.update_container_resources(UpdateContainerResourcesRequest {
        container_id: id.clone(),
        linux: Some(LinuxContainerResources {
            cpu_shares: 512,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    rt.reopen_container_log(ReopenContainerLogRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();

    // hostNetwork: a network status with no IP, never none.
    let host = with_modes(
        pod_config("hostnet", NamespaceMode::Container),
        NamespaceMode::Node,
        NamespaceMode::Container,
        NamespaceMode::Pod,
    );
    let host_id = run_pod(&mut rt, host).await.unwrap();
    let s = pod_status(&mut rt, &host_id).await.status.unwrap();
    assert_eq!(s.network, Some(PodSandboxNetworkStatus::default()));

    for p in [&pod_id, &host_id] {
        stop_pod(&mut rt, p).await;
        remove_pod(&mut rt, p).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_keeps_its_image_from_crictl_prune_after_the_tag_moved() {
    use rootstock_test_e2e::fixtures::{Compression, LayerBuilder, busybox_image};
    let registry = Registry::start().await;
    let (daemon, old_id) = daemon_with_busybox(&registry, "").await;
    loopback_network(&daemon).await;
    let mut rt = daemon.runtime().await;
    let mut images = daemon.images().await;
    let pod = pod_config("prune", NamespaceMode::Container);
    let (pod_id, id) = pod_with(
        &mut rt,
        pod,
        container_config(
            "c",
            &registry.image_ref("e2e/busybox", "v1"),
            &["sleep", "3600"],
        ),
    )
    .await;
    // The tag moves to a newer image.
    let newer = busybox_image()
        .layer(
            LayerBuilder::new()
                .file("newer", "2")
                .build(Compression::Gzip),
        )
        .build();
    registry.push("e2e/busybox", "v1", &newer).await;
    let new_id = pull_ok(&mut images, &registry.image_ref("e2e/busybox", "v1")).await;
    assert_ne!(new_id, old_id);

    // What `crictl rmi --prune` does: ImageStatus of each listed container's image is kept.
    let listed = rt
        .list_containers(ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .containers;
    let c = listed.iter().find(|c| c.id == id).unwrap();
    let image = c.image.clone().unwrap();
    let kept = images
        .image_status(ImageStatusRequest {
            image: Some(image.clone()),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .image
        .unwrap()
        .id;
    assert_eq!(kept, old_id, "{image:?}");
    assert_eq!(
        image.user_specified_image,
        registry.image_ref("e2e/busybox", "v1")
    );
    assert_eq!(container_status(&mut rt, &id).await.image_id, old_id);
    stop_pod(&mut rt, &pod_id).await;
    remove_pod(&mut rt, &pod_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_debug_container_with_pid_target_sees_the_target_processes() {
    let registry = Registry::start().await;
    let (daemon, image) = daemon_with_busybox(&registry, "").await;
    loopback_network(&daemon).await;
    let mut rt = daemon.runtime().await;
    let pod = pod_config("debug", NamespaceMode::Container);
    let (pod_id, target) = pod_with(
        &mut rt,
        pod.clone(),
        container_config("app", &image, &["sleep", "3600"]),
    )
    .await;
    let other = start_container(
        &mut rt,
        &pod_id,
        &pod,
        container_config("other", &image, &["sleep", "3602"]),
    )
    .await;
    // kubectl debug --target=app: kubelet names the target by id (a prefix works too).
    let mut debug = container_config("debugger", &image, &["sleep", "3601"]);
    debug.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            namespace_options: Some(NamespaceOption {
                network: NamespaceMode::Pod as i32,
                pid: NamespaceMode::Target as i32,
                ipc: NamespaceMode::Pod as i32,
                target_id: target[..12].to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let debugger = start_container(&mut rt, &pod_id, &pod, debug).await;
    let seen = stdout(&sh(&mut rt, &debugger, "ps -o args").await);
    assert!(seen.contains("sleep 3600"), "{seen}");
    assert!(!seen.contains("sleep 3602"), "{seen}");
    let seen = stdout(&sh(&mut rt, &target, "ps -o args").await);
    assert!(seen.contains("sleep 3601"), "{seen}");
    let seen = stdout(&sh(&mut rt, &other, "ps -o args").await);
    assert!(!seen.contains("sleep 3600"), "{seen}");

    // A target that is not running (or not there) is refused.
    rt.stop_container(StopContainerRequest {
        container_id: other.clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    let mut late = container_config("late", &image, &["sleep", "1"]);
    late.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            namespace_options: Some(NamespaceOption {
                pid: NamespaceMode::Target as i32,
                target_id: other.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let err = rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(late),
            sandbox_config: Some(pod.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    stop_pod(&mut rt, &pod_id).await;
    remove_pod(&mut rt, &pod_id).await;
}

/// Writes `data` to a container's stdin through its monitor's socket, then hangs up. The
/// socket's full path is longer than a unix socket address may be: it is reached through an
/// open descriptor of the run directory.
fn write_stdin(daemon: &Daemon, id: &str, data: &[u8]) {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let dir = std::fs::File::open(daemon.state_dir.join("containers").join(id)).unwrap();
    let socket = format!("/proc/self/fd/{}/stdin.sock", dir.as_raw_fd());
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    s.write_all(data).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_stays_open_and_empty_until_written_and_stdin_once_closes_after_the_first_client() {
    let registry = Registry::start().await;
    let (daemon, image) = daemon_with_busybox(&registry, "").await;
    loopback_network(&daemon).await;
    let mut rt = daemon.runtime().await;
    let logs = tempfile::tempdir().unwrap();
    let mut pod = pod_config("stdin", NamespaceMode::Container);
    pod.log_directory = logs.path().display().to_string();
    let pod_id = run_pod(&mut rt, pod.clone()).await.unwrap();

    let mut reader = container_config(
        "reader",
        &image,
        &["sh", "-c", "read l; echo got:$l; read m; echo got:$m"],
    );
    reader.stdin = true;
    reader.log_path = "reader.log".to_owned();
    let id = start_container(&mut rt, &pod_id, &pod, reader).await;
    // Open and empty: `read` waits rather than seeing EOF.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let s = container_status(&mut rt, &id).await;
    assert_eq!(s.state, ContainerState::ContainerRunning as i32, "{s:?}");
    write_stdin(&daemon, &id, b"hello\n");
    wait_file(&logs.path().join("reader.log"), |t| t.contains("got:hello")).await;
    // Not stdin_once: the first client's hang-up did not close it; a second one writes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        container_status(&mut rt, &id).await.state,
        ContainerState::ContainerRunning as i32
    );
    write_stdin(&daemon, &id, b"again\n");
    let s = wait_exited(&mut rt, &id, Duration::from_secs(10)).await;
    assert_eq!(s.exit_code, 0);
    assert!(
        std::fs::read_to_string(logs.path().join("reader.log"))
            .unwrap()
            .contains("got:again")
    );

    let mut once = container_config("once", &image, &["sh", "-c", "cat; echo eof"]);
    once.stdin = true;
    once.stdin_once = true;
    once.log_path = "once.log".to_owned();
    let id = start_container(&mut rt, &pod_id, &pod, once).await;
    write_stdin(&daemon, &id, b"line\n");
    let s = wait_exited(&mut rt, &id, Duration::from_secs(10)).await;
    assert_eq!(s.exit_code, 0);
    let log = wait_file(&logs.path().join("once.log"), |t| t.contains("eof")).await;
    assert!(log.contains("line"), "{log}");

    // Without stdin the container reads EOF at once, as before.
    let mut none = container_config("none", &image, &["sh", "-c", "cat; echo eof"]);
    none.log_path = "none.log".to_owned();
    let id = start_container(&mut rt, &pod_id, &pod, none).await;
    assert_eq!(
        wait_exited(&mut rt, &id, Duration::from_secs(10))
            .await
            .exit_code,
        0
    );
    stop_pod(&mut rt, &pod_id).await;
    remove_pod(&mut rt, &pod_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_fs_info_reports_writable_layers_apart_only_on_their_own_filesystem() {
    let mut daemon = Daemon::start().await;
    let mut images = daemon.images().await;
    let info = images
        .image_fs_info(ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.image_filesystems.len(), 1);
    assert!(info.container_filesystems.is_empty(), "{info:?}");

    // Writable layers on a filesystem of their own.
    daemon
        .signal_and_wait(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(15))
        .await
        .unwrap();
    let layers = daemon.root_dir.join("containers");
    std::fs::create_dir_all(&layers).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &layers,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=16m"),
    )
    .unwrap();
    daemon.start_again().await;
    let mut images = daemon.images().await;
    let info = images
        .image_fs_info(ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.container_filesystems.len(), 1, "{info:?}");
    let fs = &info.container_filesystems[0];
    assert_eq!(
        fs.fs_id.as_ref().unwrap().mountpoint,
        layers.display().to_string()
    );
    assert!(fs.used_bytes.is_some() && fs.inodes_used.is_some());
    assert_ne!(
        info.image_filesystems[0].fs_id.as_ref().unwrap().mountpoint,
        fs.fs_id.as_ref().unwrap().mountpoint
    );
}
