//! Unpack throughput (prints figures, asserts nothing): cold pull + unpack + render of a
//! ~100 MiB gzip layer of 100 files and of a 20,000 × 1 KiB-file layer, with and without
//! `keep_layer_blobs`.
//!
//!     cargo bench -p rootstock-imagestore --bench unpack
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use common::*;
use rootstock_imagestore::ImageStore;
use rootstock_testkit::fixtures::{Compression, ImageBuilder, LayerBuilder, noise};
use rootstock_testkit::registry::Registry;

#[tokio::main]
async fn main() {
    let registry = Registry::start().await;
    // ~100 MB in 100 files, and 20,000 files of 1 KiB.
    let mut big = LayerBuilder::new().dir("data");
    for i in 0..100u64 {
        big = big.file(&format!("data/f{i}"), noise(i + 7, 1 << 20));
    }
    let mut small = LayerBuilder::new().dir("many");
    for i in 0..20_000u64 {
        small = small.file(&format!("many/f{i}"), noise(i + 100_000, 1024));
    }
    let cases = [
        (
            "100 MiB / 100 files (gzip)",
            big.build(Compression::Gzip),
            100u64,
        ),
        (
            "20,000 x 1 KiB files (gzip)",
            small.build(Compression::Gzip),
            20_000,
        ),
    ];
    for (name, layer, files) in cases {
        let image = ImageBuilder::new().layer(layer.clone()).build();
        let repo = format!("bench{files}");
        registry.push(&repo, "v1", &image).await;
        for keep in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let mut config = insecure(&registry.host());
            config.keep_layer_blobs = keep;
            let store = ImageStore::open(&dir.path().join("store"), &config).unwrap();
            let started = Instant::now();
            store
                .pull(&registry.image_ref(&repo, "v1"), None)
                .await
                .unwrap();
            let secs = started.elapsed().as_secs_f64();
            println!(
                "{name}: cold pull+unpack+render {secs:.2}s = {:.1} MB/s of tar, {:.0} files/s{}",
                layer.tar.len() as f64 / secs / 1e6,
                files as f64 / secs,
                if keep {
                    " (keep_layer_blobs = true)"
                } else {
                    ""
                }
            );
        }
    }
}
