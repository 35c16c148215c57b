//! The floor under a pod start (issue 18): what the external tools a pod needs take with no
//! runtime around them, measured in the same run and on the same network as the daemons.
//!
//! Per pod: a network namespace pinned in-process (as rootstock pins it), CNI ADD through the
//! bench's conflist, then `<handler> create` and `<handler> start` of a bundle from
//! `<handler> spec` with the pod's network namespace, the three `/etc` files bind-mounted,
//! and a read-only busybox directory as its root (no overlay, no log, no monitor). The tools
//! run as cheaply as rootstock runs them: by the daemon's own command line for the handler's
//! default configuration (crun from a sealed copy of its binary), and with the kernel's
//! cgroup-migration lock kept warm ([`rootstock_runtime::cgroup_warm`]); without those,
//! crun's create alone took 10–25 ms. Measured one pod at a time and `opts.concurrent` at
//! once, as [`super::pods`] measures the daemons, each paired with rootstock doing the same a
//! moment before or after: a row whose excess over its floor is small has nothing left to
//! remove but the tools' own work.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use rootstock_runtime::cgroup_warm;
use rootstock_runtime::oci::OciRuntime;
use rootstock_runtime::{HandlerConfig, RuntimeConfig};
use rootstock_testkit::netns::{create_netns, remove_netns};
use rootstock_testkit::network::SYSTEM_PLUGINS;

use super::{BurstMeter, Ctx, Measure, Target, WORKLOAD, pods, quantiles, remove_pod, start_pod};

/// Untimed pause after pods are removed: the kernel tears a released network namespace
/// down in the background (two RCU barriers, which the next ADD would wait behind), and a
/// floor is measured without that. Rootstock's paired pods get the same pause.
const SETTLE: Duration = Duration::from_millis(100);

/// Per handler, in rootstock's turn: `opts.runs` single pod starts (after a warm-up) and
/// `opts.bursts` bursts of `opts.concurrent` pods, each floor pod or burst paired with one
/// of rootstock's, taken in alternating order. The rows are the floor's medians and the
/// median of the pairs' differences (rootstock − floor): on a machine whose speed drifts
/// within a run, pairs taken a moment apart compare what separate families cannot.
pub async fn floor(t: &Target, ctx: &Ctx) -> Vec<Measure> {
    let mut out = Vec::new();
    let n = ctx.opts.concurrent;
    for handler in &ctx.opts.handlers {
        let figures = [
            "pod start median".to_owned(),
            format!("{n} pods started at once: wall"),
            format!("{n} pods started at once: CPU per pod"),
        ];
        let keys: Vec<String> = figures
            .iter()
            .flat_map(|f| {
                [
                    format!("floor: {f} ({handler})"),
                    format!("floor: {f}, rootstock over it, paired ({handler})"),
                ]
            })
            .collect();
        match paired(t, ctx, handler).await {
            Ok(pairs) => {
                eprintln!(
                    "bench[floor] {handler}: one pod {}, {n} at once {}, CPU per pod {} \
                     (floor median, rootstock over it: median of the pairs)",
                    pairs[0], pairs[1], pairs[2]
                );
                for (keys, pair) in keys.chunks(2).zip(pairs) {
                    out.push(Measure::millis(keys[0].clone(), pair.floor));
                    out.push(Measure::value(keys[1].clone(), "ms", pair.over_ms));
                }
            }
            Err(why) => {
                eprintln!("bench[floor] {handler}: {why}");
                out.extend(
                    keys.into_iter()
                        .map(|k| Measure::failed(k, "ms", why.clone())),
                );
            }
        }
    }
    out
}

/// A floor's median and the median of rootstock's excess over it, pair by pair.
#[derive(Clone, Copy, Debug)]
struct Pair {
    floor: Duration,
    over_ms: f64,
}

impl Pair {
    fn of(samples: &[(Duration, Duration)]) -> Option<Self> {
        let floors: Vec<Duration> = samples.iter().map(|(f, _)| *f).collect();
        let mut over: Vec<f64> = samples
            .iter()
            .map(|(f, ours)| (ours.as_secs_f64() - f.as_secs_f64()) * 1e3)
            .collect();
        over.sort_by(f64::total_cmp);
        Some(Self {
            floor: quantiles(&floors)?.0,
            over_ms: *over.get(over.len() / 2)?,
        })
    }
}

impl std::fmt::Display for Pair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let floor = self.floor.as_secs_f64() * 1e3;
        write!(f, "{floor:.1} ms (rootstock {:+.1} ms)", self.over_ms)
    }
}

/// `[single start, burst wall, burst CPU per pod]`, each a floor with rootstock's excess.
async fn paired(t: &Target, ctx: &Ctx, handler: &str) -> Result<[Pair; 3], String> {
    let bed = Arc::new(Bed::new(ctx, handler)?);
    pods::ensure_images(t, ctx).await?;
    let mut rt = t.runtime().await;
    let (mut singles, mut walls, mut cpus) = (Vec::new(), Vec::new(), Vec::new());
    // The first pair warms both up (the tools and the image read from disk).
    for run in 0..=ctx.opts.runs {
        let floor_first = run % 2 == 0;
        let mut took = [Duration::ZERO; 2];
        for ours in [!floor_first, floor_first] {
            took[usize::from(ours)] = if ours {
                let name = format!("bench-paired-{handler}-{run}");
                let (pod, up) = start_pod(&mut rt, handler, &name, &ctx.busybox).await?;
                remove_pod(&mut rt, &pod.sandbox).await?;
                tokio::time::sleep(SETTLE).await;
                up.total()
            } else {
                on_bed(&bed, |bed| bed.single()).await?
            };
        }
        if run > 0 {
            singles.push((took[0], took[1]));
        }
    }
    for burst in 0..ctx.opts.bursts.max(1) {
        let floor_first = burst % 2 == 0;
        let mut took = [(Duration::ZERO, Duration::ZERO); 2];
        for ours in [!floor_first, floor_first] {
            took[usize::from(ours)] = if ours {
                let prefix = format!("bench-paired-{burst}");
                let (wall, cpu, _) = pods::at_once(t, ctx, handler, &prefix).await?;
                tokio::time::sleep(SETTLE).await;
                (wall, cpu)
            } else {
                let n = ctx.opts.concurrent;
                on_bed(&bed, move |bed| bed.burst(n)).await?
            };
        }
        walls.push((took[0].0, took[1].0));
        cpus.push((took[0].1, took[1].1));
    }
    let pair = |s: &[(Duration, Duration)]| Pair::of(s).ok_or("no runs (runs or bursts = 0)");
    Ok([pair(&singles)?, pair(&walls)?, pair(&cpus)?])
}

/// Runs `f` on the bed off the async workers (the floor's tools are waited on blocking).
async fn on_bed<T: Send + 'static>(
    bed: &Arc<Bed>,
    f: impl FnOnce(&Bed) -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let bed = Arc::clone(bed);
    tokio::task::spawn_blocking(move || f(&bed))
        .await
        .map_err(|e| format!("task: {e}"))?
}

/// One handler's test bed: the root file system, the runtime's state dir and the CNI chain.
struct Bed {
    dir: tempfile::TempDir,
    /// The handler as the daemon runs it by default (crun from a sealed copy, runc by path),
    /// with its state in the bed.
    oci: OciRuntime,
    /// `<handler> spec` with the root, process and `/etc` mounts set; per pod, the network
    /// namespace and cgroup are added.
    spec: Value,
    /// The conflist's plugins, each with the list's name and version (ADD's stdin).
    plugins: Vec<Value>,
    cni_path: String,
    /// Pods made so far (unique names across bursts).
    made: AtomicUsize,
}

impl Bed {
    fn new(ctx: &Ctx, handler: &str) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let root = dir.path().join("rootfs");
        let dirs = ["bin", "proc", "sys", "dev", "etc", "tmp"].map(|d| root.join(d));
        for d in dirs
            .iter()
            .chain(&["ns", "state", "bundles"].map(|d| dir.path().join(d)))
        {
            std::fs::create_dir_all(d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
        }
        std::fs::copy("/bin/busybox", root.join("bin/busybox"))
            .map_err(|e| format!("copying /bin/busybox: {e}"))?;
        std::os::unix::fs::symlink("busybox", root.join("bin").join(WORKLOAD[0]))
            .map_err(|e| format!("symlink: {e}"))?;
        let mut mounts = Vec::new();
        for f in ["hostname", "hosts", "resolv.conf"] {
            // The root is read-only: the mount points must be in it.
            std::fs::write(root.join("etc").join(f), "").map_err(|e| format!("{f}: {e}"))?;
            let src = dir.path().join(f);
            std::fs::write(&src, "floor\n").map_err(|e| format!("{f}: {e}"))?;
            mounts.push(json!({
                "destination": format!("/etc/{f}"), "type": "bind",
                "source": src, "options": ["rbind", "rprivate"]
            }));
        }
        let out = Command::new(handler)
            .arg("spec")
            .current_dir(dir.path())
            .output()
            .map_err(|e| format!("{handler} spec: {e}"))?;
        if !out.status.success() {
            return Err(format!("{handler} spec: {}", stderr(&out.stderr)));
        }
        let text = std::fs::read(dir.path().join("config.json"))
            .map_err(|e| format!("{handler} spec's config.json: {e}"))?;
        let mut spec: Value =
            serde_json::from_slice(&text).map_err(|e| format!("{handler} spec: {e}"))?;
        spec["root"] = json!({ "path": root, "readonly": true });
        spec["process"]["args"] = json!(WORKLOAD);
        spec["process"]["terminal"] = json!(false);
        if let Some(m) = spec["mounts"].as_array_mut() {
            m.extend(mounts);
        }
        let list = ctx.net.conflist(Vec::new());
        let plugins = list["plugins"]
            .as_array()
            .ok_or("the bench's conflist has no plugins")?
            .iter()
            .map(|p| {
                let mut p = p.clone();
                p["name"] = list["name"].clone();
                p["cniVersion"] = list["cniVersion"].clone();
                p
            })
            .collect();
        let config = RuntimeConfig::default()
            .handlers
            .remove(handler)
            .unwrap_or(HandlerConfig {
                binary: handler.into(),
                sealed_copy: false,
            });
        Ok(Self {
            oci: config.runtime(handler, dir.path().join("state")),
            spec,
            plugins,
            cni_path: format!("{}:{SYSTEM_PLUGINS}", ctx.net.bin_dir.display()),
            made: AtomicUsize::new(0),
            dir,
        })
    }

    /// A new pod's name with its bundle written (untimed).
    fn prepare(&self) -> Result<String, String> {
        let n = self.made.fetch_add(1, Ordering::Relaxed);
        let id = format!("rsfloor-{}-{}-{n}", std::process::id(), self.oci.handler());
        let mut spec = self.spec.clone();
        spec["hostname"] = json!(id);
        spec["linux"]["cgroupsPath"] = json!(format!("/{id}"));
        if let Some(ns) = spec["linux"]["namespaces"].as_array_mut() {
            ns.retain(|n| n["type"] != "network");
            ns.push(json!({ "type": "network", "path": self.netns(&id) }));
        }
        let bundle = self.bundle(&id);
        std::fs::create_dir_all(&bundle).map_err(|e| format!("bundle: {e}"))?;
        std::fs::write(bundle.join("config.json"), spec.to_string())
            .map_err(|e| format!("bundle: {e}"))?;
        Ok(id)
    }

    fn netns(&self, id: &str) -> PathBuf {
        self.dir.path().join("ns").join(id)
    }

    fn bundle(&self, id: &str) -> PathBuf {
        self.dir.path().join("bundles").join(id)
    }

    /// The timed part: pin, ADD, create, start.
    fn up(&self, id: &str) -> Result<(), String> {
        cgroup_warm::warm();
        let ns = self.netns(id);
        create_netns(&ns).map_err(|e| e.to_string())?;
        self.cni("ADD", id, &ns)?;
        let bundle = self.bundle(id);
        self.runtime(&["create", "--bundle", &bundle.to_string_lossy(), id])?;
        self.runtime(&["start", id])
    }

    /// Untimed: the container, its network, its namespace and its bundle removed, each
    /// tried whatever the others did (a pod whose start failed half-way has some of them);
    /// the first error.
    fn down(&self, id: &str) -> Result<(), String> {
        let ns = self.netns(id);
        [
            self.runtime(&["delete", "--force", id]),
            self.cni("DEL", id, &ns),
            remove_netns(&ns).map_err(|e| e.to_string()),
            std::fs::remove_dir_all(self.bundle(id)).map_err(|e| format!("bundle: {e}")),
        ]
        .into_iter()
        .collect()
    }

    /// `<handler> <args>` with its errors in a log file: the container's process inherits
    /// create's stdio, so a pipe there would stay open as long as it runs.
    fn runtime(&self, args: &[&str]) -> Result<(), String> {
        let log = self
            .dir
            .path()
            .join("state")
            .join(format!("{}.log", args[args.len() - 1]));
        let handler = self.oci.handler();
        let status = self
            .oci
            .command()
            .arg("--log")
            .arg(&log)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("{handler}: {e}"))?;
        if !status.success() {
            let said = std::fs::read(&log).unwrap_or_default();
            return Err(format!("{handler} {}: {}", args[0], stderr(&said)));
        }
        Ok(())
    }

    /// The conflist's chain, each plugin given the previous one's result (ADD) or the
    /// chain in reverse (DEL).
    fn cni(&self, command: &str, id: &str, netns: &Path) -> Result<(), String> {
        let mut order: Vec<&Value> = self.plugins.iter().collect();
        if command == "DEL" {
            order.reverse();
        }
        let mut prev: Option<Value> = None;
        for plugin in order {
            let mut stdin = plugin.clone();
            if let Some(p) = &prev {
                stdin["prevResult"] = p.clone();
            }
            let kind = plugin["type"].as_str().unwrap_or_default();
            let bin = self
                .cni_path
                .split(':')
                .map(|d| Path::new(d).join(kind))
                .find(|p| p.is_file())
                .ok_or_else(|| format!("CNI plugin {kind} not found in {}", self.cni_path))?;
            let mut child = Command::new(bin)
                .env("CNI_COMMAND", command)
                .env("CNI_CONTAINERID", id)
                .env("CNI_NETNS", netns)
                .env("CNI_IFNAME", "eth0")
                .env("CNI_PATH", &self.cni_path)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| format!("{kind}: {e}"))?;
            {
                use std::io::Write as _;
                let mut input = child.stdin.take().ok_or("no stdin")?;
                input
                    .write_all(stdin.to_string().as_bytes())
                    .map_err(|e| format!("{kind} stdin: {e}"))?;
            }
            let out = child
                .wait_with_output()
                .map_err(|e| format!("{kind}: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "{kind} {command}: {} {}",
                    String::from_utf8_lossy(&out.stdout).trim(),
                    stderr(&out.stderr)
                ));
            }
            if command == "ADD" {
                prev = Some(serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}"))?);
            }
        }
        Ok(())
    }

    /// One pod started (timed) and removed, then the pause.
    fn single(&self) -> Result<Duration, String> {
        let id = self.prepare()?;
        let started = Instant::now();
        let up = self.up(&id);
        let took = started.elapsed();
        let down = self.down(&id);
        up.and(down)?;
        std::thread::sleep(SETTLE);
        Ok(took)
    }

    /// `n` pods started at once, each on a thread of its own, then removed at once, then
    /// the pause: the wall until the last one runs and the machine's CPU time per pod
    /// started.
    fn burst(&self, n: usize) -> Result<(Duration, Duration), String> {
        let ids = (0..n)
            .map(|_| self.prepare())
            .collect::<Result<Vec<_>, _>>()?;
        let meter = BurstMeter::start();
        let started = Instant::now();
        let ups: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = ids.iter().map(|id| s.spawn(|| self.up(id))).collect();
            handles.into_iter().map(join).collect()
        });
        let wall = started.elapsed();
        let cpu = meter.stop(&format!("floor {}", self.oci.handler()), n);
        let downs: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = ids.iter().map(|id| s.spawn(|| self.down(id))).collect();
            handles.into_iter().map(join).collect()
        });
        ups.into_iter()
            .chain(downs)
            .collect::<Result<Vec<()>, _>>()?;
        std::thread::sleep(SETTLE);
        Ok((wall, cpu))
    }
}

fn join(h: std::thread::ScopedJoinHandle<'_, Result<(), String>>) -> Result<(), String> {
    h.join()
        .unwrap_or_else(|_| Err("a pod's thread panicked".into()))
}

fn stderr(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_owned()
}
