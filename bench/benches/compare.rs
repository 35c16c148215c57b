//! rootstock and containerd side by side (issue 9): pod start and stop latency, pods started
//! at once, cold pull, disk use, layer depth and memory, through the same CRI client code with
//! the same images from the same local registry. Prints a markdown table and saves it with
//! the JSON under `target/bench-results/`; asserts nothing about time.
//!
//!     make bench          # installs containerd if missing, prepares the host, builds, runs
//!     cargo build --release --bins && cargo bench -p rootstock-bench --bench compare
//!     cargo bench -p rootstock-bench --bench compare -- --smoke   # rootstock only, small
//!     cargo bench -p rootstock-bench --bench compare -- --only pod,many   # some families
//!     cargo bench -p rootstock-bench --bench compare -- --handlers crun --no-peer
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use rootstock_bench::{self as bench, Options};

// `bench::run` is awaited on the main thread (`block_on` polls it there, never on a worker),
// so the registry, the daemons and containerd it spawns, whose PR_SET_PDEATHSIG is tied to
// the spawning thread, live exactly as long as the benchmark.
#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate lives in the workspace");
    // `cargo bench` passes `--bench`; anything but the flags below is ignored.
    let args: Vec<String> = std::env::args().collect();
    let mut opts = if args.iter().any(|a| a == "--smoke") {
        Options::smoke(workspace)
    } else {
        Options::full(workspace)
    };
    // `--only pod,many`: those families only (a quick look at one change).
    if let Some(at) = args.iter().position(|a| a == "--only") {
        opts.only = args
            .get(at + 1)
            .map(|list| list.split(',').map(str::to_owned).collect())
            .unwrap_or_default();
    }
    // `--handlers crun`: those runtime handlers only; `--no-peer`: rootstock only.
    if let Some(at) = args.iter().position(|a| a == "--handlers") {
        opts.handlers = args
            .get(at + 1)
            .map(|list| list.split(',').map(str::to_owned).collect())
            .unwrap_or_default();
    }
    if args.iter().any(|a| a == "--no-peer") {
        opts.peer = false;
    }
    bench::run(opts).await;
}
