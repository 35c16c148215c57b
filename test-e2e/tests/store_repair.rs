//! `rootstock store verify --repair` and `store gc` against a daemon's real store: a file
//! object changed on disk and one deleted are repaired (re-fetched from the registry), a
//! container started afterwards sees the right content, and a container that kept running
//! through it keeps its own writes. Both commands refuse while the daemon runs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use k8s_cri::v1::*;
use nix::sys::signal::Signal;
use rootstock_test_e2e::daemon::{Daemon, run_rootstock};
use rootstock_test_e2e::files::links_of;
use rootstock_test_e2e::fixtures::{Compression, LayerBuilder, busybox_image};
use rootstock_test_e2e::registry::Registry;

const ALPHA: &str = "alpha: the bytes that were changed on disk\n";
const BRAVO: &str = "bravo: the file whose object was deleted\n";

/// `rootstock <daemon's paths> ARGS` run to completion: (success, stdout + stderr).
fn store_command(daemon: &Daemon, args: &[&str]) -> (bool, String) {
    let mut all: Vec<String> = daemon.path_args();
    all.extend(args.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    let out = run_rootstock(&refs, Duration::from_secs(120));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

async fn cat(rt: &mut Rt, id: &str, path: &str) -> String {
    let r = exec(rt, id, &["cat", path], 10).await.unwrap();
    assert_eq!(
        r.exit_code,
        0,
        "cat {path}: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    String::from_utf8(r.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn repair_fixes_changed_and_deleted_objects_and_leaves_running_containers_alone() {
    let registry = Registry::start().await;
    let data = LayerBuilder::new()
        .dir("data")
        .file("data/alpha.txt", ALPHA)
        .file("data/bravo.txt", BRAVO)
        .file("data/alpha-twin.txt", ALPHA)
        .build(Compression::Gzip);
    let image = busybox_image().layer(data).build();
    registry.push("e2e/repair", "v1", &image).await;
    let config = format!(
        "[images.registries.\"{}\"]\ninsecure = true\n",
        registry.host()
    );
    let mut daemon = Daemon::start_with_config(&config).await;
    loopback_network(&daemon).await;
    let image_ref = pull_ok(
        &mut daemon.images().await,
        &registry.image_ref("e2e/repair", "v1"),
    )
    .await;
    let mut rt = daemon.runtime().await;
    let pod_cfg = pod_config("repair", NamespaceMode::Container);
    let pod = run_pod(&mut rt, pod_cfg.clone()).await.unwrap();
    // Writes to its upper dir (a new file, and a copy-up of bravo), then keeps running.
    let writer = start_container(
        &mut rt,
        &pod,
        &pod_cfg,
        container_config(
            "writer",
            &image_ref,
            &[
                "sh",
                "-c",
                "echo mine > /data/written.txt && echo changed > /data/bravo.txt && sleep 3600",
            ],
        ),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while exec(&mut rt, &writer, &["cat", "/data/bravo.txt"], 5)
        .await
        .map(|r| r.stdout != b"changed\n")
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "the writer never wrote");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(rt);

    // While the daemon runs, both commands refuse and change nothing.
    for args in [&["store", "verify", "--repair"][..], &["store", "gc"][..]] {
        let (ok, text) = store_command(&daemon, args);
        assert!(!ok && text.contains("in use"), "{args:?}: {text}");
    }
    daemon
        .signal_and_wait(Signal::SIGTERM, Duration::from_secs(15))
        .await
        .expect("the daemon did not stop");

    // The damage: alpha's object changed in place (every link sees it), bravo's deleted
    // everywhere (object, layer view, tree). The layer view's links are the objects' inodes
    // (in the tree, alpha.txt is a private copy of alpha-twin.txt's object).
    let views: Vec<PathBuf> = std::fs::read_dir(daemon.root_dir.join("layers"))
        .unwrap()
        .map(|e| e.unwrap().path().join("root/data"))
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(views.len(), 1, "{views:?}");
    let alpha = views[0].join("alpha.txt");
    let bravo = views[0].join("bravo.txt");
    let alpha_links = links_of(&daemon.root_dir, std::fs::metadata(&alpha).unwrap().ino());
    assert!(alpha_links.len() >= 3, "{alpha_links:?}");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&alpha)
        .unwrap();
    f.write_all(b"ALPHA WAS OVERWRITTEN").unwrap();
    drop(f);
    let bravo_links = links_of(&daemon.root_dir, std::fs::metadata(&bravo).unwrap().ino());
    assert!(bravo_links.len() >= 3, "{bravo_links:?}");
    for link in &bravo_links {
        std::fs::remove_file(link).unwrap();
    }
    let (ok, text) = store_command(&daemon, &["store", "verify"]);
    assert!(!ok && text.contains("problems"), "{text}");

    let (ok, text) = store_command(&daemon, &["store", "verify", "--repair"]);
    println!("{text}");
    assert!(ok, "{text}");
    assert!(text.contains("repaired 2 objects"), "{text}");
    assert!(text.contains("re-fetched"), "{text}");
    let (ok, text) = store_command(&daemon, &["store", "verify"]);
    assert!(ok && text.contains("clean"), "{text}");
    let (ok, text) = store_command(&daemon, &["store", "gc"]);
    assert!(ok && text.contains("freed"), "{text}");
    let (ok, text) = store_command(&daemon, &["store", "verify"]);
    assert!(ok, "after gc: {text}");

    daemon.start_again().await;
    let mut rt = daemon.runtime().await;
    // The container that ran through it all still has its own writes.
    assert_eq!(cat(&mut rt, &writer, "/data/written.txt").await, "mine\n");
    assert_eq!(cat(&mut rt, &writer, "/data/bravo.txt").await, "changed\n");
    // A new container sees the image as it was pulled.
    let reader = start_container(
        &mut rt,
        &pod,
        &pod_cfg,
        container_config("reader", &image_ref, &["sleep", "3600"]),
    )
    .await;
    assert_eq!(cat(&mut rt, &reader, "/data/alpha.txt").await, ALPHA);
    assert_eq!(cat(&mut rt, &reader, "/data/bravo.txt").await, BRAVO);
    assert_eq!(cat(&mut rt, &reader, "/data/alpha-twin.txt").await, ALPHA);
    let r = exec(&mut rt, &reader, &["ls", "/data"], 5).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&r.stdout),
        "alpha-twin.txt\nalpha.txt\nbravo.txt\n",
        "the writer's files leaked into the image"
    );
    stop_pod(&mut rt, &pod).await;
    remove_pod(&mut rt, &pod).await;
}
