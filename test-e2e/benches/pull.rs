//! Cold-pull benchmark: a ~100 MB image of five gzip layers from the local registry into a
//! fresh daemon, several runs, median throughput. Not a test: it asserts nothing about time.
//!
//!     cargo bench -p rootstock-test-e2e --bench pull [-- RUNS]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use k8s_cri::v1::{ImageSpec, PullImageRequest};
use rootstock_test_e2e::daemon::Daemon;
use rootstock_test_e2e::fixtures::{self, Compression, Entry, LayerBuilder};
use rootstock_test_e2e::registry::Registry;

const LAYERS: usize = 5;
const LAYER_BYTES: usize = 20 << 20;

/// Incompressible bytes (xorshift), so the blob is as large as its content.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[tokio::main]
async fn main() {
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5);
    let registry = Registry::start().await;
    let mut builder = fixtures::busybox_image();
    for i in 0..LAYERS {
        // Several files per layer, as real layers have.
        let mut layer = LayerBuilder::new().dir(&format!("data{i}"));
        for f in 0..4 {
            let bytes = noise((i * 10 + f) as u64 + 1, LAYER_BYTES / 4);
            layer = layer.add(Entry::file(&format!("data{i}/blob{f}"), bytes));
        }
        builder = builder.layer(layer.build(Compression::Gzip));
    }
    let image = builder.build();
    let compressed: u64 = image.layers.iter().map(|l| l.blob.len() as u64).sum();
    registry.push("bench/big", "v1", &image).await;
    let name = registry.image_ref("bench/big", "v1");
    let config = format!(
        "[images.registries.\"{}\"]\ninsecure = true\n",
        registry.host()
    );

    let mut secs = Vec::new();
    for run in 0..runs {
        // A fresh daemon and store each run: nothing cached.
        let daemon = Daemon::start_with_config(&config).await;
        let mut images = daemon.images().await;
        let started = Instant::now();
        images
            .pull_image(PullImageRequest {
                image: Some(ImageSpec {
                    image: name.clone(),
                    ..Default::default()
                }),
                auth: None,
                sandbox_config: None,
            })
            .await
            .expect("pull");
        let s = started.elapsed().as_secs_f64();
        eprintln!("run {run}: {s:.3} s");
        secs.push(s);
    }
    secs.sort_by(f64::total_cmp);
    let median = secs[secs.len() / 2];
    let mb = compressed as f64 / 1e6;
    println!(
        "cold pull, {LAYERS} gzip layers, {mb:.1} MB compressed: median {median:.3} s \
         ({:.1} MB/s), min {:.3} s, max {:.3} s over {runs} runs",
        mb / median,
        secs[0],
        secs[secs.len() - 1]
    );
}
