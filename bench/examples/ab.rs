//! Pod start of two rootstock builds, interleaved pod by pod (A B B A …) against one registry
//! and one CNI network, so that the load of a shared machine falls on both alike: what
//! `make bench` cannot show when each daemon's family runs a minute apart.
//!
//!     cargo build --release --bins    # B, and a copy of another build's daemon + monitor as A
//!     cargo run --release -p rootstock-bench --example ab -- A/rootstock B/rootstock [runs] [runc,crun]
//!
//! Prints per handler, for pod start and for stop+remove, the median and quartiles of each,
//! and the median of the paired differences B − A. Asserts nothing. With `AB_TRACE=<dir>`,
//! one more pod per handler is started and removed on B under `strace -f -tt` attached to
//! its daemon (children included), written to `<dir>/<handler>.strace`: the timeline of one
//! pod's start and stop.
//!
//! Interleaving is only fair for a change confined to the daemon's own process. One with a
//! host-wide effect leaks into the other build's pods: B's warming of the kernel's cgroup
//! lock (`runtime/src/cgroup_warm.rs`) also sped up A's next pod, and the A/B showed no
//! difference where whole runs of each showed 5–8 ms. Compare whole runs for those.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use rootstock_bench::{Kind, Target, remove_pod, start_pod};
use rootstock_test_e2e::cri::pull;
use rootstock_test_e2e::daemon::Daemon;
use rootstock_testkit::fixtures;
use rootstock_testkit::network::TestNet;
use rootstock_testkit::registry::Registry;

// One thread: the daemons and the registry are spawned from it and die with it
// (PR_SET_PDEATHSIG), and `ROOTSTOCK_BIN` is set while nothing else reads the environment.
#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [a, b] = [0, 1].map(|i| {
        PathBuf::from(
            args.get(i)
                .expect("usage: ab A_BIN B_BIN [runs] [handlers]"),
        )
    });
    let runs: usize = args
        .get(2)
        .map_or(30, |r| r.parse().expect("runs: a number"));
    let handlers: Vec<String> = args
        .get(3)
        .map_or("runc,crun", String::as_str)
        .split(',')
        .map(str::to_owned)
        .collect();
    let registry = Registry::start().await;
    registry
        .push("ab/busybox", "latest", &fixtures::busybox_image().build())
        .await;
    let busybox = registry.image_ref("ab/busybox", "latest");
    let net = TestNet::new("abpod");
    net.write_conflist(&net.conflist(Vec::new()));
    let config = format!(
        "[images.registries.\"{}\"]\ninsecure = true\n{}",
        registry.host(),
        net.daemon_config()
    );
    let mut daemons = Vec::new();
    for bin in [&a, &b] {
        // SAFETY: one thread (current_thread runtime, no blocking task running): nothing
        // reads the environment concurrently.
        unsafe { std::env::set_var("ROOTSTOCK_BIN", bin) };
        let mut d = Daemon::start_with_state_on_tmpfs(&config).await;
        d.set_env("RUST_LOG", Some("info"));
        d.restart().await;
        pull(&mut d.images().await, &busybox).await.unwrap();
        daemons.push(d);
    }
    let targets: Vec<Target> = daemons
        .iter()
        .map(|d| Target {
            kind: Kind::Rootstock,
            socket: d.socket.clone(),
            root_dir: d.root_dir.clone(),
            state_dir: d.state_dir.clone(),
            pid: d.pid().as_raw(),
            handlers: handlers.clone(),
            metrics_url: None,
        })
        .collect();
    let mut clients = Vec::new();
    for t in &targets {
        clients.push(t.runtime().await);
    }
    println!(
        "A = {}\nB = {}\n{runs} pods each per handler, interleaved A B B A",
        a.display(),
        b.display()
    );
    for handler in &handlers {
        // [start, stop+remove] of A and of B.
        let mut times: [[Vec<Duration>; 2]; 2] = Default::default();
        for n in 0..=runs {
            let order = if n % 2 == 0 { [0, 1] } else { [1, 0] };
            for i in order {
                let name = format!("ab-{handler}-{n}-{i}");
                let (pod, up) = start_pod(&mut clients[i], handler, &name, &busybox)
                    .await
                    .unwrap_or_else(|e| panic!("{} {handler}: {e}", ["A", "B"][i]));
                let stopping = std::time::Instant::now();
                remove_pod(&mut clients[i], &pod.sandbox).await.unwrap();
                // The first of each is the warm-up (the runtime's binary read from disk).
                if n > 0 {
                    times[0][i].push(up.total());
                    times[1][i].push(stopping.elapsed());
                }
            }
        }
        for (what, [ta, tb]) in ["start", "stop+remove"].iter().zip(&mut times) {
            let mut diffs: Vec<f64> = ta.iter().zip(&*tb).map(|(x, y)| ms(*y) - ms(*x)).collect();
            diffs.sort_by(f64::total_cmp);
            for (name, t) in [("A", ta), ("B", tb)] {
                t.sort();
                let q = |f: f64| ms(t[((t.len() - 1) as f64 * f).round() as usize]);
                println!(
                    "{handler} {what} {name}: median {:.1} ms (p25 {:.1}, p75 {:.1}, min {:.1})",
                    q(0.5),
                    q(0.25),
                    q(0.75),
                    q(0.0)
                );
            }
            println!(
                "{handler} {what} B - A: median of paired differences {:+.1} ms",
                diffs[diffs.len() / 2]
            );
        }
        if let Some(dir) = std::env::var_os("AB_TRACE") {
            let out = PathBuf::from(dir).join(format!("{handler}.strace"));
            let mut strace = std::process::Command::new("strace")
                .args(["-f", "-tt", "-s", "200", "-o"])
                .arg(&out)
                .args(["-p", &targets[1].pid.to_string()])
                .spawn()
                .expect("strace");
            // strace attaches to every thread before its first line; give it that time.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let name = format!("ab-{handler}-traced");
            let (pod, up) = start_pod(&mut clients[1], handler, &name, &busybox)
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
            let stopping = std::time::Instant::now();
            remove_pod(&mut clients[1], &pod.sandbox).await.unwrap();
            let stopped = stopping.elapsed();
            tokio::time::sleep(Duration::from_millis(200)).await;
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(strace.id() as i32),
                nix::sys::signal::Signal::SIGINT,
            );
            let _ = strace.wait();
            println!(
                "{handler} traced pod on B: start {:.1} ms (run {:.1} + create/start {:.1}), \
                 stop+remove {:.1} ms, {}",
                ms(up.total()),
                ms(up.run),
                ms(up.create_start),
                ms(stopped),
                out.display()
            );
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
