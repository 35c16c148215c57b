//! Shared by the pod and network e2e tests: CRI request builders, a private CNI network per
//! daemon (its own conf, cache, IPAM and bin dirs, network name, bridge and /24 inside
//! 10.199.128.0/17, and a FORWARD rule that keeps that /24 from leaving), and probes of what
//! is left on the host.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use rootstock_test_e2e::daemon::Daemon;
use serde_json::json;
use tonic::transport::Channel;

pub mod footprint;
pub mod install;
pub mod streaming;

pub type Rt = RuntimeServiceClient<Channel>;

#[allow(unused_imports)]
pub use rootstock_test_e2e::network::{SYSTEM_PLUGINS, TestNet};

/// A pod config as kubelet sends it: metadata, a hostname, and namespace modes (kubelet
/// always sets the PID mode; CONTAINER is its default).
pub fn pod_config(name: &str, pid: NamespaceMode) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.to_owned(),
            uid: format!("uid-{name}"),
            namespace: "e2e".to_owned(),
            attempt: 0,
        }),
        hostname: name.to_owned(),
        labels: HashMap::from([
            ("io.kubernetes.pod.uid".to_owned(), format!("uid-{name}")),
            ("app".to_owned(), name.to_owned()),
        ]),
        annotations: HashMap::from([("e2e/anno".to_owned(), format!("value of {name}"))]),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Pod as i32,
                    pid: pid as i32,
                    ipc: NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Sets the network/pid/ipc modes of a pod config.
pub fn with_modes(
    mut config: PodSandboxConfig,
    network: NamespaceMode,
    pid: NamespaceMode,
    ipc: NamespaceMode,
) -> PodSandboxConfig {
    let ns = config
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
        .namespace_options
        .get_or_insert_with(Default::default);
    ns.network = network as i32;
    ns.pid = pid as i32;
    ns.ipc = ipc as i32;
    config
}

pub async fn run_pod(rt: &mut Rt, config: PodSandboxConfig) -> Result<String, tonic::Status> {
    run_pod_on(rt, config, "").await
}

/// RunPodSandbox with a RuntimeClass `handler` (`""`: the default).
pub async fn run_pod_on(
    rt: &mut Rt,
    config: PodSandboxConfig,
    handler: &str,
) -> Result<String, tonic::Status> {
    rt.run_pod_sandbox(RunPodSandboxRequest {
        config: Some(config),
        runtime_handler: handler.to_owned(),
    })
    .await
    .map(|r| r.into_inner().pod_sandbox_id)
}

pub async fn stop_pod(rt: &mut Rt, id: &str) {
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: id.to_owned(),
    })
    .await
    .unwrap_or_else(|e| panic!("StopPodSandbox {id}: {e}"));
}

pub async fn remove_pod(rt: &mut Rt, id: &str) {
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: id.to_owned(),
    })
    .await
    .unwrap_or_else(|e| panic!("RemovePodSandbox {id}: {e}"));
}

pub async fn pod_status(rt: &mut Rt, id: &str) -> PodSandboxStatusResponse {
    rt.pod_sandbox_status(PodSandboxStatusRequest {
        pod_sandbox_id: id.to_owned(),
        verbose: true,
    })
    .await
    .unwrap_or_else(|e| panic!("PodSandboxStatus {id}: {e}"))
    .into_inner()
}

pub async fn list_pods(rt: &mut Rt, filter: Option<PodSandboxFilter>) -> Vec<PodSandbox> {
    rt.list_pod_sandbox(ListPodSandboxRequest { filter })
        .await
        .unwrap()
        .into_inner()
        .items
}

/// A network config with only the `loopback` plugin: pods get a network namespace and a
/// successful ADD without touching bridges or iptables (for tests about sandboxes, not
/// networking). Waits until the daemon reports NetworkReady.
pub async fn loopback_network(daemon: &Daemon) {
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": "e2e-loopback",
        "plugins": [{ "type": "loopback" }]
    });
    let dir = daemon.cni_conf_dir();
    std::fs::write(dir.join("10-loopback.conflist"), conf.to_string()).unwrap();
    wait_network_ready(daemon).await;
}

/// CRI `Status`, not verbose (what kubelet polls): conditions, handlers, features.
pub async fn runtime_status(rt: &mut Rt) -> StatusResponse {
    rt.status(StatusRequest { verbose: false })
        .await
        .unwrap_or_else(|e| panic!("Status: {e}"))
        .into_inner()
}

/// Polls `Status` until NetworkReady (or panics after 15 s).
pub async fn wait_network_ready(daemon: &Daemon) {
    let mut rt = daemon.runtime().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ready = runtime_status(&mut rt)
            .await
            .status
            .unwrap_or_default()
            .conditions
            .iter()
            .any(|c| c.r#type == "NetworkReady" && c.status);
        if ready {
            return;
        }
        assert!(Instant::now() < deadline, "NetworkReady never became true");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every mount point under `dir` (from this process's mount table).
pub fn mounts_under(dir: &Path) -> Vec<String> {
    // Unreadable fails the test: an empty table would make "no mounts left" vacuous.
    rootstock_test_e2e::mounts::mounts_under(dir)
        .unwrap_or_else(|e| panic!("/proc/self/mountinfo: {e}"))
}

/// Lines of the mount table (the host's mount count).
pub fn mount_count() -> usize {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_else(|e| panic!("/proc/self/mountinfo: {e}"))
        .lines()
        .count()
}

/// Every directory under `/sys/fs/cgroup/<controller>/rootstock` (the cgroups rootstock made
/// for pods without a kubelet cgroup parent).
pub fn rootstock_cgroups() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") else {
        return out;
    };
    for c in controllers.flatten() {
        let base = c.path().join("rootstock");
        if let Ok(rd) = std::fs::read_dir(&base) {
            out.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
        }
    }
    out.sort();
    out
}

/// Whether `pid` is alive and not a zombie.
pub fn is_live(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        })
        .unwrap_or(false)
}

/// The pinned namespace file of a sandbox (`net`, `ipc`, `uts`).
pub fn pinned_ns(daemon: &Daemon, sandbox: &str, kind: &str) -> PathBuf {
    daemon
        .state_dir
        .join("sandboxes")
        .join(sandbox)
        .join("ns")
        .join(kind)
}

/// Processes whose `kind` namespace is the one pinned at `ns_file`.
pub fn processes_in_ns(ns_file: &Path, kind: &str) -> Vec<i32> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(ns_file) else {
        return Vec::new();
    };
    let want = format!("{kind}:[{}]", meta.ino());
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(link) = std::fs::read_link(e.path().join("ns").join(kind))
            && link.to_string_lossy() == want
        {
            pids.push(pid);
        }
    }
    pids
}

/// Runs `args` inside the network namespace pinned at `netns` (the host's other namespaces).
pub fn in_netns(netns: &Path, args: &[&str]) -> std::process::Output {
    Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(args)
        .output()
        .unwrap()
}

/// A daemon that can pull from `registry` (plain HTTP), with `extra` config, and busybox
/// pulled into it: returns the daemon and the image id PullImage gave (what kubelet passes
/// to CreateContainer).
pub async fn daemon_with_busybox(
    registry: &rootstock_test_e2e::registry::Registry,
    extra: &str,
) -> (Daemon, String) {
    let image = rootstock_test_e2e::fixtures::busybox_image().build();
    registry.push("e2e/busybox", "v1", &image).await;
    let config = format!(
        "{extra}\n[images.registries.\"{}\"]\ninsecure = true\n",
        registry.host()
    );
    let daemon = Daemon::start_with_config(&config).await;
    let id = pull_ok(
        &mut daemon.images().await,
        &registry.image_ref("e2e/busybox", "v1"),
    )
    .await;
    (daemon, id)
}

/// PullImage of `image` without credentials; it must succeed. Returns the image ref the
/// daemon answered (what kubelet passes to CreateContainer).
pub async fn pull_ok(images: &mut ImageServiceClient<Channel>, image: &str) -> String {
    rootstock_test_e2e::cri::pull(images, image)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .0
}

/// A container config as kubelet sends it (the benchmark's, plus the hash annotation kubelet
/// adds); no log unless the test gives its pod a log_directory and sets one.
pub fn container_config(name: &str, image: &str, command: &[&str]) -> ContainerConfig {
    ContainerConfig {
        annotations: HashMap::from([(
            "io.kubernetes.container.hash".to_owned(),
            format!("hash-{name}"),
        )]),
        ..rootstock_test_e2e::cri::container_config(name, image, command)
    }
}

/// Every container (ListContainers without a filter).
pub async fn list_containers(rt: &mut Rt) -> Vec<Container> {
    rt.list_containers(ListContainersRequest { filter: None })
        .await
        .unwrap_or_else(|e| panic!("ListContainers: {e}"))
        .into_inner()
        .containers
}

/// CreateContainer in `pod`; returns the container's id.
pub async fn create_container(
    rt: &mut Rt,
    pod: &str,
    pod_config: &PodSandboxConfig,
    config: ContainerConfig,
) -> Result<String, tonic::Status> {
    rt.create_container(CreateContainerRequest {
        pod_sandbox_id: pod.to_owned(),
        config: Some(config),
        sandbox_config: Some(pod_config.clone()),
    })
    .await
    .map(|r| r.into_inner().container_id)
}

/// Creates and starts a container; returns its id.
pub async fn start_container(
    rt: &mut Rt,
    pod: &str,
    pod_config: &PodSandboxConfig,
    config: ContainerConfig,
) -> String {
    let id = create_container(rt, pod, pod_config, config)
        .await
        .unwrap_or_else(|e| panic!("CreateContainer: {e}"));
    rt.start_container(StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap_or_else(|e| panic!("StartContainer: {e}"));
    id
}

pub async fn container_status(rt: &mut Rt, id: &str) -> ContainerStatus {
    rt.container_status(ContainerStatusRequest {
        container_id: id.to_owned(),
        verbose: true,
    })
    .await
    .unwrap_or_else(|e| panic!("ContainerStatus {id}: {e}"))
    .into_inner()
    .status
    .unwrap()
}

/// The `info` JSON of a verbose ContainerStatus: what `crictl inspect` shows (pid,
/// sandboxID, runtimeSpec, cgroupPath, runtimeType…).
pub async fn container_info(rt: &mut Rt, id: &str) -> serde_json::Value {
    let status = rt
        .container_status(ContainerStatusRequest {
            container_id: id.to_owned(),
            verbose: true,
        })
        .await
        .unwrap_or_else(|e| panic!("ContainerStatus {id}: {e}"))
        .into_inner();
    serde_json::from_str(&status.info["info"])
        .unwrap_or_else(|e| panic!("ContainerStatus {id}: info is not JSON: {e}"))
}

/// The container's cgroup path, as ContainerStatus's verbose info reports it.
pub async fn cgroup_of(rt: &mut Rt, id: &str) -> String {
    container_info(rt, id).await["cgroupPath"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// UpdateContainerResources of a container's Linux resources.
pub async fn update_resources(
    rt: &mut Rt,
    id: &str,
    linux: LinuxContainerResources,
) -> Result<(), tonic::Status> {
    rt.update_container_resources(UpdateContainerResourcesRequest {
        container_id: id.to_owned(),
        linux: Some(linux),
        ..Default::default()
    })
    .await
    .map(|_| ())
}

/// ContainerStats of one container.
pub async fn container_stats(rt: &mut Rt, id: &str) -> ContainerStats {
    rt.container_stats(ContainerStatsRequest {
        container_id: id.to_owned(),
    })
    .await
    .unwrap_or_else(|e| panic!("ContainerStats {id}: {e}"))
    .into_inner()
    .stats
    .unwrap()
}

/// Polls until the container has exited (or panics after `timeout`).
pub async fn wait_exited(rt: &mut Rt, id: &str, timeout: Duration) -> ContainerStatus {
    let deadline = Instant::now() + timeout;
    loop {
        let s = container_status(rt, id).await;
        if s.state == ContainerState::ContainerExited as i32 {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "container {id} still {:?}",
            s.state
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn exec(
    rt: &mut Rt,
    id: &str,
    cmd: &[&str],
    timeout: i64,
) -> Result<ExecSyncResponse, tonic::Status> {
    rt.exec_sync(ExecSyncRequest {
        container_id: id.to_owned(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        timeout,
    })
    .await
    .map(|r| r.into_inner())
}

/// `sh -c script` in the container through ExecSync (20 s timeout); the call itself must
/// succeed, whatever the script's exit code.
pub async fn sh(rt: &mut Rt, id: &str, script: &str) -> ExecSyncResponse {
    exec(rt, id, &["sh", "-c", script], 20)
        .await
        .unwrap_or_else(|e| panic!("ExecSync sh -c {script:?} in {id}: {e}"))
}

/// An ExecSync reply's stdout as text, trimmed.
pub fn stdout(r: &ExecSyncResponse) -> String {
    String::from_utf8_lossy(&r.stdout).trim().to_owned()
}

/// Polls `path` until `pred` holds for its content (logs are written by the monitor
/// asynchronously).
pub async fn wait_file(path: &Path, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if pred(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "{}: {text:?}", path.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How many namespace files (nsfs: `/proc/*/ns/*` and their bind mounts) process `pid` holds
/// open.
pub fn namespace_fds(pid: impl std::fmt::Display) -> usize {
    use std::os::unix::fs::MetadataExt as _;
    let nsfs = std::fs::metadata("/proc/self/ns/net").unwrap().dev();
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter(|fd| std::fs::metadata(fd.path()).is_ok_and(|m| m.dev() == nsfs))
        .count()
}
