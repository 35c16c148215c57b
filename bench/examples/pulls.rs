//! Cold pulls of one bench fixture image by one rootstock build, each with the daemon's own
//! CPU time: the pull path's A/B, which `make bench` cannot give (its figure is wall time on
//! a machine whose two cores the registry shares). Run it for each build in turn, a few
//! times, alternating; the CPU figure is the steadier one.
//!
//!     cargo build --release --bins
//!     cargo run --release -p rootstock-bench --example pulls -- BIN [runs] [pull|small]
//!
//! `pull` is the 100 MiB image of five layers, `small` the 20,000 files of 1 KiB. Prints per
//! pull its wall time and the daemon's CPU time (all its threads), and RemoveImage's wall
//! time after it. With `PULLS_LOG=<file>`, the daemon logs at debug level into that file
//! (per layer: when it was unpacked and how fast). Asserts nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use rootstock_bench::{Options, images};
use rootstock_test_e2e::cri::{pull, remove_image};
use rootstock_test_e2e::daemon::Daemon;
use rootstock_testkit::registry::{Registry, RegistryOptions};

// One thread: the daemon and the registry are spawned from it and die with it, and
// `ROOTSTOCK_BIN` is set while nothing else reads the environment.
#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bin = args.first().expect("usage: pulls BIN [runs] [pull|small]");
    let runs: usize = args
        .get(1)
        .map_or(5, |r| r.parse().expect("runs: a number"));
    let small = match args.get(2).map_or("pull", String::as_str) {
        "pull" => false,
        "small" => true,
        other => panic!("image: pull or small, not {other}"),
    };
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut opts = Options::full(&workspace);
    opts.only = vec![if small { "small files" } else { "cold pull" }.into()];
    let registry =
        Registry::start_with(RegistryOptions::default().storage_dir(&opts.cache_dir)).await;
    let fixtures = images::prepare(&registry, &opts).await;
    let image = if small { fixtures.small } else { fixtures.pull };

    // SAFETY: one thread, nothing reads the environment concurrently.
    unsafe { std::env::set_var("ROOTSTOCK_BIN", bin) };
    let config = format!(
        "[images.registries.\"{}\"]\ninsecure = true\n",
        registry.host()
    );
    let mut daemon = Daemon::start_with_state_on_tmpfs(&config).await;
    let log = std::env::var("PULLS_LOG").ok();
    let level = if log.is_some() {
        "debug,h2=info,hyper=info,tower=info"
    } else {
        "info"
    };
    daemon.set_env("RUST_LOG", Some(level));
    daemon.restart().await;
    let mut client = daemon.images().await;
    let pid = daemon.pid().as_raw();
    println!("{bin}: {runs} cold pulls of {}", image.reference);
    for _ in 0..runs {
        // The previous run's dirty pages written out first, as `make bench` does.
        std::process::Command::new("sync").status().unwrap();
        let cpu = cpu_time(pid);
        let (_, took) = pull(&mut client, &image.reference).await.unwrap();
        let cpu = cpu_time(pid) - cpu;
        let removing = Instant::now();
        remove_image(&mut client, &image.reference).await.unwrap();
        println!(
            "pull {:.3} s, daemon CPU {:.0} ms; RemoveImage {:.3} s",
            took.as_secs_f64(),
            cpu.as_secs_f64() * 1e3,
            removing.elapsed().as_secs_f64()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if let Some(path) = log {
        std::fs::write(path, daemon.log()).unwrap();
    }
}

/// User plus system time of every thread of `pid` so far (`/proc/<pid>/stat` 14 and 15).
fn cpu_time(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf only reads its argument.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / hz)
}
