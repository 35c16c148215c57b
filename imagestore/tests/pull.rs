//! Pulls for real from Debian's `docker-registry` on 127.0.0.1 (harness in `rootstock-testkit`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on failure

mod common;

use std::path::Path;

use common::*;
use rootstock_imagestore::{
    Credentials, Error, ErrorKind, ImageStore, ImageUser, ImagesConfig, RegistryConfig,
};
use rootstock_testkit::fixtures::{
    self, Compression, ImageBuilder, IndexBuilder, LayerBuilder, busybox_image,
};
use rootstock_testkit::registry::{Registry, RegistryOptions, TestCa};

fn open(dir: &Path, config: &ImagesConfig) -> ImageStore {
    ImageStore::open(&dir.join("store"), config).unwrap()
}

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// No image, no layer record, no blob, nothing in tmp/.
fn assert_no_trace(store: &ImageStore) {
    assert!(store.list().is_empty(), "{:?}", store.list());
    assert!(store.metadata().layers().unwrap().is_empty());
    assert_eq!(count(&store.root().join("blobs/sha256")), 0);
    assert_eq!(count(&store.root().join("tmp")), 0);
}

fn unique_layer(name: &str, compression: Compression) -> fixtures::Layer {
    LayerBuilder::new()
        .dir("etc")
        .file(&format!("etc/{name}"), name.as_bytes().repeat(1000))
        .build(compression)
}

#[tokio::test]
async fn pull_by_tag_and_by_digest_records_tags_digests_and_config() {
    let registry = Registry::start().await;
    let image = busybox_image()
        .user("1000:1000")
        .working_dir("/work")
        .entrypoint(&["/bin/sh", "-c"])
        .label("k", "v")
        .build();
    let manifest_digest = registry.push("busybox", "1.36", &image).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &insecure(&registry.host()));

    let pulled = store
        .pull(&registry.image_ref("busybox", "1.36"), None)
        .await
        .unwrap();
    assert_eq!(pulled.id.as_str(), image.id());
    assert_eq!(
        pulled.repo_tags,
        vec![registry.image_ref("busybox", "1.36")]
    );
    assert_eq!(
        pulled.repo_digests,
        vec![registry.digest_ref("busybox", &manifest_digest)]
    );
    assert_eq!(pulled.size, image.size() + image.manifest.len() as u64);
    assert_eq!(pulled.user, ImageUser::Uid(1000));
    assert_eq!(pulled.config.working_dir, "/work");
    assert_eq!(pulled.config.entrypoint, vec!["/bin/sh", "-c"]);
    assert_eq!(pulled.config.cmd, vec!["sh"]);
    assert_eq!(pulled.config.labels.get("k").map(String::as_str), Some("v"));
    assert_eq!(pulled.diff_ids.len(), 2);
    assert!(pulled.chain_id.is_some());
    assert!(!pulled.pinned);

    // By digest: the same image, no tag added.
    let by_digest = store
        .pull(&registry.digest_ref("busybox", &manifest_digest), None)
        .await
        .unwrap();
    assert_eq!(by_digest.id, pulled.id);
    assert_eq!(by_digest.repo_tags, pulled.repo_tags);
    assert_eq!(store.list().len(), 1);

    // Status by tag, digest reference, full id, bare hex and a short prefix.
    let hex = pulled.id.hex().to_string();
    for name in [
        registry.image_ref("busybox", "1.36"),
        registry.digest_ref("busybox", &manifest_digest),
        pulled.id.to_string(),
        hex.clone(),
        hex[..12].to_string(),
    ] {
        let found = store.status(&name).unwrap();
        assert_eq!(found.map(|i| i.id), Some(pulled.id.clone()), "{name}");
    }
    assert_eq!(
        store
            .status(&registry.image_ref("busybox", "other"))
            .unwrap(),
        None
    );
    // Layers were kept in the blob store and checked against their diff_ids.
    assert_eq!(store.metadata().layers().unwrap().len(), 2);
}

#[tokio::test]
async fn gzip_zstd_and_docker_format_layers_pull() {
    let registry = Registry::start().await;
    let zstd = ImageBuilder::new()
        .layer(unique_layer("zstd-base", Compression::Zstd))
        .layer(unique_layer("gzip-top", Compression::Gzip))
        .layer(unique_layer("plain", Compression::None))
        .build();
    registry.push("mixed", "v1", &zstd).await;
    let docker = busybox_image().format(fixtures::Format::Docker).build();
    registry.push("docker", "v1", &docker).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &insecure(&registry.host()));
    let a = store
        .pull(&registry.image_ref("mixed", "v1"), None)
        .await
        .unwrap();
    assert_eq!(a.layers.len(), 3);
    let b = store
        .pull(&registry.image_ref("docker", "v1"), None)
        .await
        .unwrap();
    assert_eq!(b.id.as_str(), docker.id());
}

#[tokio::test]
async fn a_multi_arch_index_pulls_linux_amd64() {
    let registry = Registry::start().await;
    let amd64 = busybox_image().platform("linux/amd64").build();
    let arm64 = ImageBuilder::new()
        .layer(unique_layer("arm64", Compression::Gzip))
        .platform("linux/arm64")
        .build();
    let armv7 = ImageBuilder::new()
        .layer(unique_layer("armv7", Compression::Gzip))
        .platform("linux/arm/v7")
        .build();
    let index = IndexBuilder::new()
        .image(arm64.clone())
        .image(amd64.clone())
        .image(armv7)
        .build();
    let index_digest = registry.push_index("multi", "latest", &index).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &insecure(&registry.host()));
    let pulled = store
        .pull(&registry.image_ref("multi", "latest"), None)
        .await
        .unwrap();
    assert_eq!(pulled.id.as_str(), amd64.id());
    assert_eq!(
        pulled.repo_digests,
        vec![registry.digest_ref("multi", &index_digest)]
    );
    // Nothing of the arm64 image was fetched.
    assert_eq!(
        registry
            .count_requests("GET", &format!("/blobs/{}", arm64.config_digest))
            .await,
        0
    );
    // A list without linux/amd64 says which platforms it has.
    let only_arm = IndexBuilder::new().image(arm64).build();
    registry.push_index("armonly", "latest", &only_arm).await;
    let err = store
        .pull(&registry.image_ref("armonly", "latest"), None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NoMatchingPlatform { .. }), "{err}");
    assert!(err.to_string().contains("linux/arm64"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_sharing_layers_fetch_each_blob_once() {
    let registry = Registry::start().await;
    let one = busybox_image()
        .layer(unique_layer("one", Compression::Gzip))
        .build();
    let two = busybox_image()
        .layer(unique_layer("two", Compression::Gzip))
        .build();
    registry.push("one", "latest", &one).await;
    registry.push("two", "latest", &two).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &insecure(&registry.host()));
    let (ref_one, ref_two) = (
        registry.image_ref("one", "latest"),
        registry.image_ref("two", "latest"),
    );
    let (a, b, c) = tokio::join!(
        store.pull(&ref_one, None),
        store.pull(&ref_two, None),
        store.pull(&ref_one, None),
    );
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    assert_eq!(a.id, c.id);
    assert_ne!(a.id, b.id);
    for layer in &one.layers[..2] {
        assert_eq!(
            registry
                .count_requests("GET", &format!("/blobs/{}", layer.digest))
                .await,
            1,
            "shared layer {} fetched more than once",
            layer.digest
        );
    }
    assert_eq!(
        registry
            .count_requests("GET", &format!("/blobs/{}", one.config_digest))
            .await,
        1
    );
    assert_eq!(store.list().len(), 2);
}

#[tokio::test]
async fn a_corrupted_blob_fails_with_a_digest_mismatch_and_leaves_no_trace() {
    let registry = Registry::start().await;
    let image = busybox_image().build();
    registry.push("corrupt", "latest", &image).await;
    let victim = &image.layers[1];
    let path = registry.blob_path(&victim.digest);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &insecure(&registry.host()));
    let err = store
        .pull(&registry.image_ref("corrupt", "latest"), None)
        .await
        .unwrap_err();
    match &err {
        Error::BlobDigestMismatch { digest, .. } => assert_eq!(digest.as_str(), victim.digest),
        other => panic!("expected a digest mismatch, got {other:?}"),
    }
    assert!(err.to_string().contains("digest mismatch"), "{err}");
    assert_no_trace(&store);
    drop(store);
    let store = open(dir.path(), &insecure(&registry.host()));
    assert_no_trace(&store);
}

#[tokio::test]
async fn a_layer_whose_diff_id_lies_fails_and_leaves_no_trace() {
    let registry = Registry::start().await;
    let image = busybox_image()
        .diff_id_override(1, &fixtures::sha256_digest(b"not this layer"))
        .build();
    registry.push("liar", "latest", &image).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &insecure(&registry.host()));
    let err = store
        .pull(&registry.image_ref("liar", "latest"), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::DiffIdMismatch { index: 1, .. }),
        "{err}"
    );
    assert_no_trace(&store);
}

#[tokio::test]
async fn unknown_host_repository_and_tag_are_distinct_errors() {
    let registry = Registry::start().await;
    registry
        .push("exists", "latest", &busybox_image().build())
        .await;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &insecure(&registry.host()));

    let host = store.pull("foo.invalid/app:1", None).await.unwrap_err();
    assert!(matches!(host, Error::UnknownHost { .. }), "{host:?}");
    assert_eq!(host.kind(), ErrorKind::Unavailable);
    assert!(host.to_string().contains("foo.invalid"), "{host}");

    let repo = store
        .pull(&registry.image_ref("nope", "latest"), None)
        .await
        .unwrap_err();
    assert!(matches!(repo, Error::RepositoryNotFound { .. }), "{repo:?}");
    assert_eq!(repo.kind(), ErrorKind::NotFound);

    let tag = store
        .pull(&registry.image_ref("exists", "nope"), None)
        .await
        .unwrap_err();
    assert!(matches!(tag, Error::ManifestNotFound { .. }), "{tag:?}");
    assert_eq!(tag.kind(), ErrorKind::NotFound);

    let refused = store.pull("127.0.0.1:1/app:1", None).await.unwrap_err();
    assert!(matches!(refused, Error::Unreachable { .. }), "{refused:?}");

    let bad = store.pull("Not A Name", None).await.unwrap_err();
    assert_eq!(bad.kind(), ErrorKind::InvalidArgument);

    let messages: std::collections::HashSet<String> = [&host, &repo, &tag, &refused]
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert_eq!(messages.len(), 4);
    assert_no_trace(&store);
}

#[tokio::test]
async fn remove_by_one_of_three_tags_removes_every_tag_digest_and_id() {
    let registry = Registry::start().await;
    let image = busybox_image().build();
    let digest = registry.push("app", "a", &image).await;
    registry.push("app", "b", &image).await;
    registry.push("app", "c", &image).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &insecure(&registry.host()));
    let empty = store.fs_usage();
    for tag in ["a", "b", "c"] {
        store
            .pull(&registry.image_ref("app", tag), None)
            .await
            .unwrap();
    }
    let img = store
        .status(&registry.image_ref("app", "b"))
        .unwrap()
        .unwrap();
    assert_eq!(img.repo_tags.len(), 3);
    let full = store.fs_usage();
    assert!(full.used_bytes > empty.used_bytes + image.size());
    assert!(full.inodes_used > empty.inodes_used);

    store.remove(&registry.image_ref("app", "b")).await.unwrap();
    for name in [
        registry.image_ref("app", "a"),
        registry.image_ref("app", "b"),
        registry.image_ref("app", "c"),
        registry.digest_ref("app", &digest),
        img.id.to_string(),
    ] {
        assert_eq!(store.status(&name).unwrap(), None, "{name}");
    }
    assert_no_trace(&store);
    assert_eq!(store.fs_usage().inodes_used, empty.inodes_used);
    // Removing again, or something never pulled, is fine.
    store.remove(&registry.image_ref("app", "b")).await.unwrap();
    store.remove(img.id.as_str()).await.unwrap();
}

#[tokio::test]
async fn images_tags_and_removals_survive_reopening() {
    let registry = Registry::start().await;
    let one = busybox_image().build();
    let two = busybox_image()
        .layer(unique_layer("extra", Compression::Gzip))
        .build();
    registry.push("one", "latest", &one).await;
    registry.push("two", "latest", &two).await;
    let dir = tempfile::tempdir().unwrap();
    let config = insecure(&registry.host());
    {
        let store = open(dir.path(), &config);
        store
            .pull(&registry.image_ref("one", "latest"), None)
            .await
            .unwrap();
        store
            .pull(&registry.image_ref("two", "latest"), None)
            .await
            .unwrap();
    }
    let before;
    {
        let store = open(dir.path(), &config);
        assert_eq!(store.list().len(), 2);
        before = store.fs_usage();
        store
            .remove(&registry.image_ref("two", "latest"))
            .await
            .unwrap();
        assert!(store.fs_usage().used_bytes < before.used_bytes);
        // The shared busybox layers stay for image one.
        assert_eq!(store.metadata().layers().unwrap().len(), 2);
    }
    let store = open(dir.path(), &config);
    let images = store.list();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].id.as_str(), one.id());
    assert_eq!(
        images[0].repo_tags,
        vec![registry.image_ref("one", "latest")]
    );
    assert!(store.fs_usage().used_bytes < before.used_bytes);
    // A pull after reopening finds the layers it already has.
    store
        .pull(&registry.image_ref("one", "latest"), None)
        .await
        .unwrap();
    for layer in &one.layers {
        assert_eq!(
            registry
                .count_requests("GET", &format!("/blobs/{}", layer.digest))
                .await,
            1
        );
    }
}

#[tokio::test]
async fn a_short_docker_io_name_pulls_through_a_mirror() {
    let registry = Registry::start().await;
    let image = busybox_image().build();
    registry.push("library/busybox", "latest", &image).await;
    let mut config = ImagesConfig::default();
    config.registries.insert(
        "docker.io".into(),
        RegistryConfig {
            mirrors: vec![
                "http://127.0.0.1:1".into(), // down: falls through to the next mirror
                format!("http://{}", registry.host()),
            ],
            ..Default::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &config);
    let pulled = store.pull("busybox", None).await.unwrap();
    assert_eq!(pulled.id.as_str(), image.id());
    assert_eq!(pulled.repo_tags, vec!["docker.io/library/busybox:latest"]);
    assert_eq!(store.status("busybox").unwrap().unwrap().id, pulled.id);
}

#[tokio::test]
async fn basic_auth_accepts_the_right_credentials_only() {
    let registry =
        Registry::start_with(RegistryOptions::default().basic_auth("puller", "s3cret")).await;
    registry
        .push("private", "latest", &busybox_image().build())
        .await;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &insecure(&registry.host()));
    let name = registry.image_ref("private", "latest");

    let none = store.pull(&name, None).await.unwrap_err();
    assert_eq!(none.kind(), ErrorKind::Unauthenticated, "{none}");
    assert!(none.to_string().contains("none were given"), "{none}");

    let wrong = Credentials {
        username: "puller".into(),
        password: "wrong".into(),
        ..Default::default()
    };
    let err = store.pull(&name, Some(wrong)).await.unwrap_err();
    assert!(matches!(err, Error::AuthenticationFailed { .. }), "{err:?}");
    assert!(
        err.to_string().contains("rejected the credentials"),
        "{err}"
    );
    assert_no_trace(&store);

    let right = Credentials {
        auth: "cHVsbGVyOnMzY3JldA==".into(), // puller:s3cret
        ..Default::default()
    };
    store.pull(&name, Some(right)).await.unwrap();
}

#[tokio::test]
async fn tls_needs_the_registry_ca() {
    let ca = TestCa::new();
    let registry = Registry::start_with(RegistryOptions::default().tls(ca.tls_files())).await;
    registry
        .push("secure", "latest", &busybox_image().build())
        .await;
    let name = registry.image_ref("secure", "latest");

    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &ImagesConfig::default());
    let err = store.pull(&name, None).await.unwrap_err();
    assert!(matches!(err, Error::TlsUntrusted { .. }), "{err:?}");
    assert!(err.to_string().contains("ca_files"), "{err}");
    drop(store);

    let mut config = ImagesConfig::default();
    config.registries.insert(
        registry.host(),
        RegistryConfig {
            ca_files: vec![ca.ca_path()],
            ..Default::default()
        },
    );
    let store = open(dir.path(), &config);
    store.pull(&name, None).await.unwrap();
}

#[tokio::test]
async fn a_moved_tag_leaves_the_old_image_untagged_but_listed() {
    let registry = Registry::start().await;
    let old = busybox_image().build();
    let new = busybox_image()
        .layer(unique_layer("new", Compression::Gzip))
        .build();
    let old_digest = registry.push("app", "latest", &old).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &insecure(&registry.host()));
    let name = registry.image_ref("app", "latest");
    store.pull(&name, None).await.unwrap();
    registry.push("app", "latest", &new).await;
    let pulled = store.pull(&name, None).await.unwrap();
    assert_eq!(pulled.id.as_str(), new.id());
    assert_eq!(store.status(&name).unwrap().unwrap().id.as_str(), new.id());
    let old_img = store.status(old.id()).unwrap().unwrap();
    assert!(old_img.repo_tags.is_empty());
    assert_eq!(
        old_img.repo_digests,
        vec![registry.digest_ref("app", &old_digest)]
    );
    assert_eq!(store.list().len(), 2);
    // Removing the old image keeps the layers the new one shares.
    store.remove(old.id()).await.unwrap();
    assert_eq!(store.metadata().layers().unwrap().len(), 3);
    assert_eq!(store.list().len(), 1);
}
