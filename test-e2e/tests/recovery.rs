//! Start-up recovery (`cri/src/recovery.rs`) settles what a crash left between the runtime
//! and the image store: a container whose create never completed is removed, and the image
//! tree lease it held is given back, so the tree goes once its image is removed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use k8s_cri::v1::*;
use rootstock_test_e2e::cri::remove_image;
use rootstock_test_e2e::registry::Registry;

fn trees(root: &std::path::Path) -> usize {
    std::fs::read_dir(root.join("trees"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_lost_in_a_crash_gives_its_tree_lease_back_at_start_up() {
    let registry = Registry::start().await;
    let (mut daemon, image) = daemon_with_busybox(&registry, "").await;
    loopback_network(&daemon).await;
    let mut rt = daemon.runtime().await;
    let pod = pod_config("recovered", NamespaceMode::Container);
    let pod_id = run_pod(&mut rt, pod.clone()).await.unwrap();
    let config = container_config("lost", &image, &["sleep", "1000"]);
    let id = create_container(&mut rt, &pod_id, &pod, config)
        .await
        .unwrap();
    assert_eq!(
        trees(&daemon.root_dir),
        1,
        "the image has its tree, leased by the container"
    );

    // A crash before the record was written: the daemon dies, and the container's run
    // directory holds no record (what a kill between the mount and the acknowledgement
    // leaves).
    drop(rt);
    daemon
        .signal_and_wait(
            nix::sys::signal::Signal::SIGKILL,
            std::time::Duration::from_secs(10),
        )
        .await
        .expect("daemon did not die");
    let record = daemon
        .state_dir
        .join("containers")
        .join(&id)
        .join("state.json");
    std::fs::remove_file(&record).unwrap();
    daemon.start_again().await;

    let mut rt = daemon.runtime().await;
    let listed = list_containers(&mut rt).await;
    assert!(
        listed.is_empty(),
        "the half-created container is gone: {listed:?}"
    );
    // The lease went with it: removing the image now removes its tree too.
    remove_image(&mut daemon.images().await, &image)
        .await
        .unwrap();
    assert_eq!(
        trees(&daemon.root_dir),
        0,
        "a tree is still held by a lost lease"
    );
    stop_pod(&mut rt, &pod_id).await;
    remove_pod(&mut rt, &pod_id).await;
}
