//! CRI streaming PortForward over SPDY (the Go `spdyexec` client) and WebSocket (Python
//! `websockets`), in a pod-network pod and a hostNetwork pod; crictl port-forward when installed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::streaming::*;
use common::*;
use k8s_cri::v1::*;
use rootstock_test_e2e::registry::Registry;
use tonic::Code;

fn assert_echoed_10mib_on_2_connections(out: &Output) {
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(
        text(&out.stdout),
        "forwarded 10485760 bytes each way on 2 connections\n"
    );
}

async fn forward_echo(rt: &mut Rt, pod: &str, port: u16, bytes: usize, conns: usize) -> Output {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let url = rt
            .port_forward(PortForwardRequest {
                pod_sandbox_id: pod.to_owned(),
                port: vec![i32::from(port)],
            })
            .await
            .unwrap_or_else(|e| panic!("PortForward: {e}"))
            .into_inner()
            .url;
        let args = [
            format!("portforward={port}"),
            format!("bytes={bytes}"),
            format!("conns={conns}"),
        ];
        let out = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            spdy_exec_with(&url, None, &args)
        })
        .await
        .unwrap();
        let refused = text(&out.stderr).contains("connection refused");
        if out.status.success() || !refused || std::time::Instant::now() > deadline {
            return out;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Sends `n` bytes to 127.0.0.1:`port` (once something listens there) and checks that the
/// same come back.
fn echo_through(port: u16, n: usize) -> Result<(), String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut conn = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(c) => break c,
            Err(e) if std::time::Instant::now() > deadline => return Err(e.to_string()),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    };
    let data: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
    let mut writer = conn.try_clone().unwrap();
    let sent = data.clone();
    let w = std::thread::spawn(move || writer.write_all(&sent));
    let mut got = vec![0u8; n];
    conn.read_exact(&mut got).map_err(|e| e.to_string())?;
    w.join().unwrap().map_err(|e| e.to_string())?;
    if got != data {
        return Err("the bytes came back altered".to_owned());
    }
    Ok(())
}

async fn port_forward_url(rt: &mut Rt, pod: &str, port: u16) -> String {
    rt.port_forward(PortForwardRequest {
        pod_sandbox_id: pod.to_owned(),
        port: vec![i32::from(port)],
    })
    .await
    .unwrap_or_else(|e| panic!("PortForward: {e}"))
    .into_inner()
    .url
}

/// Runs wsportforward.py (Python `websockets`): `bytes` each way through `port`.
fn ws_port_forward(url: &str, port: u16, bytes: usize, protocol: &str) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/wsportforward.py");
    Command::new("/usr/bin/python3")
        .arg(script)
        .arg(url)
        .arg(port.to_string())
        .arg(bytes.to_string())
        .arg(protocol)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_over_spdy_and_websocket_reaches_the_pod_network_and_the_host_network() {
    spdyexec();
    let registry = Registry::start().await;
    let (daemon, image) = daemon_with_busybox(&registry, "").await;
    loopback_network(&daemon).await;
    let mut rt = daemon.runtime().await;
    // busybox nc: `-ll -e cat` serves every connection with its own `cat` (an echo).
    let echo = |port: u16| {
        let port = port.to_string();
        container_config("echo", &image, &["nc", "-ll", "-p", &port, "-e", "cat"])
    };

    // A pod with its own network namespace: localhost there, not the host's.
    let pod = pod_config("forward", NamespaceMode::Container);
    let pod_id = run_pod(&mut rt, pod.clone()).await.unwrap();
    start_container(&mut rt, &pod_id, &pod, echo(8080)).await;
    let out = forward_echo(&mut rt, &pod_id, 8080, 10 << 20, 2).await;
    assert_echoed_10mib_on_2_connections(&out);
    // Nothing listens on 8081: the error stream says so and the client reports it.
    let out = forward_echo(&mut rt, &pod_id, 8081, 10, 1).await;
    assert_eq!(out.status.code(), Some(102), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("error forwarding port 8081"),
        "{}",
        text(&out.stderr)
    );

    // Over WebSocket (kubelet's port channels, the port from the URL's query), binary and
    // base64; the echo server is known to listen by now.
    for protocol in ["v4.channel.k8s.io", "v4.base64.channel.k8s.io"] {
        let url = port_forward_url(&mut rt, &pod_id, 8080).await;
        let out =
            tokio::task::spawn_blocking(move || ws_port_forward(&url, 8080, 1 << 20, protocol))
                .await
                .unwrap();
        assert!(out.status.success(), "{protocol}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "forwarded 1048576 bytes each way\n");
    }
    let url = port_forward_url(&mut rt, &pod_id, 8081).await;
    let out =
        tokio::task::spawn_blocking(move || ws_port_forward(&url, 8081, 10, "v4.channel.k8s.io"))
            .await
            .unwrap();
    assert_eq!(out.status.code(), Some(102), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("error forwarding port 8081"));

    // crictl port-forward (client-go's forwarder) when installed: over SPDY, and over
    // WebSocket, where client-go tunnels SPDY in WebSocket messages.
    if Path::new(CRICTL).exists() {
        for transport in ["spdy", "websocket"] {
            let local = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut forwarder = Command::new(CRICTL)
                .arg("--runtime-endpoint")
                .arg(format!("unix://{}", daemon.socket.display()))
                .args(["port-forward", "--transport", transport, &pod_id])
                .arg(format!("{local}:8080"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let echoed = tokio::task::spawn_blocking(move || echo_through(local, 1 << 20))
                .await
                .unwrap();
            forwarder.kill().unwrap();
            forwarder.wait().unwrap();
            assert_eq!(
                echoed,
                Ok(()),
                "crictl port-forward --transport {transport}"
            );
        }
    }

    // A hostNetwork pod: the host's localhost, on a port free on this machine.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let host_pod = with_modes(
        pod_config("forward-host", NamespaceMode::Container),
        NamespaceMode::Node,
        NamespaceMode::Container,
        NamespaceMode::Pod,
    );
    let host_pod_id = run_pod(&mut rt, host_pod.clone()).await.unwrap();
    start_container(&mut rt, &host_pod_id, &host_pod, echo(port)).await;
    let out = forward_echo(&mut rt, &host_pod_id, port, 10 << 20, 2).await;
    assert_echoed_10mib_on_2_connections(&out);

    let err = rt
        .port_forward(PortForwardRequest {
            pod_sandbox_id: pod_id.clone(),
            port: vec![70000],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    for id in [pod_id, host_pod_id] {
        stop_pod(&mut rt, &id).await;
        remove_pod(&mut rt, &id).await;
    }
}
