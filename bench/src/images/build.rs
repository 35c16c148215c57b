//! Building the fixture images of the image families (deterministic: fixed owners and mtimes,
//! seeded noise, stored-block gzip) and pushing those the registry does not hold yet.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use rootstock_testkit::fixtures::{self, Entry, ImageBuilder, Layer, LayerBuilder};
use rootstock_testkit::registry::Registry;

use super::{
    DEPTH_REPO, DISK_LARGE_FILES, DISK_REPO, DISK_SHARED, DISK_SMALL_FILES, PULL_FILES_PER_LAYER,
    PULL_REPO, PUSH_STREAMS, SMALL_FILE_BYTES, SMALL_REPO,
};
use crate::Options;

/// The fixture images of the image families, pushed to the registry (cached between runs).
#[derive(Clone, Debug)]
pub struct Fixtures {
    /// (d) five layers of incompressible files, no base.
    pub pull: FixtureImage,
    /// (d') one layer of `opts.small_files` files of [`SMALL_FILE_BYTES`] (#18).
    pub small: FixtureImage,
    /// (e) [`DISK_SHARED`] images on one base, then the one on the rebuilt base (last).
    pub disk: Vec<FixtureImage>,
    /// (e) The sum of the sizes of the distinct file contents of all `disk` images.
    pub disk_unique_bytes: u64,
    /// (f) `(layer count, image)`, in `opts.depths` order.
    pub depth: Vec<(usize, FixtureImage)>,
    /// The images pushed by this `prepare` (the others were in the registry already).
    pub pushed: Vec<String>,
    /// How long `prepare` took, building and pushing.
    pub elapsed: Duration,
}

/// What the measurements need of one pushed image (its blobs are not kept in memory).
#[derive(Clone, Debug)]
pub struct FixtureImage {
    /// `127.0.0.1:PORT/repo:tag`.
    pub reference: String,
    pub manifest_digest: String,
    pub config_digest: String,
    /// Layer blob digests, bottom first.
    pub layer_digests: Vec<String>,
    /// Layer diff_ids, bottom first.
    pub diff_ids: Vec<String>,
    /// The chain id of the top layer (the image's rootfs).
    pub chain_id: String,
    /// Config and layer blobs, in bytes: what a pull downloads besides the manifest.
    pub size: u64,
    /// The image's regular files, where a family needs them (cold pull, disk).
    pub files: Vec<FileFact>,
}

/// A regular file of a fixture layer: its content digest and the metadata a store keys on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileFact {
    pub path: String,
    /// BLAKE3 of the content (what rootstock's object key takes, see `store::rootstock_objects`).
    pub content: [u8; 32],
    /// SHA-256 of the content (the object key of a store of schema 1, before #18).
    pub content_sha256: [u8; 32],
    pub size: u64,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
}

impl FixtureImage {
    /// Every blob a pull fetches: manifest, config, layers.
    pub(super) fn blob_digests(&self) -> impl Iterator<Item = &str> {
        [self.manifest_digest.as_str(), self.config_digest.as_str()]
            .into_iter()
            .chain(self.layer_digests.iter().map(String::as_str))
    }
}

/// Builds the fixture images and pushes those the registry does not hold yet.
pub async fn prepare(registry: &Registry, opts: &Options) -> Fixtures {
    let started = Instant::now();
    let mut pushed = Vec::new();

    let bytes = opts.pull_layer_bytes;
    let (image, files) = blocking(move || pull_image(bytes)).await;
    let pull = publish(
        registry,
        PULL_REPO,
        &format!("l5-{bytes}"),
        image,
        files,
        &mut pushed,
    )
    .await;

    let count = opts.small_files;
    let (image, files) = blocking(move || small_files_image(count)).await;
    let small = publish(
        registry,
        SMALL_REPO,
        &format!("f{count}"),
        image,
        files,
        &mut pushed,
    )
    .await;

    let base_bytes = opts.disk_base_bytes;
    let (images, disk_unique_bytes) = if opts.wants("disk") {
        blocking(move || disk_images(base_bytes)).await
    } else {
        (Vec::new(), 0)
    };
    let mut disk = Vec::new();
    for (i, (image, files)) in images.into_iter().enumerate() {
        let tag = if i < DISK_SHARED {
            format!("base-{base_bytes}-app{i}")
        } else {
            format!("rebuilt-{base_bytes}-app{i}")
        };
        disk.push(publish(registry, DISK_REPO, &tag, image, files, &mut pushed).await);
    }

    let mut depth = Vec::new();
    let depths = if opts.wants("depth") {
        opts.depths.clone()
    } else {
        Vec::new()
    };
    for &n in &depths {
        let image = blocking(move || depth_image(n)).await;
        let tag = format!("d{n}");
        let fixture = publish(registry, DEPTH_REPO, &tag, image, Vec::new(), &mut pushed).await;
        depth.push((n, fixture));
    }

    let fixtures = Fixtures {
        pull,
        small,
        disk,
        disk_unique_bytes,
        depth,
        pushed,
        elapsed: started.elapsed(),
    };
    eprintln!(
        "bench: image fixtures ready in {:.1} s ({} pushed, the others cached)",
        fixtures.elapsed.as_secs_f64(),
        fixtures.pushed.len()
    );
    fixtures
}

/// Pushes `image` as `repo:tag` unless the registry holds exactly it under that tag.
async fn publish(
    registry: &Registry,
    repo: &str,
    tag: &str,
    image: fixtures::Image,
    files: Vec<FileFact>,
    pushed: &mut Vec<String>,
) -> FixtureImage {
    let reference = registry.image_ref(repo, tag);
    if registry.manifest_digest(repo, tag).await.as_deref() != Some(&image.manifest_digest) {
        let t = Instant::now();
        registry
            .push_concurrently(repo, tag, &image, PUSH_STREAMS)
            .await;
        eprintln!(
            "bench: pushed {reference} in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        pushed.push(reference.clone());
    }
    let diff_ids: Vec<String> = image.layers.iter().map(|l| l.diff_id.clone()).collect();
    FixtureImage {
        reference,
        manifest_digest: image.manifest_digest.clone(),
        config_digest: image.config_digest.clone(),
        layer_digests: image.layers.iter().map(|l| l.digest.clone()).collect(),
        chain_id: fixtures::chain_id(&diff_ids),
        diff_ids,
        size: image.size(),
        files,
    }
}

pub(super) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("building fixtures")
}

/// A layer of `entries` (dirs first, as the caller orders them), gzip of stored blocks, with
/// its tar dropped (images keep only the blob and digests), and the facts of its files.
fn layer(entries: Vec<Entry>) -> (Layer, Vec<FileFact>) {
    let mut files = Vec::new();
    let mut builder = LayerBuilder::new();
    for entry in entries {
        if let fixtures::EntryKind::File(bytes) = &entry.kind {
            files.push(FileFact {
                path: entry.path.clone(),
                content: *blake3::hash(bytes).as_bytes(),
                content_sha256: Sha256::digest(bytes).into(),
                size: bytes.len() as u64,
                mode: entry.mode,
                uid: entry.uid,
                gid: entry.gid,
                mtime: entry.mtime,
            });
        }
        builder = builder.add(entry);
    }
    (blob_only(&builder), files)
}

/// (d) Five layers, each a directory of [`PULL_FILES_PER_LAYER`] incompressible files that
/// add up to `layer_bytes`. No base: every blob, layer and file object is the image's own.
fn pull_image(layer_bytes: usize) -> (fixtures::Image, Vec<FileFact>) {
    // The five layers are independent: build them on both cores.
    let layers: Vec<(Layer, Vec<FileFact>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..5)
            .map(|i| {
                s.spawn(move || {
                    let dir = format!("pull/layer{i}");
                    let mut entries = vec![Entry::dir("pull"), Entry::dir(&dir)];
                    for (f, len) in split(layer_bytes, PULL_FILES_PER_LAYER).enumerate() {
                        let seed = 1000 + (i * PULL_FILES_PER_LAYER + f) as u64;
                        entries.push(Entry::file(
                            &format!("{dir}/data{f}.bin"),
                            fixtures::noise(seed, len),
                        ));
                    }
                    layer(entries)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut builder = ImageBuilder::new().cmd(&["/bin/false"]);
    let mut files = Vec::new();
    for (l, f) in layers {
        builder = builder.layer(l);
        files.extend(f);
    }
    (builder.build(), files)
}

/// (d') One layer: `count` incompressible files of [`SMALL_FILE_BYTES`] in 100 directories
/// (a source tree, a node_modules: what per-file costs of an unpack show on).
fn small_files_image(count: usize) -> (fixtures::Image, Vec<FileFact>) {
    let dirs = 100.min(count.max(1));
    let mut entries = vec![Entry::dir("small")];
    entries.extend((0..dirs).map(|d| Entry::dir(&format!("small/d{d}"))));
    for i in 0..count {
        entries.push(Entry::file(
            &format!("small/d{}/f{i}", i % dirs),
            fixtures::noise(100_000 + i as u64, SMALL_FILE_BYTES),
        ));
    }
    // Tars list a directory's files together.
    entries[1 + dirs..].sort_by(|a, b| a.path.cmp(&b.path));
    let (layer, files) = layer(entries);
    let image = ImageBuilder::new()
        .layer(layer)
        .cmd(&["/bin/false"])
        .build();
    (image, files)
}

/// `total` in `parts` sizes (the last takes the remainder).
fn split(total: usize, parts: usize) -> impl Iterator<Item = usize> {
    (0..parts).map(move |i| {
        let each = total / parts;
        if i + 1 == parts {
            total - each * (parts - 1)
        } else {
            each
        }
    })
}

/// (e) [`DISK_SHARED`] images on one base of `base_bytes`, each with its own small top layer,
/// then one on a rebuilt base: the same files, bytes and metadata in another order, so a new
/// tar, diff_id and blob (as a base rebuilt from the same packages by another builder; the
/// mtimes are kept, as dpkg and COPY keep them). Also returns the unique content: the sizes of
/// the distinct file contents over all six images.
fn disk_images(base_bytes: usize) -> (Vec<(fixtures::Image, Vec<FileFact>)>, u64) {
    let small: Vec<usize> = (0..DISK_SMALL_FILES)
        .map(|i| 200 + (i * 1_237) % 8_000)
        .collect();
    let large_bytes = base_bytes.saturating_sub(small.iter().sum());
    let dirs = ["usr", "usr/lib", "usr/lib/base", "etc", "etc/base"].map(Entry::dir);
    let mut files: Vec<Entry> = split(large_bytes, DISK_LARGE_FILES)
        .enumerate()
        .map(|(i, len)| {
            Entry::file(
                &format!("usr/lib/base/lib{i}.so"),
                fixtures::noise(2000 + i as u64, len),
            )
            .mode(0o755)
        })
        .collect();
    files.extend(small.iter().enumerate().map(|(i, &len)| {
        Entry::file(
            &format!("etc/base/conf{i}"),
            fixtures::noise(3000 + i as u64, len),
        )
    }));
    let shared = layer(dirs.iter().cloned().chain(files.iter().cloned()).collect());
    // The rebuild: directories in another order (parents still first), files reversed.
    let dirs = ["etc", "etc/base", "usr", "usr/lib", "usr/lib/base"].map(Entry::dir);
    files.reverse();
    let rebuilt = layer(dirs.into_iter().chain(files).collect());
    assert_ne!(shared.0.digest, rebuilt.0.digest);

    let mut images = Vec::new();
    for i in 0..=DISK_SHARED {
        let (base, base_files) = if i < DISK_SHARED { &shared } else { &rebuilt };
        let dir = format!("app{i}");
        let (top, top_files) = layer(vec![
            Entry::dir(&dir),
            Entry::file(
                &format!("{dir}/app.bin"),
                fixtures::noise(4000 + i as u64, 256 << 10),
            )
            .mode(0o755),
            Entry::file(
                &format!("{dir}/assets.dat"),
                fixtures::noise(5000 + i as u64, 16 << 10),
            ),
            Entry::file(&format!("{dir}/VERSION"), format!("app {i}\n")),
        ]);
        let image = ImageBuilder::new()
            .layer(base.clone())
            .layer(top)
            .cmd(&[&format!("/{dir}/app.bin")])
            .build();
        let mut facts = base_files.clone();
        facts.extend(top_files);
        images.push((image, facts));
    }
    let mut seen = HashSet::new();
    let unique = images
        .iter()
        .flat_map(|(_, facts)| facts)
        .filter(|f| seen.insert(f.content))
        .map(|f| f.size)
        .sum();
    (images, unique)
}

/// (f) An image of `depth` layers that runs: layer 1 is busybox (both of
/// [`fixtures::busybox_layers`] merged) with `/etc/depth`, so no two depth images share a
/// layer; each further layer adds a small file, rewrites `/etc/generation`, and every tenth
/// one deletes (whiteout) a file added five layers below.
fn depth_image(depth: usize) -> fixtures::Image {
    let (base, users) = fixtures::busybox_layers();
    let bottom = base
        .merge(users)
        .file("etc/depth", format!("{depth}\n"))
        .dir("layers");
    let mut builder = ImageBuilder::new()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .cmd(&["sh"])
        .layer(blob_only(&bottom));
    for i in 2..=depth {
        let mut l = LayerBuilder::new()
            .dir("etc")
            .file("etc/generation", format!("depth {depth}, layer {i}\n"))
            .dir("layers")
            .file(
                &format!("layers/l{i:04}"),
                format!("added by layer {i} of {depth}\n"),
            );
        if i % 10 == 0 {
            l = l.whiteout(&format!("layers/l{:04}", i - 5));
        }
        builder = builder.layer(blob_only(&l));
    }
    builder.build()
}

/// The layer as gzip of stored blocks, its tar dropped: an image needs only the blob and the
/// digests, and the big fixtures would hold their content twice.
fn blob_only(builder: &LayerBuilder) -> Layer {
    let mut layer = builder.build_gzip_stored();
    layer.tar = Vec::new();
    layer
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn fixture_images_are_deterministic() {
        let (a, fa) = pull_image(64 << 10);
        let (b, fb) = pull_image(64 << 10);
        assert_eq!(a.manifest_digest, b.manifest_digest);
        assert_eq!(fa, fb);
        assert_eq!(a.layers.len(), 5);
        assert_eq!(fa.len(), 5 * PULL_FILES_PER_LAYER);
        assert_eq!(
            depth_image(12).manifest_digest,
            depth_image(12).manifest_digest
        );
        assert_eq!(
            disk_images(1 << 20).0[5].0.manifest_digest,
            disk_images(1 << 20).0[5].0.manifest_digest
        );
    }

    #[test]
    fn disk_images_share_one_base_and_count_its_content_once() {
        let (images, unique) = disk_images(1 << 20);
        assert_eq!(images.len(), DISK_SHARED + 1);
        let base = &images[0].0.layers[0].digest;
        assert!(
            images[..DISK_SHARED]
                .iter()
                .all(|(i, _)| &i.layers[0].digest == base)
        );
        let rebuilt = &images[DISK_SHARED];
        assert_ne!(&rebuilt.0.layers[0].digest, base);
        assert_ne!(rebuilt.0.layers[0].diff_id, images[0].0.layers[0].diff_id);
        // The rebuilt base holds the same contents with the same metadata.
        let key = |f: &FileFact| (f.path.clone(), f.content, f.mode, f.mtime);
        let mut a: Vec<_> = images[0]
            .1
            .iter()
            .map(key)
            .filter(|k| !k.0.starts_with("app"))
            .collect();
        let mut b: Vec<_> = rebuilt
            .1
            .iter()
            .map(key)
            .filter(|k| !k.0.starts_with("app"))
            .collect();
        a.sort();
        b.sort();
        assert_eq!(a, b);
        let all: Vec<FileFact> = images.iter().flat_map(|(_, f)| f.clone()).collect();
        let mut counts: HashMap<[u8; 32], usize> = HashMap::new();
        for f in &all {
            *counts.entry(f.content).or_default() += 1;
        }
        let expected: u64 = {
            let mut seen = HashSet::new();
            all.iter()
                .filter(|f| seen.insert(f.content))
                .map(|f| f.size)
                .sum()
        };
        assert_eq!(unique, expected);
        let base_bytes: u64 = images[0]
            .1
            .iter()
            .filter(|f| !f.path.starts_with("app"))
            .map(|f| f.size)
            .sum();
        assert_eq!(base_bytes, 1 << 20);
        assert!(counts.values().any(|&c| c == DISK_SHARED + 1));
    }

    #[test]
    fn depth_images_have_their_layer_count_and_a_runnable_bottom() {
        let image = depth_image(25);
        assert_eq!(image.layers.len(), 25);
        let one = depth_image(1);
        assert_eq!(one.layers.len(), 1);
        assert_ne!(one.layers[0].digest, image.layers[0].digest);
    }
}
