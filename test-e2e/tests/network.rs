//! Pod networking over the socket with Debian's CNI plugins: each test's daemon has its own
//! conf, cache, IPAM and bin dirs, network name, bridge and /24 in 10.199.128.0/17, and a
//! FORWARD rule keeps that /24 from leaving; traffic only flows between the namespaces and
//! the bridge the test made. Tests hold the cni crate's iptables lock for their whole run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use k8s_cri::v1::*;
use rootstock_test_e2e::daemon::Daemon;
use rootstock_test_e2e::registry::Registry;
use serde_json::json;

/// A daemon on `net` with busybox pulled, the network config written and ready.
async fn daemon_on(
    net: &TestNet,
    registry: &Registry,
    extra: Vec<serde_json::Value>,
) -> (Daemon, String) {
    net.write_conflist(&net.conflist(extra));
    let (daemon, image) = daemon_with_busybox(registry, &net.daemon_config()).await;
    wait_network_ready(&daemon).await;
    (daemon, image)
}

fn pod_ip(status: &PodSandboxStatusResponse) -> String {
    status
        .status
        .as_ref()
        .and_then(|s| s.network.as_ref())
        .map(|n| n.ip.clone())
        .unwrap_or_default()
}

/// A busybox httpd serving `body` on `port` in a new container of `pod_id`.
async fn httpd(
    rt: &mut Rt,
    pod_id: &str,
    pod: &PodSandboxConfig,
    image: &str,
    body: &str,
    port: u16,
) -> String {
    let script = format!(
        "mkdir -p /www && echo {body} > /www/index.html && exec httpd -f -p {port} -h /www"
    );
    start_container(
        rt,
        pod_id,
        pod,
        container_config("httpd", image, &["sh", "-c", &script]),
    )
    .await
}

/// `wget` from inside a container, retried briefly while the server starts.
async fn fetch_from(rt: &mut Rt, container: &str, url: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        // No `-T`: Debian's busybox 1.35 wget segfaults with it on a refused connection.
        let out = exec(rt, container, &["wget", "-q", "-O", "-", url], 10)
            .await
            .unwrap();
        if out.exit_code == 0 {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "wget {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pods_get_distinct_ips_and_one_fetches_a_page_from_the_other() {
    let net = TestNet::new("two");
    let registry = Registry::start().await;
    let (daemon, image) = daemon_on(&net, &registry, vec![]).await;
    let mut rt = daemon.runtime().await;
    let (pod_a, pod_b) = (
        pod_config("server", NamespaceMode::Container),
        pod_config("client", NamespaceMode::Container),
    );
    let a = run_pod(&mut rt, pod_a.clone()).await.unwrap();
    let b = run_pod(&mut rt, pod_b.clone()).await.unwrap();
    let (ip_a, ip_b) = (
        pod_ip(&pod_status(&mut rt, &a).await),
        pod_ip(&pod_status(&mut rt, &b).await),
    );
    assert_ne!(ip_a, ip_b);
    for ip in [&ip_a, &ip_b] {
        assert!(
            ip.starts_with(&format!("{}.", net.prefix)),
            "{ip} not in {}",
            net.subnet()
        );
    }
    let mut reserved = net.reserved_ips();
    reserved.sort();
    let mut expected = vec![ip_a.clone(), ip_b.clone()];
    expected.sort();
    assert_eq!(reserved, expected);

    httpd(&mut rt, &a, &pod_a, &image, "hello-from-server", 8080).await;
    let client = start_container(
        &mut rt,
        &b,
        &pod_b,
        container_config("c", &image, &["sleep", "3600"]),
    )
    .await;
    let page = fetch_from(&mut rt, &client, &format!("http://{ip_a}:8080/")).await;
    assert_eq!(page.trim(), "hello-from-server");

    for pod in [&a, &b] {
        stop_pod(&mut rt, pod).await;
        remove_pod(&mut rt, pod).await;
    }
    assert!(net.reserved_ips().is_empty());
    assert!(net.bridge_ports().is_empty());
}

/// A plain HTTP/1.0 GET from the host; the body.
fn http_get(host: &str, port: u16) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(
        &format!("{host}:{port}").parse().unwrap(),
        Duration::from_secs(2),
    )?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    match reply.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200 ") => {
            Ok(body.to_owned())
        }
        _ => Err(std::io::Error::other(format!("unexpected reply {reply:?}"))),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_port_reaches_the_pod_from_the_host() {
    let net = TestNet::new("hostport");
    let registry = Registry::start().await;
    let portmap = json!({ "type": "portmap", "capabilities": { "portMappings": true } });
    let (daemon, image) = daemon_on(&net, &registry, vec![portmap]).await;
    let mut rt = daemon.runtime().await;
    let host_port = 20000 + (std::process::id() % 10000) as i32;
    let mut pod = pod_config("ported", NamespaceMode::Container);
    pod.port_mappings = vec![PortMapping {
        protocol: Protocol::Tcp as i32,
        container_port: 8080,
        host_port,
        host_ip: String::new(),
    }];
    let id = run_pod(&mut rt, pod.clone()).await.unwrap();
    httpd(&mut rt, &id, &pod, &image, "hello-via-hostport", 8080).await;
    // The bridge's gateway address is the host's own: portmap's OUTPUT DNAT applies to it.
    let url = format!("http://{}:{host_port}/", net.gateway());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let page = loop {
        match http_get(&net.gateway(), host_port as u16) {
            Ok(body) => break body,
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "GET {url}: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!(page.trim(), "hello-via-hostport");
    stop_pod(&mut rt, &id).await;
    remove_pod(&mut rt, &id).await;
    let nat = Command::new("iptables")
        .args(["-w", "-t", "nat", "-S"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&nat.stdout).contains(&format!("--dport {host_port}")),
        "portmap rule left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_releases_the_ip_and_the_veth_and_twice_is_fine() {
    let net = TestNet::new("stop");
    net.write_conflist(&net.conflist(vec![]));
    let daemon = Daemon::start_with_config(&net.daemon_config()).await;
    wait_network_ready(&daemon).await;
    let mut rt = daemon.runtime().await;
    let id = run_pod(&mut rt, pod_config("stopper", NamespaceMode::Container))
        .await
        .unwrap();
    assert_eq!(net.reserved_ips().len(), 1);
    assert_eq!(net.bridge_ports().len(), 1);
    stop_pod(&mut rt, &id).await;
    assert!(net.reserved_ips().is_empty(), "{:?}", net.reserved_ips());
    assert!(net.bridge_ports().is_empty(), "{:?}", net.bridge_ports());
    assert!(net.cache_entries().is_empty(), "{:?}", net.cache_entries());
    stop_pod(&mut rt, &id).await;
    let status = pod_status(&mut rt, &id).await.status.unwrap();
    assert_eq!(status.state, PodSandboxState::SandboxNotready as i32);
    remove_pod(&mut rt, &id).await;
    remove_pod(&mut rt, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_right_after_add_leaks_nothing() {
    let net = TestNet::new("crash");
    net.write_conflist(&net.conflist(vec![]));
    let mut daemon = Daemon::start_with_config(&net.daemon_config()).await;
    wait_network_ready(&daemon).await;
    let mut rt = daemon.runtime().await;
    let kept = run_pod(&mut rt, pod_config("kept", NamespaceMode::Container))
        .await
        .unwrap();
    let lost = run_pod(&mut rt, pod_config("lost", NamespaceMode::Container))
        .await
        .unwrap();
    let ip = pod_ip(&pod_status(&mut rt, &kept).await);
    daemon
        .signal_and_wait(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(10))
        .await
        .unwrap();
    // `lost` vanishes from disk while the daemon is dead (as if a crash cut RemovePodSandbox
    // short): only the CNI cache still knows it, and start-up must release its IP.
    let lost_dir = daemon.state_dir.join("sandboxes").join(&lost);
    for m in mounts_under(&lost_dir) {
        nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH).unwrap();
    }
    std::fs::remove_dir_all(&lost_dir).unwrap();
    daemon.start_again().await;
    let mut rt = daemon.runtime().await;
    // The socket is bound before recovery runs; the first answer comes after it.
    assert_eq!(pod_ip(&pod_status(&mut rt, &kept).await), ip);
    assert_eq!(
        net.reserved_ips(),
        vec![ip.clone()],
        "start-up released `lost` only"
    );
    stop_pod(&mut rt, &kept).await;
    remove_pod(&mut rt, &kept).await;
    assert!(net.reserved_ips().is_empty(), "{:?}", net.reserved_ips());
    assert!(net.bridge_ports().is_empty(), "{:?}", net.bridge_ports());
    assert!(net.cache_entries().is_empty(), "{:?}", net.cache_entries());
    assert_eq!(mounts_under(&daemon.state_dir), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_ready_follows_a_conflist_written_after_start() {
    let net = TestNet::new("ready");
    let daemon = Daemon::start_with_config(&net.daemon_config()).await;
    let mut rt = daemon.runtime().await;
    let status = runtime_status(&mut rt).await;
    let network = status
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.r#type == "NetworkReady")
        .unwrap();
    assert!(!network.status);
    net.write_conflist(&net.conflist(vec![]));
    wait_network_ready(&daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_and_failing_plugins_are_named_and_leave_nothing() {
    let net = TestNet::new("fail");
    net.script_plugin(
        "rse-failing",
        r#"cat >/dev/null
if [ "$CNI_COMMAND" = ADD ]; then
  echo '{"cniVersion":"1.0.0","code":999,"msg":"rse-failing refuses this pod"}'
  exit 1
fi
exit 0"#,
    );
    net.write_conflist(&net.conflist(vec![json!({ "type": "rse-missing-plugin" })]));
    let daemon = Daemon::start_with_config(&net.daemon_config()).await;
    wait_network_ready(&daemon).await;
    let mut rt = daemon.runtime().await;

    let check_nothing_left = |daemon: &Daemon, net: &TestNet| {
        assert!(net.reserved_ips().is_empty(), "{:?}", net.reserved_ips());
        assert!(net.bridge_ports().is_empty(), "{:?}", net.bridge_ports());
        assert!(net.cache_entries().is_empty(), "{:?}", net.cache_entries());
        assert_eq!(mounts_under(&daemon.state_dir), Vec::<String>::new());
        let sandboxes = std::fs::read_dir(daemon.state_dir.join("sandboxes"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(sandboxes, 0);
    };

    let err = run_pod(&mut rt, pod_config("missing", NamespaceMode::Container))
        .await
        .unwrap_err();
    assert!(
        err.message().contains("rse-missing-plugin"),
        "{}",
        err.message()
    );
    assert!(list_pods(&mut rt, None).await.is_empty());
    check_nothing_left(&daemon, &net);

    net.write_conflist(&net.conflist(vec![json!({ "type": "rse-failing" })]));
    // The conf dir is polled: wait until the new list is the one in use.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let err = loop {
        let err = run_pod(&mut rt, pod_config("failing", NamespaceMode::Container))
            .await
            .unwrap_err();
        if !err.message().contains("rse-missing-plugin") {
            break err;
        }
        assert!(std::time::Instant::now() < deadline, "config not reloaded");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(err.message().contains("rse-failing"), "{}", err.message());
    assert!(
        err.message().contains("refuses this pod"),
        "{}",
        err.message()
    );
    assert!(list_pods(&mut rt, None).await.is_empty());
    check_nothing_left(&daemon, &net);
    // The name was given back with everything else.
    net.write_conflist(&net.conflist(vec![]));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let id = loop {
        match run_pod(&mut rt, pod_config("failing", NamespaceMode::Container)).await {
            Ok(id) => break id,
            Err(e) => {
                assert_ne!(e.code(), tonic::Code::AlreadyExists, "{e:?}");
                assert!(std::time::Instant::now() < deadline, "{e:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    stop_pod(&mut rt, &id).await;
    remove_pod(&mut rt, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_dns_and_hostname_are_what_containers_see() {
    let net = TestNet::new("dns");
    let registry = Registry::start().await;
    let (daemon, image) = daemon_on(&net, &registry, vec![]).await;
    let mut rt = daemon.runtime().await;
    let mut pod = pod_config("dnspod", NamespaceMode::Container);
    pod.hostname = "e2e-host-name".to_owned();
    pod.dns_config = Some(DnsConfig {
        servers: vec![format!("{}.53", net.prefix)],
        searches: vec![
            "e2e.svc.cluster.local".to_owned(),
            "svc.cluster.local".to_owned(),
        ],
        options: vec!["ndots:5".to_owned()],
    });
    let id = run_pod(&mut rt, pod.clone()).await.unwrap();
    let c = start_container(
        &mut rt,
        &id,
        &pod,
        container_config("c", &image, &["sleep", "3600"]),
    )
    .await;
    let run = async |rt: &mut Rt, cmd: &str| {
        let out = exec(rt, &c, &["sh", "-c", cmd], 10).await.unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let resolv = run(&mut rt, "cat /etc/resolv.conf").await;
    assert!(
        resolv.contains(&format!("nameserver {}.53", net.prefix)),
        "{resolv}"
    );
    assert!(
        resolv.contains("search e2e.svc.cluster.local svc.cluster.local"),
        "{resolv}"
    );
    assert!(resolv.contains("options ndots:5"), "{resolv}");
    assert_eq!(run(&mut rt, "hostname").await.trim(), "e2e-host-name");
    assert_eq!(
        run(&mut rt, "cat /etc/hostname").await.trim(),
        "e2e-host-name"
    );
    assert_eq!(run(&mut rt, "echo $HOSTNAME").await.trim(), "e2e-host-name");
    stop_pod(&mut rt, &id).await;
    remove_pod(&mut rt, &id).await;
}
