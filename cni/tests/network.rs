//! CNI against Debian's real plugins in real namespaces (root only: they fail, not skip,
//! without it).
//!
//! Every test owns its network (see `common::TestNet`); traffic only flows between the
//! namespaces and the bridge it made, and a FORWARD rule keeps its /24 from leaving.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::IpAddr;
use std::time::Duration;

use common::*;
use rootstock_cni::{CniError, CniManager, PortMapping, Protocol};
use serde_json::json;

/// Fails (never skips) without root: a test that passes by not running proves nothing, and
/// CI runs these as root.
macro_rules! require_root {
    () => {
        assert!(
            is_root(),
            "the CNI tests need root (namespaces, bridges, iptables): run them as root"
        );
    };
}

fn in_subnet(t: &TestNet, ip: &IpAddr) -> bool {
    ip.to_string().starts_with(&format!("{}.", t.prefix))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_assigns_ip_in_subnet_and_del_releases_it_and_removes_the_veth() {
    require_root!();
    let t = TestNet::new("add");
    t.write_conflist_file("10-test.conflist", &t.conflist_with(false, vec![]));
    let m = t.manager();
    let st = m.status().await;
    assert!(st.ready, "{st:?}");
    assert_eq!(st.network.as_deref(), Some(t.name.as_str()));

    let ns = t.netns("a").await;
    let pod_status = m.setup(&t.pod("sandboxa", &ns)).await.unwrap();
    assert_eq!(pod_status.ips.len(), 1);
    let ip = pod_status.ips[0];
    assert!(in_subnet(&t, &ip), "{ip}");
    assert_eq!(addrs_in(&ns, "eth0"), vec![ip.to_string()]);
    assert!(link_is_up(&ns, "lo"), "lo must be up (rtnetlink)");
    assert_eq!(t.reserved_ips(), vec![ip.to_string()]);
    let veths = t.bridge_ports();
    assert_eq!(veths.len(), 1, "{veths:?}");
    assert_eq!(t.cache_entries().len(), 1);

    // Same answer from the cache (what the runtime uses after a restart), and a second
    // setup is idempotent.
    assert_eq!(
        m.attachment("sandboxa").await.unwrap(),
        Some(pod_status.clone())
    );
    assert_eq!(m.setup(&t.pod("sandboxa", &ns)).await.unwrap(), pod_status);
    assert_eq!(
        m.attached_sandbox_ids().await.unwrap(),
        vec!["sandboxa".to_string()]
    );
    m.check("sandboxa").await.unwrap();

    m.teardown("sandboxa").await.unwrap();
    assert!(t.reserved_ips().is_empty(), "{:?}", t.reserved_ips());
    assert!(!host_link_exists(&veths[0]), "veth {} left", veths[0]);
    assert!(addrs_in(&ns, "eth0").is_empty());
    assert!(t.cache_entries().is_empty(), "{:?}", t.cache_entries());
    assert_eq!(m.attachment("sandboxa").await.unwrap(), None);
    assert!(matches!(
        m.check("sandboxa").await,
        Err(CniError::NotAttached { .. })
    ));

    // DEL twice, and DEL of a sandbox never attached: both OK.
    m.teardown("sandboxa").await.unwrap();
    m.teardown("neverseen").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_pod_gets_ipv4_and_ipv6_ipv4_first() {
    require_root!();
    let t = TestNet::new("dual");
    let mut conf = t.conflist_with(false, vec![]);
    let v6_prefix = format!("fd99:199:{}::", t.prefix.rsplit('.').next().unwrap());
    conf["plugins"][0]["ipam"]["ranges"]
        .as_array_mut()
        .unwrap()
        .push(json!([{ "subnet": format!("{v6_prefix}/64") }]));
    t.write_conflist_file("10-test.conflist", &conf);
    let m = t.manager();
    let ns = t.netns("d").await;
    let st = m.setup(&t.pod("poddual", &ns)).await.unwrap();
    assert_eq!(st.ips.len(), 2, "{st:?}");
    assert!(st.ips[0].is_ipv4() && in_subnet(&t, &st.ips[0]), "{st:?}");
    assert!(
        st.ips[1].is_ipv6() && st.ips[1].to_string().starts_with(&v6_prefix),
        "{st:?}"
    );
    let mut in_ns = addrs_in(&ns, "eth0");
    in_ns.sort();
    let mut want: Vec<String> = st.ips.iter().map(|i| i.to_string()).collect();
    want.sort();
    assert_eq!(in_ns, want);
    m.teardown("poddual").await.unwrap();
    assert!(t.reserved_ips().is_empty(), "{:?}", t.reserved_ips());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_a_broken_attachment_naming_the_plugin() {
    require_root!();
    let t = TestNet::new("chk");
    t.write_conflist_file("10-test.conflist", &t.conflist_with(false, vec![]));
    let m = t.manager();
    let ns = t.netns("c").await;
    m.setup(&t.pod("podchk", &ns)).await.unwrap();
    m.check("podchk").await.unwrap();
    let out = std::process::Command::new("nsenter")
        .args([
            &format!("--net={}", ns.display()),
            "ip",
            "link",
            "del",
            "eth0",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let err = m.check("podchk").await.unwrap_err();
    assert!(
        matches!(&err, CniError::PluginFailed { plugin, command, .. } if plugin == "bridge" && command == "CHECK"),
        "{err:?}"
    );
    m.teardown("podchk").await.unwrap();
    assert!(t.reserved_ips().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pods_on_one_bridge_get_distinct_ips_and_reach_each_other() {
    require_root!();
    let t = TestNet::new("ping");
    t.write_conflist_file("10-test.conflist", &t.conflist_with(false, vec![]));
    let m = t.manager();
    let (ns1, ns2) = (t.netns("p1").await, t.netns("p2").await);
    let a = m.setup(&t.pod("pod1", &ns1)).await.unwrap();
    let b = m.setup(&t.pod("pod2", &ns2)).await.unwrap();
    assert_ne!(a.ips[0], b.ips[0]);
    assert!(ping_from(&ns1, &b.ips[0].to_string()), "pod1 -> pod2");
    assert!(ping_from(&ns2, &a.ips[0].to_string()), "pod2 -> pod1");
    m.teardown("pod1").await.unwrap();
    m.teardown("pod2").await.unwrap();
    assert!(t.reserved_ips().is_empty());
    assert!(t.bridge_ports().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn del_after_restart_conflist_removal_and_netns_removal_still_releases_the_ip() {
    require_root!();
    let t = TestNet::new("gone");
    t.write_conflist_file("10-test.conflist", &t.conflist_with(false, vec![]));
    let ns = t.netns("g").await;
    {
        let m = t.manager();
        m.setup(&t.pod("podgone", &ns)).await.unwrap();
    } // "crash": the manager is gone, only the cache remains.
    assert_eq!(t.reserved_ips().len(), 1);
    let veth = t.bridge_ports();
    std::fs::remove_file(t.conf_dir.join("10-test.conflist")).unwrap();
    t.drop_netns(&ns);

    let m = t.manager();
    assert!(!m.status().await.ready);
    assert_eq!(
        m.attached_sandbox_ids().await.unwrap(),
        vec!["podgone".to_string()]
    );
    m.teardown("podgone").await.unwrap();
    assert!(t.reserved_ips().is_empty(), "{:?}", t.reserved_ips());
    assert!(t.cache_entries().is_empty());
    // The veth dies with the namespace, which the kernel destroys asynchronously (in its
    // netns clean-up work queue) after the last reference is gone: poll with a deadline.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while host_link_exists(&veth[0]) {
        assert!(
            std::time::Instant::now() < deadline,
            "{} outlived its netns",
            veth[0]
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    m.teardown("podgone").await.unwrap();
}

/// Cache entries are not fsynced (as libcni's): after a power loss one may be empty or cut.
/// Its netns died with the boot, and DEL from its name with the network in use still gives
/// host-local's address back, at start-up and on StopPodSandbox alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_entry_torn_by_a_power_loss_still_releases_the_ip() {
    require_root!();
    let t = TestNet::new("torn");
    t.write_conflist_file("10-test.conflist", &t.conflist_with(false, vec![]));
    for (pod, keep) in [("podtorn1", 0), ("podtorn2", 100)] {
        let ns = t.netns(pod).await;
        t.manager().setup(&t.pod(pod, &ns)).await.unwrap();
        t.drop_netns(&ns);
        let entry = t.cache_dir.join(format!("{}-{pod}-eth0.json", t.name));
        let data = std::fs::read(&entry).unwrap();
        std::fs::write(&entry, &data[..keep]).unwrap();
    }
    assert_eq!(t.reserved_ips().len(), 2);

    let m = t.manager();
    assert_eq!(
        m.attached_sandbox_ids().await.unwrap(),
        vec!["podtorn1".to_string(), "podtorn2".to_string()]
    );
    assert_eq!(m.attachment("podtorn1").await.unwrap(), None);
    for pod in ["podtorn1", "podtorn2"] {
        m.teardown(pod).await.unwrap();
    }
    assert!(t.reserved_ips().is_empty(), "{:?}", t.reserved_ips());
    assert!(t.cache_entries().is_empty(), "{:?}", t.cache_entries());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_plugin_fails_naming_it_and_leaves_nothing() {
    require_root!();
    let t = TestNet::new("miss");
    t.write_conflist_file(
        "10-test.conflist",
        &t.conflist_with(false, vec![json!({"type": "rsk-no-such-plugin"})]),
    );
    let m = t.manager();
    let ns = t.netns("m").await;
    let err = m.setup(&t.pod("podmiss", &ns)).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(&err, CniError::PluginNotFound { plugin, searched }
            if plugin == "rsk-no-such-plugin" && searched.len() == 2),
        "{err:?}"
    );
    assert!(
        msg.contains("rsk-no-such-plugin") && msg.contains(SYSTEM_PLUGINS),
        "{msg}"
    );
    assert!(t.reserved_ips().is_empty());
    assert!(t.bridge_ports().is_empty());
    assert!(t.cache_entries().is_empty());
    assert!(addrs_in(&ns, "eth0").is_empty());
    m.teardown("podmiss").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_plugin_fails_with_its_error_and_the_chain_is_rolled_back() {
    require_root!();
    let t = TestNet::new("fail");
    // Fails ADD with a spec error; DEL succeeds (as plugins must for unknown containers).
    t.script_plugin(
        "rsk-fail",
        r#"cat >/dev/null
if [ "$CNI_COMMAND" = ADD ]; then
  echo '{"cniVersion":"1.0.0","code":7,"msg":"rsk-fail says no","details":"on purpose"}'
  exit 1
fi
exit 0"#,
    );
    t.write_conflist_file(
        "10-test.conflist",
        &t.conflist_with(false, vec![json!({"type": "rsk-fail"})]),
    );
    let m = t.manager();
    let ns = t.netns("f").await;
    let err = m.setup(&t.pod("podfail", &ns)).await.unwrap_err();
    match &err {
        CniError::PluginFailed {
            plugin,
            code,
            msg,
            details,
            command,
            ..
        } => {
            assert_eq!(plugin, "rsk-fail");
            assert_eq!(*code, 7);
            assert_eq!(msg, "rsk-fail says no");
            assert_eq!(details, "on purpose");
            assert_eq!(command, "ADD");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("rsk-fail says no"));
    // bridge had run: its IP and veth must be gone again.
    assert!(t.reserved_ips().is_empty(), "{:?}", t.reserved_ips());
    assert!(t.bridge_ports().is_empty(), "{:?}", t.bridge_ports());
    assert!(addrs_in(&ns, "eth0").is_empty());
    assert!(t.cache_entries().is_empty(), "{:?}", t.cache_entries());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_plugin_is_killed_at_the_timeout() {
    require_root!();
    let t = TestNet::new("hang");
    let pidfile = t.dir.path().join("hang.pid");
    t.script_plugin(
        "rsk-hang",
        &format!(
            "if [ \"$CNI_COMMAND\" = ADD ]; then echo $$ > {}; sleep 60; fi\nexit 0",
            pidfile.display()
        ),
    );
    t.write_conflist_file(
        "10-test.conflist",
        &t.conflist_with(false, vec![json!({"type": "rsk-hang"})]),
    );
    let mut cfg = t.config();
    cfg.plugin_timeout_secs = 2;
    let m = CniManager::new(cfg, t.dir.path());
    let ns = t.netns("h").await;
    let start = std::time::Instant::now();
    let err = m.setup(&t.pod("podhang", &ns)).await.unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(15));
    assert!(
        matches!(&err, CniError::PluginTimeout { plugin, .. } if plugin == "rsk-hang"),
        "{err:?}"
    );
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The script and its `sleep` (same process group) are gone.
    let pgrp_alive = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .any(|stat| {
            let after = stat.rsplit(')').next().unwrap_or("");
            let f: Vec<&str> = after.split_whitespace().collect();
            f.get(2).and_then(|g| g.parse::<i32>().ok()) == Some(pid) && f[0] != "Z"
        });
    assert!(!pgrp_alive, "plugin process group {pid} still alive");
    assert!(t.reserved_ips().is_empty());
    assert!(t.bridge_ports().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflist_written_after_start_is_picked_up_without_restart() {
    require_root!();
    let t = TestNet::new("late");
    let m = std::sync::Arc::new(t.manager());
    let _watcher = m.spawn_watcher();
    let st = m.status().await;
    assert!(!st.ready);
    assert_eq!(st.reason, "NetworkPluginNotReady");
    let ns = t.netns("l").await;
    assert!(matches!(
        m.setup(&t.pod("podlate", &ns)).await,
        Err(CniError::NetworkNotReady { .. })
    ));
    // An invalid file does not make the network ready, and is named in the message.
    std::fs::write(t.conf_dir.join("05-broken.conflist"), "{").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let st = m.status().await;
        assert!(!st.ready, "{st:?}");
        if st.message.contains("05-broken.conflist") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{st:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    t.write_conflist_file("10-test.conflist", &t.conflist_with(false, vec![]));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !m.status().await.ready {
        assert!(
            std::time::Instant::now() < deadline,
            "config never picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ip = m.setup(&t.pod("podlate", &ns)).await.unwrap().ips[0];
    assert!(in_subnet(&t, &ip));
    m.teardown("podlate").await.unwrap();
    assert!(t.reserved_ips().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_network_makes_the_node_ready_without_a_conflist() {
    require_root!();
    let t = TestNet::new("dflt");
    let mut cfg = t.config();
    cfg.default_network = true;
    let st = CniManager::new(cfg, t.dir.path()).status().await;
    assert!(st.ready, "{st:?}");
    assert_eq!(st.network.as_deref(), Some("rootstock"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_port_on_the_host_side_reaches_a_listener_in_the_netns() {
    require_root!();
    let t = TestNet::new("port");
    // isGateway gives the bridge the host-side address the host connects to (the bridge
    // plugin also turns on ip_forward then, as on any CNI node; the FORWARD rule keeps the
    // test's /24 in).
    t.write_conflist_file(
        "10-test.conflist",
        &t.conflist_with(
            true,
            vec![json!({"type": "portmap", "capabilities": {"portMappings": true}})],
        ),
    );
    let m = t.manager();
    let ns = t.netns("pm").await;
    let host_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut pod = t.pod("podport", &ns);
    pod.port_mappings = vec![PortMapping {
        protocol: Protocol::Tcp,
        container_port: 8080,
        host_port,
        host_ip: t.gateway(),
    }];
    let st = m.setup(&pod).await.unwrap();
    let pod_ip = st.ips[0];

    // A listener inside the netns: a thread that joins it, binds, answers once.
    let ns2 = ns.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        let f = std::fs::File::open(&ns2).unwrap();
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let l = std::net::TcpListener::bind("0.0.0.0:8080").unwrap();
        ready_tx.send(()).unwrap();
        let (mut c, _) = l.accept().unwrap();
        c.write_all(b"hello from the pod").unwrap();
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();

    let addr = format!("{}:{host_port}", t.gateway());
    let got = tokio::task::spawn_blocking(move || {
        let mut c =
            std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(5))
                .unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut s = String::new();
        c.read_to_string(&mut s).unwrap();
        s
    })
    .await
    .unwrap();
    assert_eq!(got, "hello from the pod");
    server.join().unwrap();

    m.teardown("podport").await.unwrap();
    let nat = std::process::Command::new("iptables")
        .args(["-w", "-t", "nat", "-S"])
        .output()
        .unwrap();
    let nat = String::from_utf8_lossy(&nat.stdout);
    assert!(
        !nat.contains(&pod_ip.to_string()),
        "portmap rules for {pod_ip} left:\n{nat}"
    );
    assert!(t.reserved_ips().is_empty());
}

/// A recording plugin: logs `<COMMAND> <name>`, keeps its stdin and CNI_* env per command,
/// and on ADD prints `result`.
fn recording_plugin(t: &TestNet, name: &str, result: &str) {
    let d = t.dir.path().display();
    t.script_plugin(
        name,
        &format!(
            r#"cat > {d}/{name}-$CNI_COMMAND.json
env | grep '^CNI_' | sort > {d}/{name}-$CNI_COMMAND.env
echo "$CNI_COMMAND {name}" >> {d}/calls.log
if [ "$CNI_COMMAND" = ADD ]; then echo '{result}'; fi
exit 0"#
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_get_the_cni_environment_chained_results_and_declared_capabilities() {
    require_root!();
    let t = TestNet::new("proto");
    let r1 = format!(
        r#"{{"cniVersion":"1.0.0","interfaces":[{{"name":"eth0","sandbox":"/x"}}],"ips":[{{"address":"{}.7/24","interface":0}}]}}"#,
        t.prefix
    );
    let r2 = format!(
        r#"{{"cniVersion":"1.0.0","interfaces":[{{"name":"eth0","sandbox":"/x"}}],"ips":[{{"address":"fd00::7/64","interface":0}},{{"address":"{}.7/24","interface":0}}]}}"#,
        t.prefix
    );
    recording_plugin(&t, "rsk-rec1", &r1);
    recording_plugin(&t, "rsk-rec2", &r2);
    t.write_conflist_file(
        "10-test.conflist",
        &json!({
            "cniVersion": "1.0.0",
            "name": t.name,
            "plugins": [
                {"type": "rsk-rec1", "custom": 1},
                {"type": "rsk-rec2", "capabilities": {"portMappings": true, "dns": true, "bandwidth": true, "ips": true}}
            ]
        }),
    );
    let m = t.manager();
    let ns = t.netns("r").await;
    let mut pod = t.pod("podproto", &ns);
    pod.port_mappings = vec![
        PortMapping {
            protocol: Protocol::Udp,
            container_port: 53,
            host_port: 5353,
            host_ip: String::new(),
        },
        PortMapping {
            protocol: Protocol::Tcp,
            container_port: 80,
            host_port: 0,
            host_ip: String::new(),
        },
    ];
    pod.dns = Some(rootstock_cni::DnsConfig {
        servers: vec!["10.96.0.10".into()],
        searches: vec!["svc.cluster.local".into()],
        options: vec!["ndots:5".into()],
    });
    pod.bandwidth = Some(rootstock_cni::Bandwidth {
        ingress_rate: 1_000_000,
        ingress_burst: 10_000,
        egress_rate: 2_000_000,
        egress_burst: 20_000,
    });
    let st = m.setup(&pod).await.unwrap();
    // Dual stack, IPv4 first whatever the plugin's order.
    assert_eq!(
        st.ips,
        vec![
            format!("{}.7", t.prefix).parse::<IpAddr>().unwrap(),
            "fd00::7".parse().unwrap()
        ]
    );

    let read = |f: &str| std::fs::read_to_string(t.dir.path().join(f)).unwrap();
    let json_of = |f: &str| serde_json::from_str::<serde_json::Value>(&read(f)).unwrap();
    let env = read("rsk-rec1-ADD.env");
    let bin_path = format!("CNI_PATH={}:{}", t.bin_dir.display(), SYSTEM_PLUGINS);
    for want in [
        "CNI_COMMAND=ADD",
        "CNI_CONTAINERID=podproto",
        "CNI_IFNAME=eth0",
        &format!("CNI_NETNS={}", ns.display()),
        &bin_path,
        "CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=rsk-test;K8S_POD_NAME=pod-podproto;K8S_POD_INFRA_CONTAINER_ID=podproto;K8S_POD_UID=uid-podproto",
    ] {
        assert!(env.lines().any(|l| l == want), "{want} not in\n{env}");
    }
    let in1 = json_of("rsk-rec1-ADD.json");
    assert_eq!(in1["name"], t.name.as_str());
    assert_eq!(in1["cniVersion"], "1.0.0");
    assert_eq!(in1["custom"], 1);
    assert!(in1.get("prevResult").is_none() && in1.get("runtimeConfig").is_none());
    let in2 = json_of("rsk-rec2-ADD.json");
    assert_eq!(
        in2["prevResult"],
        serde_json::from_str::<serde_json::Value>(&r1).unwrap()
    );
    assert_eq!(
        in2["runtimeConfig"],
        json!({
            "portMappings": [{"hostPort": 5353, "containerPort": 53, "protocol": "udp"}],
            "dns": {"servers": ["10.96.0.10"], "searches": ["svc.cluster.local"], "options": ["ndots:5"]},
            "bandwidth": {"ingressRate": 1_000_000, "ingressBurst": 10_000, "egressRate": 2_000_000, "egressBurst": 20_000}
        })
    );

    // The netns disappears, then DEL: reverse order, no CNI_NETNS, the final result as
    // prevResult and the same runtimeConfig.
    t.drop_netns(&ns);
    m.teardown("podproto").await.unwrap();
    assert_eq!(
        read("calls.log"),
        "ADD rsk-rec1\nADD rsk-rec2\nDEL rsk-rec2\nDEL rsk-rec1\n"
    );
    let del_env = read("rsk-rec1-DEL.env");
    assert!(!del_env.contains("CNI_NETNS"), "{del_env}");
    assert!(del_env.contains("CNI_COMMAND=DEL"));
    let del2 = json_of("rsk-rec2-DEL.json");
    assert_eq!(
        del2["prevResult"],
        serde_json::from_str::<serde_json::Value>(&r2).unwrap()
    );
    assert_eq!(del2["runtimeConfig"], in2["runtimeConfig"]);
}
