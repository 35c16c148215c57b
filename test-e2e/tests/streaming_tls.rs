//! The streaming server over TLS (`[streaming] enable_tls`), with clients we did not write:
//! Python's `ssl` + `websockets` (test-e2e/python/wsexec.py) and Go's `crypto/tls` with
//! moby/spdystream (test-e2e/go/spdyexec), verifying the server against a CA that OpenSSL's
//! command line made (Debian's `openssl`), or pinning the self-signed certificate the
//! daemon made at start.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;
use k8s_cri::v1::*;
use rootstock_test_e2e::registry::Registry;

use common::streaming::*;

const OPENSSL: &str = "/usr/bin/openssl";
const SCRIPT: &str = "echo out; echo err >&2; exit 3";

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new(OPENSSL)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        text(&out.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1 it signed, made by `openssl` in `dir`:
/// ca.pem, server.pem (leaf, then the CA: a chain), server.key (PKCS#8).
fn openssl_ca(dir: &Path) {
    assert!(
        Path::new(OPENSSL).exists(),
        "needs openssl (make deps-test)"
    );
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=rootstock streaming test CA",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "leaf.pem",
        ],
    );
    let chain = std::fs::read_to_string(dir.join("leaf.pem")).unwrap()
        + &std::fs::read_to_string(dir.join("ca.pem")).unwrap();
    std::fs::write(dir.join("server.pem"), chain).unwrap();
}

/// What SCRIPT gives any client: outputs apart, exit code 3.
fn assert_script_ran(out: &Output) {
    assert_eq!(text(&out.stdout), "out\n", "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "err\n");
    assert_eq!(out.status.code(), Some(3));
}

/// Runs SCRIPT through wsexec (Python `ssl` + `websockets`) over TLS with `option`.
async fn ws_script(rt: &mut Rt, id: &str, protocol: &'static str, option: String) {
    let url = exec_url(rt, id, &["sh", "-c", SCRIPT], false).await;
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let out =
        tokio::task::spawn_blocking(move || ws_exec_with(&url, protocol, None, &[option.as_str()]))
            .await
            .unwrap();
    assert_script_ran(&out);
}

/// The first line a raw request `req` to `host` gets back, and how long it took; an empty
/// line when the server closed without answering.
fn raw_request(host: &str, req: &[u8]) -> (String, Duration) {
    let started = Instant::now();
    let mut s = std::net::TcpStream::connect(host).unwrap();
    // Far above the server's 10 s: the assertion is that it does not hang, not its speed.
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(req).unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let line = text(&resp).lines().next().unwrap_or_default().to_owned();
    (line, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_over_tls_with_an_openssl_certificate_for_python_and_go_clients() {
    spdyexec();
    let dir = tempfile::tempdir().unwrap();
    openssl_ca(dir.path());
    let ca = dir.path().join("ca.pem");
    let config = format!(
        "[streaming]\nenable_tls = true\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
        dir.path().join("server.pem").display(),
        dir.path().join("server.key").display()
    );
    let registry = Registry::start().await;
    let SleeperPod {
        daemon: _daemon,
        mut rt,
        pod_id,
        id,
        ..
    } = sleeper_pod(
        &registry,
        &config,
        "streaming-tls",
        NamespaceMode::Container,
    )
    .await;

    // Python (ssl + websockets), trusting only the test CA.
    let cafile = format!("cafile={}", ca.display());
    ws_script(&mut rt, &id, "v5.channel.k8s.io", cafile.clone()).await;

    // Stdin through TLS: `cat` returns it.
    let url = exec_url(&mut rt, &id, &["cat"], true).await;
    let c = cafile.clone();
    let out = tokio::task::spawn_blocking(move || {
        ws_exec_with(
            &url,
            "v5.channel.k8s.io",
            Some(b"over tls\n"),
            &[c.as_str()],
        )
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "over tls\n");

    // Go (crypto/tls + spdystream, as client-go dials): the same exec over SPDY.
    let url = exec_url(&mut rt, &id, &["sh", "-c", SCRIPT], false).await;
    let ca_arg = format!("ca={}", ca.display());
    let out = tokio::task::spawn_blocking(move || spdy_exec_with(&url, None, &[ca_arg.as_str()]))
        .await
        .unwrap();
    assert_script_ran(&out);

    // The verification is real: without the test CA the client refuses the server.
    let url = exec_url(&mut rt, &id, &["true"], false).await;
    let out = tokio::task::spawn_blocking(move || ws_exec(&url, "v5.channel.k8s.io", None))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(101), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("CERTIFICATE_VERIFY_FAILED"),
        "{}",
        text(&out.stderr)
    );

    // Plain HTTP to the TLS port is answered with a 400 at once; a client that connects
    // and sends nothing (no handshake) is dropped: neither hangs the server's task for ever.
    let url = exec_url(&mut rt, &id, &["true"], false).await;
    let rest = url.strip_prefix("https://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
         X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n"
    );
    let h = host.to_owned();
    let (line, _) = tokio::task::spawn_blocking(move || raw_request(&h, req.as_bytes()))
        .await
        .unwrap();
    assert_eq!(line, "HTTP/1.1 400 Bad Request");
    let h = host.to_owned();
    let (line, took) = tokio::task::spawn_blocking(move || raw_request(&h, b""))
        .await
        .unwrap();
    assert_eq!(line, "", "a silent client got an answer");
    assert!(
        took < Duration::from_secs(60),
        "a silent client was kept for {took:?}"
    );

    stop_pod(&mut rt, &pod_id).await;
    remove_pod(&mut rt, &pod_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_signed_tls_serves_a_client_that_pins_the_logged_fingerprint() {
    let registry = Registry::start().await;
    let SleeperPod {
        daemon,
        mut rt,
        pod_id,
        id,
        ..
    } = sleeper_pod(
        &registry,
        "[streaming]\nenable_tls = true\n",
        "streaming-tls-self",
        NamespaceMode::Container,
    )
    .await;
    // The daemon logs the certificate's SHA-256 at start: what an operator pins.
    let log = daemon.log();
    let fingerprint = log
        .lines()
        .filter(|l| l.contains("self-signed certificate"))
        .find_map(|l| l.split("sha256=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no fingerprint logged:\n{log}"))
        .to_owned();
    assert_eq!(fingerprint.len(), 64, "{fingerprint}");

    ws_script(
        &mut rt,
        &id,
        "v4.channel.k8s.io",
        format!("pin={fingerprint}"),
    )
    .await;

    // Another fingerprint is not the served certificate: the client stops before the exec.
    let url = exec_url(&mut rt, &id, &["true"], false).await;
    let wrong = format!("pin={}", "0".repeat(64));
    let out = tokio::task::spawn_blocking(move || {
        ws_exec_with(&url, "v4.channel.k8s.io", None, &[wrong.as_str()])
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(102), "{}", text(&out.stderr));

    stop_pod(&mut rt, &pod_id).await;
    remove_pod(&mut rt, &pod_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_config_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[streaming]\nenable_tls = true\ntls_cert_file = \"/nonexistent/cert.pem\"\n",
            "streaming.tls_key_file",
        ),
        (
            "[streaming]\nenable_tls = true\ntls_cert_file = \"/nonexistent/cert.pem\"\n\
             tls_key_file = \"/nonexistent/key.pem\"\n",
            "streaming.tls_cert_file",
        ),
    ];
    for (config, key) in cases {
        let path = dir.path().join("config.toml");
        std::fs::write(&path, config).unwrap();
        let out = rootstock_test_e2e::daemon::run_rootstock(
            &["--config", path.to_str().unwrap(), "config", "show"],
            Duration::from_secs(30),
        );
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{config}: accepted");
        assert!(stderr.contains(key), "{config}: {stderr}");
    }
}

/// 50 MB of exec stdout through one WebSocket client, plain and over TLS (a figure, asserts only
/// the byte count): `cargo test … --test streaming_tls -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark figure, not a test"]
async fn exec_throughput_plain_and_tls() {
    spdyexec();
    let registry = Registry::start().await;
    for (name, config) in [("plain", ""), ("tls", "[streaming]\nenable_tls = true\n")] {
        let SleeperPod {
            daemon: _daemon,
            mut rt,
            id,
            ..
        } = sleeper_pod(
            &registry,
            config,
            &format!("tput-{name}"),
            NamespaceMode::Container,
        )
        .await;
        // The same client both ways (Python's websockets; the self-signed certificate is
        // pinned).
        let cmd = ["head", "-c", "50000000", "/dev/zero"];
        let url = exec_url(&mut rt, &id, &cmd, false).await;
        let started = Instant::now();
        let out = if name == "plain" {
            tokio::task::spawn_blocking(move || ws_exec(&url, "v5.channel.k8s.io", None))
                .await
                .unwrap()
        } else {
            let log = _daemon.log();
            let fp = log
                .split("sha256=")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .unwrap()
                .to_owned();
            tokio::task::spawn_blocking(move || {
                ws_exec_with(&url, "v5.channel.k8s.io", None, &[&format!("pin={fp}")])
            })
            .await
            .unwrap()
        };
        let secs = started.elapsed().as_secs_f64();
        assert_eq!(out.stdout.len(), 50_000_000, "{}", text(&out.stderr));
        eprintln!("{name}: 50 MB in {secs:.2} s = {:.0} MB/s", 50.0 / secs);
    }
}
