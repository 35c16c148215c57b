//! The image service over the socket, against a real `docker-registry` on loopback: pulls by
//! tag, digest and short name through a mirror, multi-arch, auth, TLS, corrupted blobs, merged
//! blob fetches, error messages, removal and restarts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::*;
use rootstock_test_e2e::daemon::Daemon;
use rootstock_test_e2e::fixtures::{self, Compression, Entry, IndexBuilder, LayerBuilder};
use rootstock_test_e2e::registry::{Registry, RegistryOptions, TestCa};
use tonic::transport::Channel;

type Images = ImageServiceClient<Channel>;

/// Config that lets the daemon talk plain HTTP to the test registry.
fn insecure(registry: &Registry) -> String {
    format!(
        "[images.registries.\"{}\"]\ninsecure = true\n",
        registry.host()
    )
}

async fn pull(
    images: &mut Images,
    image: &str,
    auth: Option<AuthConfig>,
) -> Result<String, tonic::Status> {
    images
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: image.to_owned(),
                ..Default::default()
            }),
            auth,
            sandbox_config: None,
        })
        .await
        .map(|r| r.into_inner().image_ref)
}

async fn status(images: &mut Images, image: &str) -> Option<Image> {
    images
        .image_status(ImageStatusRequest {
            image: Some(ImageSpec {
                image: image.to_owned(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .image
}

async fn list(images: &mut Images) -> Vec<Image> {
    images
        .list_images(ListImagesRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .images
}

async fn remove(images: &mut Images, image: &str) {
    images
        .remove_image(RemoveImageRequest {
            image: Some(ImageSpec {
                image: image.to_owned(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
}

async fn used_bytes(images: &mut Images) -> u64 {
    let fs = images
        .image_fs_info(ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let usage = fs.image_filesystems.first().expect("one image filesystem");
    assert!(
        usage
            .fs_id
            .as_ref()
            .is_some_and(|id| !id.mountpoint.is_empty())
    );
    usage.used_bytes.as_ref().expect("used_bytes").value
}

/// Names the store's files under `blobs/` and `tmp/`, to prove a failed pull left nothing.
fn store_files(daemon: &Daemon) -> Vec<String> {
    let mut out = Vec::new();
    for sub in ["blobs", "tmp"] {
        let mut stack = vec![daemon.root_dir.join(sub)];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if entry.file_type().unwrap().is_dir() {
                    stack.push(entry.path());
                } else {
                    out.push(entry.path().display().to_string());
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn pull_by_tag_by_digest_and_by_short_name_through_a_mirror() {
    let registry = Registry::start().await;
    let image = fixtures::busybox_image().label("test", "tags").build();
    let digest = registry.push("e2e/busybox", "v1", &image).await;
    registry.push("library/busybox", "latest", &image).await;
    let config = format!(
        "{}[images.registries.\"docker.io\"]\nmirrors = [\"http://{}\"]\n",
        insecure(&registry),
        registry.host()
    );
    let daemon = Daemon::start_with_config(&config).await;
    let mut images = daemon.images().await;

    let by_tag = registry.image_ref("e2e/busybox", "v1");
    assert_eq!(pull(&mut images, &by_tag, None).await.unwrap(), image.id());
    let by_digest = registry.digest_ref("e2e/busybox", &digest);
    assert_eq!(
        pull(&mut images, &by_digest, None).await.unwrap(),
        image.id()
    );
    assert_eq!(
        pull(&mut images, "busybox", None).await.unwrap(),
        image.id()
    );

    // One image (one config digest), every name it was pulled by: what `crictl images` shows.
    let listed = list(&mut images).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let img = &listed[0];
    assert_eq!(img.id, image.id());
    let mut tags = img.repo_tags.clone();
    tags.sort();
    assert_eq!(
        tags,
        [
            by_tag.clone(),
            "docker.io/library/busybox:latest".to_owned()
        ]
    );
    let repo_digests = &img.repo_digests;
    assert!(
        repo_digests.contains(&format!("{}/e2e/busybox@{digest}", registry.host())),
        "{repo_digests:?}"
    );
    assert!(
        repo_digests.contains(&format!("docker.io/library/busybox@{digest}")),
        "{repo_digests:?}"
    );
    // As containerd counts it: every blob of the image, the manifest included.
    assert_eq!(img.size, image.size() + image.manifest.len() as u64);

    for name in [
        by_tag.as_str(),
        by_digest.as_str(),
        "busybox",
        "busybox:latest",
        image.id(),
    ] {
        let found = status(&mut images, name)
            .await
            .unwrap_or_else(|| panic!("no status for {name}"));
        assert_eq!(found.id, image.id(), "{name}");
    }
    assert!(
        status(&mut images, "busybox:nope").await.is_none(),
        "absent image is an empty answer"
    );
}

#[tokio::test]
async fn multi_arch_index_pulls_the_linux_amd64_image() {
    let registry = Registry::start().await;
    let marker = |arch: &str| {
        LayerBuilder::new()
            .file("arch", arch)
            .build(Compression::Gzip)
    };
    let amd64 = fixtures::busybox_image()
        .layer(marker("amd64"))
        .platform("linux/amd64")
        .build();
    let arm64 = fixtures::busybox_image()
        .layer(marker("arm64"))
        .platform("linux/arm64/v8")
        .build();
    let index = IndexBuilder::new()
        .image(arm64.clone())
        .image(amd64.clone())
        .build();
    registry.push_index("e2e/multi", "v1", &index).await;
    let daemon = Daemon::start_with_config(&insecure(&registry)).await;
    let mut images = daemon.images().await;
    let id = pull(&mut images, &registry.image_ref("e2e/multi", "v1"), None)
        .await
        .unwrap();
    assert_eq!(id, amd64.id());
    let img = status(&mut images, &id).await.unwrap();
    // The repo digest is the index's: that is what the user asked for by tag.
    assert!(
        img.repo_digests[0].ends_with(&index.digest),
        "{:?}",
        img.repo_digests
    );
}

#[tokio::test]
async fn basic_auth_pulls_with_right_credentials_and_names_the_failure_otherwise() {
    let registry =
        Registry::start_with(RegistryOptions::default().basic_auth("puller", "s3cret")).await;
    let image = fixtures::busybox_image().build();
    registry.push("e2e/private", "v1", &image).await;
    let daemon = Daemon::start_with_config(&insecure(&registry)).await;
    let mut images = daemon.images().await;
    let name = registry.image_ref("e2e/private", "v1");

    let auth = |password: &str| AuthConfig {
        username: "puller".to_owned(),
        password: password.to_owned(),
        ..Default::default()
    };
    let err = pull(&mut images, &name, Some(auth("wrong")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    assert!(
        err.message().contains("authentication failed"),
        "{}",
        err.message()
    );
    assert!(list(&mut images).await.is_empty());

    let err = pull(&mut images, &name, None).await.unwrap_err();
    assert!(
        err.message().contains("authentication"),
        "{}",
        err.message()
    );

    assert_eq!(
        pull(&mut images, &name, Some(auth("s3cret")))
            .await
            .unwrap(),
        image.id()
    );
}

#[tokio::test]
async fn tls_registry_pulls_with_its_ca_configured_and_fails_clearly_without() {
    let ca = TestCa::new();
    let registry = Registry::start_with(RegistryOptions::default().tls(ca.tls_files())).await;
    let image = fixtures::busybox_image().build();
    registry.push("e2e/tls", "v1", &image).await;
    let name = registry.image_ref("e2e/tls", "v1");

    let untrusting = Daemon::start().await;
    let err = pull(&mut untrusting.images().await, &name, None)
        .await
        .unwrap_err();
    assert!(err.message().contains("certificate"), "{}", err.message());

    let config = format!(
        "[images.registries.\"{}\"]\nca_files = [\"{}\"]\n",
        registry.host(),
        ca.ca_path().display()
    );
    let trusting = Daemon::start_with_config(&config).await;
    assert_eq!(
        pull(&mut trusting.images().await, &name, None)
            .await
            .unwrap(),
        image.id()
    );
}

#[tokio::test]
async fn corrupted_blob_fails_the_pull_with_a_digest_mismatch_and_leaves_no_trace() {
    let registry = Registry::start().await;
    let image = fixtures::busybox_image().build();
    registry.push("e2e/corrupt", "v1", &image).await;
    // Same length, different bytes: only the digest check can notice.
    let layer = &image.layers[1];
    let path = registry.blob_path(&layer.digest);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();

    let daemon = Daemon::start_with_config(&insecure(&registry)).await;
    let mut images = daemon.images().await;
    let err = pull(&mut images, &registry.image_ref("e2e/corrupt", "v1"), None)
        .await
        .unwrap_err();
    assert!(err.message().contains("digest"), "{}", err.message());
    assert!(err.message().contains(&layer.digest), "{}", err.message());
    assert!(list(&mut images).await.is_empty());
    assert!(status(&mut images, image.id()).await.is_none());
    let left = store_files(&daemon);
    for digest in [
        &image.config_digest,
        &image.manifest_digest,
        &layer.digest,
        &image.layers[0].digest,
    ] {
        let hex = digest.trim_start_matches("sha256:");
        assert!(
            !left.iter().any(|f| f.ends_with(hex)),
            "{digest} left in the store: {left:?}"
        );
    }
    assert!(
        !left.iter().any(|f| f.contains("/tmp/")),
        "temp files left: {left:?}"
    );
}

#[tokio::test]
async fn concurrent_pulls_of_images_sharing_layers_fetch_each_blob_once() {
    let registry = Registry::start().await;
    let (base, _) = fixtures::busybox_layers();
    let base = base.build(Compression::Zstd);
    let top = |name: &str| {
        LayerBuilder::new()
            .add(Entry::file(name, name))
            .build(Compression::Gzip)
    };
    let one = fixtures::ImageBuilder::new()
        .layer(base.clone())
        .layer(top("one"))
        .build();
    let two = fixtures::ImageBuilder::new()
        .layer(base.clone())
        .layer(top("two"))
        .build();
    registry.push("e2e/one", "v1", &one).await;
    registry.push("e2e/two", "v1", &two).await;
    let daemon = Daemon::start_with_config(&insecure(&registry)).await;
    let (mut a, mut b) = (daemon.images().await, daemon.images().await);
    let (name_one, name_two) = (
        registry.image_ref("e2e/one", "v1"),
        registry.image_ref("e2e/two", "v1"),
    );
    let (ra, rb) = tokio::join!(pull(&mut a, &name_one, None), pull(&mut b, &name_two, None));
    assert_eq!(ra.unwrap(), one.id());
    assert_eq!(rb.unwrap(), two.id());
    let fetches = registry
        .count_requests("GET", &format!("/blobs/{}", base.digest))
        .await;
    assert_eq!(fetches, 1, "shared layer fetched {fetches} times");
}

#[tokio::test]
async fn unknown_host_repository_and_tag_each_get_their_own_message() {
    let registry = Registry::start().await;
    registry
        .push("e2e/known", "v1", &fixtures::busybox_image().build())
        .await;
    let daemon = Daemon::start_with_config(&insecure(&registry)).await;
    let mut images = daemon.images().await;

    let host = pull(&mut images, "registry.rootstock.invalid/x/y:1", None)
        .await
        .unwrap_err();
    let repo = pull(&mut images, &registry.image_ref("e2e/unknown", "v1"), None)
        .await
        .unwrap_err();
    let tag = pull(&mut images, &registry.image_ref("e2e/known", "v2"), None)
        .await
        .unwrap_err();
    assert!(
        host.message().contains("registry.rootstock.invalid"),
        "{}",
        host.message()
    );
    assert!(repo.message().contains("e2e/unknown"), "{}", repo.message());
    assert!(tag.message().contains("v2"), "{}", tag.message());
    assert_eq!(repo.code(), tonic::Code::NotFound, "{repo:?}");
    assert_eq!(tag.code(), tonic::Code::NotFound, "{tag:?}");
    assert_ne!(host.message(), repo.message());
    assert_ne!(repo.message(), tag.message());

    let bad = pull(&mut images, "Not A Reference", None)
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");
    // A port no registry can listen on is the user's mistake, not an unreachable registry.
    let port = pull(&mut images, "127.0.0.1:99999/e2e/known:v1", None)
        .await
        .unwrap_err();
    assert_eq!(port.code(), tonic::Code::InvalidArgument, "{port:?}");
    assert!(port.message().contains("port"), "{}", port.message());
}

#[tokio::test]
async fn removing_by_one_tag_removes_every_tag_digest_and_id() {
    let registry = Registry::start().await;
    let image = fixtures::busybox_image().build();
    for tag in ["a", "b", "c"] {
        registry.push("e2e/tags", tag, &image).await;
    }
    let daemon = Daemon::start_with_config(&insecure(&registry)).await;
    let mut images = daemon.images().await;
    for tag in ["a", "b", "c"] {
        pull(&mut images, &registry.image_ref("e2e/tags", tag), None)
            .await
            .unwrap();
    }
    assert_eq!(list(&mut images).await[0].repo_tags.len(), 3);
    remove(&mut images, &registry.image_ref("e2e/tags", "b")).await;
    for name in [
        registry.image_ref("e2e/tags", "a"),
        registry.image_ref("e2e/tags", "c"),
        registry.digest_ref("e2e/tags", &image.manifest_digest),
        image.id().to_owned(),
    ] {
        assert!(
            status(&mut images, &name).await.is_none(),
            "{name} still there"
        );
    }
    assert!(list(&mut images).await.is_empty());
    // Removing an absent image is fine (kubelet's image GC may race).
    remove(&mut images, &registry.image_ref("e2e/tags", "b")).await;
}

#[tokio::test]
async fn images_survive_restarts_and_fs_info_follows_them() {
    let registry = Registry::start().await;
    let kept = fixtures::busybox_image().label("n", "kept").build();
    let gone = fixtures::busybox_image()
        .layer(
            LayerBuilder::new()
                .file("big", vec![7u8; 1 << 20])
                .build(Compression::None),
        )
        .build();
    registry.push("e2e/kept", "v1", &kept).await;
    registry.push("e2e/gone", "v1", &gone).await;
    let mut daemon = Daemon::start_with_config(&insecure(&registry)).await;
    let mut images = daemon.images().await;
    let empty = used_bytes(&mut images).await;
    pull(&mut images, &registry.image_ref("e2e/kept", "v1"), None)
        .await
        .unwrap();
    pull(&mut images, &registry.image_ref("e2e/gone", "v1"), None)
        .await
        .unwrap();
    let full = used_bytes(&mut images).await;
    assert!(full > empty + (1 << 20), "{empty} → {full}");

    daemon.restart().await;
    let mut images = daemon.images().await;
    assert_eq!(list(&mut images).await.len(), 2);
    remove(&mut images, &registry.image_ref("e2e/gone", "v1")).await;

    // A crash must not resurrect the removed image or lose the kept one.
    daemon.kill_and_restart().await;
    let mut images = daemon.images().await;
    let listed = list(&mut images).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].id, kept.id());
    assert_eq!(listed[0].repo_tags, [registry.image_ref("e2e/kept", "v1")]);
    let after = used_bytes(&mut images).await;
    assert!(after < full && after > empty, "{empty} → {full} → {after}");
}
