//! Lifecycle timings (not a timed test; run with
//! `cargo test -p rootstock-runtime --release --test bench -- --ignored --nocapture`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::Env;
use rootstock_runtime::{SandboxId, SandboxPidMode, SandboxSpec};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
#[ignore]
fn lifecycle_medians() {
    let env = Env::new();
    for handler in ["runc", "crun"] {
        let (mut up, mut down) = (Vec::new(), Vec::new());
        for i in 0..30 {
            let t = Instant::now();
            let sb = env
                .rt
                .create_sandbox(SandboxSpec {
                    id: SandboxId::new(format!("bench-{handler}-{i}")).unwrap(),
                    hostname: "bench".into(),
                    host_network: false,
                    host_ipc: false,
                    pid: SandboxPidMode::Container,
                    dns: None,
                    sysctls: Default::default(),
                    client_data: serde_json::Value::Null,
                })
                .unwrap();
            let mut spec = env.spec(&["sleep", "1000"]);
            spec.namespaces = sb.container_namespaces();
            spec.hostname = sb.container_hostname();
            spec.sandbox_mounts = sb.container_mounts();
            let c = env
                .rt
                .create_container(env.request(&format!("bench-{handler}-{i}"), handler, spec))
                .unwrap();
            env.rt.start_container(&c.record.id).unwrap();
            up.push(t.elapsed());
            let t = Instant::now();
            env.rt
                .stop_container(&c.record.id, libc::SIGKILL, Duration::ZERO)
                .unwrap();
            env.rt.remove_container(&c.record.id).unwrap();
            env.rt.stop_sandbox(&sb.record.id).unwrap();
            env.rt.remove_sandbox(&sb.record.id).unwrap();
            down.push(t.elapsed());
        }
        eprintln!(
            "{handler}: sandbox+create+start median {:?}, stop+remove(+sandbox) median {:?}",
            median(up),
            median(down)
        );
    }
}
