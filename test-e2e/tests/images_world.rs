//! Images as the world builds them, over the socket: a layer made by `tar -C dir -cf - .`
//! (with its root entry), hostile layers that hit each limit while the daemon's memory stays
//! small, a registry that drips one byte per second while everything else goes on, and a
//! very deep tree that is removed and survives a restart with few file descriptors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::*;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::*;
use rootstock_test_e2e::daemon::Daemon;
use rootstock_test_e2e::fixtures::{self, Compression, ImageBuilder, Layer};
use rootstock_test_e2e::registry::Registry;
use tonic::transport::Channel;

type Images = ImageServiceClient<Channel>;

fn insecure(registry: &Registry) -> String {
    format!(
        "[images.registries.\"{}\"]\ninsecure = true\n",
        registry.host()
    )
}

async fn pull(images: &mut Images, image: &str) -> Result<String, tonic::Status> {
    images
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: image.to_owned(),
                ..Default::default()
            }),
            auth: None,
            sandbox_config: None,
        })
        .await
        .map(|r| r.into_inner().image_ref)
}

/// A busybox root file system in a directory, for `tar` to pack.
fn busybox_dir(dir: &std::path::Path) {
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::write(dir.join("bin/busybox"), fixtures::busybox_bytes()).unwrap();
    std::fs::set_permissions(
        dir.join("bin/busybox"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    for tool in ["sh", "stat", "sleep"] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(tool)).unwrap();
    }
    for d in ["proc", "sys", "dev", "etc", "tmp"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
}

fn run_tool(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layer_from_tar_of_dot_pulls_runs_and_keeps_the_root_mode() {
    let registry = Registry::start().await;
    let src = tempfile::tempdir().unwrap();
    let root = src.path().join("rootfs");
    busybox_dir(&root);
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o751)).unwrap();
    std::os::unix::fs::chown(&root, Some(1234), Some(2345)).unwrap();
    let tar = run_tool(
        Command::new("tar")
            .arg("-C")
            .arg(&root)
            .args(["-cf", "-", "."]),
    );
    assert!(
        tar[..100].starts_with(b"./\0"),
        "the tar begins with its root entry"
    );
    let image = ImageBuilder::new()
        .layer(Layer::from_tar(tar, Compression::Gzip))
        .env("PATH", "/bin")
        .cmd(&["sh"])
        .build();
    registry.push("world/tar-dot", "v1", &image).await;

    let daemon = Daemon::start_with_config(&insecure(&registry)).await;
    loopback_network(&daemon).await;
    let mut images = daemon.images().await;
    let id = pull(&mut images, &registry.image_ref("world/tar-dot", "v1"))
        .await
        .unwrap_or_else(|e| panic!("PullImage: {e}"));

    let mut rt = daemon.runtime().await;
    let pod = pod_config("tar-dot", NamespaceMode::Container);
    let pod_id = run_pod(&mut rt, pod.clone()).await.unwrap();
    let ctr = start_container(
        &mut rt,
        &pod_id,
        &pod,
        container_config("main", &id, &["sleep", "600"]),
    )
    .await;
    let out = exec(&mut rt, &ctr, &["stat", "-c", "%a %u:%g", "/"], 10)
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "751 1234:2345",
        "stat / in the container; stderr {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stop_pod(&mut rt, &pod_id).await;
    remove_pod(&mut rt, &pod_id).await;
}
