//! Side-by-side benchmark of rootstock and containerd (issue 9): both runtimes driven by the
//! same CRI client code, with the same fixture images from the same local registry and the
//! same CNI conflist. Each measurement family runs against one runtime at a time (never both
//! at once) and yields [`Measure`]s; [`Report`] pairs them by key into a markdown table with
//! the ratio rootstock/containerd, and JSON.
//!
//! Entry points: `make bench` (full run, both runtimes) and the smoke test in `make test`
//! (rootstock only, [`Options::smoke`]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod floor;
pub mod images;
pub mod many;
pub mod peer;
pub mod pods;
mod report;
mod steps;
mod targets;
mod tracker;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use serde::Serialize;
use tonic::transport::Channel;

use rootstock_test_e2e::cri::{pull, remove_image};
use rootstock_test_e2e::daemon::{Daemon, connect_unix};
use rootstock_testkit::fixtures;
use rootstock_testkit::network::TestNet;
use rootstock_testkit::registry::{Registry, RegistryOptions};

pub use report::{Report, Row};
pub use steps::{Pod, StartTimes, WORKLOAD, remove_all_pods, remove_pod, start_pod, wait_ready};
pub use tracker::Tracker;

/// Which runtime a [`Target`] is (store layouts and processes differ).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Rootstock,
    Containerd,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Rootstock => "rootstock",
            Kind::Containerd => "containerd",
        }
    }
}

/// One runtime under measurement, as the CRI client sees it.
#[derive(Clone, Debug)]
pub struct Target {
    pub kind: Kind,
    /// The CRI socket.
    pub socket: PathBuf,
    /// The runtime's persistent root (image store / containerd root): what disk usage counts.
    pub root_dir: PathBuf,
    /// Its per-boot state dir: rootstock's monitors name their run directory below it,
    /// which tells them from other daemons' monitors on the same machine.
    pub state_dir: PathBuf,
    /// The daemon's pid (for memory figures).
    pub pid: i32,
    /// The runtime handlers to measure (`runc`, `crun`); the first is used where one is enough.
    pub handlers: Vec<String>,
    /// rootstock's Prometheus endpoint (`http://…/metrics`), where its per-step histograms
    /// are read; containerd has none.
    pub metrics_url: Option<String>,
}

impl Target {
    pub async fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(connect_unix(&self.socket).await)
    }

    pub async fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(connect_unix(&self.socket).await)
    }
}

/// What was measured: a number, or why it could not be (a failure is a result).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Value(f64),
    Failed(String),
}

/// One figure for one runtime. `key` names the row and must be the same for both runtimes
/// (e.g. `"start: run+create+start median (runc)"`).
#[derive(Clone, Debug, Serialize)]
pub struct Measure {
    pub key: String,
    pub unit: &'static str,
    pub outcome: Outcome,
}

impl Measure {
    pub fn value(key: impl Into<String>, unit: &'static str, v: f64) -> Self {
        Self {
            key: key.into(),
            unit,
            outcome: Outcome::Value(v),
        }
    }

    pub fn failed(key: impl Into<String>, unit: &'static str, why: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            unit,
            outcome: Outcome::Failed(why.into()),
        }
    }

    /// Milliseconds of a duration.
    pub fn millis(key: impl Into<String>, d: Duration) -> Self {
        Self::value(key, "ms", d.as_secs_f64() * 1e3)
    }
}

/// One burst measured on the whole machine: the CPU time it cost per pod, and its window on
/// `CLOCK_MONOTONIC`, printed to stderr as `bench[window] <label> <start> <end>` (seconds),
/// the clock `perf record -k CLOCK_MONOTONIC` stamps its samples with:
/// `bench/burst-profile.py` splits such a recording's CPU time by process in each window.
pub struct BurstMeter {
    busy: Duration,
    start: f64,
}

impl BurstMeter {
    pub fn start() -> Self {
        Self {
            busy: machine_busy(),
            start: monotonic(),
        }
    }

    /// The machine's CPU time per pod since [`BurstMeter::start`].
    pub fn stop(self, label: &str, pods: usize) -> Duration {
        let cpu = machine_busy().saturating_sub(self.busy) / pods.max(1) as u32;
        eprintln!("bench[window] {label} {:.6} {:.6}", self.start, monotonic());
        cpu
    }
}

/// CPU time the whole machine has spent busy so far (user, nice, system, irq and softirq of
/// `/proc/stat`, 10 ms resolution): the difference over a burst is what every process of
/// it cost, the runtime's and the tools' alike.
fn machine_busy() -> Duration {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: u64 = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .enumerate()
        .filter(|(i, _)| matches!(i, 0 | 1 | 2 | 5 | 6))
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100);
    Duration::from_millis(ticks * 1000 / hz.max(1))
}

/// `CLOCK_MONOTONIC` now, in seconds.
fn monotonic() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Median and p90 (nearest rank) of durations; `None` for no samples.
pub fn quantiles(samples: &[Duration]) -> Option<(Duration, Duration)> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort();
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    Some((at(0.5), at(0.9)))
}

/// How much to run.
#[derive(Clone, Debug, Serialize)]
pub struct Options {
    /// Also start containerd and measure it (false in smoke mode).
    pub peer: bool,
    /// Runtime handlers to measure.
    pub handlers: Vec<String>,
    /// Iterations of the start/stop latency loop (30 in the full run).
    pub runs: usize,
    /// Pods started at once for the concurrency figure (20).
    pub concurrent: usize,
    /// Bursts of `concurrent` pods per handler, whose median is the figure (5): one burst is
    /// one sample, and on 2 shared cores one sample moved the ratio by ±0.03.
    pub bursts: usize,
    /// Cold-pull repetitions (5) and the size of each of the five layers.
    pub pull_runs: usize,
    pub pull_layer_bytes: usize,
    /// Files of 1 KiB in the small-file pull image (20,000).
    pub small_files: usize,
    /// Size of the shared base of the disk-usage images (50 MB).
    pub disk_base_bytes: usize,
    /// Layer counts of the depth images (1, 150, 300, 500, 1000).
    pub depths: Vec<usize>,
    /// Pods kept running for the per-pod memory figure.
    pub memory_pods: usize,
    /// Pods started at once and kept running for the many-pods family (100).
    pub many_pods: usize,
    /// Only the families whose name contains one of these (`--only pod,many`); empty: all.
    /// For measuring one change quickly; `make bench` runs every family.
    pub only: Vec<String>,
    /// Where the markdown and JSON results go (not committed).
    pub results_dir: PathBuf,
    /// Where fixture images are cached between runs (the registry's storage).
    pub cache_dir: PathBuf,
}

/// Whether family `name` is measured under `--only` (empty: every family).
fn wanted(only: &[String], name: &str) -> bool {
    only.is_empty() || only.iter().any(|o| name.contains(o.as_str()))
}

impl Options {
    /// Whether family `name` is measured (and its fixtures built): see [`Options::only`].
    pub fn wants(&self, name: &str) -> bool {
        wanted(&self.only, name)
    }

    /// `make bench`: both runtimes, every handler, the sizes.
    pub fn full(workspace: &Path) -> Self {
        Self {
            peer: true,
            handlers: vec!["runc".into(), "crun".into()],
            runs: 30,
            concurrent: 20,
            bursts: 5,
            pull_runs: 5,
            pull_layer_bytes: 20 << 20,
            small_files: 20_000,
            disk_base_bytes: 50 << 20,
            depths: vec![1, 150, 300, 500, 1000],
            memory_pods: 10,
            many_pods: 100,
            only: Vec::new(),
            results_dir: workspace.join("target/bench-results/full"),
            cache_dir: workspace.join("target/bench-cache/full"),
        }
    }

    /// The smoke mode `make test` runs so the benchmark cannot rot: rootstock only, two
    /// iterations, one handler, small images of at most 20 layers.
    pub fn smoke(workspace: &Path) -> Self {
        Self {
            peer: false,
            handlers: vec!["runc".into()],
            runs: 2,
            concurrent: 3,
            bursts: 1,
            pull_runs: 2,
            pull_layer_bytes: 1 << 20,
            small_files: 500,
            disk_base_bytes: 2 << 20,
            depths: vec![1, 20],
            memory_pods: 2,
            many_pods: 3,
            only: Vec::new(),
            results_dir: workspace.join("target/bench-results/smoke"),
            cache_dir: workspace.join("target/bench-cache/smoke"),
        }
    }
}

/// Everything both runtimes share during one run: the registry with the fixture images, the
/// workload and pause image references, and the CNI network.
pub struct Ctx {
    pub opts: Options,
    pub registry: Registry,
    pub net: TestNet,
    /// busybox, used by every workload container.
    pub busybox: String,
    /// The pause image containerd's sandboxes run (rootstock needs none).
    pub pause: String,
    pub fixtures: images::Fixtures,
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

/// The workload image and containerd's sandbox image in the registry.
const BUSYBOX_REPO: &str = "bench/busybox";
const PAUSE_REPO: &str = "bench/pause";

/// containerd's sandbox image: busybox whose PID 1 (a shell) waits for ever and exits 0 on
/// SIGTERM. A shell waits on a child only (`sleep & wait`, so the trap runs at once), so a
/// sandbox here is two processes where the upstream pause image is one, smaller, program;
/// [`pods::memory_per_pod`] counts both.
pub fn pause_image() -> fixtures::Image {
    fixtures::busybox_image()
        .entrypoint(&["sh", "-c", "trap 'exit 0' TERM; sleep 2147483647 & wait"])
        .cmd(&[])
        .build()
}

/// The whole benchmark: the registry (storage in `opts.cache_dir`, so fixture images are
/// pushed once), the fixtures, one CNI network, then rootstock and, with `opts.peer`,
/// containerd, one after the other, each started privately, measured and removed. Prints the
/// markdown table and saves it with the JSON under `opts.results_dir/<unix time>/`.
///
/// Processes are spawned from the calling thread, whose death takes them along
/// (`PR_SET_PDEATHSIG`): call this from the thread that lives longest, the main thread of a
/// bench or a test's own thread, never from a spawned task.
pub async fn run(opts: Options) -> Report {
    let started = Instant::now();
    let registry =
        Registry::start_with(RegistryOptions::default().storage_dir(&opts.cache_dir)).await;
    registry
        .push(BUSYBOX_REPO, "latest", &fixtures::busybox_image().build())
        .await;
    registry.push(PAUSE_REPO, "latest", &pause_image()).await;
    let fixtures = images::prepare(&registry, &opts).await;
    eprintln!(
        "bench: fixtures ready in {:.1} s ({} pushed, the others cached in {})",
        fixtures.elapsed.as_secs_f64(),
        fixtures.pushed.len(),
        opts.cache_dir.display()
    );
    // One network for both runtimes: the same conflist, read by each from the same dir.
    let net = TestNet::new("bench");
    net.write_conflist(&net.conflist(Vec::new()));
    let ctx = Ctx {
        busybox: registry.image_ref(BUSYBOX_REPO, "latest"),
        pause: registry.image_ref(PAUSE_REPO, "latest"),
        opts,
        registry,
        net,
        fixtures,
    };
    let mut report = Report::new(&ctx.opts);
    report.runtimes.push(measure_rootstock(&ctx).await);
    if ctx.opts.peer {
        report.runtimes.push(measure_containerd(&ctx).await);
    }
    report.elapsed_secs = started.elapsed().as_secs_f64();
    println!("{}", report.markdown());
    match report.save(&ctx.opts.results_dir) {
        Ok(dir) => eprintln!("bench: results in {}", dir.display()),
        Err(e) => eprintln!(
            "bench: saving results under {}: {e}",
            ctx.opts.results_dir.display()
        ),
    }
    report
}

async fn measure_rootstock(ctx: &Ctx) -> RuntimeRun {
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port for the metrics endpoint");
    let config = format!(
        "[images.registries.\"{}\"]\ninsecure = true\n[metrics]\naddress = \"{metrics}\"\n{}",
        ctx.registry.host(),
        ctx.net.daemon_config()
    );
    let mut daemon = Daemon::start_with_state_on_tmpfs(&config).await;
    // The harness starts the daemon with debug logs for the tests' sake; measure it at the
    // level containerd runs at (info), the default of both.
    daemon.set_env("RUST_LOG", Some("info"));
    daemon.restart().await;
    let t = Target {
        kind: Kind::Rootstock,
        socket: daemon.socket.clone(),
        root_dir: daemon.root_dir.clone(),
        state_dir: daemon.state_dir.clone(),
        pid: daemon.pid().as_raw(),
        handlers: ctx.opts.handlers.clone(),
        metrics_url: Some(format!("http://{metrics}/metrics")),
    };
    let tracker = track(&t);
    let run = measure(&t, ctx).await;
    remove_all_pods(&t).await;
    drop(daemon);
    drop(tracker);
    run
}

async fn measure_containerd(ctx: &Ctx) -> RuntimeRun {
    let containerd = match peer::Containerd::start(ctx).await {
        Ok(c) => c,
        Err(why) => {
            eprintln!("bench[containerd] {why}");
            let mut run = RuntimeRun::new(Kind::Containerd);
            run.failure = Some(why);
            return run;
        }
    };
    let t = containerd.target(&ctx.opts.handlers);
    let tracker = track(&t);
    let run = measure(&t, ctx).await;
    containerd.stop().await;
    drop(tracker);
    run
}

/// A [`Tracker`] holding the daemon, or `None` (said on stderr) where cgroups cannot be made:
/// then the per-pod memory figure fails, saying why, and the rest is measured.
fn track(t: &Target) -> Option<Tracker> {
    let tracker = Tracker::new(t.kind).and_then(|tracker| {
        tracker.adopt(t.pid)?;
        Ok(tracker)
    });
    match tracker {
        Ok(tracker) => Some(tracker),
        Err(e) => {
            eprintln!("bench[{}] no cgroup of its own: {e}", t.kind.name());
            None
        }
    }
}

/// Every family against one runtime, in order: idle memory first (nothing has run yet), the
/// pod families, then the image families. A family that panics is recorded as failed and its
/// pods are removed; the others still run.
async fn measure(t: &Target, ctx: &Ctx) -> RuntimeRun {
    let mut run = RuntimeRun::new(t.kind);
    run.only = ctx.opts.only.clone();
    let started = Instant::now();
    if let Err(why) = wait_ready(t).await {
        eprintln!("bench[{}] {why}", t.kind.name());
        run.failure = Some(why);
        return run;
    }
    run.family(t, "memory idle", async { pods::memory_idle(t) })
        .await;
    run.family(t, "pod lifecycle", pods::lifecycle(t, ctx))
        .await;
    run.family(t, "concurrent pods", pods::concurrent(t, ctx))
        .await;
    if t.kind == Kind::Rootstock {
        // No runtime's figure: measured once, in the first runtime's turn.
        run.family(t, "pod floor", floor::floor(t, ctx)).await;
    }
    run.family(t, "memory per pod", pods::memory_per_pod(t, ctx))
        .await;
    run.family(t, "many pods", many::many_pods(t, ctx)).await;
    run.family(t, "cold pull", images::cold_pull(t, ctx)).await;
    run.family(t, "small files", images::small_files(t, ctx))
        .await;
    run.family(t, "disk", images::disk(t, ctx)).await;
    run.family(t, "depth", images::depth(t, ctx)).await;
    run.elapsed_secs = started.elapsed().as_secs_f64();
    run
}

/// The pause after each family, see [`RuntimeRun::family`].
const BETWEEN_FAMILIES: Duration = Duration::from_secs(3);

/// What one runtime gave: its figures in the order taken, or why it could not be measured.
#[derive(Clone, Debug, Serialize)]
pub struct RuntimeRun {
    pub kind: Kind,
    /// Set when the runtime could not be measured at all (did not start, never ready): every
    /// row of it shows this.
    pub failure: Option<String>,
    pub measures: Vec<Measure>,
    /// Seconds each family took, set-up included.
    pub families: Vec<(String, f64)>,
    pub elapsed_secs: f64,
    /// [`Options::only`].
    #[serde(skip)]
    only: Vec<String>,
}

impl RuntimeRun {
    pub fn new(kind: Kind) -> Self {
        Self {
            kind,
            failure: None,
            measures: Vec::new(),
            families: Vec::new(),
            elapsed_secs: 0.0,
            only: Vec::new(),
        }
    }

    async fn family(
        &mut self,
        t: &Target,
        name: &str,
        measures: impl std::future::Future<Output = Vec<Measure>>,
    ) {
        use futures_util::FutureExt as _;
        if !wanted(&self.only, name) {
            return;
        }
        let started = Instant::now();
        let measures = match std::panic::AssertUnwindSafe(measures).catch_unwind().await {
            Ok(measures) => measures,
            Err(panic) => {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "(no message)".into());
                remove_all_pods(t).await;
                vec![Measure::failed(
                    format!("{name}: the family"),
                    "",
                    format!("panicked: {why}"),
                )]
            }
        };
        let took = started.elapsed().as_secs_f64();
        eprintln!("bench[{}] {name}: {took:.1} s", t.kind.name());
        // What a family left to the runtime's background work (containerd removes the
        // snapshots of removed containers a moment after RemovePodSandbox returns) must be
        // done before the next family measures: neither its timings nor its checks of the
        // store may see it.
        tokio::time::sleep(BETWEEN_FAMILIES).await;
        self.families.push((name.to_owned(), took));
        self.measures.extend(measures);
    }
}
