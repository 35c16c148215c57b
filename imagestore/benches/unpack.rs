//! Unpack throughput (prints figures, asserts nothing): cold pull + unpack + render of a
//! ~100 MiB gzip layer of 100 files and of a 20,000 × 1 KiB-file layer, with and without
//! `keep_layer_blobs`; then the per-byte stages of a pull alone, on one core: gzip and zstd
//! decode of a compressible 64 MiB stream (flate2's backend in this build: zlib-rs) and
//! SHA-256, to see which one limits a pull of compressed layers (#18).
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

/// MB/s of `f` over `bytes` bytes (best of three).
fn rate(bytes: usize, mut f: impl FnMut()) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    bytes as f64 / best / 1e6
}

/// The per-byte stages of a pull, each alone on one core.
fn stages() {
    use sha2::Digest as _;
    use std::io::{Read, Write};
    // Text-like content (a source tree, /usr/share): compresses about 3:1 as real layers do.
    let words = [
        "usr", "lib", "share", "doc", "config", "locale", "x86_64", "linux", "gnu",
    ];
    let mut data = Vec::with_capacity(64 << 20);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    while data.len() < 64 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(words[(x % words.len() as u64) as usize].as_bytes());
        data.push(if x.is_multiple_of(7) { b'\n' } else { b'/' });
        data.extend_from_slice(format!("{}", x % 1000).as_bytes());
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&data).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::encode_all(&data[..], 3).unwrap();
    let n = data.len();
    let gunzip = rate(n, || {
        let mut d = rootstock_imagestore::gzip::Members::new(&gz[..]);
        std::io::copy(&mut d, &mut std::io::sink()).unwrap();
    });
    let unzstd = rate(n, || {
        let mut d = zstd::stream::read::Decoder::new(&zst[..]).unwrap();
        let mut buf = vec![0u8; 256 << 10];
        while d.read(&mut buf).unwrap() > 0 {}
    });
    let sha = rate(n, || {
        std::hint::black_box(sha2::Sha256::digest(&data));
    });
    println!(
        "stages on {} MB ({:.1}:1 gzip): gzip decode {gunzip:.0} MB/s of output, zstd decode \
         {unzstd:.0} MB/s, SHA-256 {sha:.0} MB/s",
        n / 1_000_000,
        n as f64 / gz.len() as f64
    );
}

#[tokio::main]
async fn main() {
    stages();
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
