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

mod build;
mod store;

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{Ctx, Measure, Target};
use build::blocking;
use store::{missing_after_pull, snapshot_count, summary};

pub use build::{FileFact, FixtureImage, Fixtures, prepare};
pub use store::leftovers;

const PULL_REPO: &str = "bench/pull";
const DISK_REPO: &str = "bench/disk";
const DEPTH_REPO: &str = "bench/depth";
const SMALL_REPO: &str = "bench/small";
/// Size of each file of the small-file image.
const SMALL_FILE_BYTES: usize = 1024;
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
    let label = format!(
        "cold pull ({:.0} MiB, {} layers)",
        image.size as f64 / MIB,
        image.layer_digests.len()
    );
    cold_pulls(t, ctx, image, &label).await
}

/// (d') Cold pull of the one-layer image of `opts.small_files` files of 1 KiB, as (d), with
/// the files unpacked per second at the median (#18: per-file costs of the unpack).
pub async fn small_files(t: &Target, ctx: &Ctx) -> Vec<Measure> {
    let image = &ctx.fixtures.small;
    let files = image.files.len();
    let label = format!("small-file pull ({files} x 1 KiB, 1 layer)");
    let mut out = cold_pulls(t, ctx, image, &label).await;
    let rate = match &out.first().map(|m| &m.outcome) {
        Some(crate::Outcome::Value(median)) => Measure::value(
            format!("{label}: files/s at median"),
            "files/s",
            files as f64 / median,
        ),
        _ => Measure::failed(
            format!("{label}: files/s at median"),
            "files/s",
            "no median",
        ),
    };
    out.push(rate);
    out
}

/// `opts.pull_runs` cold pulls of `image`: median, min, max and throughput, keyed by `label`.
async fn cold_pulls(t: &Target, ctx: &Ctx, image: &FixtureImage, label: &str) -> Vec<Measure> {
    let mib = image.size as f64 / MIB;
    let label = label.to_owned();
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
