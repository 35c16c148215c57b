//! Crashes at every failpoint: a child process (this test binary re-run on the ignored
//! `crash_helper` test) pulls or removes with `ROOTSTOCK_FAILPOINT` set and SIGKILLs itself
//! there; the parent then reopens the store, `verify` (offline, under the root lock) must be
//! clean, and the same pull must succeed.

// The crash points exist only with the `failpoints` feature (`make test` turns it on).
#![cfg(feature = "failpoints")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on failure

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;

use common::*;
use rootstock_imagestore::verify::verify_offline;
use rootstock_imagestore::{ImageStore, failpoint};
use rootstock_testkit::fixtures::{busybox_image, crash_images};
use rootstock_testkit::registry::Registry;

/// Run by the parent in a child process; does nothing when run directly.
#[tokio::test]
#[ignore = "helper of a_kill_at_every_failpoint_leaves_a_store_that_verifies_and_pulls"]
async fn crash_helper() {
    let (Ok(root), Ok(host), Ok(reference), Ok(mode)) = (
        std::env::var("CRASH_STORE"),
        std::env::var("CRASH_HOST"),
        std::env::var("CRASH_REF"),
        std::env::var("CRASH_MODE"),
    ) else {
        return;
    };
    let store = ImageStore::open(Path::new(&root), &insecure(&host)).unwrap();
    match mode.as_str() {
        "pull" => {
            store.pull(&reference, None).await.unwrap();
        }
        _ => store.remove(&reference).await.unwrap(),
    }
    // Reaching here means the failpoint was never hit: the parent notices the clean exit.
}

#[tokio::test]
async fn a_kill_at_every_failpoint_leaves_a_store_that_verifies_and_pulls() {
    let registry = Registry::start().await;
    let (image, other) = crash_images();
    registry.push("crash", "v1", &image).await;
    registry.push("crash", "other", &other).await;
    let host = registry.host();
    let reference = registry.image_ref("crash", "v1");
    let other_ref = registry.image_ref("crash", "other");
    let mut points: Vec<(String, &str)> = failpoint::ALL
        .iter()
        .filter(|p| !p.starts_with("gc."))
        .map(|p| (p.to_string(), "pull"))
        .collect();
    points.push(("gc.tree-record-deleted".into(), "remove"));
    // The first sweep runs at open; the second is the removal's.
    points.push(("gc.object-sweep@2".into(), "remove"));
    assert!(points.len() >= 10);
    for (point, mode) in points {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        if mode == "remove" {
            let store = ImageStore::open(&root, &insecure(&host)).unwrap();
            store.pull(&reference, None).await.unwrap();
            store.pull(&other_ref, None).await.unwrap();
            store.close().await.unwrap();
        }
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_helper", "--ignored", "--nocapture"])
            .env("ROOTSTOCK_FAILPOINT", &point)
            .env("CRASH_STORE", &root)
            .env("CRASH_HOST", &host)
            .env(
                "CRASH_REF",
                if mode == "pull" {
                    &reference
                } else {
                    &other_ref
                },
            )
            .env("CRASH_MODE", mode)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert_eq!(
            status.signal(),
            Some(9),
            "{point}: the child was not killed ({status})"
        );
        // Restart: open cleans up, then the offline verify (root lock, as `rootstock store
        // verify`) must find nothing wrong.
        drop(ImageStore::open(&root, &insecure(&host)).unwrap());
        let report = verify_offline(&root).unwrap();
        assert!(report.is_clean(), "{point}: {report}");
        let store = ImageStore::open(&root, &insecure(&host)).unwrap();
        let pulled = store.pull(&reference, None).await.unwrap();
        let tree = pulled.tree_path().unwrap();
        assert_eq!(
            std::fs::read(tree.join("app/b")).unwrap(),
            vec![9u8; 100_000],
            "{point}"
        );
        assert!(tree.join("bin/busybox").is_file(), "{point}");
        let report = store.verify().await.unwrap();
        assert!(report.is_clean(), "{point} after the pull: {report}");
        println!("failpoint {point:28} killed, reopened, verify clean, pull ok");
    }
}

#[tokio::test]
async fn verify_refuses_while_the_root_lock_is_held_and_finds_tampering() {
    let registry = Registry::start().await;
    registry
        .push("tamper", "v1", &busybox_image().build())
        .await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    {
        let store = ImageStore::open(&root, &insecure(&registry.host())).unwrap();
        store
            .pull(&registry.image_ref("tamper", "v1"), None)
            .await
            .unwrap();
        store.close().await.unwrap();
    }
    let lock = std::fs::File::create(root.join("rootstock.lock")).unwrap();
    lock.lock().unwrap();
    let err = verify_offline(&root).unwrap_err();
    assert_eq!(
        err.kind(),
        rootstock_imagestore::ErrorKind::FailedPrecondition,
        "{err}"
    );
    drop(lock);
    assert!(verify_offline(&root).unwrap().is_clean());
    // Corrupt one object in place: verify names it.
    let objects = root.join("objects");
    let victim = std::fs::read_dir(&objects)
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .map(|e| e.unwrap().path())
        .next()
        .unwrap();
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&victim, bytes).unwrap();
    let report = verify_offline(&root).unwrap();
    assert!(!report.is_clean());
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("content/metadata hash")),
        "{report}"
    );
}
