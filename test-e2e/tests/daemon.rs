//! The daemon itself: identity RPCs as kubelet and crictl read them, configuration handling,
//! the root lock, the socket, and shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::time::{Duration, Instant};

use k8s_cri::v1::*;
use nix::sys::signal::Signal;
use rootstock_test_e2e::daemon::{Daemon, run_rootstock};

#[tokio::test]
async fn identity_rpcs_answer_what_kubelet_checks() {
    let daemon = Daemon::start().await;
    let mut rt = daemon.runtime().await;

    let v = rt
        .version(VersionRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.version, "0.1.0", "kubelet refuses any other API version");
    assert_eq!(v.runtime_name, "rootstock");
    assert_eq!(v.runtime_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(v.runtime_api_version, "v1");

    let status = rt
        .status(StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    let conditions = status.status.unwrap().conditions;
    let condition = |t: &str| conditions.iter().find(|c| c.r#type == t).cloned().unwrap();
    assert!(condition("RuntimeReady").status);
    let net = condition("NetworkReady");
    assert!(!net.status);
    assert_eq!(net.reason, "NetworkPluginNotReady");
    assert!(!net.message.is_empty());
    assert!(status.info.is_empty(), "info is only for verbose requests");
    let handlers: Vec<_> = status
        .runtime_handlers
        .iter()
        .map(|h| h.name.as_str())
        .collect();
    assert_eq!(
        handlers,
        ["", "crun", "runc"],
        "default handler first, then named ones"
    );

    let rc = rt
        .runtime_config(RuntimeConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rc.linux.unwrap().cgroup_driver(), CgroupDriver::Cgroupfs);
}

/// What `crictl info` does: every value of `info` must decode as a JSON object.
#[tokio::test]
async fn verbose_status_info_values_are_json_objects() {
    let daemon = Daemon::start().await;
    let mut rt = daemon.runtime().await;
    let info = rt
        .status(StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner()
        .info;
    assert!(
        info.contains_key("config"),
        "verbose status carries the config: {info:?}"
    );
    for (key, value) in &info {
        let parsed: serde_json::Value = serde_json::from_str(value)
            .unwrap_or_else(|e| panic!("info[{key}] is not JSON ({e}): {value}"));
        assert!(
            parsed.is_object(),
            "info[{key}] is not a JSON object: {value}"
        );
    }
    let config: serde_json::Value = serde_json::from_str(&info["config"]).unwrap();
    assert_eq!(config["socket"], daemon.socket.display().to_string());
}

#[tokio::test]
async fn unimplemented_rpc_answers_unimplemented_naming_it() {
    let daemon = Daemon::start().await;
    let err = daemon
        .runtime()
        .await
        .checkpoint_container(CheckpointContainerRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);
    assert!(
        err.message().contains("CheckpointContainer"),
        "{}",
        err.message()
    );
    // The daemon is still serving afterwards.
    daemon
        .runtime()
        .await
        .version(VersionRequest::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn socket_is_private_to_root_group() {
    let daemon = Daemon::start().await;
    let meta = std::fs::metadata(&daemon.socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
}

#[tokio::test]
async fn sigterm_exits_zero_quickly_and_removes_the_socket() {
    let mut daemon = Daemon::start().await;
    // An open client connection must not hold the shutdown up.
    let mut rt = daemon.runtime().await;
    rt.version(VersionRequest::default()).await.unwrap();
    let started = Instant::now();
    let status = daemon
        .signal_and_wait(Signal::SIGTERM, Duration::from_secs(5))
        .await
        .expect("daemon still running 5 s after SIGTERM");
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        daemon.log()
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!daemon.socket.exists(), "socket left behind");
}

#[tokio::test]
async fn second_daemon_on_the_same_root_fails_fast_naming_the_lock() {
    let daemon = Daemon::start().await;
    let args = daemon.path_args();
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    // Another socket, so only the root lock can stop it.
    let other_socket = daemon.state_dir.join("other.sock").display().to_string();
    let socket_flag = args.iter().position(|a| *a == "--socket").unwrap();
    args[socket_flag + 1] = &other_socket;
    let out = run_rootstock(&args, Duration::from_secs(5));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lock = daemon.root_dir.join("rootstock.lock").display().to_string();
    assert!(
        stderr.contains(&lock),
        "stderr does not name {lock}: {stderr}"
    );
    // The first daemon is unharmed.
    daemon
        .runtime()
        .await
        .version(VersionRequest::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn stale_socket_file_is_replaced() {
    let mut daemon = Daemon::start().await;
    daemon
        .signal_and_wait(Signal::SIGKILL, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        daemon.socket.exists(),
        "SIGKILL leaves the socket file behind"
    );
    daemon.start_again().await;
    daemon
        .runtime()
        .await
        .version(VersionRequest::default())
        .await
        .unwrap();
}

fn start_with_config_file(text: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, text).unwrap();
    let config = config.display().to_string();
    let root = dir.path().join("root").display().to_string();
    let socket = dir.path().join("s.sock").display().to_string();
    let out = run_rootstock(
        &[
            "--config",
            &config,
            "--root-dir",
            &root,
            "--state-dir",
            &root,
            "--socket",
            &socket,
        ],
        Duration::from_secs(5),
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        config,
    )
}

#[test]
fn config_with_an_unknown_key_stops_start_up_naming_file_and_key() {
    let (ok, stderr, file) = start_with_config_file("[runtime]\ndefault_handlr = \"runc\"\n");
    assert!(!ok);
    assert!(stderr.contains(&file), "{stderr}");
    assert!(stderr.contains("runtime.default_handlr"), "{stderr}");
}

#[test]
fn config_with_a_wrong_type_stops_start_up_naming_file_and_key() {
    let (ok, stderr, file) = start_with_config_file("log_level = \"info\"\nsocket = 42\n");
    assert!(!ok);
    assert!(stderr.contains(&file), "{stderr}");
    assert!(stderr.contains("`socket`"), "{stderr}");
    assert!(stderr.contains("line 2"), "{stderr}");
}

#[test]
fn printed_default_config_parses_back_to_the_default() {
    let out = run_rootstock(&["config", "default"], Duration::from_secs(5));
    assert!(out.status.success());
    let default = String::from_utf8(out.stdout).unwrap();
    assert!(
        default.contains("root_dir = \"/var/lib/rootstock\""),
        "{default}"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(&file, &default).unwrap();
    let out = run_rootstock(
        &["--config", file.to_str().unwrap(), "config", "show"],
        Duration::from_secs(5),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `config default` is the same TOML with a comment above each key (`config show` has none).
    let values = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(
        values(&String::from_utf8(out.stdout).unwrap()),
        values(&default)
    );
    assert!(default.contains("\n# "), "{default}");
}

/// kubelet marks the node Ready only once the runtime's network is: a conflist written after
/// start-up must be picked up without a restart.
#[tokio::test]
async fn network_becomes_ready_when_a_conflist_appears() {
    let daemon = Daemon::start().await;
    let mut rt = daemon.runtime().await;
    let network_ready = |status: StatusResponse| {
        let c = status.status.unwrap().conditions;
        c.into_iter().find(|c| c.r#type == "NetworkReady").unwrap()
    };
    let before = network_ready(
        rt.status(StatusRequest::default())
            .await
            .unwrap()
            .into_inner(),
    );
    assert!(!before.status);
    assert_eq!(before.reason, "NetworkPluginNotReady");

    let conflist = r#"{"cniVersion": "1.0.0", "name": "e2e-ready", "plugins": [
        {"type": "bridge", "bridge": "rsk-unused0", "ipam": {"type": "host-local",
         "ranges": [[{"subnet": "10.199.250.0/24"}]]}}]}"#;
    std::fs::write(daemon.cni_conf_dir().join("10-e2e.conflist"), conflist).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = network_ready(
            rt.status(StatusRequest::default())
                .await
                .unwrap()
                .into_inner(),
        );
        if now.status {
            break;
        }
        assert!(Instant::now() < deadline, "still not ready: {now:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
