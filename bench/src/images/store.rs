//! What of an image is on a runtime's disk, each runtime's store read its own way: rootstock's
//! blobs, layers, trees and file objects, containerd's content store and snapshots.

use std::path::PathBuf;

use sha2::{Digest as _, Sha256};

use super::{CONTAINERD_BLOBS, CONTAINERD_SNAPSHOTS, FileFact, FixtureImage};
use crate::{Kind, Target};

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
                    .flat_map(rootstock_objects)
                    .map(|o| root.join("objects").join(o)),
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
pub(super) fn missing_after_pull(
    t: &Target,
    image: &FixtureImage,
    snapshots: usize,
) -> Vec<String> {
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
            // Either name (the daemon's store schema decides which).
            missing.extend(
                image
                    .files
                    .iter()
                    .map(|f| rootstock_objects(f).map(|o| root.join("objects").join(o)))
                    .filter(|[v2, v1]| {
                        v2.symlink_metadata().is_err() && v1.symlink_metadata().is_err()
                    })
                    .map(|[v2, _]| v2.display().to_string()),
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
pub(super) fn snapshot_count(t: &Target) -> usize {
    match t.kind {
        Kind::Rootstock => 0,
        Kind::Containerd => std::fs::read_dir(t.root_dir.join(CONTAINERD_SNAPSHOTS))
            .map(|d| d.count())
            .unwrap_or(0),
    }
}

/// rootstock's object paths of a file, `<aa>/<rest>` under `objects/`, as a store of schema 2
/// and of schema 1 names it (so the bench can compare a daemon from before #18's BLAKE3 keys
/// with one after). Mirrors `rootstock_imagestore`'s `layout::object_key` (this crate does not
/// link the store): a hash over a version tag, the content's hash, and the inode metadata a
/// hard link shares. A drift shows as [`missing_after_pull`] finding no object after the first
/// pull.
fn rootstock_objects(f: &FileFact) -> [PathBuf; 2] {
    let meta = format!("{:o} {} {} {}\0", f.mode & 0o7777, f.uid, f.gid, f.mtime);
    let mut v2 = blake3::Hasher::new();
    v2.update(b"rootstock-object-v2\0");
    v2.update(&f.content);
    v2.update(meta.as_bytes());
    let mut v1 = Sha256::new();
    v1.update(b"rootstock-object-v1\0");
    v1.update(f.content_sha256);
    v1.update(meta.as_bytes());
    let path = |key: String| PathBuf::from(&key[..2]).join(&key[2..]);
    [
        path(v2.finalize().to_hex().to_string()),
        path(hex::encode(v1.finalize())),
    ]
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// The first few of a list of what is missing or left, and how many there are.
pub(super) fn summary(items: &[String]) -> String {
    const SHOWN: usize = 3;
    let mut s = items[..items.len().min(SHOWN)].join(", ");
    if items.len() > SHOWN {
        s.push_str(&format!(" and {} more", items.len() - SHOWN));
    }
    s
}
