//! What of an image is on a runtime's disk, each runtime's store read its own way: rootstock's
//! blobs, layers, trees and file objects, containerd's content store and snapshots.

use std::path::PathBuf;


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
pub(super) fn snapshot_count(t: &Target) -> usize {
    match t.kind {
        Kind::Rootstock => 0,
        Kind::Containerd => std::fs::read_dir(t.root_dir.join(CONTAINERD_SNAPSHOTS))
            .map(|d| d.count())
            .unwrap_or(0),
    }
}

/// rootstock's object path of a file, `<aa>/<rest>` under `objects/`. Mirrors
/// `rootstock_imagestore`'s `layout::object_key` (this crate does not link the store): BLAKE3
/// over a version tag, the content's BLAKE3, and the inode metadata a hard link shares (store
/// schema 2). A drift shows as [`missing_after_pull`] finding no object after the first pull.
fn rootstock_object(f: &FileFact) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"rootstock-object-v2\0");
    h.update(&f.content);
    h.update(format!("{:o} {} {} {}\0", f.mode & 0o7777, f.uid, f.gid, f.mtime).as_bytes());
    let key = h.finalize().to_hex();
    format!("{}/{}", &key[..2], &key[2..])
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
