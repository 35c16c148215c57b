//! Containers in pods over the socket, against the real daemon, runtime and monitor: a
//! busybox container from a pulled image id logs, execs, exits and survives a daemon kill;
//! PID and host namespaces are what the pod asked for; a container that exits while the
//! daemon is dead reports its code; the crun handler runs the same pod; a stopped pod's
//! containers stay Exited while the OCI runtime forgets them; the harness cleans up
//! what a failed test left; logs reopen and resources update; both runtimes run from one
//! sealed in-memory copy of their binary that only the daemon holds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use k8s_cri::v1::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busybox_container_from_pulled_id_logs_execs_exits_and_survives_a_daemon_kill() {
    let registry = rootstock_test_e2e::registry::Registry::start().await;
    let (mut daemon, image_id) = daemon_with_busybox(&registry, "").await;
    assert!(image_id.starts_with("sha256:"), "{image_id}");
    loopback_network(&daemon).await;
    let logs = tempfile::tempdir().unwrap();
    let mut pod = pod_config("busy", NamespaceMode::Container);
    pod.log_directory = logs.path().display().to_string();
    let mut rt = daemon.runtime().await;
    let pod_id = run_pod(&mut rt, pod.clone()).await.unwrap();

    let mut worker_config = container_config(
        "worker",
        &image_id,
        &[
            "sh",
            "-c",
            "echo hello; echo oops >&2; printf part; trap '' TERM; while true; do sleep 1; done",
        ],
    );
    worker_config.log_path = "worker/0.log".to_owned();
    let worker = start_container(&mut rt, &pod_id, &pod, worker_config.clone()).await;
    let exiter = start_container(
        &mut rt,
        &pod_id,
        &pod,
        container_config("exiter", &image_id, &["sh", "-c", "exit 7"]),
    )
    .await;

    let check = |s: &ContainerStatus| {
        assert_eq!(s.state, ContainerState::ContainerRunning as i32, "{s:?}");
        assert_eq!(s.metadata, worker_config.metadata);
        assert_eq!(s.labels, worker_config.labels);
        assert_eq!(s.annotations, worker_config.annotations);
        assert_eq!(
            s.image.as_ref().unwrap().image,
            registry.image_ref("e2e/busybox", "v1")
        );
        assert!(
            s.image_ref.contains("e2e/busybox@sha256:"),
            "{}",
            s.image_ref
        );
        assert_eq!(
            s.log_path,
            logs.path().join("worker/0.log").display().to_string()
        );
        assert!(s.created_at > 0 && s.started_at >= s.created_at);
    };
    check(&container_status(&mut rt, &worker).await);

    // CRI log: stream tags, and a line without its newline is a partial `P` record.
    let log = wait_file(&logs.path().join("worker/0.log"), |t| t.contains("part")).await;
    let records: Vec<Vec<&str>> = log.lines().map(|l| l.splitn(4, ' ').collect()).collect();
    assert!(
        records.iter().any(|r| r[1..] == ["stdout", "F", "hello"]),
        "{log}"
    );
    assert!(
        records.iter().any(|r| r[1..] == ["stderr", "F", "oops"]),
        "{log}"
    );
    assert!(
        records.iter().any(|r| r[1..] == ["stdout", "P", "part"]),
        "{log}"
    );

    let exited = wait_exited(&mut rt, &exiter, Duration::from_secs(10)).await;
    assert_eq!((exited.exit_code, exited.reason.as_str()), (7, "Error"));
    assert!(exited.finished_at >= exited.started_at);

    // ExecSync: stdout, stderr, exit code.
    let out = exec(
        &mut rt,
        &worker,
        &["sh", "-c", "echo o; echo e >&2; exit 3"],
        10,
    )
    .await
    .unwrap();
    assert_eq!(
        (out.stdout.as_slice(), out.stderr.as_slice(), out.exit_code),
        (&b"o\n"[..], &b"e\n"[..], 3)
    );
    // On timeout: DeadlineExceeded, and the exec'd process itself is gone.
    let err = exec(
        &mut rt,
        &worker,
        &["sh", "-c", "echo $$ > /tmp/exec.pid; exec sleep 60"],
        1,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
    let pid = exec(&mut rt, &worker, &["cat", "/tmp/exec.pid"], 10)
        .await
        .unwrap();
    let pid = String::from_utf8(pid.stdout).unwrap().trim().to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let alive = exec(
            &mut rt,
            &worker,
            &[
                "sh",
                "-c",
                &format!("grep -v Z /proc/{pid}/status | grep -q State"),
            ],
            10,
        )
        .await
        .unwrap();
        if alive.exit_code != 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "exec'd process {pid} survived its timeout"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // SIGKILL the daemon: the running one stays Running with everything echoed.
    daemon.kill_and_restart().await;
    let mut rt = daemon.runtime().await;
    check(&container_status(&mut rt, &worker).await);
    let exited = container_status(&mut rt, &exiter).await;
    assert_eq!((exited.exit_code, exited.reason.as_str()), (7, "Error"));
    let listed = rt
        .list_containers(ListContainersRequest {
            filter: Some(ContainerFilter {
                pod_sandbox_id: pod_id.clone(),
                state: Some(ContainerStateValue {
                    state: ContainerState::ContainerRunning as i32,
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(listed.iter().map(|c| &c.id).collect::<Vec<_>>(), [&worker]);

    // It ignores SIGTERM: killed once the timeout has passed, 128 + SIGKILL.
    let started = std::time::Instant::now();
    rt.stop_container(StopContainerRequest {
        container_id: worker.clone(),
        timeout: 2,
    })
    .await
    .unwrap();
    assert!(started.elapsed() >= Duration::from_secs(2));
    let s = container_status(&mut rt, &worker).await;
    assert_eq!(s.exit_code, 137, "{s:?}");

    stop_pod(&mut rt, &pod_id).await;
    remove_pod(&mut rt, &pod_id).await;
    assert!(
        rt.list_containers(ListContainersRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .containers
            .is_empty()
    );
    assert_eq!(mounts_under(&daemon.state_dir), Vec::<String>::new());
    assert_eq!(mounts_under(&daemon.root_dir), Vec::<String>::new());
    let cgroups: Vec<_> = rootstock_cgroups()
        .into_iter()
        .filter(|p| p.ends_with(&pod_id))
        .collect();
    assert!(cgroups.is_empty(), "{cgroups:?}");
}

/// `ps` output (busybox) of a container: the commands it sees.
async fn ps_in(rt: &mut Rt, id: &str) -> String {
    let out = exec(rt, id, &["ps", "-o", "pid,args"], 10).await.unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_pid_pods_see_each_other_default_pods_do_not_and_stop_leaves_no_process() {
    let registry = rootstock_test_e2e::registry::Registry::start().await;
    let (daemon, image) = daemon_with_busybox(&registry, "").await;
    loopback_network(&daemon).await;
    let mut rt = daemon.runtime().await;
    for (mode, shared) in [
        (NamespaceMode::Pod, true),
        (NamespaceMode::Container, false),
    ] {
        let pod = pod_config(&format!("pid{}", mode as i32), mode);
        let pod_id = run_pod(&mut rt, pod.clone()).await.unwrap();
        let mut cfg_a = container_config("a", &image, &["sleep", "3601"]);
        let mut cfg_b = container_config("b", &image, &["sleep", "3602"]);
        for c in [&mut cfg_a, &mut cfg_b] {
            c.linux = Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        pid: mode as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        let a = start_container(&mut rt, &pod_id, &pod, cfg_a).await;
        let b = start_container(&mut rt, &pod_id, &pod, cfg_b).await;
        let seen = ps_in(&mut rt, &b).await;
        assert_eq!(seen.contains("sleep 3601"), shared, "{mode:?}: {seen}");
        assert!(seen.contains("sleep 3602"), "{seen}");
        // A background child of `a` (in a's cgroup) must die with it, whatever the PID mode.
        exec(
            &mut rt,
            &a,
            &["sh", "-c", "sleep 3603 >/dev/null 2>&1 &"],
            10,
        )
        .await
        .unwrap();
        let cgroup = cgroup_of(&mut rt, &a).await;
        rt.stop_container(StopContainerRequest {
            container_id: a.clone(),
            timeout: 0,
        })
        .await
        .unwrap();
        let procs = format!("/sys/fs/cgroup/pids{cgroup}/cgroup.procs");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(&procs)
            .map(|s| !s.trim().is_empty())
            .unwrap_or(false)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{mode:?}: processes left in {procs}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!ps_in(&mut rt, &b).await.contains("sleep 3603"));
        stop_pod(&mut rt, &pod_id).await;
        remove_pod(&mut rt, &pod_id).await;
    }
}

/// The namespace link (`net:[…]`) a container sees for itself.
async fn ns_in(rt: &mut Rt, id: &str, kind: &str) -> String {
    let out = exec(rt, id, &["readlink", &format!("/proc/self/ns/{kind}")], 10)
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn host_ns(kind: &str) -> String {
    std::fs::read_link(format!("/proc/self/ns/{kind}"))
        .unwrap()
        .display()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_namespace_containers_see_the_hosts_and_default_ones_do_not() {
    let registry = rootstock_test_e2e::registry::Registry::start().await;
    let (daemon, image) = daemon_with_busybox(&registry, "").await;
    loopback_network(&daemon).await;
    let mut rt = daemon.runtime().await;
    for host in [true, false] {
        let mode = if host {
            NamespaceMode::Node
        } else {
            NamespaceMode::Pod
        };
        let pid_mode = if host {
            NamespaceMode::Node
        } else {
            NamespaceMode::Container
        };
        let pod = with_modes(
            pod_config(&format!("host{host}"), pid_mode),
            mode,
            pid_mode,
            mode,
        );
        let pod_id = run_pod(&mut rt, pod.clone()).await.unwrap();
        let mut cfg = container_config("c", &image, &["sleep", "3600"]);
        cfg.linux = Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: pod
                    .linux
                    .as_ref()
                    .and_then(|l| l.security_context.as_ref())
                    .and_then(|s| s.namespace_options.clone()),
                ..Default::default()
            }),
            ..Default::default()
        });
        let c = start_container(&mut rt, &pod_id, &pod, cfg).await;
        for kind in ["net", "ipc", "pid", "uts"] {
            let seen = ns_in(&mut rt, &c, kind).await;
            assert_eq!(
                seen == host_ns(kind),
                host,
                "{kind}: host={host} saw {seen}"
            );
        }
        stop_pod(&mut rt, &pod_id).await;
        remove_pod(&mut rt, &pod_id).await;
    }
}

/// Pids of `rootstock-monitor` processes whose command line mentions `needle`.
fn monitors_of(needle: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains("rootstock-monitor") && cmd.contains(needle) && is_live(pid) {
            pids.push(pid);
        }
    }
    pids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_that_exits_while_the_daemon_is_dead_reports_its_code_and_nothing_is_left() {
    let registry = rootstock_test_e2e::registry::Registry::start().await;
    let (mut daemon, image) = daemon_with_busybox(&registry, "").await;
    loopback_network(&daemon).await;
    let mut rt = daemon.runtime().await;
    let pod = pod_config("crash", NamespaceMode::Pod);
    let pod_id = run_pod(&mut rt, pod.clone()).await.unwrap();
    let runner = start_container(
        &mut rt,
        &pod_id,
        &pod,
        container_config("run", &image, &["sleep", "3600"]),
    )
    .await;
    let quitter = start_container(
        &mut rt,
        &pod_id,
        &pod,
        container_config("quit", &image, &["sh", "-c", "sleep 2; exit 5"]),
    )
    .await;
    daemon
        .signal_and_wait(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(10))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    daemon.start_again().await;
    let mut rt = daemon.runtime().await;
    assert_eq!(
        container_status(&mut rt, &runner).await.state,
        ContainerState::ContainerRunning as i32
    );
    let q = container_status(&mut rt, &quitter).await;
    assert_eq!(
        (q.state, q.exit_code),
        (ContainerState::ContainerExited as i32, 5)
    );

    stop_pod(&mut rt, &pod_id).await;
    remove_pod(&mut rt, &pod_id).await;
    let state = daemon.state_dir.display().to_string();
    // Orphans are reaped lazily on this machine: poll with a deadline.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let left = monitors_of(&state);
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "monitors left: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(mounts_under(&daemon.state_dir), Vec::<String>::new());
    assert_eq!(mounts_under(&daemon.root_dir), Vec::<String>::new());
    assert!(!daemon.state_dir.join("sandboxes").join(&pod_id).exists());
    let cgroups: Vec<_> = rootstock_cgroups()
        .into_iter()
        .filter(|p| p.ends_with(&pod_id))
        .collect();
    assert!(cgroups.is_empty(), "{cgroups:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_pod_runs_with_the_crun_handler() {
    let registry = rootstock_test_e2e::registry::Registry::start().await;
    let (daemon, image) = daemon_with_busybox(&registry, "").await;
    loopback_network(&daemon).await;
    let mut rt = daemon.runtime().await;
    let pod = pod_config("crun", NamespaceMode::Container);
    let pod_id = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod.clone()),
            runtime_handler: "crun".to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    assert_eq!(
        pod_status(&mut rt, &pod_id)
            .await
            .status
            .unwrap()
            .runtime_handler,
        "crun"
    );
    let c = start_container(
        &mut rt,
        &pod_id,
        &pod,
        container_config("c", &image, &["sleep", "3600"]),
    )
    .await;
    let out = exec(&mut rt, &c, &["sh", "-c", "echo via crun"], 10)
        .await
        .unwrap();
    assert_eq!(out.stdout, b"via crun\n");
    let info = container_info(&mut rt, &c).await;
    assert_eq!(info["runtimeType"], "crun");
    stop_pod(&mut rt, &pod_id).await;
    remove_pod(&mut rt, &pod_id).await;
}

/// StopPodSandbox leaves the pod's containers Exited, as kubelet reads them until it removes
/// them, but the OCI runtime has already forgotten them (released beside CNI DEL, so that
/// the removal runs no runtime), with either handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_pods_containers_stay_exited_while_the_runtime_forgets_them() {
    let registry = rootstock_test_e2e::registry::Registry::start().await;
    let (daemon, image) = daemon_with_busybox(&registry, "").await;
    loopback_network(&daemon).await;
    let mut rt = daemon.runtime().await;
    for handler in ["runc", "crun"] {
        let (pod_id, c) =
            sleeping_pod(&mut rt, &image, &format!("forget-{handler}"), handler).await;
        let oci_state = daemon.state_dir.join("runtime").join(handler).join(&c);
        assert!(oci_state.exists(), "{}", oci_state.display());
        stop_pod(&mut rt, &pod_id).await;
        let status = container_status(&mut rt, &c).await;
        assert_eq!(
            status.state,
            ContainerState::ContainerExited as i32,
            "{handler}"
        );
        assert_eq!(status.exit_code, 137, "{handler}");
        assert!(!oci_state.exists(), "{handler}: {}", oci_state.display());
        remove_pod(&mut rt, &pod_id).await;
        let left = rt
            .list_containers(ListContainersRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .containers;
        assert!(left.is_empty(), "{left:?}");
    }
    assert_eq!(mounts_under(&daemon.state_dir), Vec::<String>::new());
}

/// crun runs from one sealed in-memory copy of its binary (`sealed_copy`, on for the built-in
/// crun handler, so it does not copy itself again on each call); runc, with the key off, runs
/// from its file: while an exec runs, crun's process executes `/memfd:crun` and runc's the
/// binary on disk. After pods ran with both handlers the daemon holds exactly one copy,
/// sealed as runc and crun check it (write, grow, shrink, seal); no monitor and no container
/// holds one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crun_runs_from_one_sealed_copy_that_only_the_daemon_holds() {
    let registry = rootstock_test_e2e::registry::Registry::start().await;
    let (daemon, image) = daemon_with_busybox(&registry, "").await;
    loopback_network(&daemon).await;
    let mut rt = daemon.runtime().await;
    let mut inits = Vec::new();
    for handler in ["runc", "crun", "runc", "crun"] {
        let name = format!("sealed-{handler}-{}", inits.len());
        let (_, c) = sleeping_pod(&mut rt, &image, &name, handler).await;
        inits.push(container_info(&mut rt, &c).await["pid"].as_i64().unwrap() as i32);
        // `<runtime> exec` waits for its process: look for it while `sleep 3` runs.
        let mut client = rt.clone();
        let id = c.clone();
        let running =
            tokio::spawn(async move { exec(&mut client, &id, &["sleep", "3"], 20).await });
        let wanted = match handler {
            "crun" => "/memfd:crun (deleted)".to_owned(),
            _ => on_path(handler).to_string_lossy().into_owned(),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        let mut seen = Vec::new();
        while seen.is_empty() && std::time::Instant::now() < deadline {
            seen = processes_running(&wanted, &c);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            !seen.is_empty(),
            "no `{handler} exec` of {c} runs from {wanted}"
        );
        assert_eq!(running.await.unwrap().unwrap().exit_code, 0);
    }
    let mut held = memfds_of(daemon.pid().as_raw());
    held.sort();
    let names: Vec<&str> = held.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["/memfd:crun (deleted)"]);
    let all_seals =
        libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    for (name, seals) in &held {
        assert_eq!(*seals, all_seals, "{name}");
    }
    let needle = daemon.state_dir.to_string_lossy().into_owned();
    let monitors = monitors_of(&needle);
    assert_eq!(monitors.len(), 4, "{monitors:?}");
    for &pid in &monitors {
        // Out of the daemon's cgroup in every hierarchy, v1 and hybrid's cgroup2 alike.
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        for line in cgroups.lines() {
            assert!(
                line.ends_with(":/rootstock-monitors"),
                "monitor {pid}: {line}"
            );
        }
    }
    for pid in monitors.into_iter().chain(inits) {
        assert_eq!(memfds_of(pid), Vec::new(), "pid {pid}");
    }
}

/// The daemon re-executes itself with glibc's per-thread caches off (its heap after a burst
/// of pods depends on it) and hands none of that to what it starts: the monitors, and
/// through them the OCI runtime, run with glibc's defaults.
#[tokio::test]
async fn the_daemon_alone_runs_with_its_allocator_tunables() {
    let registry = rootstock_test_e2e::registry::Registry::start().await;
    let (daemon, image) = daemon_with_busybox(&registry, "").await;
    loopback_network(&daemon).await;
    let mut rt = daemon.runtime().await;
    sleeping_pod(&mut rt, &image, "tunables", "runc").await;
    // /proc/<pid>/environ is the environment the process was executed with.
    let environ = |pid: i32| -> Vec<String> {
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let env = String::from_utf8_lossy(&env).into_owned();
        env.split('\0').map(str::to_owned).collect()
    };
    let daemon_env = environ(daemon.pid().as_raw());
    assert!(
        daemon_env
            .iter()
            .any(|v| v == "GLIBC_TUNABLES=glibc.malloc.tcache_count=0"),
        "the daemon was not re-executed with its tunables: {daemon_env:?}"
    );
    // Under its own name for ps and pgrep, as before the re-execution.
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", daemon.pid())).unwrap();
    assert_eq!(comm.trim_end(), "rootstock");
    let monitors = monitors_of(&daemon.state_dir.to_string_lossy());
    assert_eq!(monitors.len(), 1, "{monitors:?}");
    for pid in monitors {
        let env = environ(pid);
        assert!(
            !env.iter()
                .any(|v| v.starts_with("GLIBC_TUNABLES=")
                    || v.starts_with("ROOTSTOCK_MALLOC_TUNED=")),
            "pid {pid} inherited the daemon's tunables: {env:?}"
        );
    }
}

/// A pod `name` on `handler` with one `sleep 3600` container: (pod id, container id).
async fn sleeping_pod(rt: &mut Rt, image: &str, name: &str, handler: &str) -> (String, String) {
    let pod = pod_config(name, NamespaceMode::Container);
    let pod_id = run_pod_on(rt, pod.clone(), handler).await.unwrap();
    let c = start_container(
        rt,
        &pod_id,
        &pod,
        container_config("c", image, &["sleep", "3600"]),
    )
    .await;
    (pod_id, c)
}

/// Pids whose executable is `exe` and whose command line mentions `needle`.
fn processes_running(exe: &str, needle: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let running = std::fs::read_link(e.path().join("exe")).is_ok_and(|p| p.as_os_str() == exe);
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if running && String::from_utf8_lossy(&cmd).contains(needle) {
            pids.push(pid);
        }
    }
    pids
}

/// The file a bare command `name` runs, links resolved (as `/proc/<pid>/exe` shows it).
fn on_path(name: &str) -> std::path::PathBuf {
    let path = std::env::var_os("PATH").unwrap();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .and_then(|p| std::fs::canonicalize(p).ok())
        .unwrap()
}

/// The memfds process `pid` holds open: their names and their seals.
fn memfds_of(pid: i32) -> Vec<(String, i32)> {
    let mut held = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let Ok(target) = std::fs::read_link(e.path()) else {
            continue;
        };
        let name = target.to_string_lossy().into_owned();
        if name.starts_with("/memfd:") {
            // Opening the link opens the memfd itself; seals belong to the file.
            let file = std::fs::File::open(e.path()).unwrap();
            let seals = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_GET_SEALS).unwrap();
            held.push((name, seals));
        }
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_harness_cleans_up_what_a_failed_test_left_running() {
    let registry = rootstock_test_e2e::registry::Registry::start().await;
    let (daemon, image) = daemon_with_busybox(&registry, "").await;
    loopback_network(&daemon).await;
    let mut rt = daemon.runtime().await;
    let pod = pod_config("abandoned", NamespaceMode::Pod);
    let pod_id = run_pod(&mut rt, pod.clone()).await.unwrap();
    start_container(
        &mut rt,
        &pod_id,
        &pod,
        container_config("c", &image, &["sleep", "3600"]),
    )
    .await;
    let state = daemon.state_dir.clone();
    let dir = state.parent().unwrap().to_owned();
    let init = {
        let status = pod_status(&mut rt, &pod_id).await;
        let info: serde_json::Value = serde_json::from_str(&status.info["info"]).unwrap();
        info["pid"].as_i64().unwrap() as i32
    };
    // As a panicking test would: the daemon goes without StopPodSandbox/RemovePodSandbox.
    drop(rt);
    drop(daemon);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !monitors_of(&state.display().to_string()).is_empty() || is_live(init) {
        assert!(
            std::time::Instant::now() < deadline,
            "monitor or pod init left"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(mounts_under(&dir), Vec::<String>::new());
    assert!(!dir.exists());
    let left: Vec<_> = rootstock_cgroups()
        .into_iter()
        .filter(|p| p.ends_with(&pod_id))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopened_log_gets_new_output_and_resources_can_be_updated() {
    let registry = rootstock_test_e2e::registry::Registry::start().await;
    let (daemon, image) = daemon_with_busybox(&registry, "").await;
    loopback_network(&daemon).await;
    let logs = tempfile::tempdir().unwrap();
    let mut pod = pod_config("rotate", NamespaceMode::Container);
    pod.log_directory = logs.path().display().to_string();
    let mut rt = daemon.runtime().await;
    let pod_id = run_pod(&mut rt, pod.clone()).await.unwrap();
    let mut config = container_config(
        "ticker",
        &image,
        &["sh", "-c", "while true; do echo tick; sleep 0.1; done"],
    );
    config.log_path = "ticker.log".to_owned();
    let id = start_container(&mut rt, &pod_id, &pod, config).await;
    let log = logs.path().join("ticker.log");
    wait_file(&log, |t| t.contains("tick")).await;
    // kubelet's rotation: rename, then ReopenContainerLog; new output lands in a new file.
    let rotated = logs.path().join("ticker.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    rt.reopen_container_log(ReopenContainerLogRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    wait_file(&log, |t| t.contains("stdout F tick")).await;

    update_resources(
        &mut rt,
        &id,
        LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let info = container_info(&mut rt, &id).await;
    let cgroup = info["cgroupPath"].as_str().unwrap();
    let limit = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/memory{cgroup}/memory.limit_in_bytes"
    ))
    .unwrap();
    assert_eq!(limit.trim(), (64u64 << 20).to_string());
    stop_pod(&mut rt, &pod_id).await;
    remove_pod(&mut rt, &pod_id).await;
}
