//! The installer chart: `helm lint` and `helm template` render an installer DaemonSet that
//! mounts only what it writes, and its node script installs rootstock on a node, switches
//! kubelet over and reverts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::install::*;
use rootstock_test_e2e::process::run;
use serde_json::Value;

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
    for doc in serde_yaml_ng::Deserializer::from_slice(&out) {
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
        std::fs::write(image.join("config.toml.example"), example).unwrap();
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
