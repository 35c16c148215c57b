//! Image figures: cold pull (d), disk use against unique content (e), layer depth (f).
//!
//! [`prepare`] builds the fixture images of these families and pushes those the registry does
//! not hold yet. The builders are deterministic (fixed owners and mtimes, seeded noise, gzip
//! of stored blocks: [`fixtures::gzip_stored`]), so the same [`Options`] give the same digests
//! on every run and with every build of this crate; a HEAD of each manifest tells whether the
//! registry's storage, kept in `opts.cache_dir` between runs, has it already. Building takes
//! seconds in release, so only the pushes are cached.
//!
//! Every figure is taken the same way on both runtimes, through CRI only; what differs is how
//! [`cold_pull`] checks that nothing of the image is left on disk before each pull (each
//! runtime keeps its store its own way, see [`leftovers`]).

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use super::{Ctx, Kind, Measure, Options, Target};
use crate::fixtures::{self, Entry, ImageBuilder, Layer, LayerBuilder};
use crate::registry::Registry;

const PULL_REPO: &str = "bench/pull";
const DISK_REPO: &str = "bench/disk";
const DEPTH_REPO: &str = "bench/depth";
/// Blobs pushed at once (the depth images are a thousand small round trips).
const PUSH_STREAMS: usize = 8;
/// Files of each cold-pull layer.
const PULL_FILES_PER_LAYER: usize = 4;
/// Large files of the disk base; the rest of it is `DISK_SMALL_FILES` small ones.
const DISK_LARGE_FILES: usize = 8;
const DISK_SMALL_FILES: usize = 64;
/// Images on the shared base (the rebuilt-base one comes on top).
const DISK_SHARED: usize = 5;
/// How long a runtime may take to collect a removed image's content (polled, not timed).
const GC_DEADLINE: Duration = Duration::from_secs(120);
/// containerd's stores under its root (1.6, overlayfs snapshotter).
const CONTAINERD_BLOBS: &str = "io.containerd.content.v1.content/blobs/sha256";
const CONTAINERD_SNAPSHOTS: &str = "io.containerd.snapshotter.v1.overlayfs/snapshots";
/// Sizes are reported in MiB, the unit the options are given in.
const MIB: f64 = (1 << 20) as f64;

/// The fixture images of the image families, pushed to the registry (cached between runs).
#[derive(Clone, Debug)]
pub struct Fixtures {
    /// (d) five layers of incompressible files, no base.
    pub pull: FixtureImage,
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
    /// sha256 of the content.
    pub content: [u8; 32],
    pub size: u64,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
}

impl FixtureImage {
    /// Every blob a pull fetches: manifest, config, layers.
    fn blob_digests(&self) -> impl Iterator<Item = &str> {
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

    let base_bytes = opts.disk_base_bytes;
    let (images, disk_unique_bytes) = blocking(move || disk_images(base_bytes)).await;
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
    for &n in &opts.depths {
        let image = blocking(move || depth_image(n)).await;
        let tag = format!("d{n}");
        let fixture = publish(registry, DEPTH_REPO, &tag, image, Vec::new(), &mut pushed).await;
        depth.push((n, fixture));
    }

    let fixtures = Fixtures {
        pull,
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

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
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
                content: Sha256::digest(bytes).into(),
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

// ---------------------------------------------------------------------------------------------
// (d) Cold pull
// ---------------------------------------------------------------------------------------------

/// (d) Cold pull of the ~100 MiB five-layer image, `opts.pull_runs` times: only PullImage is
/// timed. Between runs the image is removed, and the next pull waits (untimed) until nothing
/// of it is left on disk — no blob, layer, tree, file object or snapshot — since a store
/// that still holds any of it would make the pull warm. A runtime whose garbage does not clear
/// gets failed figures saying what stayed.
pub async fn cold_pull(t: &Target, ctx: &Ctx) -> Vec<Measure> {
    let image = &ctx.fixtures.pull;
    let mib = image.size as f64 / MIB;
    let label = format!(
        "cold pull ({mib:.0} MiB, {} layers)",
        image.layer_digests.len()
    );
    let keys = [
        (format!("{label}: median"), "s"),
        (format!("{label}: min"), "s"),
        (format!("{label}: max"), "s"),
        (format!("{label}: throughput at median"), "MiB/s"),
    ];
    let fail_all = |why: String| -> Vec<Measure> {
        eprintln!("bench[{}] {label}: {why}", t.kind.name());
        keys.iter()
            .map(|(k, unit)| Measure::failed(k.clone(), unit, why.clone()))
            .collect()
    };

    let mut images = t.images().await;
    // A leftover of an earlier run (removing an absent image is fine); its blobs gone, the
    // snapshots left are what the runtime holds for other images.
    let _ = super::remove_image(&mut images, &image.reference).await;
    let _ = wait_cleared(t, image, usize::MAX).await;
    let snapshots = snapshot_count(t);
    let mut samples = Vec::new();
    for run in 0..ctx.opts.pull_runs {
        if let Err(why) = wait_cleared(t, image, snapshots).await {
            return fail_all(format!("before run {}: {why}", run + 1));
        }
        flush_dirty_pages().await;
        let took = match super::pull(&mut images, &image.reference).await {
            Ok((_, took)) => took,
            Err(why) => return fail_all(why),
        };
        eprintln!(
            "bench[{}] {label}: run {}: {:.3} s",
            t.kind.name(),
            run + 1,
            took.as_secs_f64()
        );
        samples.push(took);
        if run == 0 {
            // The check that the store is clear must see the image when it is there, or it
            // would pass on a layout it does not understand.
            let missing = missing_after_pull(t, image, snapshots);
            if !missing.is_empty() {
                let _ = super::remove_image(&mut images, &image.reference).await;
                return fail_all(format!(
                    "cannot verify cold pulls: after a pull the store lacks {}",
                    summary(&missing)
                ));
            }
        }
        if let Err(why) = super::remove_image(&mut images, &image.reference).await {
            return fail_all(why);
        }
    }
    if let Err(why) = wait_cleared(t, image, snapshots).await {
        eprintln!(
            "bench[{}] {label}: after the last run: {why}",
            t.kind.name()
        );
    }
    let Some((median, _)) = super::quantiles(&samples) else {
        return fail_all("no runs (pull_runs = 0)".into());
    };
    let median = median.as_secs_f64();
    let secs = |d: Option<&Duration>| d.map(Duration::as_secs_f64).unwrap_or(f64::NAN);
    vec![
        Measure::value(keys[0].0.clone(), "s", median),
        Measure::value(keys[1].0.clone(), "s", secs(samples.iter().min())),
        Measure::value(keys[2].0.clone(), "s", secs(samples.iter().max())),
        Measure::value(keys[3].0.clone(), "MiB/s", mib / median),
    ]
}

/// `sync`, untimed, before a timed pull: a runtime that syncs its file system (rootstock
/// calls syncfs per layer) would otherwise pay for whatever else is dirty on it (the
/// registry's storage, the other runtime's removals, builds), and unevenly.
async fn flush_dirty_pages() {
    blocking(nix::unistd::sync).await;
}

/// Polls until nothing of `image` is left on the runtime's disk (see [`leftovers`]), or fails
/// after [`GC_DEADLINE`] naming what stayed.
async fn wait_cleared(t: &Target, image: &FixtureImage, snapshots: usize) -> Result<(), String> {
    let deadline = Instant::now() + GC_DEADLINE;
    loop {
        let left = leftovers(t, image, snapshots);
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{GC_DEADLINE:?} after RemoveImage the store still holds {}",
                summary(&left)
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What of `image` is on the runtime's disk; empty when a pull of it would be cold.
/// * rootstock: its blobs (`blobs/sha256/<hex>`), its layer trees (`layers/<diffid>`), its
///   image tree (`trees/<chainid>`) and the file objects of its files (`objects/…`, named by
///   content and metadata, so another image's identical file would keep one alive: the pull
///   image's files are its own).
/// * containerd: its blobs in the content store, and any overlayfs snapshot more than the
///   `snapshots` there were before the first pull (snapshots are numbered, not named by
///   chain id, so the count is what tells).
pub fn leftovers(t: &Target, image: &FixtureImage, snapshots: usize) -> Vec<String> {
    let root = &t.root_dir;
    let mut left: Vec<String> = Vec::new();
    match t.kind {
        Kind::Rootstock => {
            let mut paths: Vec<PathBuf> = image
                .blob_digests()
                .map(|d| root.join("blobs/sha256").join(hex_of(d)))
                .collect();
            paths.extend(
                image
                    .diff_ids
                    .iter()
                    .map(|d| root.join("layers").join(hex_of(d))),
            );
            paths.push(root.join("trees").join(hex_of(&image.chain_id)));
            paths.extend(
                image
                    .files
                    .iter()
                    .map(|f| root.join("objects").join(rootstock_object(f))),
            );
            left.extend(
                paths
                    .into_iter()
                    .filter(|p| p.symlink_metadata().is_ok())
                    .map(|p| p.display().to_string()),
            );
        }
        Kind::Containerd => {
            left.extend(
                image
                    .blob_digests()
                    .map(|d| root.join(CONTAINERD_BLOBS).join(hex_of(d)))
                    .filter(|p| p.exists())
                    .map(|p| p.display().to_string()),
            );
            let now = snapshot_count(t);
            if now > snapshots {
                left.push(format!(
                    "{} overlayfs snapshots more than before the first pull",
                    now - snapshots
                ));
            }
        }
    }
    left
}

/// What of `image` is *not* on disk right after a pull although [`leftovers`] looks for it:
/// non-empty means the cold check would be blind.
fn missing_after_pull(t: &Target, image: &FixtureImage, snapshots: usize) -> Vec<String> {
    let root = &t.root_dir;
    let mut expect: Vec<PathBuf> = Vec::new();
    let mut missing = Vec::new();
    match t.kind {
        Kind::Rootstock => {
            // Layer blobs are not kept after unpacking (images.keep_layer_blobs = false).
            expect.extend(
                image
                    .diff_ids
                    .iter()
                    .map(|d| root.join("layers").join(hex_of(d))),
            );
            expect.push(root.join("trees").join(hex_of(&image.chain_id)));
            expect.extend(
                image
                    .files
                    .iter()
                    .map(|f| root.join("objects").join(rootstock_object(f))),
            );
        }
        Kind::Containerd => {
            expect.extend(
                image
                    .layer_digests
                    .iter()
                    .map(|d| root.join(CONTAINERD_BLOBS).join(hex_of(d))),
            );
            let now = snapshot_count(t);
            if now < snapshots + image.diff_ids.len() {
                missing.push(format!(
                    "snapshots: {now}, expected at least {} + {}",
                    snapshots,
                    image.diff_ids.len()
                ));
            }
        }
    }
    missing.extend(
        expect
            .into_iter()
            .filter(|p| p.symlink_metadata().is_err())
            .map(|p| p.display().to_string()),
    );
    missing
}

/// containerd's overlayfs snapshot directories (0 for rootstock, which has none).
fn snapshot_count(t: &Target) -> usize {
    match t.kind {
        Kind::Rootstock => 0,
        Kind::Containerd => std::fs::read_dir(t.root_dir.join(CONTAINERD_SNAPSHOTS))
            .map(|d| d.count())
            .unwrap_or(0),
    }
}

/// rootstock's object path of a file, `<aa>/<rest>` under `objects/`. Mirrors
/// `rootstock_imagestore::unpack::object_key` (this crate does not link the store): sha256
/// over a version tag, the content digest, and the inode metadata a hard link shares. A drift
/// shows as [`missing_after_pull`] finding no object after the first pull.
fn rootstock_object(f: &FileFact) -> String {
    let mut h = Sha256::new();
    h.update(b"rootstock-object-v1\0");
    h.update(f.content);
    h.update(format!("{:o} {} {} {}\0", f.mode & 0o7777, f.uid, f.gid, f.mtime).as_bytes());
    let key = hex::encode(h.finalize());
    format!("{}/{}", &key[..2], &key[2..])
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// The first few of a list of what is missing or left, and how many there are.
fn summary(items: &[String]) -> String {
    const SHOWN: usize = 3;
    let mut s = items[..items.len().min(SHOWN)].join(", ");
    if items.len() > SHOWN {
        s.push_str(&format!(" and {} more", items.len() - SHOWN));
    }
    s
}

// ---------------------------------------------------------------------------------------------
// (e) Disk
// ---------------------------------------------------------------------------------------------

/// (e) Disk used by five images on a shared base plus one with a rebuilt base: the growth of
/// the runtime's root across the six pulls ([`disk_usage`]), the unique file content of the
/// six images, and their ratio. The images are removed afterwards.
pub async fn disk(t: &Target, ctx: &Ctx) -> Vec<Measure> {
    let fixtures = &ctx.fixtures;
    let label = format!(
        "disk ({} images on a {:.0} MiB base + 1 on a rebuilt base)",
        DISK_SHARED,
        ctx.opts.disk_base_bytes as f64 / MIB
    );
    let keys = [
        (format!("{label}: used"), "MiB"),
        (format!("{label}: unique file content"), "MiB"),
        (format!("{label}: used / unique"), "x"),
    ];
    let mut images = t.images().await;
    for image in &fixtures.disk {
        let _ = super::remove_image(&mut images, &image.reference).await;
    }
    let before = settled_usage(&t.root_dir).await;
    let mut failure = None;
    for image in &fixtures.disk {
        if let Err(why) = super::pull(&mut images, &image.reference).await {
            failure = Some(why);
            break;
        }
    }
    let after = settled_usage(&t.root_dir).await;
    for image in &fixtures.disk {
        if let Err(why) = super::remove_image(&mut images, &image.reference).await {
            eprintln!("bench[{}] {label}: {why}", t.kind.name());
        }
    }
    if let Some(why) = failure {
        eprintln!("bench[{}] {label}: {why}", t.kind.name());
        return keys
            .iter()
            .map(|(k, unit)| Measure::failed(k.clone(), unit, why.clone()))
            .collect();
    }
    let used = after as f64 - before as f64;
    let unique = fixtures.disk_unique_bytes as f64;
    eprintln!(
        "bench[{}] {label}: {:.1} MiB used for {:.1} MiB of unique content",
        t.kind.name(),
        used / MIB,
        unique / MIB
    );
    vec![
        Measure::value(keys[0].0.clone(), "MiB", used / MIB),
        Measure::value(keys[1].0.clone(), "MiB", unique / MIB),
        Measure::value(keys[2].0.clone(), "x", used / unique),
    ]
}

/// [`disk_usage`] after a `sync`, taken again until two readings half a second apart agree
/// (at most ten times): a runtime may still be writing or collecting.
async fn settled_usage(root: &Path) -> u64 {
    let root = root.to_owned();
    let measure = move || {
        nix::unistd::sync();
        disk_usage(&root)
    };
    let mut last = blocking(measure.clone()).await;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = blocking(measure.clone()).await;
        if now == last {
            break;
        }
        last = now;
    }
    last
}

/// Bytes `root` occupies on disk: `st_blocks` × 512 of every inode under it, each inode once
/// (hard links count once), symlinks not followed, other file systems (mounts) not entered.
pub fn disk_usage(root: &Path) -> u64 {
    let Ok(top) = root.symlink_metadata() else {
        return 0;
    };
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let mut bytes = 0;
    let mut stack = vec![root.to_owned()];
    seen.insert((top.dev(), top.ino()));
    bytes += top.blocks() * 512;
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            // DirEntry::metadata is lstat: symlinks are counted, not followed.
            let Ok(m) = entry.metadata() else { continue };
            if m.dev() != top.dev() || !seen.insert((m.dev(), m.ino())) {
                continue;
            }
            bytes += m.blocks() * 512;
            if m.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    bytes
}

// ---------------------------------------------------------------------------------------------
// (f) Depth
// ---------------------------------------------------------------------------------------------

/// (f) For each of `opts.depths`: PullImage of the image with that many layers, then one pod
/// running it on the first handler (RunPodSandbox + CreateContainer + StartContainer as a
/// whole, and CreateContainer + StartContainer alone: where the rootfs is mounted), then the
/// pod and the image are removed. A failure is that depth's figure; the loop goes on.
pub async fn depth(t: &Target, ctx: &Ctx) -> Vec<Measure> {
    let handler = t.handlers.first().map(String::as_str).unwrap_or("runc");
    let mut images = t.images().await;
    let mut rt = t.runtime().await;
    let mut out = Vec::new();
    for (n, image) in &ctx.fixtures.depth {
        let key = |what: &str| format!("depth {n}: {what}");
        let log = |what: &str| eprintln!("bench[{}] depth {n}: {what}", t.kind.name());
        let _ = super::remove_image(&mut images, &image.reference).await;
        flush_dirty_pages().await;
        match super::pull(&mut images, &image.reference).await {
            Ok((_, took)) => {
                log(&format!("pull {:.3} s", took.as_secs_f64()));
                out.push(Measure::millis(key("pull"), took));
            }
            Err(why) => {
                log(&why);
                out.push(Measure::failed(key("pull"), "ms", why.clone()));
                let why = format!("not pulled: {why}");
                out.push(Measure::failed(key("pod start"), "ms", why.clone()));
                out.push(Measure::failed(key("create+start"), "ms", why));
                continue;
            }
        }
        let name = format!("bench-depth-{n}");
        match super::start_pod(&mut rt, handler, &name, &image.reference).await {
            Ok((pod, times)) => {
                log(&format!(
                    "pod start {:.0} ms (create+start {:.0} ms)",
                    times.total().as_secs_f64() * 1e3,
                    times.create_start.as_secs_f64() * 1e3
                ));
                out.push(Measure::millis(key("pod start"), times.total()));
                out.push(Measure::millis(key("create+start"), times.create_start));
                if let Err(why) = super::remove_pod(&mut rt, &pod.sandbox).await {
                    log(&why);
                }
            }
            Err(why) => {
                log(&why);
                out.push(Measure::failed(key("pod start"), "ms", why.clone()));
                out.push(Measure::failed(key("create+start"), "ms", why));
            }
        }
        if let Err(why) = super::remove_image(&mut images, &image.reference).await {
            log(&why);
        }
    }
    out
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
