//! The rootstock daemon under test: the real binary, a private root, state dir and socket per
//! test, a CRI client over the socket, and a guaranteed stop and clean-up (also on panic).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rootstock_testkit::process::terminate;
use tempfile::TempDir;
use tonic::transport::{Channel, Endpoint, Uri};

/// How long the daemon may take to answer on its socket after being started.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// The `rootstock` binary: `$ROOTSTOCK_BIN`, else the one cargo built next to this test
/// (`target/<profile>/rootstock`; `make test` builds it before running the tests).
pub fn rootstock_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("ROOTSTOCK_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test binary> → target/<profile>/rootstock
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("rootstock"))
        .expect("test binary has no target dir");
    assert!(
        bin.exists(),
        "{} does not exist: run `cargo build --bins` first (make test does)",
        bin.display()
    );
    bin
}

/// Runs `rootstock ARGS…` to completion (for commands and start-ups expected to fail).
/// A daemon that keeps running past `timeout` is killed and the test fails.
pub fn run_rootstock(args: &[&str], timeout: Duration) -> Output {
    let mut child = Command::new(rootstock_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning rootstock");
    let deadline = Instant::now() + timeout;
    while child.try_wait().expect("waiting for rootstock").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collecting output");
            panic!(
                "rootstock {args:?} still running after {timeout:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("collecting output")
}

/// A private daemon. Dropping it stops the daemon (SIGTERM, then SIGKILL) and removes its
/// directories.
pub struct Daemon {
    child: Option<Child>,
    dir: TempDir,
    extra_config: String,
    /// Extra environment for the daemon, applied at every (re)start.
    env: Vec<(String, String)>,
    /// A soft `RLIMIT_NOFILE` for the next starts.
    nofile_soft: Option<u64>,
    /// The CRI socket.
    pub socket: PathBuf,
    /// `root_dir`: the persistent store.
    pub root_dir: PathBuf,
    /// `state_dir`: per-boot state.
    pub state_dir: PathBuf,
}

impl Daemon {
    /// Starts a daemon with the embedded defaults and private paths.
    pub async fn start() -> Self {
        Self::start_with_config("").await
    }

    /// Starts a daemon whose config file holds `extra_config` (TOML); the paths are always
    /// the private ones, given as command-line overrides.
    pub async fn start_with_config(extra_config: &str) -> Self {
        Self::start_in(extra_config, false).await
    }

    /// [`Daemon::start_with_config`] with `state_dir` on a tmpfs of its own, as under a
    /// node's `/run` (the dev VM's `/run` is disk): what a benchmark of a node should see.
    /// The tmpfs goes with the daemon's dirs when it is dropped.
    pub async fn start_with_state_on_tmpfs(extra_config: &str) -> Self {
        Self::start_in(extra_config, true).await
    }

    async fn start_in(extra_config: &str, state_on_tmpfs: bool) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("rootstock-e2e-")
            .tempdir()
            .expect("creating the daemon's temp dir");
        // Searchable by all (as /run is, above the default state dir): the OCI runtime
        // reaches a user-namespaced pod's rootfs from inside the pod's user namespace.
        fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o711),
        )
        .expect("chmod the daemon's temp dir");
        let mut daemon = Self {
            child: None,
            socket: dir.path().join("state/rootstock.sock"),
            root_dir: dir.path().join("root"),
            state_dir: dir.path().join("state"),
            extra_config: extra_config.to_owned(),
            env: Vec::new(),
            nofile_soft: None,
            dir,
        };
        if state_on_tmpfs {
            rootstock_testkit::mounts::mount_tmpfs(&daemon.state_dir)
                .expect("mounting a tmpfs on the daemon's state dir");
        }
        daemon.spawn().await;
        daemon
    }

    /// Sets (`Some`) or clears (`None`) an environment variable for the next starts, e.g.
    /// `ROOTSTOCK_FAILPOINT`.
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.env.retain(|(k, _)| k != key);
        if let Some(value) = value {
            self.env.push((key.to_owned(), value.to_owned()));
        }
    }

    /// Sets (`Some`) or clears (`None`) a soft `RLIMIT_NOFILE` for the next starts (a daemon
    /// that must live with few file descriptors).
    pub fn set_nofile_soft(&mut self, limit: Option<u64>) {
        self.nofile_soft = limit;
    }

    /// The daemon's config file (written at every start).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    /// The daemon's private CNI config dir (empty at start: NetworkReady is false), unless the
    /// test's own config has a `[cni]` table.
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir.path().join("net.d")
    }

    /// The config file's text: the test's own, plus private CNI dirs so that no test daemon
    /// ever reads the host's `/etc/cni/net.d` or shares a result cache.
    fn config_text(&self) -> String {
        let mut text = self.extra_config.clone();
        if !text.contains("[cni]") {
            text.push_str(&format!(
                "\n[cni]\nconf_dirs = [\"{}\"]\ncache_dir = \"{}\"\n",
                self.cni_conf_dir().display(),
                self.dir.path().join("cni-cache").display()
            ));
        }
        text
    }

    /// Everything the daemon has logged so far (all starts).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// The running daemon's pid.
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("daemon not running").id() as i32)
    }

    /// The CRI socket (for clients other than [`Daemon::runtime`]: crictl, custom channels).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The command-line arguments that point the binary at this daemon's paths.
    pub fn path_args(&self) -> Vec<String> {
        [
            ("--config", &self.config_path()),
            ("--root-dir", &self.root_dir),
            ("--state-dir", &self.state_dir),
            ("--socket", &self.socket),
        ]
        .iter()
        .flat_map(|(flag, path)| [flag.to_string(), path.display().to_string()])
        .collect()
    }

    async fn spawn(&mut self) {
        fs::write(self.config_path(), self.config_text()).expect("writing config");
        fs::create_dir_all(self.cni_conf_dir()).expect("creating the CNI conf dir");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))
            .expect("opening daemon log");
        let mut cmd = Command::new(rootstock_bin());
        cmd.args(self.path_args())
            .env("RUST_LOG", "debug,h2=info,hyper=info,tower=info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        // A test process that dies (even SIGKILLed) takes its daemon with it.
        rootstock_testkit::process::die_with_parent(&mut cmd);
        if let Some(soft) = self.nofile_soft {
            // SAFETY: getrlimit and setrlimit are async-signal-safe; the closure touches no
            // memory of the parent beyond the copied `soft`.
            unsafe {
                cmd.pre_exec(move || {
                    let mut lim = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    lim.rlim_cur = soft;
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().expect("spawning rootstock");
        self.child = Some(child);
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if tokio::net::UnixStream::connect(&self.socket).await.is_ok() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "rootstock exited at start-up ({status}); log:\n{}",
                    self.log()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "rootstock did not answer within {START_DEADLINE:?}; log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A gRPC channel over the daemon's unix socket.
    pub async fn channel(&self) -> Channel {
        connect_unix(&self.socket).await
    }

    /// A CRI `RuntimeService` client, as kubelet has.
    pub async fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel().await)
    }

    /// A CRI `ImageService` client, as kubelet has.
    pub async fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel().await)
    }

    /// Sends `signal` and waits (up to `timeout`) for the daemon to exit; `None` if it did not.
    /// Async so that clients on the test's runtime keep running (they must see the daemon's
    /// GOAWAY for a graceful shutdown to finish).
    pub async fn signal_and_wait(
        &mut self,
        signal: Signal,
        timeout: Duration,
    ) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let _ = kill(Pid::from_raw(child.id() as i32), signal);
        self.wait_exit(timeout).await
    }

    /// Waits (up to `timeout`) for the daemon to exit by itself; `None` if it did not.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }

    /// Starts the daemon again on the same paths after it was stopped or killed.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "the daemon is still running");
        self.spawn().await;
    }

    /// SIGKILLs the daemon (no clean shutdown) and starts it again on the same paths.
    pub async fn kill_and_restart(&mut self) {
        self.signal_and_wait(Signal::SIGKILL, Duration::from_secs(10))
            .await
            .expect("daemon did not die on SIGKILL");
        self.spawn().await;
    }

    /// Waits for the daemon to SIGKILL itself at failpoint `point` (armed with
    /// `ROOTSTOCK_FAILPOINT`); fails if it keeps running or ends otherwise.
    pub async fn wait_killed_at(&mut self, point: &str) {
        use std::os::unix::process::ExitStatusExt;
        let status = self
            .wait_exit(Duration::from_secs(20))
            .await
            .unwrap_or_else(|| panic!("{point}: the daemon is still running"));
        assert_eq!(
            status.signal(),
            Some(9),
            "{point}: {status}; log:\n{}",
            self.log()
        );
    }

    /// Stops the daemon cleanly (SIGTERM; it must be gone within 15 s).
    pub async fn stop(&mut self) {
        self.signal_and_wait(Signal::SIGTERM, Duration::from_secs(15))
            .await
            .expect("daemon did not stop on SIGTERM");
    }

    /// `rootstock store verify` on the daemon's root, which must be clean (it takes the root
    /// lock: the daemon must be down). `when` names the moment in the failure message.
    pub fn verify_store(&self, when: &str) {
        let args = self.path_args();
        let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
        args.extend(["store", "verify"]);
        let out = run_rootstock(&args, Duration::from_secs(60));
        assert!(
            out.status.success(),
            "{when}: verify failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops the daemon cleanly (SIGTERM) and starts it again on the same paths.
    pub async fn restart(&mut self) {
        self.signal_and_wait(Signal::SIGTERM, Duration::from_secs(15))
            .await
            .expect("daemon did not stop on SIGTERM");
        self.spawn().await;
    }
}

/// A gRPC channel over any CRI unix socket (this daemon's or a peer runtime's).
pub async fn connect_unix(path: &Path) -> Channel {
    let socket = path.to_owned();
    Endpoint::try_from("http://[::]:50051")
        .expect("endpoint")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .unwrap_or_else(|e| panic!("connecting to {}: {e}", path.display()))
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop_child();
        // Containers and monitors outlive the daemon by design: whatever a failed test left
        // must not outlive the test.
        self.clean_up_leftovers();
    }
}

impl Daemon {
    fn stop_child(&mut self) {
        // This blocks the test's runtime, so its clients cannot answer the daemon's GOAWAY
        // and a graceful shutdown would wait for them: give it a short while, then kill.
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, Duration::from_secs(2));
        }
    }
}

impl Daemon {
    /// Best-effort removal of what a failed test left behind its daemon: containers (through
    /// the OCI runtime and by killing their monitors), pod init processes, mounts under the
    /// daemon's dirs, and the cgroups of its pods and containers. A no-op after a test that
    /// stopped and removed its pods.
    fn clean_up_leftovers(&self) {
        let containers = self.state_dir.join("containers");
        let mut cgroups = Vec::new();
        for dir in read_dirs(&containers) {
            let id = dir.file_name().map(|n| n.to_string_lossy().into_owned());
            let state = read_json(&dir.join("state.json"));
            if let Some(id) = id {
                for handler in read_dirs(&self.state_dir.join("runtime")) {
                    let Some(binary) = handler.file_name() else {
                        continue;
                    };
                    let _ = Command::new(binary)
                        .arg("--root")
                        .arg(&handler)
                        .args(["delete", "--force", &id])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                }
            }
            kill_identified(&state["monitor"]);
            if let Some(cg) = state["cgroup_path"].as_str() {
                cgroups.push(cg.to_owned());
            }
        }
        for dir in read_dirs(&self.state_dir.join("sandboxes")) {
            let record = read_json(&dir.join("sandbox.json"));
            kill_identified(&record["pod_init"]);
            // The leaf pod-init runs in, below the pod cgroup (removed first: longer path).
            if let Some(cg) = record["pod_init_cgroup"].as_str() {
                cgroups.push(cg.to_owned());
            }
            // The pod cgroup the runtime chose (older records kept it in the daemon's data).
            for owner in [&record, &record["client_data"]] {
                if owner["own_cgroup"].as_bool() == Some(true)
                    && let Some(cg) = owner["cgroup_parent"].as_str()
                {
                    cgroups.push(cg.to_owned());
                }
            }
        }
        rootstock_testkit::mounts::unmount_under(self.dir.path());
        // Container cgroups (longer paths) before their pod's. Anything still in one (the
        // OCI runtime's state was lost) is killed first, or the cgroup cannot go.
        cgroups.sort_by_key(|c| std::cmp::Reverse(c.len()));
        for cg in &cgroups {
            kill_cgroup(cg);
        }
        for cg in cgroups {
            for controller in read_dirs(Path::new("/sys/fs/cgroup")) {
                let _ = fs::remove_dir(controller.join(cg.trim_start_matches('/')));
            }
        }
    }
}

fn read_dirs(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

fn read_json(path: &Path) -> serde_json::Value {
    fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// SIGKILLs the process a record names by `{pid, start_time}`, only if that very process
/// (same start time) is still there: a recycled pid is left alone.
fn kill_identified(identity: &serde_json::Value) {
    let (Some(pid), Some(start)) = (identity["pid"].as_i64(), identity["start_time"].as_u64())
    else {
        return;
    };
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Field 22 (starttime), counted after the parenthesised command name.
    let started = stat
        .rsplit(')')
        .next()
        .and_then(|rest| rest.split_whitespace().nth(19))
        .and_then(|v| v.parse::<u64>().ok());
    if started == Some(start) {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
}

/// SIGKILLs every process of a cgroup (v1 `pids` hierarchy) and waits briefly until it is
/// empty (reaping is lazy on this machine).
fn kill_cgroup(cgroup: &str) {
    let procs = Path::new("/sys/fs/cgroup/pids")
        .join(cgroup.trim_start_matches('/'))
        .join("cgroup.procs");
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let pids: Vec<i32> = fs::read_to_string(&procs)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        if pids.is_empty() || Instant::now() > deadline {
            return;
        }
        for pid in pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
