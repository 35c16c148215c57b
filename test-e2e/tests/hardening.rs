//! Issue 15, over the socket: what a container can reach of rootstock's own processes,
//! the inputs that would have changed the node (sysctls, cgroup paths, unified files), the
//! RuntimeDefault seccomp profile, and a restart that kills the daemon's whole cgroup.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use k8s_cri::v1::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The value after `key:` in a /proc status text.
fn field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("{key} not in {status}"))
        .trim()
}

fn container_with_caps(name: &str, image: &str, add: &[&str]) -> ContainerConfig {
    let mut config = container_config(name, image, &["sleep", "3600"]);
    config.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            capabilities: Some(Capability {
                add_capabilities: add.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    config
}

/// Acceptance 1 and 2: pod-init seen from a container that can ptrace it, then killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_init_exposes_nothing_to_a_ptrace_capable_container_and_its_death_makes_the_pod_notready()
 {
    let registry = rootstock_test_e2e::registry::Registry::start().await;
    let (daemon, image) = daemon_with_busybox(&registry, "").await;
    loopback_network(&daemon).await;
    let mut rt = daemon.runtime().await;
    let pod = pod_config("hardened-init", NamespaceMode::Pod);
    let pod_id = run_pod(&mut rt, pod.clone()).await.unwrap();
    let config = container_with_caps("debugger", &image, &["SYS_PTRACE"]);
    let id = start_container(&mut rt, &pod_id, &pod, config).await;

    // PID 1 is pod-init: its root is empty and read-only.
    assert_eq!(stdout(&sh(&mut rt, &id, "ls -A /proc/1/root/").await), "");
    let write = sh(&mut rt, &id, "echo x > /proc/1/root/probe").await;
    assert_ne!(write.exit_code, 0, "writing under /proc/1/root/ succeeded");
    let write = sh(&mut rt, &id, "mkdir /proc/1/root/tmp").await;
    assert_ne!(write.exit_code, 0, "mkdir under /proc/1/root/ succeeded");
    // The same probe against every process of the pod that is not the container's own.
    let script = "for p in /proc/[0-9]*; do \
        n=$(cat $p/comm 2>/dev/null) || continue; \
        case $n in sleep|sh|cat|ls) continue;; esac; \
        echo \"== ${p#/proc/} $(tr '\\0' ' ' < $p/cmdline)\"; cat $p/status; \
        echo \"root: $(ls -A $p/root/ 2>&1 | tr '\\n' ' ')\"; done";
    let report = stdout(&sh(&mut rt, &id, script).await);
    let procs: Vec<&str> = report.split("== ").filter(|s| !s.is_empty()).collect();
    assert_eq!(
        procs.len(),
        1,
        "only pod-init besides the container: {report}"
    );
    for p in procs {
        let (head, status) = p.split_once('\n').unwrap();
        assert_eq!(head.trim(), "1 pause", "pid 1 and its argv: {p}");
        assert!(!head.contains('/'), "a host path in argv: {head}");
        for key in ["CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"] {
            assert_eq!(
                u64::from_str_radix(field(status, key), 16).unwrap(),
                0,
                "{key}: {p}"
            );
        }
        for key in ["Uid", "Gid"] {
            assert!(
                field(status, key).split_whitespace().all(|v| v == "65535"),
                "{key}: {p}"
            );
        }
        assert_eq!(field(status, "Groups"), "", "{p}");
        assert_eq!(field(status, "NoNewPrivs"), "1", "{p}");
        assert_eq!(field(status, "Seccomp"), "2", "{p}");
        assert!(
            p.lines().any(|l| l.trim() == "root:"),
            "its root is not empty: {p}"
        );
    }

    // Acceptance 2: pod-init killed from the node.
    let status = pod_status(&mut rt, &pod_id).await;
    let info: serde_json::Value = serde_json::from_str(&status.info["info"]).unwrap();
    let init = info["pid"].as_i64().unwrap() as i32;
    assert!(init > 1, "{info}");
    kill(Pid::from_raw(init), Signal::SIGKILL).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = pod_status(&mut rt, &pod_id).await.status.unwrap();
        if s.state == PodSandboxState::SandboxNotready as i32 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still {:?}", s.state);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let listed = list_pods(&mut rt, None).await;
    assert_eq!(listed[0].state, PodSandboxState::SandboxNotready as i32);
    let refused = rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(container_config("late", &image, &["sleep", "60"])),
            sandbox_config: Some(pod.clone()),
        })
        .await;
    assert!(
        refused.is_err(),
        "a container was created in a pod without its init"
    );
    stop_pod(&mut rt, &pod_id).await;
    remove_pod(&mut rt, &pod_id).await;
}

/// Compiles a static probe that calls `keyctl`, `bpf` and `unshare(CLONE_NEWUSER)` and
/// prints each errno (the busybox image has no tool for the first two).
fn syscall_probe(dir: &Path) -> PathBuf {
    let src = dir.join("probe.c");
    std::fs::write(
        &src,
        r#"#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <unistd.h>
#include <sys/syscall.h>
static void probe(const char *name, long rc) { printf("%s=%d\n", name, rc < 0 ? errno : 0); }
int main(void) {
    probe("keyctl", syscall(SYS_keyctl, 0, -3, 0));
    probe("bpf", syscall(SYS_bpf, 0, 0, 0));
    probe("unshare", syscall(SYS_unshare, 0x10000000));
    return 0;
}
"#,
    )
    .unwrap();
    let bin = dir.join("probe");
    let status = std::process::Command::new("cc")
        .args(["-static", "-O1", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .expect("cc (a C toolchain: Rust links with it)");
    assert!(status.success(), "compiling the syscall probe");
    bin
}

/// Acceptance 3: RuntimeDefault (and its deprecated names) filters; unset and privileged
/// stay unconfined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_default_seccomp_denies_user_namespaces_keyctl_and_bpf() {
    let registry = rootstock_test_e2e::registry::Registry::start().await;
    let (daemon, image) = daemon_with_busybox(&registry, "").await;
    loopback_network(&daemon).await;
    let mut rt = daemon.runtime().await;
    let tools = tempfile::tempdir().unwrap();
    let probe = syscall_probe(tools.path());
    let pod = pod_config("seccomp-default", NamespaceMode::Container);
    let pod_id = run_pod(&mut rt, pod.clone()).await.unwrap();

    // The deprecated `seccomp_profile_path` names are still sent by older kubelets.
    #[allow(deprecated)]
    let run = |name: &str, seccomp: Option<SecurityProfile>, path: &str, privileged: bool| {
        let mut config = container_config(name, &image, &["sleep", "3600"]);
        config.mounts = vec![Mount {
            container_path: "/probe".into(),
            host_path: probe.display().to_string(),
            readonly: true,
            ..Default::default()
        }];
        config.linux = Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                seccomp,
                seccomp_profile_path: path.to_owned(),
                privileged,
                ..Default::default()
            }),
            ..Default::default()
        });
        config
    };
    let default = Some(SecurityProfile {
        profile_type: security_profile::ProfileType::RuntimeDefault as i32,
        localhost_ref: String::new(),
    });
    let cases = [
        ("rd", run("rd", default, "", false), true),
        ("docker", run("docker", None, "docker/default", false), true),
        (
            "runtime",
            run("runtime", None, "runtime/default", false),
            true,
        ),
        ("unset", run("unset", None, "", false), false),
        ("priv", run("priv", None, "runtime/default", true), false),
    ];
    for (name, config, filtered) in cases {
        let id = start_container(&mut rt, &pod_id, &pod, config).await;
        let status = stdout(&sh(&mut rt, &id, "grep Seccomp: /proc/self/status").await);
        let expected = if filtered { "2" } else { "0" };
        assert_eq!(field(&status, "Seccomp"), expected, "{name}");
        let probed = stdout(&exec(&mut rt, &id, &["/probe"], 10).await.unwrap());
        let errno = |k: &str| {
            probed
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("{k} in {probed}"))
                .to_owned()
        };
        if filtered {
            for k in ["keyctl", "bpf", "unshare"] {
                assert_eq!(errno(k), "1", "{name}: {k} must fail with EPERM: {probed}");
            }
            let u = sh(&mut rt, &id, "unshare -U true 2>&1").await;
            assert_ne!(u.exit_code, 0, "{name}: unshare -U");
            assert!(
                stdout(&u).contains("not permitted"),
                "{name}: {}",
                stdout(&u)
            );
        } else {
            // Without the filter a root container creates a user namespace: the probe can
            // tell the difference.
            assert_eq!(errno("unshare"), "0", "{name}: {probed}");
        }
    }
    stop_pod(&mut rt, &pod_id).await;
    remove_pod(&mut rt, &pod_id).await;
}

fn with_sysctls(mut pod: PodSandboxConfig, sysctls: &[(&str, &str)]) -> PodSandboxConfig {
    pod.linux.get_or_insert_with(Default::default).sysctls = sysctls
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    pod
}

fn host_sysctl(name: &str) -> String {
    std::fs::read_to_string(format!("/proc/sys/{}", name.replace('.', "/")))
        .unwrap()
        .trim()
        .to_owned()
}

/// Acceptance 4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_wide_sysctls_are_refused_and_namespaced_ones_stay_in_the_pod() {
    let registry = rootstock_test_e2e::registry::Registry::start().await;
    let (daemon, image) = daemon_with_busybox(&registry, "").await;
    loopback_network(&daemon).await;
    let mut rt = daemon.runtime().await;
    let core_pattern = host_sysctl("kernel.core_pattern");
    let swappiness = host_sysctl("vm.swappiness");
    let pod = pod_config("sysctls", NamespaceMode::Container);
    let host_net = with_modes(
        pod.clone(),
        NamespaceMode::Node,
        NamespaceMode::Container,
        NamespaceMode::Pod,
    );
    for (config, name, value) in [
        (pod.clone(), "kernel.core_pattern", "|/bin/false"),
        (pod.clone(), "vm.swappiness", "1"),
        (host_net.clone(), "net.ipv4.ip_forward", "1"),
        (pod.clone(), "../x", "1"),
    ] {
        let err = run_pod(&mut rt, with_sysctls(config, &[(name, value)]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{name}: {err}");
        assert!(err.message().contains(name), "{name}: {err}");
    }
    assert_eq!(host_sysctl("kernel.core_pattern"), core_pattern);
    assert_eq!(host_sysctl("vm.swappiness"), swappiness);
    assert!(
        list_pods(&mut rt, None).await.is_empty(),
        "a refused pod was kept"
    );

    let somaxconn = host_sysctl("net.core.somaxconn");
    let rmid = host_sysctl("kernel.shm_rmid_forced");
    let want_somaxconn = if somaxconn == "1234" { "1235" } else { "1234" };
    let want_rmid = if rmid == "1" { "0" } else { "1" };
    let config = with_sysctls(
        pod.clone(),
        &[
            ("net.core.somaxconn", want_somaxconn),
            ("kernel.shm_rmid_forced", want_rmid),
        ],
    );
    let pod_id = run_pod(&mut rt, config.clone()).await.unwrap();
    let id = start_container(
        &mut rt,
        &pod_id,
        &config,
        container_config("reader", &image, &["sleep", "3600"]),
    )
    .await;
    let inside = stdout(
        &sh(
            &mut rt,
            &id,
            "cat /proc/sys/net/core/somaxconn /proc/sys/kernel/shm_rmid_forced",
        )
        .await,
    );
    assert_eq!(inside, format!("{want_somaxconn}\n{want_rmid}"));
    assert_eq!(
        host_sysctl("net.core.somaxconn"),
        somaxconn,
        "the host's changed"
    );
    assert_eq!(
        host_sysctl("kernel.shm_rmid_forced"),
        rmid,
        "the host's changed"
    );
    stop_pod(&mut rt, &pod_id).await;
    remove_pod(&mut rt, &pod_id).await;
}

/// Acceptance 5.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escaping_cgroup_parent_and_unified_core_files_are_refused() {
    let registry = rootstock_test_e2e::registry::Registry::start().await;
    let (daemon, image) = daemon_with_busybox(&registry, "").await;
    loopback_network(&daemon).await;
    let mut rt = daemon.runtime().await;
    let escape = format!("e2e-escape-{}", std::process::id());
    let mut pod = pod_config("cgroup-escape", NamespaceMode::Pod);
    pod.linux.as_mut().unwrap().cgroup_parent = format!("../../{escape}");
    let err = run_pod(&mut rt, pod).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(err.message().contains("cgroup_parent"), "{err}");
    // Nothing was made beside or above the cgroup mounts.
    for dir in [
        PathBuf::from("/sys/fs").join(&escape),
        PathBuf::from("/sys").join(&escape),
        PathBuf::from("/sys/fs/cgroup").join(&escape),
    ] {
        assert!(!dir.exists(), "{}", dir.display());
    }
    assert!(list_pods(&mut rt, None).await.is_empty());

    let pod = pod_config("unified", NamespaceMode::Container);
    let pod_id = run_pod(&mut rt, pod.clone()).await.unwrap();
    for key in [
        "cgroup.procs",
        "cgroup.kill",
        "cgroup.subtree_control",
        "../x.max",
    ] {
        let mut config = container_config("unified", &image, &["sleep", "60"]);
        config.linux = Some(LinuxContainerConfig {
            resources: Some(LinuxContainerResources {
                unified: [(key.to_owned(), "1".to_owned())].into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        let err = create_container(&mut rt, &pod_id, &pod, config)
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{key}: {err}");
        assert!(err.message().contains("unified"), "{key}: {err}");
    }
    stop_pod(&mut rt, &pod_id).await;
    remove_pod(&mut rt, &pod_id).await;
}

/// A cgroup of the test's own in the hierarchies a service manager tracks processes with
/// (the named `systemd` one and the cgroup2 one on this hybrid node, `pids` as well): the
/// daemon is moved into it, as systemd starts a service in its own cgroup.
struct ServiceCgroup {
    dirs: Vec<PathBuf>,
}

impl ServiceCgroup {
    fn create(name: &str) -> Self {
        let root = Path::new("/sys/fs/cgroup");
        // A cgroup v2 node has one hierarchy, mounted at the root.
        let hierarchies: Vec<PathBuf> = if root.join("cgroup.controllers").exists() {
            vec![root.to_owned()]
        } else {
            ["systemd", "unified", "pids"]
                .iter()
                .map(|h| root.join(h))
                .filter(|h| h.join("cgroup.procs").exists())
                .collect()
        };
        let dirs: Vec<PathBuf> = hierarchies.into_iter().map(|h| h.join(name)).collect();
        assert!(!dirs.is_empty(), "no cgroup hierarchy to test with");
        for d in &dirs {
            std::fs::create_dir_all(d).unwrap();
        }
        Self { dirs }
    }

    fn enter(&self, pid: i32) {
        for d in &self.dirs {
            std::fs::write(d.join("cgroup.procs"), pid.to_string()).unwrap();
        }
    }

    fn pids(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .dirs
            .iter()
            .flat_map(|d| {
                std::fs::read_to_string(d.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// What systemd's `KillMode=control-group` does on stop: SIGKILL to everything in it.
    fn kill_all(&self) -> Vec<i32> {
        let mut killed = Vec::new();
        for _ in 0..50 {
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            for p in pids {
                let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
                killed.push(p);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        killed
    }
}

impl Drop for ServiceCgroup {
    fn drop(&mut self) {
        self.kill_all();
        for d in &self.dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// Acceptance 6.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_daemons_cgroup_leaves_containers_logs_and_exit_records() {
    let registry = rootstock_test_e2e::registry::Registry::start().await;
    let (mut daemon, image) = daemon_with_busybox(&registry, "").await;
    loopback_network(&daemon).await;
    let service = ServiceCgroup::create(&format!("rootstock-e2e-service-{}", std::process::id()));
    service.enter(daemon.pid().as_raw());
    let mut rt = daemon.runtime().await;
    let logs = tempfile::tempdir().unwrap();
    let mut started = Vec::new();
    for (name, pid_mode) in [
        ("svc-shared", NamespaceMode::Pod),
        ("svc-own", NamespaceMode::Container),
    ] {
        let mut pod = pod_config(name, pid_mode);
        pod.log_directory = logs.path().join(name).display().to_string();
        let pod_id = run_pod(&mut rt, pod.clone()).await.unwrap();
        // Ticks for a while, then exits with a code the test can recognise.
        let mut config = container_config(
            name,
            &image,
            &[
                "sh",
                "-c",
                "i=0; while [ $i -lt 60 ]; do echo tick $i; i=$((i+1)); sleep 0.1; done; exit 7",
            ],
        );
        config.log_path = "ticker.log".to_owned();
        let id = start_container(&mut rt, &pod_id, &pod, config).await;
        started.push((pod_id, id, logs.path().join(name).join("ticker.log")));
    }
    for (_, _, log) in &started {
        wait_file(log, |t| t.contains("tick 2")).await;
    }
    drop(rt);

    let killed = service.kill_all();
    assert!(
        killed.contains(&daemon.pid().as_raw()),
        "the daemon was not in the cgroup"
    );
    daemon
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("the daemon survived its cgroup's SIGKILL");
    let sizes: Vec<u64> = started
        .iter()
        .map(|(_, _, log)| std::fs::metadata(log).unwrap().len())
        .collect();

    daemon.start_again().await;
    let mut rt = daemon.runtime().await;
    for ((pod_id, id, log), size) in started.iter().zip(sizes) {
        let s = container_status(&mut rt, id).await;
        assert!(
            s.state == ContainerState::ContainerRunning as i32
                || s.state == ContainerState::ContainerExited as i32,
            "{id}: {:?}",
            s.state
        );
        let s = wait_exited(&mut rt, id, Duration::from_secs(30)).await;
        assert_eq!(s.exit_code, 7, "{id}: {s:?}");
        let text = std::fs::read_to_string(log).unwrap();
        assert!(
            text.len() as u64 > size,
            "the log stopped growing at the kill"
        );
        assert!(text.contains("tick 59"), "{text}");
        stop_pod(&mut rt, pod_id).await;
        remove_pod(&mut rt, pod_id).await;
    }
}

/// Recursive read-only mounts (a tmpfs below the volume stays read-only too), their
/// refusals, the `Strict` supplemental groups policy with `ContainerStatus.user`, and the
/// features `Status` reports for both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recursive_read_only_mounts_and_strict_supplemental_groups() {
    let registry = rootstock_test_e2e::registry::Registry::start().await;
    let (daemon, image) = daemon_with_busybox(&registry, "").await;
    loopback_network(&daemon).await;
    let mut rt = daemon.runtime().await;
    let status = rt
        .status(StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    assert!(status.features.unwrap().supplemental_groups_policy);
    assert!(!status.runtime_handlers.is_empty());
    for h in &status.runtime_handlers {
        assert!(
            h.features.unwrap().recursive_read_only_mounts,
            "handler {:?}",
            h.name
        );
    }

    // A volume with a submount, as kubelet's volume directories can have.
    let volume = tempfile::tempdir().unwrap();
    let sub = volume.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &sub,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=64k"),
    )
    .unwrap();
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _unmount = Unmount(sub.clone());

    let pod = pod_config("rro", NamespaceMode::Container);
    let pod_id = run_pod(&mut rt, pod.clone()).await.unwrap();
    let with_mount = |name: &str, readonly: bool, rro: bool, propagation: MountPropagation| {
        let mut config = container_config(name, &image, &["sleep", "3600"]);
        config.mounts = vec![Mount {
            container_path: "/vol".into(),
            host_path: volume.path().display().to_string(),
            readonly,
            recursive_read_only: rro,
            propagation: propagation as i32,
            ..Default::default()
        }];
        config
    };
    let private = MountPropagation::PropagationPrivate;
    let ro = start_container(
        &mut rt,
        &pod_id,
        &pod,
        with_mount("ro", true, false, private),
    )
    .await;
    let w = sh(&mut rt, &ro, "touch /vol/sub/x && echo written").await;
    assert_eq!(
        stdout(&w),
        "written",
        "plain readonly leaves the submount writable"
    );
    let rro = start_container(
        &mut rt,
        &pod_id,
        &pod,
        with_mount("rro", true, true, private),
    )
    .await;
    for path in ["/vol/y", "/vol/sub/y"] {
        let w = sh(&mut rt, &rro, &format!("touch {path} 2>&1")).await;
        assert_ne!(w.exit_code, 0, "{path} writable under recursive_read_only");
        assert!(stdout(&w).contains("Read-only"), "{path}: {}", stdout(&w));
    }
    for (name, readonly, propagation) in [
        ("rro-rw", false, private),
        (
            "rro-slave",
            true,
            MountPropagation::PropagationHostToContainer,
        ),
    ] {
        let err = rt
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod_id.clone(),
                config: Some(with_mount(name, readonly, true, propagation)),
                sandbox_config: Some(pod.clone()),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{name}: {err}");
        assert!(err.message().contains("recursive_read_only"), "{err}");
    }

    // alice (1000) is in staff (50) and video (44) in the image's /etc/group: Merge adds
    // them, Strict does not; ContainerStatus.user says which groups the process got.
    for (name, policy, image_groups) in [
        ("merge", SupplementalGroupsPolicy::Merge, true),
        ("strict", SupplementalGroupsPolicy::Strict, false),
    ] {
        let mut config = container_config(name, &image, &["sleep", "3600"]);
        config.linux = Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                run_as_user: Some(Int64Value { value: 1000 }),
                supplemental_groups: vec![1234],
                supplemental_groups_policy: policy as i32,
                ..Default::default()
            }),
            ..Default::default()
        });
        let id = start_container(&mut rt, &pod_id, &pod, config).await;
        let groups = stdout(&sh(&mut rt, &id, "id -G").await);
        let has = |g: &str| groups.split(' ').any(|x| x == g);
        assert!(has("1234"), "{name}: {groups}");
        assert_eq!(has("50") && has("44"), image_groups, "{name}: {groups}");
        let user = container_status(&mut rt, &id)
            .await
            .user
            .unwrap()
            .linux
            .unwrap();
        assert_eq!(user.uid, 1000, "{name}");
        // The primary group is among them (critest's supplemental-groups specs expect it).
        assert!(
            user.supplemental_groups.contains(&user.gid),
            "{name}: {user:?}"
        );
        assert!(user.supplemental_groups.contains(&1234), "{name}: {user:?}");
        assert_eq!(
            user.supplemental_groups.contains(&50),
            image_groups,
            "{name}: {user:?}"
        );
    }
    stop_pod(&mut rt, &pod_id).await;
    remove_pod(&mut rt, &pod_id).await;
}
