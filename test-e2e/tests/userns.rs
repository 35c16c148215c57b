//! User-namespaced pods (`hostUsers: false`: CRI `userns_options` mode POD) over the socket:
//! root inside is the pod's first mapped id on the node; image files are root's inside
//! through an idmapped mount of the one shared image tree (no copy, no chown); volumes sent
//! with the pod's mappings are idmapped; exec, stats and logs work as anywhere else; input
//! kubelet never sends is refused naming the field.
//!
//! Each test that needs the node to support it first asks `Status`: without the feature it
//! prints `SKIP` with what the daemon's start-up probe found missing, and passes only then.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::streaming::*;
use common::*;
use k8s_cri::v1::*;
use rootstock_test_e2e::daemon::Daemon;

/// kubelet's first two allocations (it keeps ids 0–65535 for the node).
const POD_A: u32 = 65536;
const POD_B: u32 = 131072;
const LEN: u32 = 65536;

fn mapping(host_id: u32) -> Vec<IdMapping> {
    vec![IdMapping {
        host_id,
        container_id: 0,
        length: LEN,
    }]
}

/// A pod config with `userns_options` of `mode` and these mappings, sharing one PID
/// namespace (so pod-init runs in the user namespace too).
fn with_userns(
    name: &str,
    mode: NamespaceMode,
    uids: Vec<IdMapping>,
    gids: Vec<IdMapping>,
) -> PodSandboxConfig {
    let mut pod = pod_config(name, NamespaceMode::Pod);
    let ns = pod
        .linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .namespace_options
        .as_mut()
        .unwrap();
    ns.userns_options = Some(UserNamespace {
        mode: mode as i32,
        uids,
        gids,
    });
    pod
}

/// A pod with its own user namespace mapping container 0 to `host_id` (uids and gids).
fn userns_pod(name: &str, host_id: u32) -> PodSandboxConfig {
    with_userns(name, NamespaceMode::Pod, mapping(host_id), mapping(host_id))
}

/// Whether the daemon's handlers support user namespaces; if not, says which feature the
/// start-up probe found missing (verbose Status) so the skip is never silent.
async fn supported_or_skip(rt: &mut Rt, test: &str) -> bool {
    let status = rt
        .status(StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    let on = status
        .runtime_handlers
        .iter()
        .all(|h| h.features.is_some_and(|f| f.user_namespaces));
    if !on {
        let why = status
            .info
            .get("userNamespaces")
            .cloned()
            .unwrap_or_else(|| "no userNamespaces info in Status".to_owned());
        eprintln!("SKIP {test}: this node lacks user namespace support: {why}");
    }
    on
}

/// A daemon with busybox and a loopback network; `None` (after a SKIP line) when the node
/// cannot run user-namespaced pods.
async fn daemon(
    registry: &rootstock_test_e2e::registry::Registry,
    test: &str,
) -> Option<(Daemon, String, Rt)> {
    let (daemon, image) = daemon_with_busybox(registry, "").await;
    let mut rt = daemon.runtime().await;
    if !supported_or_skip(&mut rt, test).await {
        return None;
    }
    loopback_network(&daemon).await;
    Some((daemon, image, rt))
}

/// The uid the node sees a process run as (`Uid:` real id in /proc/<pid>/status).
fn host_uid_of(pid: i64) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The container's writable layer on the node (`<root_dir>/containers/<id>/upper`).
fn upper_dir(daemon: &Daemon, id: &str) -> PathBuf {
    daemon.root_dir.join("containers").join(id).join("upper")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn userns_pod_root_is_the_mapped_uid_and_exec_logs_stats_resources_oom_restart_work() {
    let registry = rootstock_test_e2e::registry::Registry::start().await;
    let Some((mut daemon, image, mut rt)) = daemon(&registry, "userns_pod_root").await else {
        return;
    };
    let logs = tempfile::tempdir().unwrap();
    let mut pod = userns_pod("userns-a", POD_A);
    pod.log_directory = logs.path().display().to_string();
    // Namespaced sysctls are written by the helper from inside the new user namespace.
    pod.linux.as_mut().unwrap().sysctls = [
        ("net.ipv4.ip_unprivileged_port_start", "0"),
        ("kernel.shm_rmid_forced", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let pod_id = run_pod(&mut rt, pod.clone()).await.unwrap();
    let mut config = container_config(
        "main",
        &image,
        &["sh", "-c", "echo hello from $(id -u); exec sleep 3600"],
    );
    config.log_path = "main.log".to_owned();
    let id = start_container(&mut rt, &pod_id, &pod, config).await;

    // (1) root inside, the mapping in uid_map, the mapped uid on the node.
    assert_eq!(stdout(&sh(&mut rt, &id, "id -u; id -g").await), "0\n0");
    let uid_map = stdout(&sh(&mut rt, &id, "cat /proc/self/uid_map /proc/self/gid_map").await);
    let fields: Vec<Vec<&str>> = uid_map
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(fields, [["0", "65536", "65536"], ["0", "65536", "65536"]]);
    let pid = container_info(&mut rt, &id).await["pid"].as_i64().unwrap();
    assert_eq!(host_uid_of(pid), POD_A, "the container's init on the node");
    let sysctls =
        "cat /proc/sys/net/ipv4/ip_unprivileged_port_start /proc/sys/kernel/shm_rmid_forced";
    assert_eq!(stdout(&sh(&mut rt, &id, sysctls).await), "0\n1");
    // pod-init, PID 1 of the pod, is in the same user namespace (as its nobody).
    let init_uid = stdout(&sh(&mut rt, &id, "awk '/^Uid:/ {print $2}' /proc/1/status").await);
    assert_eq!(init_uid, "65535");

    // (2) the image's files are root's inside; what root creates is the mapped uid's on
    // the node, in the writable layer.
    assert_eq!(
        stdout(&sh(&mut rt, &id, "stat -c '%u:%g' /bin/busybox /etc").await),
        "0:0\n0:0"
    );
    let made = sh(
        &mut rt,
        &id,
        "echo x > /etc/made-here && mkdir /root/dir && echo ok",
    )
    .await;
    assert_eq!(
        stdout(&made),
        "ok",
        "{:?}",
        String::from_utf8_lossy(&made.stderr)
    );
    let upper = upper_dir(&daemon, &id);
    for p in ["etc/made-here", "root/dir"] {
        let m = std::fs::metadata(upper.join(p)).unwrap();
        assert_eq!((m.uid(), m.gid()), (POD_A, POD_A), "{p} in the upper dir");
    }
    // The pod's files: hosts and resolv.conf writable by its root, /dev/shm too.
    let files = sh(
        &mut rt,
        &id,
        "echo '10.0.0.1 extra' >> /etc/hosts && touch /dev/shm/x && stat -c %u /dev/shm/x /etc/hosts",
    )
    .await;
    assert_eq!(
        stdout(&files),
        "0\n0",
        "{:?}",
        String::from_utf8_lossy(&files.stderr)
    );

    // Logs, stats, a second exec: as in any pod.
    let log = wait_file(&logs.path().join("main.log"), |t| t.contains("hello from")).await;
    assert!(log.contains("stdout F hello from 0"), "{log}");
    let stats = container_stats(&mut rt, &id).await;
    assert!(stats.memory.unwrap().working_set_bytes.unwrap().value > 0);
    assert!(stats.cpu.is_some());
    let whoami = exec(&mut rt, &id, &["cat", "/proc/self/status"], 10)
        .await
        .unwrap();
    let uid_line = stdout(&whoami);
    assert!(
        uid_line.lines().any(|l| l.starts_with("Uid:\t0\t0\t0\t0")),
        "{uid_line}"
    );

    // Streaming exec (SPDY, as kubectl exec through kubelet), stdin included.
    let url = exec_url(&mut rt, &id, &["sh", "-c", "cat; id -u"], true).await;
    let out = tokio::task::spawn_blocking(move || spdy_exec(&url, Some(b"piped\n")))
        .await
        .unwrap();
    assert_eq!(text(&out.stdout), "piped\n0\n", "{}", text(&out.stderr));

    // Resources: updated on the running container; over its limit a container is OOMKilled.
    let limit = LinuxContainerResources {
        memory_limit_in_bytes: 256 << 20,
        ..Default::default()
    };
    update_resources(&mut rt, &id, limit).await.unwrap();
    let cgroup = cgroup_of(&mut rt, &id).await;
    let set = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/memory{cgroup}/memory.limit_in_bytes"
    ))
    .unwrap();
    assert_eq!(set.trim(), (256u64 << 20).to_string());
    let mut hog = container_config(
        "hog",
        &image,
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=256M", "count=1"],
    );
    hog.linux = Some(LinuxContainerConfig {
        resources: Some(LinuxContainerResources {
            memory_limit_in_bytes: 32 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let hog = start_container(&mut rt, &pod_id, &pod, hog).await;
    let s = wait_exited(&mut rt, &hog, std::time::Duration::from_secs(30)).await;
    assert_eq!(
        (s.reason.as_str(), s.exit_code),
        ("OOMKilled", 137),
        "{s:?}"
    );

    // A restarted daemon knows the pod's user namespace: a new container joins it.
    daemon.restart().await;
    let mut rt = daemon.runtime().await;
    assert_eq!(
        stdout(&sh(&mut rt, &id, "id -u").await),
        "0",
        "the old container"
    );
    let late = start_container(
        &mut rt,
        &pod_id,
        &pod,
        container_config("late", &image, &["sleep", "3600"]),
    )
    .await;
    let late_pid = container_info(&mut rt, &late).await["pid"]
        .as_i64()
        .unwrap();
    assert_eq!(host_uid_of(late_pid), POD_A);
    let ns = |pid: i64| std::fs::read_link(format!("/proc/{pid}/ns/user")).unwrap();
    assert_eq!(ns(late_pid), ns(pid), "one user namespace for the pod");

    stop_pod(&mut rt, &pod_id).await;
    remove_pod(&mut rt, &pod_id).await;
    assert!(mounts_under(&daemon.state_dir).is_empty());
    assert!(mounts_under(&daemon.root_dir).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_userns_pods_on_runc_and_crun_share_the_image_tree_each_with_its_own_root() {
    let registry = rootstock_test_e2e::registry::Registry::start().await;
    let Some((daemon, image, mut rt)) = daemon(&registry, "two_userns_pods").await else {
        return;
    };
    // The one flattened tree of the image on the node.
    let trees: Vec<PathBuf> = std::fs::read_dir(daemon.root_dir.join("trees"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(trees.len(), 1, "{trees:?}");
    let host = std::fs::metadata(trees[0].join("bin/busybox")).unwrap();
    assert_eq!(host.uid(), 0, "the tree is never chowned");

    // One pod on each OCI runtime handler: both join the pinned namespace by path.
    let mut seen = Vec::new();
    for (name, host_id, handler) in [("userns-a", POD_A, "runc"), ("userns-b", POD_B, "crun")] {
        let pod = userns_pod(name, host_id);
        let pod_id = run_pod_on(&mut rt, pod.clone(), handler).await.unwrap();
        let id = start_container(
            &mut rt,
            &pod_id,
            &pod,
            container_config(name, &image, &["sleep", "3600"]),
        )
        .await;
        let out = stdout(&sh(&mut rt, &id, "stat -c '%u %i' /bin/busybox; id -u").await);
        let pid = container_info(&mut rt, &id).await["pid"].as_i64().unwrap();
        assert_eq!(host_uid_of(pid), host_id);
        seen.push(out);
    }
    // Both see root's file, with the very inode the tree holds on the node: no copy.
    let want = format!("0 {}\n0", host.ino());
    assert_eq!(seen, [want.clone(), want]);
    // Still never chowned.
    assert_eq!(
        std::fs::metadata(trees[0].join("bin/busybox"))
            .unwrap()
            .uid(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_dir_mounts_with_the_pods_mappings_are_writable_by_its_root() {
    let registry = rootstock_test_e2e::registry::Registry::start().await;
    let Some((_daemon, image, mut rt)) = daemon(&registry, "host_dir_mounts").await else {
        return;
    };
    // Host directories owned by the node's root, 0755, behind a 0700 parent (as kubelet's
    // pod directories are closed to others): with the pod's mappings the container's root
    // is their owner. Without mappings, a directory chowned to the pod's first id is
    // writable too, and what it writes lands as that id.
    let host = tempfile::tempdir().unwrap();
    let shared = host.path().join("shared");
    let owned = host.path().join("owned");
    let termination = host.path().join("termination-log");
    std::fs::create_dir(&shared).unwrap();
    std::fs::create_dir(&owned).unwrap();
    std::fs::write(&termination, "").unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&termination, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::chown(&owned, Some(POD_A), Some(POD_A)).unwrap();
    let mount = |host_path: &Path, container_path: &str, mapped: bool| Mount {
        container_path: container_path.to_owned(),
        host_path: host_path.display().to_string(),
        uid_mappings: if mapped { mapping(POD_A) } else { Vec::new() },
        gid_mappings: if mapped { mapping(POD_A) } else { Vec::new() },
        ..Default::default()
    };

    let pod = userns_pod("userns-vol", POD_A);
    let pod_id = run_pod(&mut rt, pod.clone()).await.unwrap();
    let mut config = container_config("vol", &image, &["sleep", "3600"]);
    config.mounts = vec![
        mount(&shared, "/data", true),
        mount(&termination, "/dev/termination-log", true),
        mount(&owned, "/owned", false),
    ];
    let id = start_container(&mut rt, &pod_id, &pod, config).await;
    let out = sh(
        &mut rt,
        &id,
        "stat -c %u /data /dev/termination-log && echo hi > /data/f && echo bye > /dev/termination-log \
         && echo own > /owned/g && echo done",
    )
    .await;
    assert_eq!(
        stdout(&out),
        "0\n0\ndone",
        "{:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Through the idmapped mount the container's root is the directory's on-disk owner:
    // its file lands as on-disk 0, which is what the pod's mapping makes of the pod's root.
    let f = std::fs::metadata(shared.join("f")).unwrap();
    assert_eq!((f.uid(), f.gid()), (0, 0));
    assert_eq!(std::fs::read_to_string(&termination).unwrap(), "bye\n");
    // Without mappings the write is the mapped uid's on the node.
    let g = std::fs::metadata(owned.join("g")).unwrap();
    assert_eq!((g.uid(), g.gid()), (POD_A, POD_A));
    stop_pod(&mut rt, &pod_id).await;
    remove_pod(&mut rt, &pod_id).await;
    // The staged clones were detached: removing the pod left the host files alone.
    assert_eq!(std::fs::read_to_string(shared.join("f")).unwrap(), "hi\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_namespace_requests_kubelet_never_sends_are_refused_naming_the_field() {
    let daemon = Daemon::start().await;
    let mut rt = daemon.runtime().await;
    loopback_network(&daemon).await;
    let with = |uids, gids, mode| with_userns("bad-userns", mode, uids, gids);
    let pod = NamespaceMode::Pod;
    let cases = [
        (with(mapping(0), mapping(POD_A), pod), "uids[0]: host id 0"),
        (
            with(
                vec![
                    IdMapping {
                        host_id: POD_A,
                        container_id: 0,
                        length: LEN,
                    },
                    IdMapping {
                        host_id: POD_B,
                        container_id: LEN,
                        length: LEN,
                    },
                ],
                mapping(POD_A),
                pod,
            ),
            "uids: exactly one mapping",
        ),
        (
            with(
                mapping(POD_A),
                vec![IdMapping {
                    host_id: 1000,
                    container_id: 0,
                    length: 100_000,
                }],
                pod,
            ),
            "gids[0]: host ids 1000+100000 are not a range kubelet allocates",
        ),
        (
            with(Vec::new(), Vec::new(), NamespaceMode::Container),
            "userns_options.mode: CONTAINER",
        ),
        (
            with(Vec::new(), Vec::new(), NamespaceMode::Target),
            "userns_options.mode: TARGET",
        ),
        (
            with_modes(
                userns_pod("bad-userns", POD_A),
                NamespaceMode::Node,
                NamespaceMode::Pod,
                NamespaceMode::Pod,
            ),
            "namespace_options.network",
        ),
    ];
    for (config, field) in cases {
        let err = run_pod(&mut rt, config).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{field}: {err:?}");
        assert!(err.message().contains(field), "{field}: {}", err.message());
    }
    assert!(
        list_pods(&mut rt, None).await.is_empty(),
        "nothing was made"
    );
    // Mode NODE is the node's user namespace, as before.
    let node = with(Vec::new(), Vec::new(), NamespaceMode::Node);
    let id = run_pod(&mut rt, node).await.unwrap();
    assert!(!pinned_ns(&daemon, &id, "user").exists());
}
