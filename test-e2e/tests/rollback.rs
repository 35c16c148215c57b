//! Issue 17, over the socket: what a failed call acquired is given back. A CreateContainer
//! that fails, before or after the image tree is leased, leaves no lease in the store (the
//! tree goes once its image is removed and the one real container holding it is), no
//! mount, no writable layer and no reserved name; a RunPodSandbox that fails after the
//! runtime made the sandbox leaves no sandbox, namespace or pod cgroup.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::*;
use k8s_cri::v1::*;
use serde_json::json;

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Acceptance 3: failed creates hold no lease on the image tree (checked through the
/// store: after RemoveImage the tree lives exactly as long as the one successful
/// container's lease), and leave nothing else behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_creates_leave_no_tree_lease_mount_layer_or_name() {
    let registry = rootstock_test_e2e::registry::Registry::start().await;
    let (daemon, image) = daemon_with_busybox(&registry, "").await;
    loopback_network(&daemon).await;
    let mut rt = daemon.runtime().await;
    let pod = pod_config("rollback", NamespaceMode::Container);
    let pod_id = run_pod(&mut rt, pod.clone()).await.unwrap();
    let trees = daemon.root_dir.join("trees");
    let layers = daemon.root_dir.join("containers");

    // The control: a container that succeeds holds the tree.
    let holder = create_container(
        &mut rt,
        &pod_id,
        &pod,
        container_config("holder", &image, &["sleep", "3600"]),
    )
    .await
    .unwrap();

    // Refused once the user is looked up in the mounted tree, after the lease and the
    // monitor's start, which are given back.
    let mut bad_user = container_config("bad-user", &image, &["true"]);
    bad_user.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            run_as_username: "no-such-user".to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    });
    let err = create_container(&mut rt, &pod_id, &pod, bad_user.clone())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("no-such-user"), "{}", err.message());

    // Fails after the lease, the rootfs mount and the monitor's start: the OCI runtime
    // cannot exec a missing binary.
    let no_binary = container_config("no-binary", &image, &["/no/such/binary"]);
    let err = create_container(&mut rt, &pod_id, &pod, no_binary.clone())
        .await
        .unwrap_err();
    assert!(
        err.message().contains("/no/such/binary"),
        "{}",
        err.message()
    );

    // Only the holder is left: one writable layer, no rootfs mount of the failed ones.
    let listed = rt
        .list_containers(ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .containers;
    let ids: Vec<&str> = listed.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, [holder.as_str()]);
    assert_eq!(entries(&layers), std::slice::from_ref(&holder));
    let container_mounts = mounts_under(&daemon.state_dir.join("containers"));
    assert!(
        container_mounts.iter().all(|m| m.contains(&holder)),
        "{container_mounts:?}"
    );

    // The store: with the image removed, the tree is held by leases alone.
    let mut images = daemon.images().await;
    images
        .remove_image(RemoveImageRequest {
            image: Some(ImageSpec {
                image: image.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    assert_eq!(
        entries(&trees).len(),
        1,
        "the holder's lease keeps the tree"
    );
    rt.remove_container(RemoveContainerRequest {
        container_id: holder,
    })
    .await
    .unwrap();
    // A lease left by either failed create would keep it.
    assert_eq!(entries(&trees), Vec::<String>::new(), "a lease leaked");
    assert_eq!(entries(&layers), Vec::<String>::new());

    // The names were given back too: the same names only fail for the same reasons.
    let err = create_container(&mut rt, &pod_id, &pod, no_binary)
        .await
        .unwrap_err();
    assert_ne!(err.code(), tonic::Code::AlreadyExists, "{err:?}");
    stop_pod(&mut rt, &pod_id).await;
    remove_pod(&mut rt, &pod_id).await;
}

/// RunPodSandbox's undo stack: a CNI ADD that fails after the runtime made the sandbox
/// (namespaces pinned, files written, pod-init started in a pod cgroup of the runtime's
/// own) takes all of it back. The plugin notes the sandbox id it was asked to add, so the
/// pod cgroup can be looked for by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_pod_sandbox_leaves_no_sandbox_namespace_or_pod_cgroup() {
    let net = TestNet::new("rbk");
    let seen = tempfile::tempdir().unwrap();
    let seen_file = seen.path().join("added");
    net.script_plugin(
        "rbk-refusing",
        &format!(
            r#"cat >/dev/null
if [ "$CNI_COMMAND" = ADD ]; then
  echo "$CNI_CONTAINERID" >> {}
  echo '{{"cniVersion":"1.0.0","code":999,"msg":"rbk-refusing says no"}}'
  exit 1
fi
exit 0"#,
            seen_file.display()
        ),
    );
    net.write_conflist(&net.conflist(vec![json!({ "type": "rbk-refusing" })]));
    let daemon = rootstock_test_e2e::daemon::Daemon::start_with_config(&net.daemon_config()).await;
    wait_network_ready(&daemon).await;
    let mut rt = daemon.runtime().await;
    let err = run_pod(&mut rt, pod_config("rbk-pod", NamespaceMode::Pod))
        .await
        .unwrap_err();
    assert!(err.message().contains("says no"), "{}", err.message());
    let sandbox = std::fs::read_to_string(&seen_file).unwrap();
    let sandbox = sandbox.trim();
    assert_eq!(sandbox.len(), 64, "{sandbox:?}");

    assert!(list_pods(&mut rt, None).await.is_empty());
    assert_eq!(mounts_under(&daemon.state_dir), Vec::<String>::new());
    assert_eq!(
        entries(&daemon.state_dir.join("sandboxes")),
        Vec::<String>::new()
    );
    let left: Vec<_> = rootstock_cgroups()
        .into_iter()
        .filter(|c| c.ends_with(sandbox))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(net.reserved_ips().is_empty(), "{:?}", net.reserved_ips());
}
