//! The tree cache: fidelity against `umoci unpack`, hostile layers, EMLINK, leases and GC.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on failure

mod common;

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::tree::{Node, snapshot, xattrs};
use common::*;
use rootstock_imagestore::{ErrorKind, ImageStore};
use rootstock_testkit::fixtures::{
    Compression, Entry, ImageBuilder, LayerBuilder, RawEntry, busybox_image, sha256_digest,
    write_oci_layout,
};
use rootstock_testkit::registry::Registry;

fn fidelity_image() -> rootstock_testkit::fixtures::Image {
    let l1 = LayerBuilder::new()
        .add(Entry::dir("etc").mtime(1_600_000_000))
        .add(Entry::dir("usr").mode(0o755))
        .add(
            Entry::dir("usr/bin")
                .mode(0o750)
                .owner(0, 10)
                .mtime(1_500_000_000),
        )
        .add(Entry::dir("var"))
        .add(Entry::dir("var/lib"))
        .add(Entry::dir("var/lib/old"))
        .add(Entry::file("var/lib/old/data", "old data"))
        .add(Entry::dir("opt"))
        .add(Entry::file("opt/gone", "to be whited out"))
        .add(Entry::file("etc/passwd", "root:x:0:0::/root:/bin/sh\n"))
        .add(
            Entry::file("usr/bin/tool", vec![0x7f; 5000])
                .mode(0o755)
                .mtime(1_400_000_000),
        )
        .add(Entry::file("usr/bin/suid", "setuid").mode(0o4755))
        .add(
            Entry::file("usr/bin/sgid", "setgid")
                .mode(0o2711)
                .owner(0, 50),
        )
        .add(
            Entry::file("etc/odd", "odd mode")
                .mode(0o612)
                .owner(1000, 1001),
        )
        .add(
            Entry::file("etc/xattr", "with xattr")
                .xattr("user.color", "blue")
                .xattr("user.empty", ""),
        )
        .add(Entry::file("etc/dup1", "same bytes"))
        .add(Entry::file("etc/dup2", "same bytes"))
        .add(Entry::file("etc/empty1", ""))
        .add(Entry::file("etc/empty2", ""))
        .hardlink("etc/passwd-hl", "etc/passwd")
        .symlink("usr/bin/link", "tool")
        .symlink("etc/abs", "/etc/passwd")
        .add(Entry::fifo("var/fifo").mode(0o600))
        .add(Entry::dir("tmp").mode(0o1777))
        .build(Compression::Gzip);
    let l2 = LayerBuilder::new()
        .add(Entry::dir("opt"))
        .whiteout("opt/gone")
        .add(Entry::dir("var"))
        .add(Entry::dir("var/lib").mode(0o711))
        .add(Entry::file("var/lib/new", "new data"))
        .opaque("var/lib")
        .add(Entry::dir("usr"))
        .add(
            Entry::dir("usr/bin")
                .mode(0o750)
                .owner(0, 10)
                .mtime(1_500_000_000),
        )
        .hardlink("usr/bin/tool2", "usr/bin/tool")
        .add(Entry::dir("etc").mtime(1_600_000_001))
        .add(Entry::file("etc/passwd", "root:x:0:0::/root:/bin/ash\n").mtime(1_650_000_000))
        .add(
            Entry::file("etc/copy-of-tool", vec![0x7f; 5000])
                .mode(0o755)
                .mtime(1_400_000_000),
        )
        .build(Compression::Gzip);
    let l3 = LayerBuilder::new()
        .add(Entry::dir("usr"))
        .add(
            Entry::dir("usr/bin")
                .mode(0o750)
                .owner(0, 10)
                .mtime(1_500_000_000),
        )
        .whiteout("usr/bin/link")
        .add(
            Entry::dir("srv")
                .mode(0o700)
                .xattr("user.dir", "yes")
                .owner(33, 33),
        )
        .add(
            Entry::file("srv/index.html", "<h1>hi</h1>")
                .owner(33, 33)
                .mtime(1_700_000_000),
        )
        .add(Entry::dir("etc").mtime(1_600_000_002))
        .add(Entry::dir("etc/abs").mode(0o755))
        .add(Entry::file("etc/abs/inside", "dir replaced the symlink"))
        .add(Entry::dir("var"))
        .whiteout("var/lib")
        .build(Compression::Gzip);
    ImageBuilder::new().layer(l1).layer(l2).layer(l3).build()
}

#[tokio::test]
async fn the_flattened_tree_matches_umoci_unpack() {
    let image = fidelity_image();
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    write_oci_layout(&layout, &image, "fid");
    let bundle = dir.path().join("bundle");
    let out = std::process::Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:fid", layout.display()))
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "umoci: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let registry = Registry::start().await;
    registry.push("fid", "v1", &image).await;
    let store = ImageStore::open(&dir.path().join("store"), &insecure(&registry.host())).unwrap();
    let pulled = store
        .pull(&registry.image_ref("fid", "v1"), None)
        .await
        .unwrap();
    let tree = pulled.tree_path().unwrap().to_path_buf();

    let (ours, our_links) = snapshot(&tree);
    let (theirs, their_links) = snapshot(&bundle.join("rootfs"));
    let keys = |m: &BTreeMap<String, Node>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&ours), keys(&theirs), "paths differ");
    for (path, node) in &theirs {
        assert_eq!(&ours[path], node, "{path}");
    }
    assert_eq!(our_links, their_links, "hard-link groups differ");
    // The image's own hard links (also into a lower layer) are the only shared inodes.
    assert!(our_links.contains(&vec![
        "usr/bin/tool".to_string(),
        "usr/bin/tool2".to_string()
    ]));
    assert!(!ours.contains_key("opt/gone") && !ours.contains_key("var/lib"));
    println!(
        "fidelity: {} paths, {} hard-link groups match umoci",
        ours.len(),
        our_links.len()
    );
    assert!(store.verify().await.unwrap().is_clean());
}

/// One hostile case: layers, then whether the pull must fail.
struct Hostile {
    name: &'static str,
    layers: Vec<LayerBuilder>,
    fails: bool,
    diff_id_lie: bool,
}

#[tokio::test]
async fn hostile_layers_are_refused_or_contained_and_the_canary_is_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let canary = outside.join("canary");
    std::fs::write(&canary, "canary").unwrap();
    let canary_meta = std::fs::metadata(&canary).unwrap();
    let rel_canary = format!("../../../../../../../..{}", canary.display());
    let o = outside.display().to_string();
    let raw = |name: &str, data: &[u8]| RawEntry {
        name: name.as_bytes().to_vec(),
        mode: 0o644,
        data: data.to_vec(),
        ..Default::default()
    };
    let cases = vec![
        Hostile {
            name: "traversal",
            layers: vec![LayerBuilder::new().raw(raw(&rel_canary, b"pwned"))],
            fails: true,
            diff_id_lie: false,
        },
        Hostile {
            // Root-relative, as `tar -x` and umoci read it: contained in the tree.
            name: "absolute path",
            layers: vec![LayerBuilder::new().raw(raw(&canary.display().to_string(), b"pwned"))],
            fails: false,
            diff_id_lie: false,
        },
        Hostile {
            name: "symlink write-through within a layer",
            layers: vec![
                LayerBuilder::new()
                    .symlink("evil", &o)
                    .file("evil/canary", "pwned"),
            ],
            fails: true,
            diff_id_lie: false,
        },
        Hostile {
            name: "symlink write-through across layers",
            layers: vec![
                LayerBuilder::new().symlink("evil", &o),
                LayerBuilder::new().file("evil/canary", "pwned"),
            ],
            fails: false,
            diff_id_lie: false,
        },
        Hostile {
            name: "symlink then directory entry over it",
            layers: vec![
                LayerBuilder::new()
                    .symlink("d", &o)
                    .dir("d")
                    .file("d/canary", "x"),
            ],
            fails: false,
            diff_id_lie: false,
        },
        Hostile {
            name: "hard link escape",
            layers: vec![LayerBuilder::new().raw(RawEntry {
                name: b"h".to_vec(),
                entry_type: b'1',
                link_name: rel_canary.as_bytes().to_vec(),
                ..Default::default()
            })],
            fails: true,
            diff_id_lie: false,
        },
        Hostile {
            name: "hard link through a lower layer's symlink",
            layers: vec![
                LayerBuilder::new().symlink("s", &o),
                LayerBuilder::new().hardlink("h", "s/canary"),
            ],
            fails: true,
            diff_id_lie: false,
        },
        Hostile {
            name: "device node not allowed",
            layers: vec![
                LayerBuilder::new()
                    .dir("dev")
                    .add(Entry::block_device("dev/sda", 8, 0)),
            ],
            fails: false,
            diff_id_lie: false,
        },
        Hostile {
            name: "size lie",
            layers: vec![LayerBuilder::new().raw(RawEntry {
                size: Some(1 << 20),
                ..raw("big", b"abc")
            })],
            fails: true,
            diff_id_lie: false,
        },
        Hostile {
            name: "duplicate entries",
            layers: vec![
                LayerBuilder::new()
                    .file("a", "first")
                    .file("a", "second")
                    .dir("b")
                    .file("b/x", "x")
                    .file("b", "b is a file now"),
            ],
            fails: false,
            diff_id_lie: false,
        },
        Hostile {
            name: "whiteout pointing outside",
            layers: vec![LayerBuilder::new().raw(raw("../.wh.canary", b""))],
            fails: true,
            diff_id_lie: false,
        },
        Hostile {
            name: "whiteout through a lower layer's symlink",
            layers: vec![
                LayerBuilder::new().symlink("evil", &o),
                LayerBuilder::new().whiteout("evil/canary"),
            ],
            fails: false,
            diff_id_lie: false,
        },
        Hostile {
            name: "diff_id that does not match the layer",
            layers: vec![LayerBuilder::new().file("x", "x")],
            fails: true,
            diff_id_lie: true,
        },
        Hostile {
            name: "trusted.overlay xattrs",
            layers: vec![
                LayerBuilder::new()
                    .add(Entry::dir("o").xattr("trusted.overlay.opaque", "y"))
                    .add(Entry::file("o/f", "f").xattr("trusted.overlay.redirect", "/etc")),
            ],
            fails: false,
            diff_id_lie: false,
        },
    ];
    let registry = Registry::start().await;
    let store = ImageStore::open(&dir.path().join("store"), &insecure(&registry.host())).unwrap();
    for (i, case) in cases.into_iter().enumerate() {
        let mut builder = ImageBuilder::new();
        for l in &case.layers {
            builder = builder.layer(l.build(Compression::Gzip));
        }
        if case.diff_id_lie {
            builder = builder.diff_id_override(0, &sha256_digest(b"popular base"));
        }
        let image = builder.build();
        let tag = format!("t{i}");
        registry.push("hostile", &tag, &image).await;
        let result = store.pull(&registry.image_ref("hostile", &tag), None).await;
        let after = std::fs::metadata(&canary).unwrap();
        assert_eq!(
            std::fs::read_to_string(&canary).unwrap(),
            "canary",
            "{}",
            case.name
        );
        assert_eq!(after.mtime(), canary_meta.mtime(), "{}", case.name);
        assert_eq!(
            std::fs::read_dir(&outside).unwrap().count(),
            1,
            "{}",
            case.name
        );
        match result {
            Err(e) => {
                assert!(case.fails, "{}: refused: {e}", case.name);
                assert_eq!(
                    e.kind(),
                    ErrorKind::FailedPrecondition,
                    "{}: {e}",
                    case.name
                );
                println!("refused {:45} {e}", case.name);
                assert!(store.list().is_empty(), "{}", case.name);
                assert!(
                    store.metadata().layers().unwrap().is_empty(),
                    "{}",
                    case.name
                );
                assert!(
                    store.metadata().trees().unwrap().is_empty(),
                    "{}",
                    case.name
                );
            }
            Ok(img) => {
                assert!(!case.fails, "{}: was accepted", case.name);
                let tree = img.tree_path().unwrap();
                match case.name {
                    "symlink write-through across layers" => {
                        assert!(tree.join("evil").symlink_metadata().unwrap().is_dir());
                        assert_eq!(
                            std::fs::read_to_string(tree.join("evil/canary")).unwrap(),
                            "pwned"
                        );
                    }
                    "device node not allowed" => assert!(!tree.join("dev/sda").exists()),
                    "absolute path" => {
                        let inside = tree.join(canary.strip_prefix("/").unwrap());
                        assert_eq!(std::fs::read_to_string(inside).unwrap(), "pwned");
                    }
                    "duplicate entries" => {
                        assert_eq!(std::fs::read_to_string(tree.join("a")).unwrap(), "second");
                        assert_eq!(
                            std::fs::read_to_string(tree.join("b")).unwrap(),
                            "b is a file now"
                        );
                    }
                    "trusted.overlay xattrs" => {
                        assert!(xattrs(&tree.join("o")).is_empty());
                        assert!(xattrs(&tree.join("o/f")).is_empty());
                    }
                    _ => {}
                }
                println!("contained {:45} ok", case.name);
                store.remove(img.id.as_str()).await.unwrap();
            }
        }
    }
    assert!(store.verify().await.unwrap().is_clean());
    assert_store_empty(store.root());
}

fn count_files(dir: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                n += 1;
            }
        }
    }
    n
}

fn assert_store_empty(root: &Path) {
    assert_eq!(count_files(&root.join("objects")), 0, "objects left");
    assert_eq!(
        std::fs::read_dir(root.join("layers")).unwrap().count(),
        0,
        "layers left"
    );
    assert_eq!(
        std::fs::read_dir(root.join("trees")).unwrap().count(),
        0,
        "trees left"
    );
    assert_eq!(
        std::fs::read_dir(root.join("tmp")).unwrap().count(),
        0,
        "tmp left"
    );
}

#[tokio::test]
async fn an_object_with_64999_links_falls_back_to_a_private_copy() {
    let content = vec![0x42u8; 10_000];
    let first = ImageBuilder::new()
        .layer(
            LayerBuilder::new()
                .file("popular", content.clone())
                .build(Compression::Gzip),
        )
        .build();
    let second = ImageBuilder::new()
        .layer(
            LayerBuilder::new()
                .file("other", "other")
                .file("popular", content.clone())
                .build(Compression::Gzip),
        )
        .build();
    let registry = Registry::start().await;
    registry.push("emlink", "a", &first).await;
    registry.push("emlink", "b", &second).await;
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&dir.path().join("store"), &insecure(&registry.host())).unwrap();
    let a = store
        .pull(&registry.image_ref("emlink", "a"), None)
        .await
        .unwrap();
    let object = a.tree_path().unwrap().join("popular");
    let links = dir.path().join("links");
    std::fs::create_dir(&links).unwrap();
    let mut made = 0;
    while std::fs::metadata(&object).unwrap().nlink() < 65_000 {
        std::fs::hard_link(&object, links.join(made.to_string())).unwrap();
        made += 1;
    }
    assert!(std::fs::hard_link(&object, links.join("one-more")).is_err());
    let b = store
        .pull(&registry.image_ref("emlink", "b"), None)
        .await
        .unwrap();
    let copy = b.tree_path().unwrap().join("popular");
    assert_eq!(std::fs::read(&copy).unwrap(), content);
    assert_ne!(
        std::fs::metadata(&copy).unwrap().ino(),
        std::fs::metadata(&object).unwrap().ino()
    );
    println!(
        "EMLINK: object had {} names ({made} added); second image got a private copy",
        65_000
    );
    std::fs::remove_dir_all(&links).unwrap();
    assert!(store.verify().await.unwrap().is_clean());
}

#[tokio::test]
async fn a_leased_tree_survives_removal_until_released_then_everything_goes() {
    let registry = Registry::start().await;
    let image = busybox_image().build();
    registry.push("leased", "v1", &image).await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let store = ImageStore::open(&root, &insecure(&registry.host())).unwrap();
    let empty = store.fs_usage();
    let img = store
        .pull(&registry.image_ref("leased", "v1"), None)
        .await
        .unwrap();
    let tree: PathBuf = store
        .lease_tree(&registry.image_ref("leased", "v1"), "ctr-1")
        .await
        .unwrap();
    assert_eq!(Some(tree.as_path()), img.tree_path());
    store.remove(img.id.as_str()).await.unwrap();
    assert!(
        tree.join("bin/busybox").is_file(),
        "the lease keeps the tree"
    );
    drop(store);
    // The lease is persisted: a restart keeps the tree too.
    let store = ImageStore::open(&root, &insecure(&registry.host())).unwrap();
    assert!(tree.join("bin/busybox").is_file());
    assert!(store.verify().await.unwrap().is_clean());
    store.release("ctr-1").await.unwrap();
    store.release("ctr-1").await.unwrap();
    assert!(!tree.exists());
    assert_store_empty(&root);
    assert_eq!(store.fs_usage().inodes_used, empty.inodes_used);
    assert!(matches!(
        store
            .lease_tree("nothing-here", "x")
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    ));
}

#[tokio::test]
async fn gc_racing_pulls_leaves_both_images_consistent() {
    let registry = Registry::start().await;
    let kept = busybox_image().build();
    let churned = busybox_image()
        .layer(
            LayerBuilder::new()
                .file("extra", "extra")
                .build(Compression::Gzip),
        )
        .build();
    registry.push("race", "kept", &kept).await;
    registry.push("race", "churn", &churned).await;
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&dir.path().join("store"), &insecure(&registry.host())).unwrap();
    let (a, b) = (store.clone(), store.clone());
    let kept_ref = registry.image_ref("race", "kept");
    let churn_ref = registry.image_ref("race", "churn");
    let puller = tokio::spawn(async move {
        for _ in 0..8 {
            a.pull(&kept_ref, None).await.unwrap();
        }
    });
    let remover = tokio::spawn(async move {
        for _ in 0..8 {
            b.pull(&churn_ref, None).await.unwrap();
            b.remove(&churn_ref).await.unwrap();
        }
    });
    puller.await.unwrap();
    remover.await.unwrap();
    let img = store
        .status(&registry.image_ref("race", "kept"))
        .unwrap()
        .unwrap();
    assert!(img.tree_path().unwrap().join("bin/busybox").is_file());
    assert!(
        store
            .status(&registry.image_ref("race", "churn"))
            .unwrap()
            .is_none()
    );
    let report = store.verify().await.unwrap();
    assert!(report.is_clean(), "{report}");
    store.remove(img.id.as_str()).await.unwrap();
    assert_store_empty(store.root());
}

#[tokio::test]
async fn keep_layer_blobs_keeps_the_compressed_blobs_beside_the_trees() {
    let registry = Registry::start().await;
    let image = busybox_image().build();
    registry.push("kept", "v1", &image).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = insecure(&registry.host());
    config.keep_layer_blobs = true;
    let store = ImageStore::open(&dir.path().join("store"), &config).unwrap();
    let img = store
        .pull(&registry.image_ref("kept", "v1"), None)
        .await
        .unwrap();
    for layer in &image.layers {
        assert!(
            store
                .root()
                .join("blobs/sha256")
                .join(&layer.digest[7..])
                .is_file()
        );
    }
    assert!(img.tree_path().unwrap().join("etc/passwd").is_file());
    assert!(store.verify().await.unwrap().is_clean());
    store.remove(img.id.as_str()).await.unwrap();
    assert_eq!(
        std::fs::read_dir(store.root().join("blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
    assert_store_empty(store.root());
}

/// Start-up recovery gives back the leases of containers that are gone, and only those.
#[tokio::test]
async fn reconcile_leases_releases_only_leases_whose_holder_is_gone() {
    let registry = Registry::start().await;
    let image = busybox_image().build();
    registry.push("reconciled", "v1", &image).await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let store = ImageStore::open(&root, &insecure(&registry.host())).unwrap();
    let reference = registry.image_ref("reconciled", "v1");
    let img = store.pull(&reference, None).await.unwrap();
    let tree = store.lease_tree(&reference, "live-1").await.unwrap();
    store.lease_tree(&reference, "gone-1").await.unwrap();
    store.remove(img.id.as_str()).await.unwrap();

    let live = HashSet::from(["live-1".to_owned()]);
    let done = store.reconcile_leases(&live).await.unwrap();
    assert_eq!(done.released, vec!["gone-1".to_owned()]);
    assert!(done.failed.is_empty(), "{done:?}");
    assert!(
        tree.join("bin/busybox").is_file(),
        "the live lease keeps the tree"
    );
    // Idempotent: nothing more to give back while the holder lives.
    let again = store.reconcile_leases(&live).await.unwrap();
    assert!(again.released.is_empty(), "{again:?}");

    let done = store.reconcile_leases(&HashSet::new()).await.unwrap();
    assert_eq!(done.released, vec!["live-1".to_owned()]);
    assert!(!tree.exists(), "the last lease gone, the tree goes");
    assert_store_empty(&root);
}
