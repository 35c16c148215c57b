//! Issue 19, disk full: the daemon's root dir on a small size-limited tmpfs (its own file
//! system, with exact block accounting), filled with a ballast file so that an image does
//! not fit. The pull answers `ResourceExhausted` naming the root dir and leaves nothing of
//! itself (same files, same free space, `ImageFsInfo` equal to a walk of the store); once
//! the ballast is gone the same pull succeeds. A container writing until its writable
//! layer (on the same disk) fills it cannot damage a store object (`store verify`), and the
//! daemon restarts clean on the full disk.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeSet, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use common::*;
use k8s_cri::v1::*;
use nix::sys::signal::Signal;
use rootstock_test_e2e::daemon::{Daemon, run_rootstock};
use rootstock_test_e2e::fixtures::{self, Compression, ImageBuilder, LayerBuilder, noise};
use rootstock_test_e2e::registry::Registry;

/// The small disk.
const DISK_MIB: u64 = 64;
/// Free space left beside the ballast: less than the big image needs unpacked.
const LEFT_MIB: u64 = 12;

/// The daemon, stopped, its root dir replaced by a fresh tmpfs of `DISK_MIB`, started again
/// on it. The tmpfs is detached with the daemon's other mounts when the daemon is dropped.
async fn daemon_on_small_disk(registry: &Registry) -> Daemon {
    let config = format!(
        "[images.registries.\"{}\"]\ninsecure = true\n",
        registry.host()
    );
    let mut daemon = Daemon::start_with_config(&config).await;
    daemon
        .signal_and_wait(Signal::SIGTERM, Duration::from_secs(15))
        .await
        .expect("daemon stops");
    std::fs::remove_dir_all(&daemon.root_dir).unwrap();
    std::fs::create_dir(&daemon.root_dir).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &daemon.root_dir,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some(format!("size={DISK_MIB}m,mode=0700").as_str()),
    )
    .expect("mounting the small tmpfs");
    daemon.start_again().await;
    daemon
}

fn free_bytes(dir: &Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(dir).unwrap();
    st.blocks_free() * st.fragment_size()
}

/// Fills the disk but `LEFT_MIB`.
fn write_ballast(root: &Path) {
    let size = free_bytes(root) - (LEFT_MIB << 20);
    let f = std::fs::File::create(root.join("ballast")).unwrap();
    // tmpfs has no fallocate-free reservation: write it.
    let chunk = vec![0x5au8; 1 << 20];
    let mut w = std::io::BufWriter::new(f);
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        std::io::Write::write_all(&mut w, &chunk[..n]).unwrap();
        left -= n as u64;
    }
    std::io::Write::flush(&mut w).unwrap();
}

/// Every path under the root but the ballast and the metadata database (whose file may grow
/// by what a failed pull wrote into it and deleted again).
fn store_paths(root: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            if rel == "ballast" || rel == "meta.redb" {
                continue;
            }
            if entry.file_type().unwrap().is_dir() {
                stack.push(path);
            }
            out.insert(rel);
        }
    }
    out
}

/// What the store occupies, counted as `ImageFsInfo` promises: blocks of every inode under
/// its directories once (hard links once), plus the metadata database.
fn walked_usage(root: &Path) -> u64 {
    let mut seen = HashSet::new();
    let mut bytes = 0;
    let mut stack: Vec<_> = ["blobs", "objects", "layers", "trees", "tmp"]
        .iter()
        .map(|d| root.join(d))
        .collect();
    while let Some(dir) = stack.pop() {
        let m = std::fs::symlink_metadata(&dir).unwrap();
        if seen.insert(m.ino()) {
            bytes += m.blocks() * 512;
        }
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let m = entry.metadata().unwrap();
            if m.is_dir() {
                stack.push(entry.path());
            } else if seen.insert(m.ino()) {
                bytes += m.blocks() * 512;
            }
        }
    }
    bytes + std::fs::metadata(root.join("meta.redb")).unwrap().blocks() * 512
}

async fn image_fs_used(daemon: &Daemon) -> u64 {
    let fs = daemon
        .images()
        .await
        .image_fs_info(ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    fs.image_filesystems[0].used_bytes.as_ref().unwrap().value
}

async fn pull(daemon: &Daemon, image: &str) -> Result<String, tonic::Status> {
    rootstock_test_e2e::cri::try_pull(&mut daemon.images().await, image).await
}

/// `rootstock store verify` (which takes the store alone: the daemon is stopped for it and
/// started again).
async fn store_verify(daemon: &mut Daemon) -> (bool, String) {
    daemon
        .signal_and_wait(Signal::SIGTERM, Duration::from_secs(15))
        .await
        .expect("daemon stops");
    let mut args = daemon.path_args();
    args.extend(["store".to_owned(), "verify".to_owned()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_rootstock(&refs, Duration::from_secs(120));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    daemon.start_again().await;
    (out.status.success(), text)
}

/// Three layers of 8 MiB of noise (stored uncompressed by gzip): 24 MiB unpacked.
fn big_image() -> fixtures::Image {
    let mut image = ImageBuilder::new();
    for l in 0..3u64 {
        let mut layer = LayerBuilder::new().dir(&format!("big{l}"));
        for f in 0..8u64 {
            layer = layer.file(&format!("big{l}/f{f}"), noise(l * 100 + f + 1, 1 << 20));
        }
        image = image.layer(layer.build(Compression::Gzip));
    }
    image.build()
}

/// Acceptance 4 of #19.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_that_does_not_fit_fails_resource_exhausted_and_leaves_nothing() {
    let registry = Registry::start().await;
    registry
        .push("e2e/busybox", "v1", &fixtures::busybox_image().build())
        .await;
    registry.push("e2e/big", "v1", &big_image()).await;
    let busybox = registry.image_ref("e2e/busybox", "v1");
    let big = registry.image_ref("e2e/big", "v1");
    let mut daemon = daemon_on_small_disk(&registry).await;
    let root = daemon.root_dir.clone();
    pull(&daemon, &busybox).await.expect("the small image fits");

    write_ballast(&root);
    let paths = store_paths(&root);
    let free = free_bytes(&root);
    let db_blocks = std::fs::metadata(root.join("meta.redb")).unwrap().blocks();
    let err = pull(&daemon, &big).await.expect_err("24 MiB into 12 MiB");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains(&root.display().to_string()),
        "the message names the disk: {}",
        err.message()
    );

    // Nothing partial: the same files, the same free space (but what the database grew by),
    // and ImageFsInfo exact.
    assert_eq!(
        store_paths(&root),
        paths,
        "a partial layer, tree or object stayed"
    );
    let db_growth = (std::fs::metadata(root.join("meta.redb")).unwrap().blocks() - db_blocks) * 512;
    assert_eq!(free_bytes(&root) + db_growth, free, "space not given back");
    assert_eq!(image_fs_used(&daemon).await, walked_usage(&root));
    let (ok, text) = store_verify(&mut daemon).await;
    assert!(ok, "{text}");

    // Space freed: the same pull works, and the usage follows.
    std::fs::remove_file(root.join("ballast")).unwrap();
    pull(&daemon, &big)
        .await
        .expect("the pull after freeing space");
    assert_eq!(image_fs_used(&daemon).await, walked_usage(&root));
    let (ok, text) = store_verify(&mut daemon).await;
    assert!(ok, "{text}");
    // #20: one info line per finished pull, with its size, time and rate.
    let log = daemon.log();
    let line = log
        .lines()
        .find(|l| l.contains(" INFO ") && l.contains(&format!("pulled {big}: ")))
        .unwrap_or_else(|| panic!("no finished-pull line for {big} in:\n{log}"));
    assert!(
        line.contains(" MB in ") && line.contains(" MB/s)") && line.contains("layers=3"),
        "{line}"
    );
}

/// #19: a container that writes until its writable layer (under the same root dir) fills
/// the disk, first into a copy of an image file, cannot change a store object; the daemon
/// still answers, and restarts clean on the full disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_filling_the_disk_cannot_corrupt_store_objects() {
    let registry = Registry::start().await;
    registry
        .push("e2e/busybox", "v1", &fixtures::busybox_image().build())
        .await;
    let busybox = registry.image_ref("e2e/busybox", "v1");
    let mut daemon = daemon_on_small_disk(&registry).await;
    let image = pull(&daemon, &busybox).await.unwrap();
    loopback_network(&daemon).await;
    let mut rt = daemon.runtime().await;
    let pod = pod_config("diskfull", NamespaceMode::Container);
    let pod_id = run_pod(&mut rt, pod.clone()).await.unwrap();
    // Appending to an image file copies it up first; the object it was linked to must stay
    // as it is. Then plain new data until the disk is full.
    let filler = container_config(
        "filler",
        &image,
        &[
            "sh",
            "-c",
            "cat /dev/zero >> /etc/passwd; cat /dev/zero > /fill; exit 3",
        ],
    );
    let id = start_container(&mut rt, &pod_id, &pod, filler).await;
    let status = wait_exited(&mut rt, &id, Duration::from_secs(60)).await;
    assert_eq!(status.exit_code, 3, "{status:?}");
    assert!(
        free_bytes(&daemon.root_dir) < 1 << 20,
        "the disk is full: {} bytes free",
        free_bytes(&daemon.root_dir)
    );
    let (ok, text) = store_verify(&mut daemon).await;
    assert!(ok, "a store object changed: {text}");

    // The daemon's own writes on the full disk (the tree lease in the store's database, the
    // writable layer): CreateContainer works or fails cleanly, naming the disk when it is
    // the store's; after a SIGKILL the daemon restarts on the full disk with consistent
    // state, and once space is freed the same call works.
    let mut rt = daemon.runtime().await;
    let second = container_config("second", &image, &["sleep", "3600"]);
    let first_try = create_container(&mut rt, &pod_id, &pod, second.clone()).await;
    if let Err(e) = &first_try {
        assert!(
            matches!(
                e.code(),
                tonic::Code::ResourceExhausted | tonic::Code::Internal
            ),
            "{e:?}"
        );
    }
    daemon.kill_and_restart().await;
    let mut rt = daemon.runtime().await;
    let status = container_status(&mut rt, &id).await;
    assert_eq!(status.exit_code, 3, "{status:?}");
    let listed: Vec<String> = list_containers(&mut rt)
        .await
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert!(listed.contains(&id), "{listed:?}");
    assert_eq!(
        listed.len(),
        1 + usize::from(first_try.is_ok()),
        "{listed:?}"
    );
    rt.remove_container(RemoveContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    assert!(
        free_bytes(&daemon.root_dir) > 8 << 20,
        "removing the container gave its layer's space back"
    );
    let second_id = match first_try {
        Ok(id) => id,
        Err(_) => create_container(&mut rt, &pod_id, &pod, second)
            .await
            .expect("the same CreateContainer once space is free"),
    };
    rt.remove_container(RemoveContainerRequest {
        container_id: second_id,
    })
    .await
    .unwrap();
    stop_pod(&mut rt, &pod_id).await;
    remove_pod(&mut rt, &pod_id).await;
    let (ok, text) = store_verify(&mut daemon).await;
    assert!(ok, "{text}");
}
