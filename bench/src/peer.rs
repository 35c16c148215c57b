//! containerd as the benchmark peer, started privately: its own root, state dir, socket and
//! config in a temp dir, the benchmark's CNI network and registry, `runc` and `crun`
//! handlers on cgroupfs. Never the host's containerd, never its paths (apart from the shim
//! sockets, which containerd 1.6 always puts in `/run/containerd/s/`, named by a hash of our
//! socket's path, and which the shims remove when they exit).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

use rootstock_testkit::mounts::{mount_tmpfs, unmount_under};
use rootstock_testkit::process;

use super::{Ctx, Kind, Target};

/// Debian's containerd (`scripts/install-deps.sh containerd`; 1.6 on Debian 12).
pub const CONTAINERD_BIN: &str = "/usr/bin/containerd";
/// The shim containerd starts per pod for the `io.containerd.runc.v2` runtime type.
const SHIM: &str = "containerd-shim-runc-v2";

/// How long containerd may take to answer on its socket.
const START_DEADLINE: Duration = Duration::from_secs(60);
/// How long removing its pods and then stopping it may take before it is killed.
const STOP_DEADLINE: Duration = Duration::from_secs(60);
/// Lines of its log shown when it fails.
const LOG_TAIL: usize = 40;

/// A running private containerd. [`Containerd::stop`] (or dropping it) removes its pods,
/// stops it, and removes everything it left: shims, mounts, dirs.
pub struct Containerd {
    child: Option<Child>,
    dir: TempDir,
    /// The CRI (and containerd API) socket.
    pub socket: PathBuf,
    /// `root`: content store, snapshots, metadata.
    pub root: PathBuf,
    /// `state`: per-boot state, task bundles and rootfs mounts, on a tmpfs.
    pub state: PathBuf,
}

impl Containerd {
    /// Writes the config and the registry's `hosts.toml`, starts containerd, and waits until
    /// its CRI reports RuntimeReady and NetworkReady. `Err` says why, with its log's tail.
    pub async fn start(ctx: &Ctx) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("rootstock-bench-containerd.")
            .tempdir()
            .map_err(|e| format!("creating containerd's dir: {e}"))?;
        let mut containerd = Self {
            child: None,
            socket: dir.path().join("state/containerd.sock"),
            root: dir.path().join("root"),
            state: dir.path().join("state"),
            dir,
        };
        containerd
            .spawn(ctx)
            .map_err(|e| format!("starting containerd: {e}"))?;
        let target = containerd.target(&[]);
        let ready = async {
            containerd.wait_socket().await?;
            super::wait_ready(&target).await
        };
        if let Err(why) = ready.await {
            let why = format!(
                "containerd: {why}; its log ends with:\n{}",
                containerd.log_tail()
            );
            containerd.shut_down();
            return Err(why);
        }
        Ok(containerd)
    }

    /// The benchmark's view of it, measuring `handlers`.
    pub fn target(&self, handlers: &[String]) -> Target {
        Target {
            kind: Kind::Containerd,
            socket: self.socket.clone(),
            root_dir: self.root.clone(),
            state_dir: self.state.clone(),
            pid: self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0),
            handlers: handlers.to_vec(),
            metrics_url: None,
        }
    }

    /// Removes its pods over CRI, stops it and cleans up (see [`Drop`]).
    pub async fn stop(self) {
        if self.child.is_some() {
            super::remove_all_pods(&self.target(&[])).await;
        }
        // Drop stops it; its own pod removal finds nothing left.
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("containerd.log")
    }

    /// The last [`LOG_TAIL`] lines of its log.
    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL)..].join("\n")
    }

    fn spawn(&mut self, ctx: &Ctx) -> std::io::Result<()> {
        // Its per-boot state on a tmpfs, as under a node's `/run`: rootstock's is too.
        mount_tmpfs(&self.state)?;
        let certs = self.dir.path().join("certs.d");
        let host = ctx.registry.host();
        fs::create_dir_all(certs.join(&host))?;
        fs::write(certs.join(&host).join("hosts.toml"), hosts_toml(&host))?;
        let config = Config {
            root: &self.root,
            state: &self.state,
            socket: &self.socket,
            sandbox_image: &ctx.pause,
            cni_conf_dir: &ctx.net.conf_dir,
            registry_config_path: &certs,
        };
        fs::write(self.config_path(), config.to_toml())?;
        let log = fs::File::create(self.log_path())?;
        let mut cmd = Command::new(CONTAINERD_BIN);
        cmd.arg("--config")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // A benchmark that dies (even SIGKILLed) takes its containerd along. Its shims are not
        // its children and stay; Drop kills them, and so does the `Tracker`.
        process::die_with_parent(&mut cmd);
        self.child = Some(cmd.spawn()?);
        Ok(())
    }

    async fn wait_socket(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if tokio::net::UnixStream::connect(&self.socket).await.is_ok() {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!("exited at start-up ({status})"));
            }
            if Instant::now() > deadline {
                return Err(format!("no socket after {START_DEADLINE:?}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops containerd (SIGTERM, then SIGKILL) and removes what it and its shims left:
    /// processes, mounts under its dir. The dir itself goes with the `TempDir`.
    fn shut_down(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::terminate(&mut child, Duration::from_secs(10));
        }
        self.kill_shims();
        let state = self.state.display().to_string();
        for m in unmount_under(self.dir.path()) {
            if m != state {
                eprintln!("bench[containerd] unmounted leftover {m}");
            }
        }
    }

    /// SIGKILLs the shims of this containerd (their `-address` is our socket) and whatever
    /// runs under them (containers of pods that could not be removed), children first.
    fn kill_shims(&self) {
        let socket = self.socket.display().to_string();
        let table = process_table();
        let shims: Vec<i32> = table
            .iter()
            .filter(|(_, (_, argv))| {
                argv.first().is_some_and(|a| a.ends_with(SHIM))
                    && argv
                        .windows(2)
                        .any(|w| w[0] == "-address" && w[1] == socket)
            })
            .map(|(pid, _)| *pid)
            .collect();
        for shim in shims {
            let mut doomed = descendants(&table, shim);
            doomed.reverse();
            doomed.push(shim);
            for pid in doomed {
                eprintln!("bench[containerd] killing leftover process {pid}");
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if self.child.is_some() {
            // Pods first, over CRI, as kubelet would: stopping containerd leaves them running.
            // From a thread of its own, since this may run on the benchmark's runtime.
            let target = self.target(&[]);
            let removal = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                if let Ok(rt) = rt {
                    rt.block_on(async {
                        let _ =
                            tokio::time::timeout(STOP_DEADLINE, super::remove_all_pods(&target))
                                .await;
                    });
                }
            });
            let _ = removal.join();
        }
        self.shut_down();
    }
}

/// `pid → (ppid, argv)` of every process.
fn process_table() -> Vec<(i32, (i32, Vec<String>))> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let ppid = stat
                .rsplit(')')
                .next()?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            let argv = fs::read(format!("/proc/{pid}/cmdline"))
                .ok()?
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            Some((pid, (ppid, argv)))
        })
        .collect()
}

/// Every descendant of `pid`, parents before their children.
fn descendants(table: &[(i32, (i32, Vec<String>))], pid: i32) -> Vec<i32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        out.extend(
            table
                .iter()
                .filter(|(_, (ppid, _))| *ppid == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    out.remove(0);
    out
}

/// The registry as containerd's `config_path` wants it: plain HTTP, pull and resolve.
fn hosts_toml(host: &str) -> String {
    let url = format!("http://{host}");
    format!(
        "server = {url:?}\n\n[host.{url:?}]\n  capabilities = [\"pull\", \"resolve\"]\n",
        url = url
    )
}

/// The paths and references containerd's config is made of.
struct Config<'a> {
    root: &'a Path,
    state: &'a Path,
    socket: &'a Path,
    sandbox_image: &'a str,
    cni_conf_dir: &'a Path,
    registry_config_path: &'a Path,
}

impl Config<'_> {
    /// containerd 1.6 config (version 2) for these machines:
    /// * own root, state and socket; no debug, metrics or ttrpc listener;
    /// * CRI on cgroupfs with `runc` (the default) and `crun` as `io.containerd.runc.v2`
    ///   handlers, overlayfs, layers kept after unpacking (as rootstock keeps its trees);
    /// * `restrict_oom_score_adj`: these VMs drop CAP_SYS_RESOURCE from every process, so no
    ///   one may lower an `oom_score_adj`, and a sandbox (-998) would not start without it;
    /// * the benchmark's CNI conf dir and Debian's plugins; the local registry through
    ///   `hosts.toml` under `config_path`.
    fn to_toml(&self) -> String {
        // Debug formatting quotes and escapes a string as TOML's basic strings expect.
        let q = |p: &Path| format!("{:?}", p.display().to_string());
        format!(
            r#"version = 2
root = {root}
state = {state}
oom_score = 0
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = {socket}
  uid = 0
  gid = 0

[ttrpc]
  address = ""

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = {opt}

  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = {sandbox_image:?}
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    enable_selinux = false
    enable_tls_streaming = false
    max_container_log_line_size = 16384
    disable_cgroup = false
    disable_apparmor = false
    restrict_oom_score_adj = true
    enable_unprivileged_ports = false
    enable_unprivileged_icmp = false

    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      discard_unpacked_layers = false

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          BinaryName = "/usr/sbin/runc"
          SystemdCgroup = false

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.crun]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.crun.options]
          BinaryName = "/usr/bin/crun"
          SystemdCgroup = false

    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = {cni_conf_dir}
      max_conf_num = 1

    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = {registry_config_path}
"#,
            root = q(self.root),
            state = q(self.state),
            socket = q(self.socket),
            opt = q(&self.root.join("opt")),
            sandbox_image = self.sandbox_image,
            cni_conf_dir = q(self.cni_conf_dir),
            registry_config_path = q(self.registry_config_path),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_only_private_paths_and_the_local_registry() {
        let config = Config {
            root: Path::new("/tmp/x/root"),
            state: Path::new("/tmp/x/state"),
            socket: Path::new("/tmp/x/state/containerd.sock"),
            sandbox_image: "127.0.0.1:5000/bench/pause:latest",
            cni_conf_dir: Path::new("/tmp/net/net.d"),
            registry_config_path: Path::new("/tmp/x/certs.d"),
        }
        .to_toml();
        for line in [
            "root = \"/tmp/x/root\"",
            "  address = \"/tmp/x/state/containerd.sock\"",
            "    path = \"/tmp/x/root/opt\"",
            "    sandbox_image = \"127.0.0.1:5000/bench/pause:latest\"",
            "    restrict_oom_score_adj = true",
            "      conf_dir = \"/tmp/net/net.d\"",
            "      config_path = \"/tmp/x/certs.d\"",
        ] {
            assert!(config.lines().any(|l| l == line), "{line:?} in\n{config}");
        }
        assert!(!config.contains("/var/lib/") && !config.contains("/run/"));
        assert_eq!(
            hosts_toml("127.0.0.1:5000"),
            "server = \"http://127.0.0.1:5000\"\n\n[host.\"http://127.0.0.1:5000\"]\n  \
             capabilities = [\"pull\", \"resolve\"]\n"
        );
    }
}
