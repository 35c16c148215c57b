//! Pod figures: start (a), stop + remove (b), pods started at once (c), memory (g).
//!
//! Every pod is [`rootstock_test_e2e::cri::pod_config`] with one [`super::WORKLOAD`] container
//! of busybox, started with [`super::start_pod`] and removed with [`super::remove_pod`]: the
//! same requests to both runtimes. Only those calls are timed; pulling the images, connecting
//! clients and clean-up after a failure are not.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use rootstock_runtime::steps::Step;
use tonic::transport::Channel;

use super::{Ctx, Kind, Measure, StartTimes, Target, WORKLOAD, quantiles, remove_all_pods};

/// How long what a pod start runs briefly (the OCI runtime, CNI plugins) gets to exit before
/// processes are counted, and the daemon gets to settle before its memory is read.
const SETTLE: Duration = Duration::from_secs(2);

/// The images a pod needs, pulled untimed: busybox, and on containerd its sandbox image (a
/// node has it before kubelet runs a pod; rootstock needs none).
pub(crate) async fn ensure_images(t: &Target, ctx: &Ctx) -> Result<(), String> {
    let mut images = t.images().await;
    super::pull(&mut images, &ctx.busybox).await?;
    if t.kind == Kind::Containerd {
        super::pull(&mut images, &ctx.pause).await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// (a) + (b) Lifecycle
// ---------------------------------------------------------------------------------------------

/// (a) RunPodSandbox + CreateContainer + StartContainer and (b) StopPodSandbox +
/// RemovePodSandbox, one pod at a time, `opts.runs` times per handler after one untimed
/// warm-up pod (the first exec of the OCI runtime and CNI plugins reads them from disk):
/// median and p90 of each.
pub async fn lifecycle(t: &Target, ctx: &Ctx) -> Vec<Measure> {
    let ready = ensure_images(t, ctx).await;
    let mut rt = t.runtime().await;
    let mut out = Vec::new();
    for handler in &t.handlers {
        let keys = [
            format!("pod start median ({handler})"),
            format!("pod start p90 ({handler})"),
            format!("pod stop+remove median ({handler})"),
            format!("pod stop+remove p90 ({handler})"),
        ];
        let before = step_totals(t).await;
        let samples = match &ready {
            Ok(()) => cycles(&mut rt, handler, ctx).await,
            Err(why) => Err(why.clone()),
        };
        if samples.is_ok() {
            out.extend(step_means(t, handler, before, step_totals(t).await));
        }
        let figures = samples.and_then(|(up, down)| {
            let median = |part: fn(&StartTimes) -> Duration| {
                quantiles(&up.iter().map(part).collect::<Vec<_>>()).map(|(m, _)| m)
            };
            let ((up50, up90), (down50, down90)) =
                quantiles(&up.iter().map(StartTimes::total).collect::<Vec<_>>())
                    .zip(quantiles(&down))
                    .ok_or_else(|| "no runs (runs = 0)".to_owned())?;
            let parts = median(|s| s.run)
                .zip(median(|s| s.create_start))
                .unwrap_or_default();
            Ok(([up50, up90, down50, down90], parts))
        });
        match figures {
            Ok((figures, (run, create_start))) => {
                // The parts tell a change in the runtime's own work from one in CNI ADD.
                eprintln!(
                    "bench[{}] pod lifecycle ({handler}): start median {:.1} ms (medians: \
                     RunPodSandbox {:.1}, CreateContainer + StartContainer {:.1}), p90 {:.1} ms; \
                     stop+remove median {:.1} ms, p90 {:.1} ms",
                    t.kind.name(),
                    figures[0].as_secs_f64() * 1e3,
                    run.as_secs_f64() * 1e3,
                    create_start.as_secs_f64() * 1e3,
                    figures[1].as_secs_f64() * 1e3,
                    figures[2].as_secs_f64() * 1e3,
                    figures[3].as_secs_f64() * 1e3,
                );
                out.extend(
                    keys.into_iter()
                        .zip(figures)
                        .map(|(key, d)| Measure::millis(key, d)),
                );
            }
            Err(why) => {
                eprintln!("bench[{}] pod lifecycle ({handler}): {why}", t.kind.name());
                out.extend(
                    keys.into_iter()
                        .map(|k| Measure::failed(k, "ms", why.clone())),
                );
            }
        }
    }
    out
}

/// The steps of a pod start that rootstock times, in the order a start takes them (CNI ADD
/// overlaps everything after `pin_namespaces` in RunPodSandbox; the lease overlaps the monitor's
/// start, the mount and the spec).
const STEPS: [&str; 8] = [
    Step::PinNamespaces.name(),
    CNI_ADD,
    Step::ImageLease.name(),
    Step::MonitorStart.name(),
    Step::RootfsMount.name(),
    Step::Spec.name(),
    Step::RuntimeCreate.name(),
    Step::RuntimeStart.name(),
];

/// CNI ADD, which rootstock times in a histogram of its own.
const CNI_ADD: &str = "cni_add";

/// Per step, the `(sum, count)` of rootstock's step histograms (CNI ADD's from its own),
/// read from its metrics endpoint; `None` without one (containerd) or when it cannot be read.
async fn step_totals(t: &Target) -> Option<HashMap<String, (f64, f64)>> {
    let url = t.metrics_url.as_ref()?;
    let text = match reqwest::get(url.as_str()).await {
        Ok(resp) => resp.text().await,
        Err(e) => Err(e),
    };
    let text = text
        .map_err(|e| eprintln!("bench[{}] scraping {url}: {e}", t.kind.name()))
        .ok()?;
    let mut out: HashMap<String, (f64, f64)> = HashMap::new();
    // Lines such as `rootstock_pod_start_step_duration_seconds_sum{step="spec"} 0.0012`.
    for line in text.lines() {
        let Some((series, value)) = line.split_once(' ') else {
            continue;
        };
        let Some((name, labels)) = series.split_once('{') else {
            continue;
        };
        let step = match (name, labels.trim_end_matches('}')) {
            (
                "rootstock_pod_start_step_duration_seconds_sum"
                | "rootstock_pod_start_step_duration_seconds_count",
                labels,
            ) => labels
                .strip_prefix("step=\"")
                .and_then(|l| l.strip_suffix('"')),
            (
                "rootstock_cni_operation_duration_seconds_sum"
                | "rootstock_cni_operation_duration_seconds_count",
                "operation=\"add\"",
            ) => Some(CNI_ADD),
            _ => None,
        };
        if let (Some(step), Ok(v)) = (step, value.trim().parse::<f64>()) {
            let entry = out.entry(step.to_owned()).or_default();
            if name.ends_with("_sum") {
                entry.0 = v;
            } else {
                entry.1 = v;
            }
        }
    }
    Some(out)
}

/// The mean of each step over the pods started between the two readings, in ms, printed and
/// as rows "pod start step mean: <step> (<handler>)": where a pod start's time goes, from the
/// daemon itself. Nothing for a target without a metrics endpoint.
fn step_means(
    t: &Target,
    handler: &str,
    before: Option<HashMap<String, (f64, f64)>>,
    after: Option<HashMap<String, (f64, f64)>>,
) -> Vec<Measure> {
    if t.metrics_url.is_none() {
        return Vec::new();
    }
    let (before, after) = (before.unwrap_or_default(), after.unwrap_or_default());
    let mut printed = Vec::new();
    let rows = STEPS
        .iter()
        .map(|step| {
            let key = format!("pod start step mean: {step} ({handler})");
            let (s0, c0) = before.get(*step).copied().unwrap_or_default();
            let (s1, c1) = after.get(*step).copied().unwrap_or_default();
            if c1 > c0 {
                let ms = (s1 - s0) / (c1 - c0) * 1e3;
                printed.push(format!("{step} {ms:.2}"));
                Measure::value(key, "ms", ms)
            } else {
                Measure::failed(key, "ms", "the daemon timed no such step")
            }
        })
        .collect();
    eprintln!(
        "bench[{}] pod start steps ({handler}), mean ms: {}",
        t.kind.name(),
        printed.join(", ")
    );
    rows
}

/// The warm-up pod, then `opts.runs` timed start/remove cycles: `(starts, removals)`.
async fn cycles(
    rt: &mut RuntimeServiceClient<Channel>,
    handler: &str,
    ctx: &Ctx,
) -> Result<(Vec<StartTimes>, Vec<Duration>), String> {
    cycle(
        rt,
        handler,
        &format!("bench-warm-up-{handler}"),
        &ctx.busybox,
    )
    .await
    .map_err(|why| format!("warm-up pod: {why}"))?;
    let (mut up, mut down) = (Vec::new(), Vec::new());
    for n in 0..ctx.opts.runs {
        let name = format!("bench-{handler}-{n}");
        let (u, d) = cycle(rt, handler, &name, &ctx.busybox)
            .await
            .map_err(|why| format!("run {}: {why}", n + 1))?;
        up.push(u);
        down.push(d);
    }
    Ok((up, down))
}

/// One pod started and removed: `(start, stop+remove)`.
async fn cycle(
    rt: &mut RuntimeServiceClient<Channel>,
    handler: &str,
    name: &str,
    image: &str,
) -> Result<(StartTimes, Duration), String> {
    let (pod, up) = super::start_pod(rt, handler, name, image).await?;
    let down = super::remove_pod(rt, &pod.sandbox).await?;
    Ok((up, down))
}

// ---------------------------------------------------------------------------------------------
// (c) Pods at once
// ---------------------------------------------------------------------------------------------

/// (c) `opts.concurrent` pods started at once, each by its own task over its own connection:
/// the wall time until the last one runs; then all of them stopped and removed at once, timed
/// the same way. Per handler, the median of `opts.bursts` such bursts.
pub async fn concurrent(t: &Target, ctx: &Ctx) -> Vec<Measure> {
    let n = ctx.opts.concurrent;
    let ready = ensure_images(t, ctx).await;
    let mut out = Vec::new();
    for handler in &t.handlers {
        let up_key = format!("{n} pods started at once: wall ({handler})");
        let cpu_key = format!("{n} pods started at once: CPU per pod ({handler})");
        let down_key = format!("{n} pods stopped+removed at once: wall ({handler})");
        let result = match &ready {
            Ok(()) => bursts(t, ctx, handler).await,
            Err(why) => Err(why.clone()),
        };
        match result {
            Ok((up, cpu, down)) => {
                eprintln!(
                    "bench[{}] {n} pods at once ({handler}): started in {:.0} ms ({:.1} ms of \
                     CPU per pod), removed in {:.0} ms (medians of {} bursts)",
                    t.kind.name(),
                    up.as_secs_f64() * 1e3,
                    cpu.as_secs_f64() * 1e3,
                    down.as_secs_f64() * 1e3,
                    ctx.opts.bursts.max(1)
                );
                out.push(Measure::millis(up_key, up));
                out.push(Measure::millis(cpu_key, cpu));
                out.push(Measure::millis(down_key, down));
            }
            Err(why) => {
                eprintln!(
                    "bench[{}] {n} pods at once ({handler}): {why}",
                    t.kind.name()
                );
                remove_all_pods(t).await;
                out.push(Measure::failed(up_key, "ms", why.clone()));
                out.push(Measure::failed(cpu_key, "ms", why.clone()));
                out.push(Measure::failed(down_key, "ms", why));
            }
        }
    }
    out
}

/// The medians of `opts.bursts` runs of [`at_once`].
async fn bursts(
    t: &Target,
    ctx: &Ctx,
    handler: &str,
) -> Result<(Duration, Duration, Duration), String> {
    let (mut ups, mut cpus, mut downs) = (Vec::new(), Vec::new(), Vec::new());
    for burst in 0..ctx.opts.bursts.max(1) {
        let (up, cpu, down) = at_once(t, ctx, handler, &format!("bench-at-once{burst}")).await?;
        ups.push(up);
        cpus.push(cpu);
        downs.push(down);
    }
    let median = |d: &[Duration]| super::quantiles(d).map_or(Duration::ZERO, |(m, _)| m);
    Ok((median(&ups), median(&cpus), median(&downs)))
}

/// `(start wall time, the machine's CPU time per pod started, stop+remove wall time)` of
/// `opts.concurrent` pods named `<prefix>-…`.
pub(crate) async fn at_once(
    t: &Target,
    ctx: &Ctx,
    handler: &str,
    prefix: &str,
) -> Result<(Duration, Duration, Duration), String> {
    // Connected before the clock starts: kubelet keeps its connection.
    let mut clients = Vec::new();
    for _ in 0..ctx.opts.concurrent {
        clients.push(t.runtime().await);
    }
    let meter = super::BurstMeter::start();
    let (up, started_pods) = start_at_once(clients, handler, &ctx.busybox, prefix).await?;
    let label = format!("{} {handler}", t.kind.name());
    let cpu = meter.stop(&label, ctx.opts.concurrent);
    let mut failures = Vec::new();
    let started = Instant::now();
    let tasks: Vec<_> = started_pods
        .into_iter()
        .map(|(mut rt, pod)| {
            tokio::spawn(async move { super::remove_pod(&mut rt, &pod.sandbox).await })
        })
        .collect();
    for task in tasks {
        match task.await {
            Ok(Ok(_)) => {}
            Ok(Err(why)) => failures.push(why),
            Err(e) => failures.push(format!("task: {e}")),
        }
    }
    let down = started.elapsed();
    if let Some(first) = failures.first() {
        return Err(format!(
            "{} of {} pods failed to stop or be removed, first: {first}",
            failures.len(),
            ctx.opts.concurrent
        ));
    }
    Ok((up, cpu, down))
}

/// One pod per client (named `<prefix>-<handler>-<i>`), all started at once, each by its own
/// task: the wall time until the last one runs, and each pod with its client.
pub(crate) async fn start_at_once(
    clients: Vec<RuntimeServiceClient<Channel>>,
    handler: &str,
    image: &str,
    prefix: &str,
) -> Result<(Duration, Vec<(RuntimeServiceClient<Channel>, super::Pod)>), String> {
    let n = clients.len();
    let started = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut rt)| {
            let (handler, image) = (handler.to_owned(), image.to_owned());
            let name = format!("{prefix}-{handler}-{i}");
            tokio::spawn(async move {
                let pod = super::start_pod(&mut rt, &handler, &name, &image).await;
                (rt, pod)
            })
        })
        .collect();
    let mut started_pods = Vec::new();
    let mut failures = Vec::new();
    for task in tasks {
        match task.await {
            Ok((rt, Ok((pod, _)))) => started_pods.push((rt, pod)),
            Ok((_, Err(why))) => failures.push(why),
            Err(e) => failures.push(format!("task: {e}")),
        }
    }
    let up = started.elapsed();
    if let Some(first) = failures.first() {
        return Err(format!(
            "{} of {n} pods failed to start, first: {first}",
            failures.len(),
        ));
    }
    Ok((up, started_pods))
}

// ---------------------------------------------------------------------------------------------
// (g) Memory
// ---------------------------------------------------------------------------------------------

/// Resident memory of one process, KiB.
#[derive(Clone, Copy, Debug, Default)]
struct Usage {
    /// `VmRSS` of `/proc/<pid>/status`.
    rss: u64,
    /// `Pss` of `/proc/<pid>/smaps_rollup`: shared pages divided among their users, so that
    /// ten shims of one binary count its text once.
    pss: u64,
}

impl std::ops::Add for Usage {
    type Output = Usage;
    fn add(self, other: Usage) -> Usage {
        Usage {
            rss: self.rss + other.rss,
            pss: self.pss + other.pss,
        }
    }
}

fn usage(pid: i32) -> Option<Usage> {
    let field = |file: &str, name: &str| -> Option<u64> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
    };
    Some(Usage {
        rss: field("status", "VmRSS:")?,
        pss: field("smaps_rollup", "Pss:")?,
    })
}

/// (g) The daemon's resident memory right after it started, before anything ran.
pub fn memory_idle(t: &Target) -> Vec<Measure> {
    match usage(t.pid) {
        Some(u) => {
            eprintln!(
                "bench[{}] daemon idle: RSS {} KiB, PSS {} KiB",
                t.kind.name(),
                u.rss,
                u.pss
            );
            vec![
                Measure::value("daemon idle RSS", "MiB", u.rss as f64 / 1024.0),
                Measure::value("daemon idle PSS", "MiB", u.pss as f64 / 1024.0),
            ]
        }
        None => {
            let why = format!("cannot read the memory of pid {}", t.pid);
            vec![
                Measure::failed("daemon idle RSS", "MiB", why.clone()),
                Measure::failed("daemon idle PSS", "MiB", why),
            ]
        }
    }
}

/// (g) What the runtime adds per running pod: `opts.memory_pods` pods are started on the
/// first handler, then the daemon's growth plus every process that did not exist before and
/// is the runtime's (in the daemon's own cgroup, see [`super::Tracker`], or a descendant of
/// such a process or of the daemon: shims, monitors, pause and pod-init processes), less the
/// workload processes (command line [`WORKLOAD`]), divided by the pods. The PSS of every
/// command name is a row too, so the sum can be read.
pub async fn memory_per_pod(t: &Target, ctx: &Ctx) -> Vec<Measure> {
    let handler = t.handlers.first().map(String::as_str).unwrap_or("runc");
    let keys = [
        (format!("memory per running pod: RSS ({handler})"), "KiB"),
        (format!("memory per running pod: PSS ({handler})"), "KiB"),
        (
            format!("memory per running pod: PSS of the daemon's growth ({handler})"),
            "KiB",
        ),
        (
            format!("memory per running pod: processes ({handler})"),
            "count",
        ),
    ];
    let result = per_pod(t, ctx, handler).await;
    remove_all_pods(t).await;
    match result {
        Ok((figures, by_name)) => {
            let mut out: Vec<Measure> = keys
                .into_iter()
                .zip(figures)
                .map(|((key, unit), v)| Measure::value(key, unit, v))
                .collect();
            out.extend(by_name.into_iter().map(|(name, pss)| {
                Measure::value(
                    format!("memory per running pod: PSS of `{name}` ({handler})"),
                    "KiB",
                    pss,
                )
            }));
            out
        }
        Err(why) => {
            eprintln!("bench[{}] memory per pod: {why}", t.kind.name());
            keys.into_iter()
                .map(|(key, unit)| Measure::failed(key, unit, why.clone()))
                .collect()
        }
    }
}

/// `([RSS, PSS, daemon growth PSS, processes] per pod, PSS per pod by command name)`.
async fn per_pod(
    t: &Target,
    ctx: &Ctx,
    handler: &str,
) -> Result<([f64; 4], BTreeMap<String, f64>), String> {
    let pods = ctx.opts.memory_pods;
    if pods == 0 {
        return Err("no pods (memory_pods = 0)".into());
    }
    ensure_images(t, ctx).await?;
    let baseline = Baseline::take(t).await?;
    let mut rt = t.runtime().await;
    for i in 0..pods {
        super::start_pod(&mut rt, handler, &format!("bench-memory-{i}"), &ctx.busybox)
            .await
            .map_err(|why| format!("pod {}: {why}", i + 1))?;
    }
    let footprint = baseline.footprint(t, pods, handler).await?;
    Ok((footprint.per_pod, footprint.by_name))
}

/// The machine before pods are started: the daemon's cgroup, every process and the daemon's
/// memory, read after [`SETTLE`].
pub(crate) struct Baseline {
    cgroup: String,
    processes: HashMap<i32, Proc>,
    daemon: Usage,
}

/// What `pods` running pods cost, from [`Baseline::footprint`].
pub(crate) struct Footprint {
    /// `[RSS, PSS, daemon growth PSS, processes]` per pod (KiB, KiB, KiB, count).
    pub per_pod: [f64; 4],
    /// PSS per pod by command name.
    pub by_name: BTreeMap<String, f64>,
    /// The daemon's memory with the pods running.
    pub daemon_rss_kib: u64,
    pub daemon_pss_kib: u64,
}

impl Baseline {
    pub(crate) async fn take(t: &Target) -> Result<Self, String> {
        let cgroup = pids_cgroup(t.pid)
            .filter(|cg| cg != "/")
            .ok_or("the daemon has no cgroup of its own to tell its processes by")?;
        tokio::time::sleep(SETTLE).await;
        Ok(Self {
            cgroup,
            processes: processes(),
            daemon: usage(t.pid)
                .ok_or_else(|| format!("cannot read the memory of pid {}", t.pid))?,
        })
    }

    /// After [`SETTLE`]: the daemon's growth plus every runtime process added since the
    /// baseline (see [`runtime_processes`]), divided by `pods`.
    pub(crate) async fn footprint(
        &self,
        t: &Target,
        pods: usize,
        handler: &str,
    ) -> Result<Footprint, String> {
        tokio::time::sleep(SETTLE).await;
        let daemon_after =
            usage(t.pid).ok_or_else(|| format!("cannot read the memory of pid {}", t.pid))?;
        let after = processes();
        let added = runtime_processes(&self.processes, &after, t.pid, &self.cgroup, &t.state_dir);
        let mut total = Usage::default();
        let mut by_name: BTreeMap<String, (usize, Usage)> = BTreeMap::new();
        for pid in &added {
            // A process that exited since the listing adds nothing.
            let Some(u) = usage(*pid) else { continue };
            total = total + u;
            let entry = by_name.entry(after[pid].name()).or_default();
            entry.0 += 1;
            entry.1 = entry.1 + u;
        }
        let growth_rss = daemon_after.rss as f64 - self.daemon.rss as f64;
        let growth_pss = daemon_after.pss as f64 - self.daemon.pss as f64;
        let n = pods.max(1) as f64;
        let summary: Vec<String> = by_name
            .iter()
            .map(|(name, (count, u))| format!("{count} × {name} (PSS {} KiB)", u.pss))
            .collect();
        eprintln!(
            "bench[{}] memory of {pods} pods ({handler}): daemon grew by {growth_rss} KiB RSS, \
             {growth_pss} KiB PSS; added processes: {}",
            t.kind.name(),
            if summary.is_empty() {
                "none".to_owned()
            } else {
                summary.join(", ")
            }
        );
        Ok(Footprint {
            per_pod: [
                (growth_rss + total.rss as f64) / n,
                (growth_pss + total.pss as f64) / n,
                growth_pss / n,
                added.len() as f64 / n,
            ],
            by_name: by_name
                .into_iter()
                .map(|(name, (_, u))| (name, u.pss as f64 / n))
                .collect(),
            daemon_rss_kib: daemon_after.rss,
            daemon_pss_kib: daemon_after.pss,
        })
    }
}

/// What the memory figure needs of a process.
#[derive(Clone, Debug)]
struct Proc {
    ppid: i32,
    /// Start time in clock ticks since boot: with the pid, the process's identity.
    start: u64,
    comm: String,
    cmdline: Vec<String>,
    /// Its cgroup in the hierarchy [`pids_cgroup`] reads.
    cgroup: Option<String>,
}

impl Proc {
    /// The program's name as started (`argv[0]`'s file name: `sh` rather than `busybox`, and
    /// not cut to 15 bytes as `comm` is), else `comm`.
    fn name(&self) -> String {
        self.cmdline
            .first()
            .and_then(|arg0| arg0.rsplit('/').next())
            .filter(|name| !name.is_empty())
            .unwrap_or(&self.comm)
            .to_owned()
    }
}

/// Every process of the machine by pid.
fn processes() -> HashMap<i32, Proc> {
    let mut all = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return all;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The name is parenthesised and may hold anything: the fields follow the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let (Some(ppid), Some(start)) = (
            fields.get(1).and_then(|v| v.parse().ok()),
            fields.get(19).and_then(|v| v.parse().ok()),
        ) else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .unwrap_or_default()
            .split(|b| *b == 0)
            .filter(|arg| !arg.is_empty())
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect();
        all.insert(
            pid,
            Proc {
                ppid,
                start,
                comm: stat[open + 1..close].to_owned(),
                cmdline,
                cgroup: pids_cgroup(pid),
            },
        );
    }
    all
}

/// The cgroup of `pid` in the v1 `pids` hierarchy (or the v2 one on a v2-only host), the
/// hierarchy [`super::Tracker`] makes its cgroup in.
fn pids_cgroup(pid: i32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let line_of = |controllers: &str| {
        text.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, c, path) = (parts.next()?, parts.next()?, parts.next()?);
            c.split(',')
                .any(|c| c == controllers)
                .then(|| path.to_owned())
        })
    };
    line_of("pids").or_else(|| {
        text.lines()
            .find_map(|l| l.strip_prefix("0::"))
            .map(str::to_owned)
    })
}

/// The processes in `after` that were not in `before` and are the runtime's: in `cgroup` (or
/// below it), or descended from one that is, or from the daemon, or a rootstock monitor
/// whose run directory is in `state_dir`; not the daemon itself (its growth is counted
/// apart) and not a workload.
fn runtime_processes(
    before: &HashMap<i32, Proc>,
    after: &HashMap<i32, Proc>,
    daemon: i32,
    cgroup: &str,
    state_dir: &Path,
) -> Vec<i32> {
    let in_cgroup = |p: &Proc| {
        p.cgroup.as_deref().is_some_and(|cg| {
            cg == cgroup
                || cg
                    .strip_prefix(cgroup)
                    .is_some_and(|rest| rest.starts_with('/'))
        })
    };
    let ours = |pid: i32| {
        let mut cur = pid;
        // The parent chain is short; the bound only guards against a pid reused mid-walk.
        for _ in 0..64 {
            let Some(p) = after.get(&cur) else {
                return false;
            };
            // rootstock's monitors leave the daemon's cgroup at spawn (issue 15: a restart
            // that kills that cgroup must not take them along): known by name and by their
            // run directory, since other daemons' (tests running meanwhile) are not ours.
            // (The bench's pods have no pod-init, the one other process rootstock starts.)
            let own_monitor = p.comm == "rootstock-monit"
                && p.cmdline
                    .iter()
                    .any(|a| Path::new(a).starts_with(state_dir));
            if cur == daemon || in_cgroup(p) || own_monitor {
                return true;
            }
            if p.ppid <= 1 {
                return false;
            }
            cur = p.ppid;
        }
        false
    };
    let mut added: Vec<i32> = after
        .iter()
        .filter(|(pid, p)| {
            **pid != daemon
                && before.get(pid).is_none_or(|b| b.start != p.start)
                && p.cmdline != WORKLOAD
                && ours(**pid)
        })
        .map(|(pid, _)| *pid)
        .collect();
    added.sort();
    added
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc(ppid: i32, start: u64, comm: &str, cmdline: &[&str], cgroup: &str) -> Proc {
        Proc {
            ppid,
            start,
            comm: comm.into(),
            cmdline: cmdline.iter().map(|s| s.to_string()).collect(),
            cgroup: Some(cgroup.into()),
        }
    }

    #[test]
    fn runtime_processes_are_new_and_in_the_daemons_cgroup_or_below_it() {
        let cg = "/rootstock-bench-1-containerd";
        let before = HashMap::from([
            (10, proc(1, 5, "containerd", &["containerd"], cg)),
            (11, proc(1, 5, "cargo", &["cargo"], "/")),
            (20, proc(1, 6, "old-shim", &["shim"], cg)),
        ]);
        let mut after = before.clone();
        after.extend([
            // A shim, reparented to PID 1 but still in the cgroup.
            (30, proc(1, 9, "shim", &["shim"], cg)),
            // Its pause container, moved to a cgroup of its own by runc.
            (31, proc(30, 9, "sh", &["sh", "-c", "pause"], "/k8s.io/abc")),
            (
                32,
                proc(31, 9, "sleep", &["sleep", "2147483647"], "/k8s.io/abc"),
            ),
            // The workload.
            (33, proc(30, 9, "sleep", &WORKLOAD, "/k8s.io/def")),
            // A build on the same machine.
            (40, proc(11, 9, "rustc", &["rustc"], "/")),
            // A nested cgroup of the daemon's, and a look-alike prefix that is not one.
            (
                41,
                proc(1, 9, "x", &["x"], "/rootstock-bench-1-containerd/k8s.io/x"),
            ),
            (
                42,
                proc(1, 9, "y", &["y"], "/rootstock-bench-1-containerd2"),
            ),
            // Pid 20 reused by a new process.
            (20, proc(1, 9, "new-shim", &["shim"], cg)),
        ]);
        assert_eq!(
            runtime_processes(&before, &after, 10, cg, Path::new("/state")),
            vec![20, 30, 31, 32, 41]
        );
        // rootstock's monitors left the cgroup: this daemon's by its state dir, not another's.
        let monitor = |run_dir: &str| {
            let args = ["rootstock-monitor", "--run-dir", run_dir];
            proc(1, 9, "rootstock-monit", &args, "/rootstock-monitors")
        };
        after.insert(50, monitor("/state/containers/a"));
        after.insert(51, monitor("/other/state/containers/b"));
        assert_eq!(
            runtime_processes(&before, &after, 10, cg, Path::new("/state")),
            vec![20, 30, 31, 32, 41, 50]
        );
    }

    #[test]
    fn own_memory_and_cgroup_are_readable() {
        let me = std::process::id() as i32;
        let u = usage(me).unwrap();
        assert!(u.rss > 0 && u.pss > 0 && u.pss <= u.rss + 64, "{u:?}");
        assert!(pids_cgroup(me).unwrap().starts_with('/'));
        let all = processes();
        assert_eq!(all[&me].cmdline.first(), std::env::args().next().as_ref());
    }
}
