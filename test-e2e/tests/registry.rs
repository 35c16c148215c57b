//! The local-registry harness and the fixture images, against the real `docker-registry`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use reqwest::{Method, StatusCode};
use rootstock_test_e2e::fixtures::{
    Compression, Format, ImageBuilder, IndexBuilder, LayerBuilder, MEDIA_DOCKER_LIST,
    MEDIA_DOCKER_MANIFEST, MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST, busybox_image, sha256_digest,
    write_oci_layout,
};
use rootstock_test_e2e::registry::{Registry, RegistryOptions, TestCa};
use serde_json::Value;

#[tokio::test]
async fn pushed_busybox_image_reads_back_with_the_same_digests() {
    let registry = Registry::start().await;
    let image = busybox_image().build();
    assert_eq!(image.layers.len(), 2);

    let digest = registry.push("busybox", "latest", &image).await;
    assert_eq!(digest, image.manifest_digest);

    for reference in ["latest", digest.as_str()] {
        let fetched = registry.manifest("busybox", reference).await;
        assert_eq!(fetched.digest, image.manifest_digest, "by {reference}");
        assert_eq!(fetched.bytes, image.manifest, "by {reference}");
        assert_eq!(fetched.content_type, MEDIA_OCI_MANIFEST, "by {reference}");
    }

    let config = registry.blob("busybox", &image.config_digest).await;
    assert_eq!(config, image.config);
    let config: Value = serde_json::from_slice(&config).unwrap();
    let diff_ids: Vec<&str> = config["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let layer_diff_ids: Vec<&str> = image.layers.iter().map(|l| l.diff_id.as_str()).collect();
    assert_eq!(diff_ids, layer_diff_ids);
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["sh"]));

    for layer in &image.layers {
        let blob = registry.blob("busybox", &layer.digest).await;
        assert_eq!(sha256_digest(&blob), layer.digest);
        let mut tar = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(blob.as_slice()), &mut tar)
            .expect("layer blob is gzip");
        assert_eq!(sha256_digest(&tar), layer.diff_id);
    }

    // Each blob is fetched once above; the log counts exactly that.
    let fetches = registry
        .count_requests("GET", &format!("/blobs/{}", image.layers[0].digest))
        .await;
    assert_eq!(fetches, 1, "log:\n{}", registry.log());
}

#[tokio::test]
async fn pushing_the_same_image_twice_skips_existing_blobs() {
    let registry = Registry::start().await;
    let image = busybox_image().build();
    registry.push("a", "v1", &image).await;
    registry.push("a", "v2", &image).await;
    let uploads = registry
        .count_requests("POST", "/v2/a/blobs/uploads/")
        .await;
    assert_eq!(uploads, 3, "config + two layers, once each");
}

#[tokio::test]
async fn multi_arch_index_pushes_and_reads_back() {
    let registry = Registry::start().await;
    let layer = LayerBuilder::new()
        .file("hello", "hi\n")
        .build(Compression::Zstd);
    let amd64 = ImageBuilder::new()
        .platform("linux/amd64")
        .layer(layer.clone())
        .build();
    let arm = ImageBuilder::new()
        .platform("linux/arm/v7")
        .layer(layer)
        .cmd(&["true"])
        .build();
    let index = IndexBuilder::new().image(amd64.clone()).image(arm).build();

    let digest = registry.push_index("multi", "latest", &index).await;
    assert_eq!(digest, index.digest);
    let fetched = registry.manifest("multi", "latest").await;
    assert_eq!(fetched.content_type, MEDIA_OCI_INDEX);
    assert_eq!(fetched.bytes, index.manifest);
    let parsed: Value = serde_json::from_slice(&fetched.bytes).unwrap();
    assert_eq!(parsed["manifests"][1]["platform"]["variant"], "v7");

    let child = registry.manifest("multi", &amd64.manifest_digest).await;
    assert_eq!(child.bytes, amd64.manifest);
}

#[tokio::test]
async fn docker_manifest_list_pushes_and_reads_back() {
    let registry = Registry::start().await;
    let image = busybox_image().format(Format::Docker).build();
    let list = IndexBuilder::new()
        .format(Format::Docker)
        .image(image.clone())
        .build();
    registry.push_index("dock", "latest", &list).await;
    let fetched = registry.manifest("dock", "latest").await;
    assert_eq!(fetched.content_type, MEDIA_DOCKER_LIST);
    assert_eq!(fetched.digest, list.digest);
    let child = registry.manifest("dock", &image.manifest_digest).await;
    assert_eq!(child.content_type, MEDIA_DOCKER_MANIFEST);
}

#[tokio::test]
async fn htpasswd_registry_refuses_anonymous_and_accepts_the_credentials() {
    let registry =
        Registry::start_with(RegistryOptions::default().basic_auth("tester", "s3cret")).await;
    let anonymous = registry
        .client()
        .get(registry.url("/v2/"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let challenge = anonymous.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.starts_with("Basic"), "{challenge}");

    let wrong = registry
        .client()
        .get(registry.url("/v2/"))
        .basic_auth("tester", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);

    let authed = registry.request(Method::GET, "/v2/").send().await.unwrap();
    assert_eq!(authed.status(), StatusCode::OK);

    let image = busybox_image().build();
    let digest = registry.push("private", "latest", &image).await;
    assert_eq!(
        registry.manifest("private", &digest).await.bytes,
        image.manifest
    );
}

#[tokio::test]
async fn tls_registry_serves_only_clients_that_trust_the_test_ca() {
    let ca = TestCa::new();
    let registry = Registry::start_with(RegistryOptions::default().tls(ca.tls_files())).await;
    assert!(registry.url("/").starts_with("https://"));
    let image = busybox_image().build();
    registry.push("secure", "latest", &image).await;
    assert_eq!(
        registry.manifest("secure", "latest").await.digest,
        image.manifest_digest
    );

    // A client with only the public roots must refuse the test chain.
    let stranger = reqwest::Client::builder().no_proxy().build().unwrap();
    let err = stranger
        .get(registry.url("/v2/"))
        .send()
        .await
        .expect_err("a client without the test CA connected");
    assert!(err.is_connect() || err.is_request(), "{err:?}");
}

#[tokio::test]
#[should_panic(expected = "did not come up")]
async fn registry_that_cannot_start_fails_with_its_log() {
    // An unknown auth backend: docker-registry exits at start-up with a fatal log line.
    Registry::start_with(RegistryOptions::default().extra_yaml("auth:\n  nosuch: {}\n")).await;
}

#[tokio::test]
async fn dropping_the_registry_stops_it_and_removes_its_storage() {
    let registry = Registry::start().await;
    let storage = registry.storage_dir();
    let url = registry.url("/v2/");
    registry
        .push("gone", "latest", &busybox_image().build())
        .await;
    assert!(
        storage
            .join("docker/registry/v2/repositories/gone")
            .is_dir()
    );
    drop(registry);
    assert!(!storage.exists());
    assert!(reqwest::get(&url).await.is_err(), "registry still answers");
}

#[tokio::test]
async fn corrupting_a_stored_blob_serves_wrong_bytes_under_its_digest() {
    let registry = Registry::start().await;
    let image = busybox_image().build();
    registry.push("bad", "latest", &image).await;
    let victim = &image.layers[1];
    std::fs::write(registry.blob_path(&victim.digest), b"not the layer").unwrap();
    let served = registry.blob("bad", &victim.digest).await;
    assert_eq!(served, b"not the layer");
}

#[test]
fn oci_layout_unpacks_with_umoci() {
    let image = busybox_image().build();
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    write_oci_layout(&layout, &image, "latest");
    let bundle = dir.path().join("bundle");
    let out = std::process::Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:latest", layout.display()))
        .arg(&bundle)
        .output()
        .expect("running umoci (apt-get install -y umoci)");
    assert!(
        out.status.success(),
        "umoci unpack: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rootfs = bundle.join("rootfs");
    assert!(rootfs.join("bin/busybox").is_file());
    assert_eq!(
        std::fs::read_link(rootfs.join("bin/sh")).unwrap(),
        std::path::Path::new("busybox")
    );
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    assert!(passwd.contains("alice:x:1000:1000"));
    use std::os::unix::fs::PermissionsExt;
    let tmp_mode = std::fs::metadata(rootfs.join("tmp"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(tmp_mode & 0o7777, 0o1777);
}
