//! Side-by-side benchmark of rootstock and containerd (issue 9): both runtimes driven by the
//! same CRI client code, with the same fixture images from the same local registry and the
//! same CNI conflist. Each measurement family runs against one runtime at a time (never both
//! at once) and yields [`Measure`]s; [`Report`] pairs them by key into a markdown table with
//! the ratio rootstock/containerd, and JSON.
//!
//! Entry points: `make bench` (full run, both runtimes) and the smoke test in `make test`
//! (rootstock only, [`Options::smoke`]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod images;
pub mod peer;
pub mod pods;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use serde::Serialize;
use tonic::transport::Channel;

use crate::daemon::{Daemon, connect_unix};
use crate::fixtures;
use crate::network::TestNet;
use crate::registry::{Registry, RegistryOptions};

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
    /// The daemon's pid (for memory figures).
    pub pid: i32,
    /// The runtime handlers to measure (`runc`, `crun`); the first is used where one is enough.
    pub handlers: Vec<String>,
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
    /// Cold-pull repetitions (5) and the size of each of the five layers.
    pub pull_runs: usize,
    pub pull_layer_bytes: usize,
    /// Size of the shared base of the disk-usage images (50 MB).
    pub disk_base_bytes: usize,
    /// Layer counts of the depth images (1, 150, 300, 500, 1000).
    pub depths: Vec<usize>,
    /// Pods kept running for the per-pod memory figure.
    pub memory_pods: usize,
    /// Where the markdown and JSON results go (not committed).
    pub results_dir: PathBuf,
    /// Where fixture images are cached between runs (the registry's storage).
    pub cache_dir: PathBuf,
}

impl Options {
    /// `make bench`: both runtimes, every handler, the issue's sizes.
    pub fn full(workspace: &Path) -> Self {
        Self {
            peer: true,
            handlers: vec!["runc".into(), "crun".into()],
            runs: 30,
            concurrent: 20,
            pull_runs: 5,
            pull_layer_bytes: 20 << 20,
            disk_base_bytes: 50 << 20,
            depths: vec![1, 150, 300, 500, 1000],
            memory_pods: 10,
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
            pull_runs: 2,
            pull_layer_bytes: 1 << 20,
            disk_base_bytes: 2 << 20,
            depths: vec![1, 20],
            memory_pods: 2,
            results_dir: workspace.join("target/bench-results/smoke"),
            cache_dir: workspace.join("target/bench-cache/smoke"),
        }
    }
}

/// Everything both runtimes share during one run: the registry with the fixture images, the
/// workload and pause image references, and the CNI network.
pub struct Ctx {
    pub opts: Options,
    pub registry: crate::registry::Registry,
    pub net: crate::network::TestNet,
    /// busybox, used by every workload container.
    pub busybox: String,
    /// The pause image containerd's sandboxes run (rootstock needs none).
    pub pause: String,
    pub fixtures: images::Fixtures,
}

/// A pod as kubelet sends it (network namespace per pod, container PID namespace).
pub fn pod_config(name: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.to_owned(),
            uid: format!("uid-{name}"),
            namespace: "bench".to_owned(),
            attempt: 0,
        }),
        hostname: name.to_owned(),
        labels: HashMap::from([("io.kubernetes.pod.uid".to_owned(), format!("uid-{name}"))]),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: String::new(),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Pod as i32,
                    pid: NamespaceMode::Container as i32,
                    ipc: NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A container as kubelet sends it.
pub fn container_config(name: &str, image: &str, command: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.to_owned(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.to_owned(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        labels: HashMap::from([("io.kubernetes.container.name".to_owned(), name.to_owned())]),
        ..Default::default()
    }
}

/// The command every workload container runs (also how memory figures tell workload processes
/// from the runtime's own).
pub const WORKLOAD: [&str; 2] = ["sleep", "86399"];

/// A running pod: its sandbox and one container.
#[derive(Clone, Debug)]
pub struct Pod {
    pub sandbox: String,
    pub container: String,
}

/// How long a pod start took: RunPodSandbox, and CreateContainer + StartContainer.
#[derive(Clone, Copy, Debug)]
pub struct StartTimes {
    pub run: Duration,
    pub create_start: Duration,
}

impl StartTimes {
    pub fn total(&self) -> Duration {
        self.run + self.create_start
    }
}

/// RunPodSandbox, then CreateContainer + StartContainer of one [`WORKLOAD`] container with
/// `handler`, each part timed. On failure the sandbox, if one was made, is removed again
/// (untimed) and the error says which call failed and why.
pub async fn start_pod(
    rt: &mut RuntimeServiceClient<Channel>,
    handler: &str,
    name: &str,
    image: &str,
) -> Result<(Pod, StartTimes), String> {
    let config = pod_config(name);
    let t = Instant::now();
    let sandbox = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.to_owned(),
        })
        .await
        .map_err(|e| format!("RunPodSandbox: {}", e.message()))?
        .into_inner()
        .pod_sandbox_id;
    let run = t.elapsed();
    let t = Instant::now();
    match create_and_start(rt, &sandbox, config, image).await {
        Ok(container) => Ok((
            Pod { sandbox, container },
            StartTimes {
                run,
                create_start: t.elapsed(),
            },
        )),
        Err(why) => {
            let _ = remove_pod(rt, &sandbox).await;
            Err(why)
        }
    }
}

async fn create_and_start(
    rt: &mut RuntimeServiceClient<Channel>,
    sandbox: &str,
    config: PodSandboxConfig,
    image: &str,
) -> Result<String, String> {
    let container = rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: sandbox.to_owned(),
            config: Some(container_config("c", image, &WORKLOAD)),
            sandbox_config: Some(config),
        })
        .await
        .map_err(|e| format!("CreateContainer: {}", e.message()))?
        .into_inner()
        .container_id;
    rt.start_container(StartContainerRequest {
        container_id: container.clone(),
    })
    .await
    .map_err(|e| format!("StartContainer: {}", e.message()))?;
    Ok(container)
}

/// StopPodSandbox + RemovePodSandbox (which stop and remove its containers), timed.
pub async fn remove_pod(
    rt: &mut RuntimeServiceClient<Channel>,
    sandbox: &str,
) -> Result<Duration, String> {
    let t = Instant::now();
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: sandbox.to_owned(),
    })
    .await
    .map_err(|e| format!("StopPodSandbox: {}", e.message()))?;
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: sandbox.to_owned(),
    })
    .await
    .map_err(|e| format!("RemovePodSandbox: {}", e.message()))?;
    Ok(t.elapsed())
}

/// PullImage; returns the image ref the runtime answered and the time it took.
pub async fn pull(
    images: &mut ImageServiceClient<Channel>,
    image: &str,
) -> Result<(String, Duration), String> {
    let t = Instant::now();
    let r = images
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: image.to_owned(),
                ..Default::default()
            }),
            auth: None,
            sandbox_config: None,
        })
        .await
        .map_err(|e| format!("PullImage {image}: {}", e.message()))?;
    Ok((r.into_inner().image_ref, t.elapsed()))
}

/// RemoveImage.
pub async fn remove_image(
    images: &mut ImageServiceClient<Channel>,
    image: &str,
) -> Result<(), String> {
    images
        .remove_image(RemoveImageRequest {
            image: Some(ImageSpec {
                image: image.to_owned(),
                ..Default::default()
            }),
        })
        .await
        .map_err(|e| format!("RemoveImage {image}: {}", e.message()))?;
    Ok(())
}

/// Every pod this runtime has: stopped and removed (after a family that failed half-way, and
/// before a runtime is stopped). Errors are ignored: this is clean-up.
pub async fn remove_all_pods(t: &Target) {
    let mut rt = t.runtime().await;
    let Ok(list) = rt
        .list_pod_sandbox(ListPodSandboxRequest { filter: None })
        .await
    else {
        return;
    };
    for pod in list.into_inner().items {
        if let Err(why) = remove_pod(&mut rt, &pod.id).await {
            eprintln!("bench[{}] removing pod {}: {why}", t.kind.name(), pod.id);
        }
    }
}

/// How long a runtime may take to report RuntimeReady and NetworkReady after it answers.
const READY_DEADLINE: Duration = Duration::from_secs(60);

/// Polls CRI `Status` until the runtime reports RuntimeReady and NetworkReady (the network
/// config is in place before either runtime starts, so both must see it).
pub async fn wait_ready(t: &Target) -> Result<(), String> {
    let mut rt = t.runtime().await;
    let deadline = Instant::now() + READY_DEADLINE;
    loop {
        let why = match rt.status(StatusRequest { verbose: false }).await {
            Ok(r) => {
                let conditions = r.into_inner().status.map(|s| s.conditions);
                let not_ready: Vec<String> = ["RuntimeReady", "NetworkReady"]
                    .iter()
                    .filter(|kind| {
                        !conditions
                            .iter()
                            .flatten()
                            .any(|c| c.r#type == **kind && c.status)
                    })
                    .map(|kind| {
                        let reason = conditions
                            .iter()
                            .flatten()
                            .find(|c| c.r#type == *kind)
                            .map(|c| format!("{}: {}", c.reason, c.message))
                            .unwrap_or_else(|| "not reported".into());
                        format!("{kind} false ({reason})")
                    })
                    .collect();
                if not_ready.is_empty() {
                    return Ok(());
                }
                not_ready.join(", ")
            }
            Err(e) => format!("Status: {}", e.message()),
        };
        if Instant::now() > deadline {
            return Err(format!("not ready after {READY_DEADLINE:?}: {why}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Tracking a runtime's processes
// ---------------------------------------------------------------------------------------------

/// A cgroup of its own (v1 `pids` hierarchy; the root of a v2-only host) that a runtime's
/// daemon is moved into right after it started. Shims and monitors double-fork and end up
/// children of PID 1, but a fork never leaves its cgroup unless something moves it (the OCI
/// runtime moves only the containers): so "in this cgroup" is what tells the runtime's own
/// processes from the rest of a busy machine ([`pods::memory_per_pod`]), and dropping the
/// value kills whatever of it is still alive. Moving the daemon changes nothing it measures:
/// a `pids` cgroup has no limit unless one is set.
pub struct Tracker {
    dir: PathBuf,
}

impl Tracker {
    pub fn new(kind: Kind) -> std::io::Result<Self> {
        let v1 = Path::new("/sys/fs/cgroup/pids");
        let base = if v1.join("cgroup.procs").exists() {
            v1
        } else {
            Path::new("/sys/fs/cgroup")
        };
        let dir = base.join(format!(
            "rootstock-bench-{}-{}",
            std::process::id(),
            kind.name()
        ));
        std::fs::create_dir(&dir)?;
        Ok(Self { dir })
    }

    /// Moves `pid` (not its existing children) into the cgroup.
    pub fn adopt(&self, pid: i32) -> std::io::Result<()> {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
    }

    /// The cgroup and every cgroup below it, deepest first.
    fn cgroups(&self) -> Vec<PathBuf> {
        let mut all = vec![self.dir.clone()];
        let mut i = 0;
        while i < all.len() {
            if let Ok(entries) = std::fs::read_dir(&all[i]) {
                all.extend(
                    entries
                        .flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
            i += 1;
        }
        all.reverse();
        all
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        // The runtime was stopped and its pods removed; anything left (a shim of a pod that
        // would not go, a monitor) must not outlive the run.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pids: Vec<i32> = self
                .cgroups()
                .iter()
                .flat_map(|cg| {
                    std::fs::read_to_string(cg.join("cgroup.procs"))
                        .unwrap_or_default()
                        .lines()
                        .filter_map(|l| l.trim().parse().ok())
                        .collect::<Vec<i32>>()
                })
                .collect();
            if pids.is_empty() || Instant::now() > deadline {
                break;
            }
            for pid in pids {
                eprintln!("bench: killing leftover process {pid} ({})", comm(pid));
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for cg in self.cgroups() {
            let _ = std::fs::remove_dir(cg);
        }
    }
}

/// A process's name (`/proc/<pid>/comm`), for messages.
fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
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
    let config = format!(
        "[images.registries.\"{}\"]\ninsecure = true\n{}",
        ctx.registry.host(),
        ctx.net.daemon_config()
    );
    let mut daemon = Daemon::start_with_config(&config).await;
    // The harness starts the daemon with debug logs for the tests' sake; measure it at the
    // level containerd runs at (info), the default of both.
    daemon.set_env("RUST_LOG", Some("info"));
    daemon.restart().await;
    let t = Target {
        kind: Kind::Rootstock,
        socket: daemon.socket.clone(),
        root_dir: daemon.root_dir.clone(),
        pid: daemon.pid().as_raw(),
        handlers: ctx.opts.handlers.clone(),
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
    run.family(t, "memory per pod", pods::memory_per_pod(t, ctx))
        .await;
    run.family(t, "cold pull", images::cold_pull(t, ctx)).await;
    run.family(t, "disk", images::disk(t, ctx)).await;
    run.family(t, "depth", images::depth(t, ctx)).await;
    run.elapsed_secs = started.elapsed().as_secs_f64();
    run
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

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
}

impl RuntimeRun {
    pub fn new(kind: Kind) -> Self {
        Self {
            kind,
            failure: None,
            measures: Vec::new(),
            families: Vec::new(),
            elapsed_secs: 0.0,
        }
    }

    async fn family(
        &mut self,
        t: &Target,
        name: &str,
        measures: impl std::future::Future<Output = Vec<Measure>>,
    ) {
        use futures_util::FutureExt as _;
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

/// One row of the table: a key both runtimes measured (or one did), and their ratio.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub key: String,
    pub unit: &'static str,
    pub rootstock: Option<Outcome>,
    pub containerd: Option<Outcome>,
    /// rootstock / containerd, where both are values and containerd's is not zero.
    pub ratio: Option<f64>,
}

/// The figures of one run of the benchmark, paired into rows by key.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// When the run started (seconds since the epoch): the results' directory name.
    pub unix_time: u64,
    pub options: Options,
    /// Versions and machine facts, `(what, value)`.
    pub environment: Vec<(String, String)>,
    pub runtimes: Vec<RuntimeRun>,
    pub elapsed_secs: f64,
}

impl Report {
    pub fn new(opts: &Options) -> Self {
        Self {
            unix_time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            options: opts.clone(),
            environment: environment(opts),
            runtimes: Vec::new(),
            elapsed_secs: 0.0,
        }
    }

    /// The rows, in the order rootstock measured them (then any key only containerd has).
    pub fn rows(&self) -> Vec<Row> {
        let mut rows: Vec<Row> = Vec::new();
        for run in &self.runtimes {
            // A key the runtimes before did not measure goes right after this runtime's
            // previous row, so a family's rows stay together.
            let mut after: Option<usize> = None;
            for m in &run.measures {
                let i = match rows.iter().position(|r| r.key == m.key) {
                    Some(i) => i,
                    None => {
                        let at = after.map_or(rows.len(), |a| a + 1);
                        rows.insert(
                            at,
                            Row {
                                key: m.key.clone(),
                                unit: m.unit,
                                rootstock: None,
                                containerd: None,
                                ratio: None,
                            },
                        );
                        at
                    }
                };
                after = Some(i);
                let slot = match run.kind {
                    Kind::Rootstock => &mut rows[i].rootstock,
                    Kind::Containerd => &mut rows[i].containerd,
                };
                if slot.is_some() {
                    eprintln!("bench[{}] {}: measured twice", run.kind.name(), m.key);
                    continue;
                }
                *slot = Some(m.outcome.clone());
            }
        }
        for row in &mut rows {
            if let (Some(Outcome::Value(r)), Some(Outcome::Value(c))) =
                (&row.rootstock, &row.containerd)
                && *c != 0.0
                && (r / c).is_finite()
            {
                row.ratio = Some(r / c);
            }
        }
        rows
    }

    /// The measurements of `kind`, if it ran.
    pub fn run_of(&self, kind: Kind) -> Option<&RuntimeRun> {
        self.runtimes.iter().find(|r| r.kind == kind)
    }

    /// The table (and a header naming what ran where) as markdown.
    pub fn markdown(&self) -> String {
        let mode = if self.options.peer {
            "full"
        } else {
            "smoke, rootstock only"
        };
        let mut out = format!("## rootstock vs containerd ({mode})\n\n");
        for (what, value) in &self.environment {
            out.push_str(&format!("- {what}: {value}\n"));
        }
        out.push_str(&format!(
            "- handlers: {}; {} runs per latency figure; {} pods at once; {} pods for memory\n",
            self.options.handlers.join(", "),
            self.options.runs,
            self.options.concurrent,
            self.options.memory_pods
        ));
        let took: Vec<String> = self
            .runtimes
            .iter()
            .map(|r| format!("{} {:.0} s", r.kind.name(), r.elapsed_secs))
            .collect();
        out.push_str(&format!(
            "- took {:.0} s in all ({})\n\n",
            self.elapsed_secs,
            took.join(", ")
        ));
        out.push_str("| row | unit | rootstock | containerd | rootstock/containerd |\n");
        out.push_str("|---|---|--:|--:|--:|\n");
        for row in self.rows() {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                cell(&row.key),
                row.unit,
                self.cell_of(Kind::Rootstock, &row.rootstock),
                self.cell_of(Kind::Containerd, &row.containerd),
                row.ratio.map(|r| format!("{r:.2}")).unwrap_or("–".into())
            ));
        }
        out
    }

    fn cell_of(&self, kind: Kind, outcome: &Option<Outcome>) -> String {
        match (outcome, self.run_of(kind)) {
            (Some(Outcome::Value(v)), _) => number(*v),
            (Some(Outcome::Failed(why)), _) => cell(&format!("failed: {}", shorten(why))),
            (None, None) => "not run".into(),
            (
                None,
                Some(RuntimeRun {
                    failure: Some(why), ..
                }),
            ) => cell(&format!("failed: {}", shorten(why))),
            (None, Some(_)) => "–".into(),
        }
    }

    /// Writes `results.md` and `results.json` into `dir/<unix time>/` and returns that dir.
    pub fn save(&self, dir: &Path) -> std::io::Result<PathBuf> {
        #[derive(Serialize)]
        struct Json<'a> {
            #[serde(flatten)]
            report: &'a Report,
            rows: Vec<Row>,
        }
        let dir = dir.join(self.unix_time.to_string());
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("results.md"), self.markdown())?;
        let json = serde_json::to_vec_pretty(&Json {
            report: self,
            rows: self.rows(),
        })
        .map_err(std::io::Error::other)?;
        std::fs::write(dir.join("results.json"), json)?;
        Ok(dir)
    }
}

/// A figure with the decimals its size deserves.
fn number(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    match v.abs() {
        a if a >= 100.0 => format!("{v:.0}"),
        a if a >= 10.0 => format!("{v:.1}"),
        _ => format!("{v:.2}"),
    }
}

/// Text safe in a markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// A reason cut to about 160 characters: its start and its end, where the cause usually is
/// (`CreateContainer: failed to create … : mount options is too long`). The JSON keeps all.
fn shorten(why: &str) -> String {
    const KEEP: usize = 80;
    let chars: Vec<char> = why.chars().collect();
    if chars.len() <= 2 * KEEP {
        return why.to_owned();
    }
    let head: String = chars[..KEEP].iter().collect();
    let tail: String = chars[chars.len() - KEEP..].iter().collect();
    format!("{head} … {tail}")
}

/// Versions and machine facts for the report's header.
fn environment(opts: &Options) -> Vec<(String, String)> {
    let first_line = |program: &str, args: &[&str]| -> String {
        std::process::Command::new(program)
            .args(args)
            .output()
            .ok()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned()
            })
            .filter(|l| !l.is_empty())
            .unwrap_or_else(|| format!("({program} not found)"))
    };
    let mut env = vec![
        (
            "date".into(),
            first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        ),
        ("kernel".into(), first_line("uname", &["-r"])),
        (
            "cpus".into(),
            std::thread::available_parallelism()
                .map(|n| n.to_string())
                .unwrap_or_default(),
        ),
        (
            "rootstock".into(),
            first_line(
                &crate::daemon::rootstock_bin().display().to_string(),
                &["--version"],
            ),
        ),
    ];
    if opts.peer {
        env.push((
            "containerd".into(),
            first_line(peer::CONTAINERD_BIN, &["--version"]),
        ));
    }
    for handler in &opts.handlers {
        env.push((handler.clone(), first_line(handler, &["--version"])));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(kind: Kind, measures: Vec<Measure>) -> RuntimeRun {
        RuntimeRun {
            measures,
            ..RuntimeRun::new(kind)
        }
    }

    #[test]
    fn rows_pair_keys_keep_families_together_and_give_ratios() {
        let mut report = Report::new(&Options::smoke(Path::new("/nonexistent")));
        report.runtimes = vec![
            run(
                Kind::Rootstock,
                vec![
                    Measure::value("a", "ms", 10.0),
                    Measure::value("monitor", "KiB", 1.0),
                    Measure::value("b", "ms", 5.0),
                ],
            ),
            run(
                Kind::Containerd,
                vec![
                    Measure::value("a", "ms", 20.0),
                    Measure::value("shim", "KiB", 2.0),
                    Measure::failed("b", "ms", "x".repeat(100) + " | the cause"),
                ],
            ),
        ];
        let rows = report.rows();
        let keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, ["a", "shim", "monitor", "b"]);
        assert_eq!(rows[0].ratio, Some(0.5));
        assert_eq!(rows[3].ratio, None);
        let table = report.markdown();
        assert!(table.contains("| a | ms | 10.0 | 20.0 | 0.50 |"), "{table}");
        assert!(table.contains("| shim | KiB | – | 2.00 | – |"), "{table}");
        assert!(table.contains("\\| the cause |"), "{table}");
    }

    #[test]
    fn a_runtime_that_did_not_start_fails_every_row_and_one_not_run_says_so() {
        let mut report = Report::new(&Options::smoke(Path::new("/nonexistent")));
        report.runtimes = vec![run(Kind::Rootstock, vec![Measure::value("a", "ms", 1.0)])];
        assert!(
            report
                .markdown()
                .contains("| a | ms | 1.00 | not run | – |")
        );
        let mut containerd = RuntimeRun::new(Kind::Containerd);
        containerd.failure = Some("no socket".into());
        report.runtimes.push(containerd);
        assert!(
            report
                .markdown()
                .contains("| a | ms | 1.00 | failed: no socket | – |")
        );
    }
}
