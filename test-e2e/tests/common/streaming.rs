//! Clients of the streaming tests: the Go `spdyexec` (built once, offline, from Debian's
//! spdystream), the URL requests, and small output helpers.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use k8s_cri::v1::*;

use super::*;

pub const GO: &str = "/usr/bin/go";
pub const CRICTL: &str = "/usr/local/bin/crictl";
pub const SPDYSTREAM: &str = "/usr/share/gocode/src/github.com/moby/spdystream";

/// Builds spdyexec once per test binary (Go's build cache under target/ keeps it quick).
pub fn spdyexec() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        assert!(
            Path::new(GO).exists() && Path::new(SPDYSTREAM).exists(),
            "needs golang-go and golang-github-docker-spdystream-dev (make deps-test)"
        );
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR")).join("spdyexec");
        std::fs::create_dir_all(&tmp).unwrap();
        let bin = tmp.join("spdyexec");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("go/spdyexec/main.go");
        let out = Command::new(GO)
            .arg("build")
            .arg("-o")
            .arg(&bin)
            .arg(&src)
            .env("GO111MODULE", "off")
            .env("GOPATH", "/usr/share/gocode")
            .env("GOCACHE", tmp.join("cache"))
            .env("GOFLAGS", "")
            .env("GOPROXY", "off")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "building spdyexec: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        bin
    })
}

/// Runs spdyexec on `url`, feeding `stdin` when given.
pub fn spdy_exec(url: &str, stdin: Option<&[u8]>) -> Output {
    spdy_exec_with(url, stdin, &[])
}

/// The same with more arguments (`tty=WxH`).
pub fn spdy_exec_with(url: &str, stdin: Option<&[u8]>, args: &[&str]) -> Output {
    let mut cmd = Command::new(spdyexec());
    cmd.arg(url)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null());
    if stdin.is_some() {
        cmd.arg("stdin").stdin(Stdio::piped());
    }
    let mut child = cmd.spawn().unwrap();
    let writer = stdin.map(|data| {
        let mut pipe = child.stdin.take().unwrap();
        let data = data.to_vec();
        std::thread::spawn(move || {
            pipe.write_all(&data).unwrap();
        })
    });
    let out = child.wait_with_output().unwrap();
    if let Some(w) = writer {
        w.join().unwrap();
    }
    out
}

/// Runs wsexec.py (Python `websockets`, Debian's python3-websockets) on `url`.
pub fn ws_exec(url: &str, protocol: &str, stdin: Option<&[u8]>) -> Output {
    ws_exec_with(url, protocol, stdin, &[])
}

/// The same with more arguments (`cafile=PEM`, `pin=SHA256`).
pub fn ws_exec_with(url: &str, protocol: &str, stdin: Option<&[u8]>, args: &[&str]) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/wsexec.py");
    // Debian's interpreter: python3-websockets is installed for it.
    let mut child = Command::new("/usr/bin/python3")
        .arg(script)
        .arg(url)
        .arg(protocol)
        .args(stdin.map(|_| "stdin"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    let data = stdin.unwrap_or_default().to_vec();
    let writer = std::thread::spawn(move || {
        pipe.write_all(&data).unwrap();
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

pub async fn exec_url(rt: &mut Rt, id: &str, cmd: &[&str], stdin: bool) -> String {
    rt.exec(exec_request(id, cmd, stdin))
        .await
        .unwrap_or_else(|e| panic!("Exec: {e}"))
        .into_inner()
        .url
}

pub fn exec_request(id: &str, cmd: &[&str], stdin: bool) -> ExecRequest {
    ExecRequest {
        container_id: id.to_owned(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty: false,
        stdin,
        stdout: true,
        stderr: true,
    }
}

/// The status line a plain HTTP request to `url` gets (for the URLs spdyexec never reaches).
pub fn http_status(url: &str) -> String {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut s = std::net::TcpStream::connect(host).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
         X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    resp.lines().next().unwrap_or_default().to_owned()
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A daemon with busybox and a loopback network, and one pod running `sleep 3600` in
/// container `c`: what most streaming tests start from.
pub struct SleeperPod {
    pub daemon: Daemon,
    pub rt: Rt,
    pub image: String,
    pub pod_id: String,
    pub id: String,
}

pub async fn sleeper_pod(
    registry: &rootstock_test_e2e::registry::Registry,
    daemon_config: &str,
    pod_name: &str,
    pid: NamespaceMode,
) -> SleeperPod {
    let (daemon, image) = daemon_with_busybox(registry, daemon_config).await;
    loopback_network(&daemon).await;
    let mut rt = daemon.runtime().await;
    let pod = pod_config(pod_name, pid);
    let pod_id = run_pod(&mut rt, pod.clone()).await.unwrap();
    let id = start_container(
        &mut rt,
        &pod_id,
        &pod,
        container_config("c", &image, &["sleep", "3600"]),
    )
    .await;
    SleeperPod {
        daemon,
        rt,
        image,
        pod_id,
        id,
    }
}
