//! The tree cache at scale: dedup across images, deep images.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on failure

mod common;

use std::time::Instant;

use common::*;
use rootstock_imagestore::ImageStore;
use rootstock_testkit::fixtures::{Compression, Entry, ImageBuilder, LayerBuilder, noise};
use rootstock_testkit::registry::Registry;

#[tokio::test]
async fn six_images_on_one_base_use_at_most_1_1x_their_unique_noise() {
    const FILES: u64 = 50;
    const SIZE: usize = 1 << 20;
    let files: Vec<(String, Vec<u8>)> = (0..FILES)
        .map(|i| (format!("usr/lib/big{i}"), noise(i, SIZE)))
        .collect();
    let base = |reverse: bool| {
        let mut b = LayerBuilder::new().dir("usr").dir("usr/lib");
        let mut order: Vec<&(String, Vec<u8>)> = files.iter().collect();
        if reverse {
            order.reverse();
        }
        for (p, c) in order {
            b = b.add(Entry::file(p, c.clone()).mtime(1_600_000_000));
        }
        b.build(Compression::None)
    };
    let base_layer = base(false);
    let rebuilt = base(true);
    assert_ne!(base_layer.diff_id, rebuilt.diff_id);
    let registry = Registry::start().await;
    let mut unique = FILES * SIZE as u64;
    for i in 0..6u64 {
        let top = noise(1000 + i, 4096);
        unique += top.len() as u64;
        let image = ImageBuilder::new()
            .layer(if i == 5 {
                rebuilt.clone()
            } else {
                base_layer.clone()
            })
            .layer(
                LayerBuilder::new()
                    .file("app", top)
                    .build(Compression::Gzip),
            )
            .build();
        registry.push("dedup", &format!("v{i}"), &image).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&dir.path().join("store"), &insecure(&registry.host())).unwrap();
    let empty = store.fs_usage();
    let started = Instant::now();
    for i in 0..6 {
        store
            .pull(&registry.image_ref("dedup", &format!("v{i}")), None)
            .await
            .unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let used = store.fs_usage().used_bytes - empty.used_bytes;
    let ratio = used as f64 / unique as f64;
    println!(
        "dedup: 6 images ({} MiB base x6 incl. one rebuilt base): store grew {:.1} MiB for {:.1} MiB \
         of unique content = {ratio:.3}x (pulled in {secs:.1}s)",
        FILES,
        used as f64 / 1048576.0,
        unique as f64 / 1048576.0
    );
    assert!(ratio <= 1.1, "ratio {ratio}");
    let report = store.verify().await.unwrap();
    assert!(report.is_clean(), "{report}");
    for img in store.list() {
        store.remove(img.id.as_str()).await.unwrap();
    }
    let root = store.root();
    assert_eq!(std::fs::read_dir(root.join("layers")).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(root.join("trees")).unwrap().count(), 0);
    let objects: usize = std::fs::read_dir(root.join("objects"))
        .unwrap()
        .map(|d| std::fs::read_dir(d.unwrap().path()).unwrap().count())
        .sum();
    assert_eq!(objects, 0, "objects left after removing every image");
}

async fn deep(registry: &Registry, store: &ImageStore, layers: usize) {
    let mut builder = ImageBuilder::new();
    for i in 0..layers {
        builder = builder.layer(
            LayerBuilder::new()
                .file(&format!("layer-{i}"), format!("{i}"))
                .file("top", format!("written by layer {i}"))
                .build(Compression::Gzip),
        );
    }
    let image = builder.clone().build();
    let repo = format!("deep{layers}");
    registry.push(&repo, "v1", &image).await;
    let started = Instant::now();
    let pulled = store
        .pull(&registry.image_ref(&repo, "v1"), None)
        .await
        .unwrap();
    let pull_secs = started.elapsed().as_secs_f64();

    // One more layer on the same chain: only that layer is fetched and unpacked, the tree is
    // rendered again from the layer trees (no tar of the base is read again).
    let more = builder
        .layer(
            LayerBuilder::new()
                .file("extra", "x")
                .build(Compression::Gzip),
        )
        .build();
    registry.push(&repo, "v2", &more).await;
    let started = Instant::now();
    let on_base = store
        .pull(&registry.image_ref(&repo, "v2"), None)
        .await
        .unwrap();
    let render_secs = started.elapsed().as_secs_f64();
    for layer in &image.layers[..3] {
        assert_eq!(
            registry
                .count_requests("GET", &format!("/blobs/{}", layer.digest))
                .await,
            1,
            "a known layer was fetched again"
        );
    }
    println!(
        "depth {layers}: pull+unpack+render {pull_secs:.2}s; image on that base (+1 layer, \
         render of {} layers from layer trees) {render_secs:.2}s",
        layers + 1
    );

    let ctr = tempfile::tempdir().unwrap();
    let mount = Overlay::mount(pulled.tree_path().unwrap(), ctr.path());
    let rootfs = mount.target.as_path();
    assert_eq!(
        std::fs::read_to_string(rootfs.join("top")).unwrap(),
        format!("written by layer {}", layers - 1)
    );
    assert!(
        rootfs.join("layer-0").is_file() && rootfs.join(format!("layer-{}", layers - 1)).is_file()
    );
    std::fs::write(rootfs.join("top"), "container write").unwrap();
    drop(mount);
    // The write went to the container's upper dir, never into the shared tree.
    assert_eq!(
        std::fs::read_to_string(pulled.tree_path().unwrap().join("top")).unwrap(),
        format!("written by layer {}", layers - 1)
    );
    assert!(on_base.tree_path().unwrap().join("extra").is_file());
}

#[tokio::test]
async fn images_of_300_and_1000_layers_render_and_mount_with_one_lower() {
    let registry = Registry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&dir.path().join("store"), &insecure(&registry.host())).unwrap();
    deep(&registry, &store, 300).await;
    deep(&registry, &store, 1000).await;
    let report = store.verify().await.unwrap();
    assert!(report.is_clean(), "{report}");
}

/// A container's root filesystem as the runtime mounts it: the image's tree as the one
/// `lowerdir` under a writable upper dir in `dir`. Unmounted on drop.
struct Overlay {
    target: std::path::PathBuf,
}

impl Overlay {
    fn mount(tree: &std::path::Path, dir: &std::path::Path) -> Overlay {
        let (upper, work, target) = (dir.join("upper"), dir.join("work"), dir.join("rootfs"));
        for d in [&upper, &work, &target] {
            std::fs::create_dir(d).unwrap();
        }
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            tree.display(),
            upper.display(),
            work.display()
        );
        let data = std::ffi::CString::new(options).unwrap();
        rustix::mount::mount(
            "overlay",
            &target,
            "overlay",
            rustix::mount::MountFlags::empty(),
            Some(data.as_c_str()),
        )
        .unwrap();
        Overlay { target }
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.target, rustix::mount::UnmountFlags::DETACH);
    }
}
