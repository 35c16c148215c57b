//! The daemon SIGKILLed inside unpack, render and GC (deterministic failpoints, not timers):
//! after a restart `rootstock store verify` is clean and the same pull succeeds.
//! Needs the daemon built with `--features rootstock-cri/failpoints` (`make test` does).
#![cfg(feature = "failpoints")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use k8s_cri::v1::*;
use rootstock_test_e2e::daemon::Daemon;
use rootstock_test_e2e::fixtures::crash_images;
use rootstock_test_e2e::registry::Registry;

use rootstock_test_e2e::failpoints::{STORE_POINTS as POINTS, StoreOp as Op};

fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: image.to_owned(),
        ..Default::default()
    })
}

async fn pull(daemon: &Daemon, image: &str) -> Result<String, tonic::Status> {
    rootstock_test_e2e::cri::try_pull(&mut daemon.images().await, image).await
}

async fn remove(daemon: &Daemon, image: &str) -> Result<(), tonic::Status> {
    let req = RemoveImageRequest { image: spec(image) };
    daemon.images().await.remove_image(req).await.map(drop)
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
        daemon.stop().await;
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
        daemon.wait_killed_at(point).await;

        // The restart cleans up what the kill left (tmp/, unreferenced objects).
        daemon.set_env("ROOTSTOCK_FAILPOINT", None);
        daemon.start_again().await;
        daemon.stop().await;
        daemon.verify_store(&format!("after a kill at {point} and a restart"));
        daemon.start_again().await;
        assert_eq!(pull(&daemon, &name).await.unwrap(), image.id(), "{point}");
        daemon.stop().await;
        daemon.verify_store(&format!("after the pull that followed {point}"));
        daemon.start_again().await;
    }
}
