//! The daemon SIGKILLed inside unpack, render and GC (deterministic failpoints, not timers):
//! after a restart `rootstock store verify` is clean and the same pull succeeds.
//! Needs the daemon built with `--features rootstock-cri/failpoints` (`make test` does).
#![cfg(feature = "failpoints")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use k8s_cri::v1::*;
use nix::sys::signal::Signal;
use rootstock_test_e2e::daemon::{Daemon, run_rootstock};
use rootstock_test_e2e::fixtures::crash_images;
use rootstock_test_e2e::registry::Registry;

/// The image store's failpoints (`imagestore/src/failpoint.rs`), with the operation that
/// reaches them. A renamed point is never reached, and the test fails on the daemon that
/// did not die.
const POINTS: &[(&str, Op)] = &[
    ("unpack.begin", Op::Pull),
    ("unpack.object-written", Op::Pull),
    ("unpack.object-linked", Op::Pull),
    ("unpack.entries-done", Op::Pull),
    ("unpack.before-rename", Op::Pull),
    ("unpack.after-rename", Op::Pull),
    ("unpack.after-record", Op::Pull),
    ("render.begin", Op::Pull),
    ("render.layer-applied", Op::Pull),
    ("render.before-rename", Op::Pull),
    ("render.after-rename", Op::Pull),
    ("render.after-record", Op::Pull),
    ("gc.tree-record-deleted", Op::Remove),
    // The first sweep is start-up's; the second is the removal's.
    ("gc.object-sweep@2", Op::Remove),
];

#[derive(Clone, Copy, Debug)]
enum Op {
    Pull,
    Remove,
}

fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: image.to_owned(),
        ..Default::default()
    })
}

async fn pull(daemon: &Daemon, image: &str) -> Result<String, tonic::Status> {
    let req = PullImageRequest {
        image: spec(image),
        auth: None,
        sandbox_config: None,
    };
    Ok(daemon
        .images()
        .await
        .pull_image(req)
        .await?
        .into_inner()
        .image_ref)
}

async fn remove(daemon: &Daemon, image: &str) -> Result<(), tonic::Status> {
    let req = RemoveImageRequest { image: spec(image) };
    daemon.images().await.remove_image(req).await.map(drop)
}

async fn stop(daemon: &mut Daemon) {
    daemon
        .signal_and_wait(Signal::SIGTERM, Duration::from_secs(15))
        .await
        .expect("daemon did not stop on SIGTERM");
}

/// `rootstock store verify` on the daemon's root (it takes the root lock, so the daemon must
/// be down).
fn verify(daemon: &Daemon, when: &str) {
    let args = daemon.path_args();
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.extend(["store", "verify"]);
    let out = run_rootstock(&args, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{when}: verify failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn daemon_killed_at_each_failpoint_restarts_to_a_clean_store_and_pulls() {
    let registry = Registry::start().await;
    let (image, other) = crash_images();
    registry.push("crash", "v1", &image).await;
    registry.push("crash", "other", &other).await;
    let (name, other_name) = (
        registry.image_ref("crash", "v1"),
        registry.image_ref("crash", "other"),
    );
    let config = format!(
        "[images.registries.\"{}\"]\ninsecure = true\n",
        registry.host()
    );
    let mut daemon = Daemon::start_with_config(&config).await;
    assert!(POINTS.len() >= 10);

    for &(point, op) in POINTS {
        // Set up what the operation needs, then stop cleanly so the next start arms the point.
        match op {
            Op::Pull => remove(&daemon, &name).await.unwrap(),
            Op::Remove => {
                pull(&daemon, &other_name).await.unwrap();
            }
        }
        stop(&mut daemon).await;
        daemon.set_env("ROOTSTOCK_FAILPOINT", Some(point));
        daemon.start_again().await;
        let result = match op {
            Op::Pull => pull(&daemon, &name).await.map(drop),
            Op::Remove => remove(&daemon, &other_name).await,
        };
        assert!(
            result.is_err(),
            "{point}: {op:?} finished: the point was not reached"
        );
        let status = daemon
            .wait_exit(Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("{point}: the daemon is still running"));
        assert_eq!(
            status.signal(),
            Some(9),
            "{point}: {status}; log:\n{}",
            daemon.log()
        );

        // The restart cleans up what the kill left (tmp/, unreferenced objects).
        daemon.set_env("ROOTSTOCK_FAILPOINT", None);
        daemon.start_again().await;
        stop(&mut daemon).await;
        verify(&daemon, &format!("after a kill at {point} and a restart"));
        daemon.start_again().await;
        assert_eq!(pull(&daemon, &name).await.unwrap(), image.id(), "{point}");
        stop(&mut daemon).await;
        verify(&daemon, &format!("after the pull that followed {point}"));
        daemon.start_again().await;
    }
}
