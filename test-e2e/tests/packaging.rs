//! Installing rootstock on a node: `make install`/`uninstall` and the systemd unit
//! (`systemd-analyze verify`), and the image `make image` builds — pushed to a local registry, pulled by rootstock, its install
//! script run in a pod with a "host root" mounted — laying out what `make install` does. The installer chart is in `chart.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::install::*;
use common::*;
use k8s_cri::v1::*;
use rootstock_test_e2e::daemon::Daemon;
use rootstock_test_e2e::process::run;
use rootstock_test_e2e::registry::Registry;
use serde_json::Value;

/// `make TARGET VARS…` in the repository, with the debug build the tests use.
fn make(target: &str, vars: &[(&str, &Path)]) -> Vec<u8> {
    let mut cmd = Command::new("make");
    cmd.current_dir(repo()).arg(target).arg("PROFILE=debug");
    // Build with the features the suite's own build has (`make test` turns the failpoints
    // on): otherwise `make install` rebuilds target/debug without them under the feet of
    // the tests that run after this one (store_crash).
    if cfg!(feature = "failpoints") {
        cmd.arg("FEATURES=$(TEST_FEATURES)");
    }
    for (k, v) in vars {
        cmd.arg(format!("{k}={}", v.display()));
    }
    run(&mut cmd)
}

/// `systemd-analyze verify` of the unit at `unit` (a path inside `root`) with `root` as the
/// root: (success, stderr). The standard targets are copied in so dependencies resolve.
fn analyze(root: &Path, unit: &str) -> (bool, String) {
    let targets = root.join("usr/lib/systemd/system");
    std::fs::create_dir_all(&targets).unwrap();
    for entry in std::fs::read_dir("/usr/lib/systemd/system").unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "target") && path.is_file() {
            std::fs::copy(&path, targets.join(path.file_name().unwrap())).unwrap();
        }
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .arg(unit)
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn make_install_lays_out_the_files_and_systemd_accepts_the_unit() {
    let dest = tempfile::tempdir().unwrap();
    make("install", &[("DESTDIR", dest.path())]);
    let files = layout(dest.path());
    assert_eq!(
        files_only(&files),
        [
            ("etc/rootstock/config.toml.example".to_string(), 0o644),
            ("usr/local/bin/rootstock".to_string(), 0o755),
            ("usr/local/bin/rootstock-monitor".to_string(), 0o755),
            (
                "usr/local/lib/systemd/system/rootstock.service".to_string(),
                0o644
            ),
        ]
    );
    let target = repo().join("target/debug");
    assert_eq!(
        files["usr/local/bin/rootstock"].1,
        std::fs::read(target.join("rootstock")).unwrap()
    );
    let example = run(Command::new(target.join("rootstock")).args(["config", "default"]));
    assert_eq!(files["etc/rootstock/config.toml.example"].1, example);
    assert!(String::from_utf8_lossy(&example).contains("# "));

    let unit = String::from_utf8(
        files["usr/local/lib/systemd/system/rootstock.service"]
            .1
            .clone(),
    )
    .unwrap();
    for line in [
        "Type=notify",
        "ExecStart=/usr/local/bin/rootstock serve",
        "KillMode=process",
        "Delegate=yes",
        "Restart=always",
        "LimitNOFILE=1048576",
        "OOMScoreAdjust=-999",
        "After=network-online.target",
        "WantedBy=multi-user.target",
    ] {
        assert!(
            unit.lines().any(|l| l.starts_with(line)),
            "{line} missing:\n{unit}"
        );
    }
    let unit_path = "/usr/local/lib/systemd/system/rootstock.service";
    let (ok, stderr) = analyze(dest.path(), unit_path);
    assert!(ok && stderr.trim().is_empty(), "systemd-analyze: {stderr}");

    // The check can fail: a unit with a bad key or a missing binary is reported.
    let broken = tempfile::tempdir().unwrap();
    let broken_unit = broken.path().join("usr/local/lib/systemd/system");
    std::fs::create_dir_all(&broken_unit).unwrap();
    std::fs::write(
        broken_unit.join("rootstock.service"),
        unit.replace("KillMode=process", "KillMode=bogus"),
    )
    .unwrap();
    let (ok, stderr) = analyze(broken.path(), unit_path);
    assert!(!ok || !stderr.trim().is_empty(), "a broken unit passed");

    // PREFIX moves the binaries and the unit, and the unit names the binary where it is.
    let other = tempfile::tempdir().unwrap();
    make(
        "install",
        &[("DESTDIR", other.path()), ("PREFIX", Path::new("/usr"))],
    );
    let unit = std::fs::read_to_string(
        other
            .path()
            .join("usr/lib/systemd/system/rootstock.service"),
    )
    .unwrap();
    assert!(
        unit.contains("ExecStart=/usr/bin/rootstock serve"),
        "{unit}"
    );

    // The man-page-like help names every command.
    let help = run(Command::new(target.join("rootstock")).arg("--help"));
    let help = String::from_utf8_lossy(&help);
    for cmd in [
        "config default",
        "config show",
        "store verify --repair",
        "store gc",
    ] {
        assert!(help.contains(cmd), "--help lacks {cmd}:\n{help}");
    }

    make("uninstall", &[("DESTDIR", dest.path())]);
    let left = files_only(&layout(dest.path()));
    assert!(
        left.iter()
            .all(|(p, _)| p.starts_with("usr/lib/systemd/system/")),
        "uninstall left {left:?}"
    );
}

/// Pushes the OCI layout's `tag` to `registry` as `repo:tag`.
async fn push_layout(registry: &Registry, layout: &Path, repo: &str, tag: &str) {
    let blob = |digest: &str| {
        std::fs::read(
            layout
                .join("blobs/sha256")
                .join(digest.trim_start_matches("sha256:")),
        )
        .unwrap()
    };
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let desc = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .expect("the tag in index.json");
    let manifest_bytes = blob(desc["digest"].as_str().unwrap());
    let manifest: Value = serde_json::from_slice(&manifest_bytes).unwrap();
    registry
        .push_blob(repo, &blob(manifest["config"]["digest"].as_str().unwrap()))
        .await;
    for layer in manifest["layers"].as_array().unwrap() {
        registry
            .push_blob(repo, &blob(layer["digest"].as_str().unwrap()))
            .await;
    }
    registry
        .push_manifest(
            repo,
            tag,
            desc["mediaType"].as_str().unwrap(),
            &manifest_bytes,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_image_installs_in_a_pod_what_make_install_installs() {
    let work = tempfile::tempdir().unwrap();
    let layout_dir = work.path().join("layout");
    make("image", &[("IMAGE_DIR", &layout_dir)]);
    let tag = env!("CARGO_PKG_VERSION");
    let registry = Registry::start().await;
    push_layout(&registry, &layout_dir, "rootstock", tag).await;

    let config = format!(
        "[images.registries.\"{}\"]\ninsecure = true\n",
        registry.host()
    );
    let daemon = Daemon::start_with_config(&config).await;
    loopback_network(&daemon).await;
    let image = pull_ok(
        &mut daemon.images().await,
        &registry.image_ref("rootstock", tag),
    )
    .await;

    // The pod runs the image's own command (install.sh --root /host) with the "host" here.
    let host_root = work.path().join("host");
    std::fs::create_dir(&host_root).unwrap();
    let mut rt = daemon.runtime().await;
    let pod_cfg = pod_config("installer", NamespaceMode::Container);
    let pod = run_pod(&mut rt, pod_cfg.clone()).await.unwrap();
    let mut cfg = container_config("installer", &image, &[]);
    cfg.command.clear();
    cfg.args.clear();
    cfg.mounts.push(Mount {
        container_path: "/host".into(),
        host_path: host_root.display().to_string(),
        ..Default::default()
    });
    let id = start_container(&mut rt, &pod, &pod_cfg, cfg).await;
    let status = wait_exited(&mut rt, &id, Duration::from_secs(60)).await;
    assert_eq!(status.exit_code, 0, "install.sh failed: {}", status.message);
    stop_pod(&mut rt, &pod).await;
    remove_pod(&mut rt, &pod).await;

    let by_make = work.path().join("make");
    make("install", &[("DESTDIR", &by_make)]);
    let ours = layout(&host_root);
    let theirs = layout(&by_make);
    assert_eq!(files_only(&ours), files_only(&theirs), "different files");
    for (path, (_, content)) in &theirs {
        assert!(ours[path].1 == *content, "{path} differs");
    }
    assert_eq!(files_only(&ours).len(), 4);
}

/// The unit is `Type=notify`: the daemon says READY=1 once its socket serves, STOPPING=1 on
/// SIGTERM, on the datagram socket systemd names in $NOTIFY_SOCKET — and passes that variable
/// to no child (runc and crun would proxy the container's readiness and wait for it).
#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_tells_systemd_when_it_is_ready_and_when_it_stops() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let manager = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    manager
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let registry = Registry::start().await;
    let (mut daemon, image) = daemon_with_busybox(&registry, "").await;
    daemon.set_env("NOTIFY_SOCKET", Some(path.to_str().unwrap()));
    daemon.restart().await;
    let mut buf = [0u8; 256];
    let n = manager.recv(&mut buf).expect("no READY=1");
    assert_eq!(&buf[..n], b"READY=1");

    // Ready means served; a container starts and runs (its runtime was not asked to wait
    // for the container's own READY=1).
    loopback_network(&daemon).await;
    let mut rt = daemon.runtime().await;
    let pod_cfg = pod_config("notify", NamespaceMode::Container);
    let pod = run_pod(&mut rt, pod_cfg.clone()).await.unwrap();
    let id = start_container(
        &mut rt,
        &pod,
        &pod_cfg,
        container_config("sleeper", &image, &["sleep", "3600"]),
    )
    .await;
    let status = container_status(&mut rt, &id).await;
    assert_eq!(status.state, ContainerState::ContainerRunning as i32);
    let needle = format!("NOTIFY_SOCKET={}", path.display());
    let daemon_pid = daemon.pid().as_raw().to_string();
    let inheritors: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().to_string_lossy().into_owned();
            let env = std::fs::read(format!("/proc/{name}/environ")).ok()?;
            let found = env.split(|b| *b == 0).any(|v| v == needle.as_bytes());
            (found && name != daemon_pid).then_some(name)
        })
        .collect();
    assert!(
        inheritors.is_empty(),
        "processes with NOTIFY_SOCKET: {inheritors:?}"
    );
    stop_pod(&mut rt, &pod).await;
    remove_pod(&mut rt, &pod).await;
    drop(rt);

    daemon
        .signal_and_wait(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(15))
        .await
        .expect("the daemon did not stop");
    let n = manager.recv(&mut buf).expect("no STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
}
