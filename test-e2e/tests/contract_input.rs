//! The CRI contract on bad input: what kubelet never sends is refused with InvalidArgument
//! naming the field, and leaves nothing behind (no container listed, no directories, no
//! mounts).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::*;
use k8s_cri::v1::*;
use rootstock_test_e2e::daemon::Daemon;
use rootstock_test_e2e::registry::Registry;
use tonic::Code;

/// What a create left on the node: containers listed, run and layer directories, mounts.
fn footprint(daemon: &Daemon) -> (usize, usize, usize) {
    let count = |d: &Path| std::fs::read_dir(d).map(|r| r.count()).unwrap_or(0);
    (
        count(&daemon.state_dir.join("containers")),
        count(&daemon.root_dir.join("containers")),
        mounts_under(&daemon.state_dir).len(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_kubelet_never_sends_is_refused_naming_the_field_and_leaves_nothing() {
    let registry = Registry::start().await;
    let (daemon, image) = daemon_with_busybox(&registry, "").await;
    loopback_network(&daemon).await;
    let mut rt = daemon.runtime().await;
    let logs = tempfile::tempdir().unwrap();
    let log_dir = logs.path().join("pods/p");
    std::fs::create_dir_all(&log_dir).unwrap();
    let mut pod = pod_config("refusals", NamespaceMode::Container);
    pod.log_directory = log_dir.display().to_string();
    let pod_id = run_pod(&mut rt, pod.clone()).await.unwrap();
    let base = || container_config("victim", &image, &["sleep", "3600"]);
    let resources = |r: LinuxContainerResources| {
        let mut c = base();
        c.linux = Some(LinuxContainerConfig {
            resources: Some(r),
            ..Default::default()
        });
        c
    };
    let mount = |host: &str, container: &str| {
        let mut c = base();
        c.mounts.push(Mount {
            host_path: host.to_owned(),
            container_path: container.to_owned(),
            ..Default::default()
        });
        c
    };
    let log = |path: &str| {
        let mut c = base();
        c.log_path = path.to_owned();
        c
    };
    let rows: Vec<(&str, ContainerConfig, &str)> = vec![
        (
            "relative host_path .",
            mount(".", "/x"),
            "mounts[0].host_path",
        ),
        (
            "relative host_path",
            mount("etc", "/x"),
            "mounts[0].host_path",
        ),
        (
            "relative container_path",
            mount("/tmp", "x"),
            "mounts[0].container_path",
        ),
        (
            "log_path leaving the log directory",
            log("../../x.log"),
            "log_path",
        ),
        (
            "absolute log_path",
            log("/tmp/rootstock-e2e-x.log"),
            "log_path",
        ),
        (
            "oom_score_adj above 1000",
            resources(LinuxContainerResources {
                oom_score_adj: 1001,
                ..Default::default()
            }),
            "oom_score_adj",
        ),
        (
            "oom_score_adj below -1000",
            resources(LinuxContainerResources {
                oom_score_adj: -1001,
                ..Default::default()
            }),
            "oom_score_adj",
        ),
        (
            "negative cpu_quota",
            resources(LinuxContainerResources {
                cpu_quota: -2,
                ..Default::default()
            }),
            "cpu_quota",
        ),
    ];
    let before = footprint(&daemon);
    for (what, config, field) in rows {
        let err = create_container(&mut rt, &pod_id, &pod, config)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert!(err.message().contains(field), "{what}: {}", err.message());
        assert_eq!(footprint(&daemon), before, "{what} left something");
    }
    assert!(!logs.path().join("x.log").exists());
    assert!(!Path::new("/tmp/rootstock-e2e-x.log").exists());

    // The name is still free, and kubelet's own values pass; a host_path that does not
    // exist is created as a directory (containerd's hostPath behaviour).
    let missing = logs.path().join("new/dir");
    let mut ok = mount(&missing.display().to_string(), "/data");
    ok.log_path = "victim/0.log".to_owned();
    ok.linux = Some(LinuxContainerConfig {
        resources: Some(LinuxContainerResources {
            oom_score_adj: 1000,
            cpu_quota: -1,
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = start_container(&mut rt, &pod_id, &pod, ok).await;
    assert!(missing.is_dir());
    assert_eq!(
        stdout(&sh(&mut rt, &id, "echo hi > /data/f && cat /data/f").await),
        "hi"
    );
    assert_eq!(std::fs::read_to_string(missing.join("f")).unwrap(), "hi\n");

    // UpdateContainerResources refuses the same values, and changes nothing.
    for (r, field) in [
        (
            LinuxContainerResources {
                oom_score_adj: 2000,
                ..Default::default()
            },
            "oom_score_adj",
        ),
        (
            LinuxContainerResources {
                cpu_quota: -5,
                ..Default::default()
            },
            "cpu_quota",
        ),
    ] {
        let err = rt
            .update_container_resources(UpdateContainerResourcesRequest {
                container_id: id.clone(),
                linux: Some(r),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(field), "{}", err.message());
    }
    stop_pod(&mut rt, &pod_id).await;
    remove_pod(&mut rt, &pod_id).await;
}
