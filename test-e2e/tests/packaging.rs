//! Installing rootstock on a node: `make install`/`uninstall` and the systemd unit
//! (`systemd-analyze verify`), the installer chart (`helm lint`, `helm template`), and the
//! image `make image` builds — pushed to a local registry, pulled by rootstock, its install
//! script run in a pod with a "host root" mounted — laying out what `make install` does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use k8s_cri::v1::*;
use rootstock_test_e2e::daemon::Daemon;
use rootstock_test_e2e::registry::Registry;
use serde_json::Value;

/// The repository's root (the workspace).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `make TARGET VARS…` in the repository, with the debug build the tests use.
fn make(target: &str, vars: &[(&str, &Path)]) -> Output {
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

/// Every file below `root`: relative path → (mode, content); directories by path only.
fn layout(root: &Path) -> BTreeMap<String, (u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let m = std::fs::symlink_metadata(&path).unwrap();
            if m.is_dir() {
                stack.push(path);
                out.insert(format!("{rel}/"), (m.permissions().mode() & 0o7777, vec![]));
            } else if m.is_file() {
                let content = std::fs::read(&path).unwrap();
                out.insert(rel, (m.permissions().mode() & 0o7777, content));
            }
        }
    }
    out
}

fn files_only(l: &BTreeMap<String, (u32, Vec<u8>)>) -> Vec<(String, u32)> {
    l.iter()
        .filter(|(p, _)| !p.ends_with('/'))
        .map(|(p, (mode, _))| (p.clone(), *mode))
        .collect()
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
    let example = run(Command::new(target.join("rootstock")).args(["config", "default"])).stdout;
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
    let help = run(Command::new(target.join("rootstock")).arg("--help")).stdout;
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

/// helm 3 in target/tools (fetched by scripts/install-tools.sh, as `make test` does).
fn helm() -> PathBuf {
    run(&mut Command::new(repo().join("scripts/install-tools.sh")));
    repo().join("target/tools/helm")
}

/// `helm template` of the chart with `--set` values: every rendered object by kind.
fn template(helm: &Path, sets: &[&str]) -> BTreeMap<String, Vec<Value>> {
    let mut cmd = Command::new(helm);
    cmd.args(["template", "r1"])
        .arg(repo().join("charts/rootstock"));
    for s in sets {
        cmd.args(["--set", s]);
    }
    let out = run(&mut cmd);
    let mut by_kind: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for doc in serde_yaml_ng::Deserializer::from_slice(&out.stdout) {
        let v: Value = serde::Deserialize::deserialize(doc).unwrap();
        if v.is_null() {
            continue;
        }
        by_kind
            .entry(v["kind"].as_str().unwrap().to_owned())
            .or_default()
            .push(v);
    }
    by_kind
}

/// The installer DaemonSet's host paths → where they are mounted, and its other volumes.
fn host_mounts(ds: &Value) -> (BTreeMap<String, String>, Vec<String>) {
    let spec = &ds["spec"]["template"]["spec"];
    let container = &spec["containers"][0];
    let mounts: BTreeMap<&str, &str> = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap(),
                m["mountPath"].as_str().unwrap(),
            )
        })
        .collect();
    let mut host = BTreeMap::new();
    let mut other = Vec::new();
    for v in spec["volumes"].as_array().unwrap() {
        let name = v["name"].as_str().unwrap();
        match v["hostPath"]["path"].as_str() {
            Some(path) => {
                host.insert(path.to_owned(), mounts[name].to_owned());
            }
            None => other.push(name.to_owned()),
        }
    }
    assert_eq!(
        mounts.len(),
        host.len() + other.len(),
        "a mount without a volume"
    );
    (host, other)
}

fn installer(objects: &BTreeMap<String, Vec<Value>>) -> &Value {
    objects["DaemonSet"]
        .iter()
        .find(|d| d["metadata"]["annotations"]["helm.sh/hook"].is_null())
        .expect("the installer DaemonSet")
}

#[test]
fn the_chart_lints_and_renders_an_installer_that_mounts_only_what_it_writes() {
    let helm = helm();
    let chart = repo().join("charts/rootstock");
    let custom = [
        "kubelet.reconfigure=true",
        "prefix=/opt/rootstock/",
        "image.repository=registry.example/rootstock",
        "image.tag=1.2.3",
        "config=log_level = \"debug\"",
    ];
    run(Command::new(&helm).args(["lint", "--strict"]).arg(&chart));
    let mut lint = Command::new(&helm);
    lint.args(["lint", "--strict"]).arg(&chart);
    for s in custom {
        lint.args(["--set", s]);
    }
    run(&mut lint);

    // Defaults: the binaries' dir, the unit dir and /etc/rootstock, each at /host<path>.
    let objects = template(&helm, &[]);
    let ds = installer(&objects);
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostPID"], true);
    assert!(
        spec["hostNetwork"].is_null(),
        "the installer needs no host network"
    );
    assert_eq!(spec["containers"][0]["securityContext"]["privileged"], true);
    assert_eq!(spec["containers"].as_array().unwrap().len(), 1);
    let (host, other) = host_mounts(ds);
    let expected: BTreeMap<String, String> = [
        "/usr/local/bin",
        "/usr/local/lib/systemd/system",
        "/etc/rootstock",
    ]
    .iter()
    .map(|p| (p.to_string(), format!("/host{p}")))
    .collect();
    assert_eq!(host, expected);
    assert_eq!(other, ["chart"]);
    assert_eq!(spec["containers"][0]["image"], "rootstock:0.1.0");
    let checksum = ds["spec"]["template"]["metadata"]["annotations"]["checksum/config"].clone();
    assert!(
        checksum.as_str().is_some_and(|c| c.len() == 64),
        "{checksum}"
    );
    let cm = &objects["ConfigMap"][0];
    assert_eq!(cm["data"]["config.toml"], "log_level = \"info\"\n");
    assert!(
        cm["data"]["node.sh"]
            .as_str()
            .unwrap()
            .contains("systemctl")
    );
    // The labels come from one helper: every object carries the same set.
    for obj in objects.values().flatten() {
        assert_eq!(
            obj["metadata"]["labels"]["app.kubernetes.io/instance"], "r1",
            "{}",
            obj["metadata"]["name"]
        );
    }
    // The uninstaller is a pre-delete hook with the same mounts and no ConfigMap.
    let hook = objects["DaemonSet"]
        .iter()
        .find(|d| d["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete")
        .expect("the uninstall hook");
    let (hook_host, hook_other) = host_mounts(hook);
    assert_eq!(hook_host, expected);
    assert!(hook_other.is_empty(), "{hook_other:?}");

    // Non-default values: the prefix moves the mounts, kubelet's dir is added only when the
    // chart reconfigures kubelet, the config changes the checksum.
    let objects = template(&helm, &custom);
    let ds = installer(&objects);
    let (host, _) = host_mounts(ds);
    assert_eq!(
        host.keys().collect::<Vec<_>>(),
        [
            "/etc/rootstock",
            "/opt/rootstock/bin",
            "/opt/rootstock/lib/systemd/system",
            "/var/lib/kubelet"
        ]
    );
    let container = &ds["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "registry.example/rootstock:1.2.3");
    let env: BTreeMap<&str, &str> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e["value"].as_str().unwrap()))
        .collect();
    assert_eq!(env["PREFIX"], "/opt/rootstock");
    assert_eq!(env["KUBELET_RECONFIGURE"], "true");
    assert_eq!(env["START_SERVICE"], "true");
    assert_ne!(
        ds["spec"]["template"]["metadata"]["annotations"]["checksum/config"],
        checksum
    );
    assert_eq!(
        objects["ConfigMap"][0]["data"]["config.toml"],
        "log_level = \"debug\"\n"
    );

    // Values that cannot work are refused at render time.
    for (sets, says) in [
        (&["prefix=usr/local"][..], "absolute"),
        (
            &["kubelet.reconfigure=true", "service.start=false"][..],
            "service.start",
        ),
    ] {
        let mut cmd = Command::new(&helm);
        cmd.args(["template", "r1"]).arg(&chart);
        for s in sets {
            cmd.args(["--set", s]);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success(), "{sets:?} rendered");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(says),
            "{sets:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
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
    let image = daemon
        .images()
        .await
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: registry.image_ref("rootstock", tag),
                ..Default::default()
            }),
            auth: None,
            sandbox_config: None,
        })
        .await
        .unwrap()
        .into_inner()
        .image_ref;

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

/// The chart's node script, run by busybox's sh as in the image, against a fake host root:
/// `$NSENTER` is a stub that records host commands (systemctl) and runs the host's rootstock
/// (the config check) with paths under that root.
struct NodeScript {
    dir: tempfile::TempDir,
    _socket: std::os::unix::net::UnixListener,
}

const KUBELET_CONFIG: &str = "kind: KubeletConfiguration\ncgroupDriver: cgroupfs\n\
                              containerRuntimeEndpoint: unix:///run/containerd/containerd.sock\n";
const KUBEADM_FLAGS: &str = "KUBELET_KUBEADM_ARGS=\"--container-runtime-endpoint=unix:///run/containerd/containerd.sock --pod-infra-container-image=pause\"\n";

impl NodeScript {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        // The image's /opt/rootstock, as build-image.sh lays it out.
        let image = p.join("image");
        std::fs::create_dir_all(image.join("bin")).unwrap();
        let target = repo().join("target/debug");
        for b in ["rootstock", "rootstock-monitor"] {
            std::fs::copy(target.join(b), image.join("bin").join(b)).unwrap();
        }
        for f in ["rootstock.service", "install.sh"] {
            std::fs::copy(repo().join("packaging").join(f), image.join(f)).unwrap();
        }
        let example = run(Command::new(target.join("rootstock")).args(["config", "default"]));
        std::fs::write(image.join("config.toml.example"), example.stdout).unwrap();
        std::fs::create_dir_all(p.join("chart")).unwrap();
        let kubelet = p.join("host/var/lib/kubelet");
        std::fs::create_dir_all(&kubelet).unwrap();
        std::fs::write(kubelet.join("config.yaml"), KUBELET_CONFIG).unwrap();
        std::fs::write(kubelet.join("kubeadm-flags.env"), KUBEADM_FLAGS).unwrap();
        // The socket the script waits for before it switches kubelet.
        std::fs::create_dir_all(p.join("host/run/rootstock")).unwrap();
        let socket = p.join("host/run/rootstock/rootstock.sock");
        let socket = std::os::unix::net::UnixListener::bind(socket).unwrap();
        let stubs = p.join("stubs");
        std::fs::create_dir_all(&stubs).unwrap();
        std::fs::write(
            stubs.join("nsenter"),
            "#!/bin/bash\nwhile [ \"$1\" != -- ]; do shift; done; shift\n\
             echo \"$*\" >>\"$STUB_LOG\"\n[ \"$1\" = systemctl ] && exit 0\n\
             args=(); for a in \"$@\"; do [[ $a == /* ]] && a=\"$HOST_ROOT$a\"; args+=(\"$a\"); done\n\
             exec \"${args[@]}\"\n",
        )
        .unwrap();
        std::fs::set_permissions(
            stubs.join("nsenter"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        NodeScript {
            dir,
            _socket: socket,
        }
    }

    fn host(&self) -> PathBuf {
        self.dir.path().join("host")
    }

    /// Runs `node.sh ACTION` with the chart's `config`; returns (success, output).
    fn run(&self, action: &str, config: &str) -> (bool, String) {
        let p = self.dir.path();
        std::fs::write(p.join("chart/config.toml"), config).unwrap();
        let _ = std::fs::remove_file(p.join("log"));
        let out = Command::new("busybox")
            .arg("sh")
            .arg(repo().join("charts/rootstock/files/node.sh"))
            .arg(action)
            // Named by path: busybox's sh would run its own nsenter applet, not PATH's.
            .env("NSENTER", p.join("stubs/nsenter"))
            .env("HOST_ROOT", self.host())
            .env("IMAGE_DIR", p.join("image"))
            .env("CHART_DIR", p.join("chart"))
            .env("STUB_LOG", p.join("log"))
            .env("IDLE", "false")
            .env("PREFIX", "/usr/local")
            .env("START_SERVICE", "true")
            .env("KUBELET_RECONFIGURE", "true")
            .env("KUBELET_CONFIG", "/var/lib/kubelet/config.yaml")
            .env("KUBELET_ENDPOINT", "unix:///run/rootstock/rootstock.sock")
            .output()
            .unwrap();
        let host_commands = std::fs::read_to_string(p.join("log")).unwrap_or_default();
        (
            out.status.success(),
            format!(
                "{}{}--- host commands:\n{host_commands}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    fn read(&self, path: &str) -> String {
        std::fs::read_to_string(self.host().join(path)).unwrap_or_default()
    }
}

#[test]
fn the_chart_node_script_installs_switches_kubelet_and_reverts() {
    let node = NodeScript::new();
    let config = "log_level = \"debug\"\n";
    let (ok, out) = node.run("install", config);
    assert!(ok, "{out}");
    assert_eq!(node.read("etc/rootstock/config.toml"), config);
    assert!(node.host().join("usr/local/bin/rootstock").exists());
    for cmd in [
        "systemctl daemon-reload",
        "systemctl enable rootstock.service",
        "systemctl restart rootstock.service",
        "systemctl restart kubelet.service",
    ] {
        assert!(out.contains(cmd), "{cmd}: {out}");
    }
    let kubelet = node.read("var/lib/kubelet/config.yaml");
    assert!(
        kubelet.contains("containerRuntimeEndpoint: unix:///run/rootstock/rootstock.sock\n")
            && !kubelet.contains("containerd"),
        "{kubelet}"
    );
    let flags = node.read("var/lib/kubelet/kubeadm-flags.env");
    assert!(
        flags.contains("--container-runtime-endpoint=unix:///run/rootstock/rootstock.sock ")
            && flags.contains("--pod-infra-container-image=pause"),
        "{flags}"
    );
    assert_eq!(
        node.read("var/lib/kubelet/config.yaml.rootstock-orig"),
        KUBELET_CONFIG
    );

    // A re-run (the pod restarted) changes nothing and restarts nothing.
    let (ok, out) = node.run("install", config);
    assert!(ok, "{out}");
    assert!(out.contains("systemctl start rootstock.service"), "{out}");
    assert!(!out.contains("restart"), "{out}");

    // A config the binary refuses is not written, and nothing is restarted.
    let (ok, out) = node.run("install", "log_levle = \"debug\"\n");
    assert!(!ok, "{out}");
    assert!(out.contains("log_levle"), "{out}");
    assert!(!out.contains("restart"), "{out}");
    assert_eq!(node.read("etc/rootstock/config.toml"), config);

    let (ok, out) = node.run("uninstall", config);
    assert!(ok, "{out}");
    assert!(
        out.contains("systemctl disable --now rootstock.service"),
        "{out}"
    );
    assert!(out.contains("systemctl restart kubelet.service"), "{out}");
    assert_eq!(node.read("var/lib/kubelet/config.yaml"), KUBELET_CONFIG);
    assert_eq!(
        node.read("var/lib/kubelet/kubeadm-flags.env"),
        KUBEADM_FLAGS
    );
    let left = files_only(&layout(&node.host()));
    assert_eq!(
        left.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(),
        [
            "var/lib/kubelet/config.yaml",
            "var/lib/kubelet/kubeadm-flags.env"
        ],
        "uninstall left files"
    );
}
