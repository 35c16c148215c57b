//! Pod sandboxes without a pause process: pinned namespaces, hostname, DNS, sysctls, and
//! containers joining them. Needs root and the monitor binary (see containers.rs).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use common::Env;
use rootstock_runtime::oci::ExecRequest;
use rootstock_runtime::{
    ContainerId, DnsConfig, SandboxId, SandboxInfo, SandboxPidMode, SandboxSpec,
};

fn exec(env: &Env, id: &ContainerId, cmd: &str) -> String {
    let req = ExecRequest {
        args: vec!["sh".into(), "-c".into(), cmd.into()],
        ..Default::default()
    };
    let out = env
        .rt
        .exec_sync(id, &req, Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(
        out.exit_code,
        0,
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn sandbox_spec(name: &str, host_network: bool) -> SandboxSpec {
    SandboxSpec {
        id: SandboxId::new(format!("{name}-{}", std::process::id())).unwrap(),
        hostname: "pod-a".into(),
        host_network,
        host_ipc: host_network,
        pid: SandboxPidMode::Container,
        userns: None,
        dns: Some(DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec!["default.svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        }),
        sysctls: if host_network {
            BTreeMap::new()
        } else {
            BTreeMap::from([(
                "net.ipv4.ip_unprivileged_port_start".to_owned(),
                "80".to_owned(),
            )])
        },
        cgroup_parent: String::new(),
        client_data: Default::default(),
    }
}

fn run_in(env: &Env, sb: &SandboxInfo, name: &str) -> ContainerId {
    let mut spec = env.spec(&["sleep", "1000"]);
    spec.namespaces = sb.container_namespaces();
    spec.hostname = sb.container_hostname();
    spec.sandbox_mounts = sb.container_mounts();
    let c = env
        .rt
        .create_container(env.request(name, "runc", spec))
        .unwrap();
    env.rt.start_container(&c.record.id).unwrap();
    c.record.id
}

/// Inodes of every process's namespace of `kind`.
fn process_ns_inodes(kind: &str) -> Vec<u64> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| std::fs::metadata(e.path().join("ns").join(kind)).ok())
        .map(|m| m.ino())
        .collect()
}

/// The namespace inodes of `kind` of every thread of this process.
fn thread_ns_inodes(kind: &str) -> Vec<u64> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::metadata(e.path().join("ns").join(kind)).ok())
        .map(|m| m.ino())
        .collect()
}

#[test]
fn pod_namespaces_are_pinned_without_a_process_and_shared_by_containers() {
    let env = Env::new();
    let sb = env.rt.create_sandbox(sandbox_spec("pod", false)).unwrap();
    let netns = sb.netns_path().unwrap();
    let net_ino = std::fs::metadata(&netns).unwrap().ino();
    let host_ino = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
    assert_ne!(net_ino, host_ino);
    // No pause process: nothing lives in the pod's namespaces yet.
    assert!(!process_ns_inodes("net").contains(&net_ino));
    // They were made by a thread of the runtime's process (this one), which is gone again:
    // no thread here is left in them (a thread that is still exiting gets a moment).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while thread_ns_inodes("net").contains(&net_ino) {
        assert!(
            std::time::Instant::now() < deadline,
            "a thread of the runtime stayed in the pod's network namespace"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        !thread_ns_inodes("uts").contains(&std::fs::metadata(sb.dir.join("ns/uts")).unwrap().ino())
    );
    assert!(
        !process_ns_inodes("uts")
            .contains(&std::fs::metadata(sb.dir.join("ns/uts")).unwrap().ino())
    );

    let a = run_in(&env, &sb, "pod-c1");
    let b = run_in(&env, &sb, "pod-c2");
    let na = exec(&env, &a, "readlink /proc/self/ns/net");
    assert_eq!(na, exec(&env, &b, "readlink /proc/self/ns/net"));
    assert_eq!(na, format!("net:[{net_ino}]"));
    assert_eq!(exec(&env, &a, "hostname"), "pod-a");
    assert_eq!(exec(&env, &a, "cat /etc/hostname"), "pod-a");
    assert_eq!(exec(&env, &a, "echo $HOSTNAME"), "pod-a");
    assert!(exec(&env, &a, "cat /etc/resolv.conf").contains("nameserver 10.96.0.10"));
    assert!(exec(&env, &a, "cat /etc/hosts").contains("pod-a"));
    assert_eq!(
        exec(
            &env,
            &b,
            "cat /proc/sys/net/ipv4/ip_unprivileged_port_start"
        ),
        "80"
    );
    // Default pods: private PID namespaces, each container is PID 1 of its own.
    assert_eq!(exec(&env, &a, "ps -o args | grep -c '^sleep'"), "1");
    assert!(exec(&env, &a, "grep /dev/shm /proc/mounts").contains("tmpfs"));

    for id in [&a, &b] {
        env.rt.remove_container(id).unwrap();
    }
    env.rt.stop_sandbox(&sb.record.id).unwrap();
    env.rt.stop_sandbox(&sb.record.id).unwrap();
    assert!(common::mounts_under(&sb.dir).is_empty());
    env.rt.remove_sandbox(&sb.record.id).unwrap();
    env.rt.remove_sandbox(&sb.record.id).unwrap();
    assert!(!sb.dir.exists());
}

#[test]
fn host_network_pod_uses_the_node_namespaces() {
    let env = Env::new();
    let sb = env
        .rt
        .create_sandbox(sandbox_spec("hostnet", true))
        .unwrap();
    assert!(sb.netns_path().is_none());
    let c = run_in(&env, &sb, "hostnet-c1");
    let host_net = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert_eq!(
        exec(&env, &c, "readlink /proc/self/ns/net"),
        host_net.to_string_lossy()
    );
    let node = nix::unistd::gethostname()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert_eq!(exec(&env, &c, "hostname"), node);
    env.rt.remove_container(&c).unwrap();
    env.rt.remove_sandbox(&sb.record.id).unwrap();
    assert!(common::mounts_under(env.dir.path()).is_empty());
}

#[test]
fn sandboxes_survive_a_reload() {
    let env = Env::new();
    let sb = env
        .rt
        .create_sandbox(sandbox_spec("reload", false))
        .unwrap();
    let (rt2, _) = rootstock_runtime::Runtime::open(common::options(env.dir.path())).unwrap();
    let again = rt2.sandbox(&sb.record.id).unwrap();
    assert_eq!(again.record, sb.record);
    assert!(again.netns_path().unwrap().exists());
    rt2.remove_sandbox(&sb.record.id).unwrap();
    env.rt.remove_sandbox(&sb.record.id).unwrap();
    assert!(common::mounts_under(env.dir.path()).is_empty());
}

#[test]
fn pod_shared_pid_namespace_lets_containers_see_each_other_and_stop_leaves_nothing() {
    let env = Env::new();
    let mut spec = sandbox_spec("pidpod", false);
    spec.pid = SandboxPidMode::Pod;
    let sb = env.rt.create_sandbox(spec).unwrap();
    let init = sb.record.pod_init.unwrap();
    assert!(init.is_alive());
    let a = run_in(&env, &sb, "pidpod-c1");
    let b = run_in(&env, &sb, "pidpod-c2");
    // Both `sleep 1000` inits are visible from either container; PID 1 is the pod init.
    assert_eq!(exec(&env, &a, "ps -o args | grep -c '^sleep'"), "2");
    assert_eq!(
        exec(&env, &b, "readlink /proc/self/ns/pid"),
        exec(&env, &a, "readlink /proc/self/ns/pid")
    );
    // A container without a private PID namespace: a stop kills every process of it.
    exec(&env, &a, "sleep 4321 >/dev/null 2>&1 &");
    env.rt
        .stop_container(&a, rootstock_runtime::Signal::TERM, Duration::from_secs(1))
        .unwrap();
    assert!(!exec(&env, &b, "ps -o args").contains("sleep 4321"));
    env.rt.remove_container(&a).unwrap();
    env.rt.remove_container(&b).unwrap();
    env.rt.stop_sandbox(&sb.record.id).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while init.is_alive() {
        assert!(
            std::time::Instant::now() < deadline,
            "pod init survived stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    env.rt.remove_sandbox(&sb.record.id).unwrap();
}

/// The namespace-pinning helper, while the daemon pins its namespaces, is as confined as
/// pod-init: empty read-only root, uid 65535, no capabilities, no_new_privs, seccomp; and a
/// node-wide sysctl is refused by the helper itself too.
#[test]
fn the_namespace_pinning_helper_is_confined() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let monitor = common::monitor_binary();
    let mut child = Command::new(&monitor)
        .args(["pin-namespaces", "--net", "--uts", "--ipc"])
        .args(["--sysctl", "net.ipv4.ip_unprivileged_port_start=80"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let pid: i32 = line.trim().strip_prefix("ok ").unwrap().parse().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}:")))
            .unwrap()
            .trim()
            .to_owned()
    };
    for k in ["CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"] {
        assert_eq!(field(k), "0000000000000000", "{k}");
    }
    assert_eq!(field("Uid"), "65535\t65535\t65535\t65535");
    assert_eq!(field("NoNewPrivs"), "1");
    assert_eq!(field("Seccomp"), "2");
    let root: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/root"))
        .unwrap()
        .collect();
    assert!(root.is_empty(), "{root:?}");
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());

    let out = Command::new(monitor)
        .args([
            "pin-namespaces",
            "--net",
            "--sysctl",
            "kernel.core_pattern=|/bin/false",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("kernel.core_pattern"), "{text}");
}

/// The container→sandbox link is the runtime's: `containers_of` finds a pod's containers
/// from their records, also after a reload.
#[test]
fn containers_of_lists_the_pods_containers_also_after_a_reload() {
    let env = Env::new();
    let sb = env.rt.create_sandbox(sandbox_spec("owner", false)).unwrap();
    let mut spec = env.spec(&["sleep", "1000"]);
    spec.namespaces = sb.container_namespaces();
    let mut req = env.request("owner-c1", "runc", spec);
    req.sandbox_id = Some(sb.record.id.clone());
    let mine = env.rt.create_container(req).unwrap().record.id;
    let other = env.run("owner-none", "runc", &["sleep", "1000"]).record.id;
    let ids = |rt: &rootstock_runtime::Runtime| -> Vec<ContainerId> {
        rt.containers_of(&sb.record.id)
            .into_iter()
            .map(|c| c.record.id)
            .collect()
    };
    assert_eq!(ids(&env.rt), std::slice::from_ref(&mine));
    let (rt2, _) = rootstock_runtime::Runtime::open(common::options(env.dir.path())).unwrap();
    assert_eq!(ids(&rt2), std::slice::from_ref(&mine));
    assert!(
        rt2.containers_of(&SandboxId::new("nobody").unwrap())
            .is_empty()
    );
    let usage = rt2.sandbox_usage(&sb).unwrap();
    assert!(usage.containers.is_empty(), "created, not running");
    // One daemon per state directory: the second one's exit watcher would record the
    // exits below too, racing the first for the same record file.
    drop(rt2);
    for id in [&mine, &other] {
        env.rt.remove_container(id).unwrap();
    }
}

/// The sandbox's undo stack: a create that fails once `/dev/shm` is mounted and the files
/// are written (here: the namespace helper cannot be started) leaves no mount, directory
/// or pod cgroup behind.
#[test]
fn a_failed_sandbox_create_leaves_no_mount_directory_or_cgroup() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = common::options(dir.path());
    opts.config.monitor_binary = dir.path().join("no-such-monitor");
    let (rt, _) = rootstock_runtime::Runtime::open(opts).unwrap();
    let mut spec = sandbox_spec("failing", false);
    spec.pid = SandboxPidMode::Pod;
    let id = spec.id.clone();
    let err = rt.create_sandbox(spec).unwrap_err();
    assert!(err.to_string().contains("no-such-monitor"), "{err}");
    assert!(common::mounts_under(dir.path()).is_empty());
    assert!(
        !dir.path()
            .join("state/sandboxes")
            .join(id.as_str())
            .exists()
    );
    assert!(rt.sandbox(&id).is_err());
    let own = format!("{}/{id}", rootstock_runtime::sandbox::OWN_CGROUP_ROOT);
    assert!(
        rootstock_runtime::cgroup::CgroupLayout::detect()
            .dirs(&own)
            .is_empty()
    );
}

/// A pod without a cgroup of kubelet's gets one of the runtime's, which its removal takes
/// away; one kubelet sent is kept as given.
#[test]
fn the_runtime_chooses_and_removes_a_pod_cgroup_only_when_none_was_given() {
    let env = Env::new();
    let layout = rootstock_runtime::cgroup::CgroupLayout::detect();
    let mut spec = sandbox_spec("owncg", false);
    spec.pid = SandboxPidMode::Pod;
    let sb = env.rt.create_sandbox(spec).unwrap();
    let own = format!(
        "{}/{}",
        rootstock_runtime::sandbox::OWN_CGROUP_ROOT,
        sb.record.id
    );
    assert_eq!(sb.record.cgroup_parent, own);
    assert!(sb.record.own_cgroup);
    // pod-init lives in a leaf below it, so it exists now.
    assert!(!layout.dirs(&own).is_empty());
    env.rt.remove_sandbox(&sb.record.id).unwrap();
    assert!(layout.dirs(&own).is_empty(), "{:?}", layout.dirs(&own));

    let mut spec = sandbox_spec("kubeletcg", false);
    spec.cgroup_parent = env.cgroup_parent.clone();
    let sb = env.rt.create_sandbox(spec).unwrap();
    assert_eq!(sb.record.cgroup_parent, env.cgroup_parent);
    assert!(!sb.record.own_cgroup);
    env.rt.remove_sandbox(&sb.record.id).unwrap();
}

/// Records written before the runtime kept the container→sandbox link and the pod cgroup
/// had them only in the daemon's own data: a reload takes them over and persists them.
#[test]
fn records_of_an_older_daemon_take_over_the_links_kept_in_its_data() {
    let env = Env::new();
    let sb = env
        .rt
        .create_sandbox(sandbox_spec("legacy", false))
        .unwrap();
    let mut req = env.request("legacy-c1", "runc", env.spec(&["sleep", "1000"]));
    req.client_data = serde_json::json!({"sandbox_id": sb.record.id.as_str(), "name": "c1"}).into();
    let c = env.rt.create_container(req).unwrap().record.id;
    assert!(
        env.rt.containers_of(&sb.record.id).is_empty(),
        "no link yet"
    );

    // Rewrite the sandbox record as the older daemon wrote it.
    let file = sb.dir.join("sandbox.json");
    let mut old: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let map = old.as_object_mut().unwrap();
    map.remove("cgroup_parent");
    map.remove("own_cgroup");
    map.insert(
        "client_data".into(),
        serde_json::json!({"cgroup_parent": "/kubepods/legacy", "own_cgroup": false}),
    );
    std::fs::write(&file, serde_json::to_vec(&old).unwrap()).unwrap();

    let (rt2, _) = rootstock_runtime::Runtime::open(common::options(env.dir.path())).unwrap();
    let linked: Vec<ContainerId> = rt2
        .containers_of(&sb.record.id)
        .into_iter()
        .map(|i| i.record.id)
        .collect();
    assert_eq!(linked, std::slice::from_ref(&c));
    let again = rt2.sandbox(&sb.record.id).unwrap();
    assert_eq!(again.record.cgroup_parent, "/kubepods/legacy");
    assert!(!again.record.own_cgroup);
    // Persisted: a third reader sees both without the old data's help.
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            env.dir
                .path()
                .join("state/containers")
                .join(c.as_str())
                .join("state.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(state["sandbox_id"], sb.record.id.as_str());
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(record["cgroup_parent"], "/kubepods/legacy");
    drop(rt2); // one daemon per state directory (see containers_of_lists_…)
    env.rt.remove_container(&c).unwrap();
}
