//! kubelet's relist never waits for a slow OCI runtime (issue 17, acceptance 2): while
//! StartContainer is stuck in `runc start`, ListContainers and ContainerStatus answer from
//! memory, each within 100 ms (the bound the issue states), and the start still completes.
//! The OCI runtime is a wrapper script around runc that sleeps before `start`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use k8s_cri::v1::*;
use rootstock_test_e2e::registry::Registry;

/// How long the wrapper holds `start`: far above the bound, so a call that waited for the
/// start cannot pass.
const START_DELAY_SECS: u32 = 3;
/// The bound for one call while the start is stuck.
const CALL_BOUND: Duration = Duration::from_millis(100);
const CONCURRENT_CALLS: usize = 20;

/// `runc`, except that `start` first touches `started_marker` and sleeps.
fn slow_start_runtime(dir: &Path, started_marker: &Path) -> std::path::PathBuf {
    let runc = which("runc");
    let path = dir.join("slow-start-runc");
    let script = format!(
        "#!/bin/sh\n\
         # The subcommand is the first argument that is not an option or an option's value:\n\
         # runc's global options before it all take `--flag=value` or `--flag value` forms, so\n\
         # matching the word is enough for this test.\n\
         for a in \"$@\"; do\n\
           if [ \"$a\" = start ]; then touch {marker}; sleep {START_DELAY_SECS}; break; fi\n\
         done\n\
         exec {runc} \"$@\"\n",
        marker = started_marker.display(),
        runc = runc.display(),
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn which(name: &str) -> std::path::PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not found in PATH"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn list_and_status_answer_within_100ms_while_runc_start_is_stuck() {
    let registry = Registry::start().await;
    let scratch = tempfile::tempdir().unwrap();
    let marker = scratch.path().join("start-entered");
    let wrapper = slow_start_runtime(scratch.path(), &marker);
    let config = format!(
        "[runtime.handlers.slow]\nbinary = \"{}\"\n",
        wrapper.display()
    );
    let (daemon, image) = daemon_with_busybox(&registry, &config).await;
    loopback_network(&daemon).await;
    let mut rt = daemon.runtime().await;

    let pod = pod_config("relist", NamespaceMode::Container);
    let pod_id = run_pod_on(&mut rt, pod.clone(), "slow").await.unwrap();
    let sleeper = |name| container_config(name, &image, &["sleep", "1000"]);
    // A second container (created, not started): ListContainers has more than the stuck one.
    let idle = create_container(&mut rt, &pod_id, &pod, sleeper("idle"))
        .await
        .unwrap();
    let stuck = create_container(&mut rt, &pod_id, &pod, sleeper("stuck"))
        .await
        .unwrap();

    let start = {
        let mut rt = rt.clone();
        let id = stuck.clone();
        tokio::spawn(async move {
            rt.start_container(StartContainerRequest { container_id: id })
                .await
                .map(|_| Instant::now())
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !marker.exists() {
        assert!(
            Instant::now() < deadline,
            "StartContainer never reached runc start"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stuck_since = Instant::now();

    let calls: Vec<_> = (0..CONCURRENT_CALLS)
        .map(|i| {
            let mut rt = rt.clone();
            let (stuck, idle) = (stuck.clone(), idle.clone());
            tokio::spawn(async move {
                let began = Instant::now();
                // What the call saw, checked after its time: (containers listed, state).
                let (what, seen) = match i % 3 {
                    0 => {
                        let list = list_containers(&mut rt).await;
                        ("ListContainers", (list.len(), None))
                    }
                    1 => {
                        let status = container_status(&mut rt, &stuck).await;
                        ("ContainerStatus (starting)", (0, Some(status.state)))
                    }
                    _ => {
                        let status = container_status(&mut rt, &idle).await;
                        ("ContainerStatus (other)", (0, Some(status.state)))
                    }
                };
                (what, began.elapsed(), seen)
            })
        })
        .collect();
    let mut took = Vec::new();
    for call in calls {
        took.push(call.await.unwrap());
    }
    let all_done = stuck_since.elapsed();
    let slowest = took.iter().map(|(_, t, _)| *t).max().unwrap_or_default();
    eprintln!("{CONCURRENT_CALLS} calls while runc start was stuck: slowest {slowest:?}");
    let start_finished = start.is_finished();
    for (what, elapsed, _) in &took {
        assert!(
            *elapsed < CALL_BOUND,
            "{what} took {elapsed:?} while runc start was stuck (bound {CALL_BOUND:?}); all: {took:?}"
        );
    }
    assert!(
        !start_finished,
        "the start finished before the calls did ({all_done:?}): the test proved nothing"
    );
    for (what, _, seen) in &took {
        // Both containers listed; neither started yet (the start is still in the wrapper).
        match seen {
            (count, None) => assert_eq!(*count, 2, "{what}"),
            (_, Some(state)) => {
                assert_eq!(*state, ContainerState::ContainerCreated as i32, "{what}")
            }
        }
    }

    // The start itself completes, and the container runs.
    let finished = start.await.unwrap().unwrap();
    assert!(
        finished.duration_since(stuck_since) > Duration::from_secs(1),
        "the wrapper did not hold the start"
    );
    let status = container_status(&mut rt, &stuck).await;
    assert_eq!(status.state, ContainerState::ContainerRunning as i32);

    stop_pod(&mut rt, &pod_id).await;
    remove_pod(&mut rt, &pod_id).await;
}
