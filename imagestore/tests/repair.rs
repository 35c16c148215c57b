//! `store verify --repair` and `store gc` on a real store: objects changed on disk or deleted
//! come back from a layer view, a kept blob or the registry, and the image tree is then
//! exactly what it was (content, metadata, hard-link groups); both refuse a locked store.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on failure

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::tree::{self, Node};
use common::*;
use rootstock_imagestore::{ErrorKind, ImageStore, ImagesConfig, offline, repair, verify};
use rootstock_testkit::files::links_of;
use rootstock_testkit::fixtures::{Compression, Entry, ImageBuilder, LayerBuilder, noise};
use rootstock_testkit::registry::Registry;

/// Layers with what render treats specially: duplicates (private copies), hard links within
/// and across layers, whiteouts, an opaque directory, a replaced file, odd modes, xattrs.
fn image() -> rootstock_testkit::fixtures::Image {
    let l1 = LayerBuilder::new()
        .add(Entry::dir("etc"))
        .add(Entry::file("etc/passwd", "root:x:0:0::/root:/bin/sh\n"))
        .add(Entry::file("etc/dup1", "same bytes"))
        .add(Entry::file("etc/dup2", "same bytes"))
        .add(Entry::file("etc/empty", ""))
        .add(Entry::file("etc/odd", "odd").mode(0o4711).owner(7, 8))
        .add(Entry::file("etc/xattr", "x").xattr("user.color", "blue"))
        .hardlink("etc/passwd-hl", "etc/passwd")
        .add(Entry::dir("bin"))
        .add(Entry::file("bin/tool", noise(1, 70_000)).mode(0o755))
        .add(Entry::dir("var"))
        .add(Entry::file("var/old", "old"))
        .add(Entry::file("gone", "whited out"))
        .build(Compression::Gzip);
    let l2 = LayerBuilder::new()
        .whiteout("gone")
        .add(Entry::dir("var"))
        .opaque("var")
        .add(Entry::file("var/new", "new"))
        .add(Entry::dir("etc"))
        .add(Entry::file("etc/passwd", "root:x:0:0::/root:/bin/ash\n"))
        .add(Entry::file("etc/dup3", "same bytes"))
        .add(Entry::dir("bin"))
        .hardlink("bin/tool2", "bin/tool")
        .build(Compression::Zstd);
    ImageBuilder::new().layer(l1).layer(l2).build()
}

/// The tree below `root` as the comparisons see it, directory mtimes left out (repair may
/// recreate a directory; what it must restore is the files).
fn snapshot(root: &Path) -> (BTreeMap<String, Node>, BTreeSet<Vec<String>>) {
    let (mut nodes, links) = tree::snapshot(root);
    for n in nodes.values_mut().filter(|n| n.kind == "dir") {
        n.mtime = 0;
    }
    (nodes, links)
}

/// Every object file of the store.
fn objects(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for fan in std::fs::read_dir(root.join("objects")).unwrap() {
        for obj in std::fs::read_dir(fan.unwrap().path()).unwrap() {
            out.push(obj.unwrap().path());
        }
    }
    out.sort();
    out
}

/// A store with the image pulled and closed (as after a daemon's clean stop); returns the
/// store root and the tree.
async fn pulled(dir: &Path, registry: &Registry, config: &ImagesConfig) -> (PathBuf, PathBuf) {
    registry.push("repair", "v1", &image()).await;
    let root = dir.join("store");
    let store = ImageStore::open(&root, config).unwrap();
    let img = store
        .pull(&registry.image_ref("repair", "v1"), None)
        .await
        .unwrap();
    let tree = img.tree_path().unwrap().to_path_buf();
    store.close().await.unwrap();
    drop(store);
    (root, tree)
}

/// Every object damaged: even ones changed in place (all their links see it), odd ones
/// deleted everywhere (object, layer views, trees).
fn damage_all(root: &Path) -> usize {
    let objs = objects(root);
    assert!(objs.len() >= 8, "{objs:?}");
    for (i, obj) in objs.iter().enumerate() {
        if i % 2 == 0 {
            let mut f = std::fs::OpenOptions::new().append(true).open(obj).unwrap();
            f.write_all(b"rot").unwrap();
        } else {
            let ino = std::fs::metadata(obj).unwrap().ino();
            for link in links_of(root, ino) {
                std::fs::remove_file(link).unwrap();
            }
        }
    }
    objs.len()
}

#[tokio::test]
async fn every_object_comes_back_from_the_registry_and_the_tree_is_as_before() {
    let registry = Registry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = insecure(&registry.host());
    let (root, tree) = pulled(dir.path(), &registry, &config).await;
    let before = snapshot(&tree);
    assert!(
        before
            .1
            .contains(&vec!["bin/tool".into(), "bin/tool2".into()]),
        "{:?}",
        before.1
    );

    let damaged = damage_all(&root);
    // And a private copy in the tree (its own inode, not an object's).
    let dup2 = tree.join("etc/dup2");
    assert_eq!(std::fs::metadata(&dup2).unwrap().nlink(), 1);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&dup2)
        .unwrap();
    f.write_all(b"rot").unwrap();
    drop(f);
    let report = verify::verify_offline(&root).unwrap();
    assert!(!report.is_clean());
    assert_ne!(snapshot(&tree), before);

    let report = repair::repair_offline(&root, &config).await.unwrap();
    println!("{report}");
    assert!(report.unrepaired.is_empty(), "{report}");
    assert_eq!(report.repaired.len(), damaged, "{report}");
    assert!(
        report.repaired.iter().all(|r| r.contains("re-fetched")),
        "{report}"
    );
    assert!(report.after.is_clean(), "{report}");
    assert_eq!(snapshot(&tree), before, "the tree differs after repair");
    assert!(verify::verify_offline(&root).unwrap().is_clean());
    // A repaired store serves pulls and opens cleanly.
    let store = ImageStore::open(&root, &config).unwrap();
    assert!(store.verify().await.unwrap().is_clean());
}

#[tokio::test]
async fn kept_layer_blobs_repair_without_the_registry() {
    let registry = Registry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = insecure(&registry.host());
    config.keep_layer_blobs = true;
    let (root, tree) = pulled(dir.path(), &registry, &config).await;
    let before = snapshot(&tree);
    drop(registry);

    damage_all(&root);
    let report = repair::repair_offline(&root, &config).await.unwrap();
    assert!(report.unrepaired.is_empty(), "{report}");
    assert!(
        report.repaired.iter().all(|r| r.contains("kept blob")),
        "{report}"
    );
    assert!(report.after.is_clean(), "{report}");
    assert_eq!(snapshot(&tree), before);
}

#[tokio::test]
async fn a_deleted_object_file_comes_back_from_its_layer_view_with_its_inode() {
    let registry = Registry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = insecure(&registry.host());
    let (root, tree) = pulled(dir.path(), &registry, &config).await;
    drop(registry); // not needed: the layer view still has the inode
    let passwd = tree.join("etc/passwd");
    let ino = std::fs::metadata(&passwd).unwrap().ino();
    let obj = objects(&root)
        .into_iter()
        .find(|o| std::fs::metadata(o).unwrap().ino() == ino)
        .unwrap();
    std::fs::remove_file(&obj).unwrap();

    let report = repair::repair_offline(&root, &config).await.unwrap();
    assert_eq!(report.repaired.len(), 1, "{report}");
    assert!(report.repaired[0].contains("layer view"), "{report}");
    assert_eq!(report.paths_fixed, 0, "{report}");
    assert!(report.after.is_clean(), "{report}");
    assert_eq!(std::fs::metadata(&obj).unwrap().ino(), ino);
    assert_eq!(std::fs::metadata(&passwd).unwrap().ino(), ino);
}

#[tokio::test]
async fn an_unrepairable_object_is_reported_and_the_command_fails() {
    let registry = Registry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = insecure(&registry.host());
    let (root, _tree) = pulled(dir.path(), &registry, &config).await;
    drop(registry);
    damage_all(&root);
    let report = repair::repair_offline(&root, &config).await.unwrap();
    assert!(!report.unrepaired.is_empty(), "{report}");
    assert!(!report.after.is_clean(), "{report}");
}

#[tokio::test]
async fn gc_collects_offline_and_both_refuse_a_locked_store() {
    let registry = Registry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = insecure(&registry.host());
    let (root, tree) = pulled(dir.path(), &registry, &config).await;
    // Garbage a crash could leave: an object nothing links, a tree directory without record.
    let stray = root.join("objects/00").join("0".repeat(62));
    std::fs::write(&stray, vec![7u8; 100_000]).unwrap();
    let orphan_tree = root.join("trees").join("f".repeat(64));
    std::fs::create_dir(&orphan_tree).unwrap();
    std::fs::write(orphan_tree.join("file"), "x").unwrap();

    let lock = offline::lock_root(&root).unwrap();
    let err = offline::gc_offline(&root, &config).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    let err = repair::repair_offline(&root, &config).await.unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");
    assert!(stray.exists());
    drop(lock);

    let report = offline::gc_offline(&root, &config).await.unwrap();
    println!("{report}");
    assert!(!stray.exists() && !orphan_tree.exists());
    assert!(report.bytes_after < report.bytes_before, "{report}");
    assert!(tree.join("etc/passwd").exists(), "gc took the image's tree");
    assert!(verify::verify_offline(&root).unwrap().is_clean());
}
