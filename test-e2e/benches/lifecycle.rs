//! Pod lifecycle benchmark over the socket: RunPodSandbox + CreateContainer + StartContainer,
//! then StopPodSandbox + RemovePodSandbox, 30 runs per handler, medians and p90. Prints
//! figures; asserts nothing about time.
//!
//!     cargo build --release --bins && cargo bench -p rootstock-test-e2e --bench lifecycle
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use k8s_cri::v1::*;
use rootstock_test_e2e::registry::Registry;

const RUNS: usize = 30;

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let registry = Registry::start().await;
    let (daemon, image) = daemon_with_busybox(&registry, "").await;
    // Pod start includes CNI ADD (bridge + host-local on a private /24), as on a node.
    loopback_network(&daemon).await;
    let mut rt = daemon.runtime().await;
    for handler in ["runc", "crun"] {
        let (mut up, mut down) = (Vec::new(), Vec::new());
        for n in 0..RUNS {
            let pod = pod_config(&format!("bench-{handler}-{n}"), NamespaceMode::Container);
            let t = Instant::now();
            let id = rt
                .run_pod_sandbox(RunPodSandboxRequest {
                    config: Some(pod.clone()),
                    runtime_handler: handler.to_owned(),
                })
                .await
                .unwrap()
                .into_inner()
                .pod_sandbox_id;
            let container = container_config("c", &image, &["sleep", "3600"]);
            start_container(&mut rt, &id, &pod, container).await;
            up.push(t.elapsed());
            let t = Instant::now();
            stop_pod(&mut rt, &id).await;
            remove_pod(&mut rt, &id).await;
            down.push(t.elapsed());
        }
        up.sort();
        down.sort();
        println!(
            "{handler}: run+create+start median {:?} p90 {:?}; stop+remove median {:?} p90 {:?} \
             ({RUNS} runs)",
            quantile(&up, 0.5),
            quantile(&up, 0.9),
            quantile(&down, 0.5),
            quantile(&down, 0.9),
        );
    }
}
