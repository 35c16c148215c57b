//! [`Runtime`]: the containers of this node — create, start, stop, remove, status, exec,
//! log reopen — over the OCI runtime driver, the monitor, the rootfs mount and the
//! persisted records. Recovery after a daemon restart is in [`crate::recovery`].

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::cgroup::CgroupLayout;
use crate::config::RuntimeConfig;
use crate::error::{Error, Result};
use crate::id::{ContainerId, SandboxId};
use crate::monitor::{self, ExitRecord, MonitorArgs};
use crate::oci::{ExecOutput, ExecRequest, OciRuntime};
use crate::rootfs::OverlayRootfs;
use crate::sandbox::SandboxRecord;
use crate::signal::Signal;
use crate::spec::{self, ContainerSpec, HostFacts};
use crate::state::{ContainerRecord, ContainerState, ExitInfo, RECORD_VERSION};
use crate::stats::{CgroupUsage, DiskUsage, DiskUsageCache};
use crate::undo::Undo;
use crate::util;

/// File name of the persisted record inside the container's run directory.
pub const STATE_FILE: &str = "state.json";

/// Exit files are polled while waiting for a container to stop: first after 1 ms, the
/// interval doubling up to 20 ms. A killed container is usually gone within a few ms, and a
/// fixed 20 ms interval added 10 ms on average to every stop.
const EXIT_POLL_FIRST: Duration = Duration::from_millis(1);
const EXIT_POLL_MAX: Duration = Duration::from_millis(20);
/// How long to wait for the exit after SIGKILL before reporting failure.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Where the runtime keeps things.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeOptions {
    /// Per-boot state (`/run/rootstock`): `containers/<id>/` (bundle, rootfs mount point,
    /// monitor files, record) and `runtime/<handler>/` (the OCI runtime's `--root`).
    pub state_dir: PathBuf,
    /// Writable layers (`/var/lib/rootstock/containers`): `<id>/{upper,work}`. Must not be
    /// on overlayfs.
    pub layers_dir: PathBuf,
    /// The `[runtime]` configuration.
    pub config: RuntimeConfig,
}

/// What CreateContainer needs besides the spec.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    /// The new container's id (the caller generates it).
    pub id: ContainerId,
    /// RuntimeClass handler; `""` means the configured default.
    pub handler: String,
    /// The container config.
    pub spec: ContainerSpec,
    /// The image's flattened root filesystem (overlay lower directory).
    pub rootfs_lower: PathBuf,
    /// Absolute CRI log path (its directory must exist).
    pub log_path: PathBuf,
    /// The pod sandbox it belongs to (`None` for a container of no pod, as in tests).
    pub sandbox_id: Option<SandboxId>,
    /// Opaque caller data stored with the record.
    pub client_data: serde_json::Value,
}

/// A container's record plus where its files are.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerInfo {
    /// The persisted record.
    pub record: ContainerRecord,
    /// Bundle and run directory.
    pub run_dir: PathBuf,
    /// The rootfs mount point.
    pub rootfs: PathBuf,
    /// The writable layer.
    pub upper_dir: PathBuf,
}

type Entry = Arc<Mutex<ContainerRecord>>;

/// The node's containers. Cheap to share behind an `Arc`; every method blocks.
#[derive(Debug)]
pub struct Runtime {
    pub(crate) opts: RuntimeOptions,
    pub(crate) handlers: BTreeMap<String, OciRuntime>,
    pub(crate) monitor_binary: PathBuf,
    pub(crate) host: HostFacts,
    pub(crate) boot_id: String,
    pub(crate) containers: Mutex<BTreeMap<ContainerId, Entry>>,
    pub(crate) sandboxes: Mutex<BTreeMap<SandboxId, SandboxRecord>>,
    oom_warned: AtomicBool,
    seccomp_default_warned: AtomicBool,
    apparmor_default_warned: AtomicBool,
    /// Probed once: stats read its files on every call.
    pub(crate) cgroups: CgroupLayout,
    /// Writable-layer usage, walked in the background.
    layer_usage: Arc<DiskUsageCache>,
}

/// A container's usage, for the CRI stats RPCs.
#[derive(Debug, Clone)]
pub struct ContainerUsage {
    /// Its cgroup's counters.
    pub cgroup: CgroupUsage,
    /// Its writable layer (`None` until the first background walk finished).
    pub writable_layer: Option<DiskUsage>,
    /// The writable layer's directory.
    pub upper_dir: PathBuf,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a record half-updated (records are
    // replaced whole after the disk write), so a poisoned lock is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Runtime {
    /// Opens the runtime over `opts` without looking at existing containers; use
    /// [`Runtime::open`] (which also recovers) in the daemon.
    pub fn new(opts: RuntimeOptions) -> Result<Self> {
        for d in [opts.state_dir.join("containers"), opts.layers_dir.clone()] {
            // Other pods' state and writable layers: root only.
            rootstock_fsutil::create_private_dir(&d)
                .map_err(|e| Error::io("create directory", &d, e))?;
        }
        let handlers = opts
            .config
            .handlers
            .iter()
            .map(|(name, h)| {
                (
                    name.clone(),
                    OciRuntime::new(name, &h.binary, opts.state_dir.join("runtime").join(name)),
                )
            })
            .collect();
        let monitor_binary = if opts.config.monitor_binary.as_os_str().is_empty() {
            default_monitor_binary()?
        } else {
            opts.config.monitor_binary.clone()
        };
        let boot_id =
            util::boot_id().map_err(|e| Error::io("read", "/proc/sys/kernel/random/boot_id", e))?;
        Ok(Self {
            opts,
            handlers,
            monitor_binary,
            host: HostFacts::probe(),
            boot_id,
            containers: Mutex::new(BTreeMap::new()),
            sandboxes: Mutex::new(BTreeMap::new()),
            oom_warned: AtomicBool::new(false),
            seccomp_default_warned: AtomicBool::new(false),
            apparmor_default_warned: AtomicBool::new(false),
            cgroups: CgroupLayout::detect(),
            // kubelet polls every 10 s: a layer is walked at most about that often.
            layer_usage: DiskUsageCache::new(Duration::from_secs(10)),
        })
    }

    /// The OCI runtime for `handler` (`""` = default).
    pub fn handler(&self, handler: &str) -> Result<&OciRuntime> {
        let name = if handler.is_empty() {
            self.opts.config.default_handler.as_str()
        } else {
            handler
        };
        self.handlers.get(name).ok_or_else(|| {
            Error::UnknownHandler(
                name.to_owned(),
                self.handlers.keys().cloned().collect::<Vec<_>>().join(", "),
            )
        })
    }

    /// The monitor binary in use.
    pub fn monitor_binary(&self) -> &Path {
        &self.monitor_binary
    }

    /// Node facts probed at start-up.
    pub fn host_facts(&self) -> HostFacts {
        self.host
    }

    pub(crate) fn run_dir(&self, id: &ContainerId) -> PathBuf {
        self.opts.state_dir.join("containers").join(id.as_str())
    }

    pub(crate) fn layer_dir(&self, id: &ContainerId) -> PathBuf {
        self.opts.layers_dir.join(id.as_str())
    }

    pub(crate) fn rootfs(&self, id: &ContainerId) -> OverlayRootfs {
        OverlayRootfs::at(&self.run_dir(id).join("rootfs"), &self.layer_dir(id))
    }

    fn info(&self, rec: &ContainerRecord) -> ContainerInfo {
        let rootfs = self.rootfs(&rec.id);
        ContainerInfo {
            record: rec.clone(),
            run_dir: self.run_dir(&rec.id),
            rootfs: rootfs.target().to_owned(),
            upper_dir: rootfs.upper().to_owned(),
        }
    }

    /// Writes `rec` atomically; the caller updates memory only after this succeeded.
    pub(crate) fn persist(&self, rec: &ContainerRecord) -> Result<()> {
        util::persist_json(self.run_dir(&rec.id).join(STATE_FILE), rec)
    }

    /// Replaces `*rec` with `next` after persisting it.
    pub(crate) fn transition(
        &self,
        rec: &mut ContainerRecord,
        next: ContainerRecord,
    ) -> Result<()> {
        self.persist(&next)?;
        *rec = next;
        Ok(())
    }

    fn entry(&self, id: &ContainerId) -> Option<Entry> {
        lock(&self.containers).get(id).cloned()
    }

    fn entry_or_not_found(&self, id: &ContainerId) -> Result<Entry> {
        self.entry(id)
            .ok_or_else(|| Error::ContainerNotFound { id: id.to_string() })
    }

    /// Moves a Created/Running record to Exited if its monitor recorded the exit, or to
    /// Exited(Unknown) if the monitor is gone without recording one.
    pub(crate) fn refresh(&self, rec: &mut ContainerRecord) -> Result<()> {
        if rec.state.is_final() {
            return Ok(());
        }
        let run_dir = self.run_dir(&rec.id);
        let read = |dir: &Path| {
            ExitRecord::read(dir).map_err(|e| Error::io("read", dir.join(monitor::EXIT_FILE), e))
        };
        let exit = match read(&run_dir)? {
            Some(x) => Some(ExitInfo::from(x)),
            None if rec.monitor.is_some_and(|m| !m.is_alive()) => {
                // The monitor writes the exit file before it exits: read once more so an
                // exit between the two checks is not mistaken for a lost monitor.
                Some(
                    read(&run_dir)?
                        .map(ExitInfo::from)
                        .unwrap_or_else(|| ExitInfo::unknown(util::now_unix_nanos())),
                )
            }
            None => None,
        };
        if let Some(exit) = exit {
            let mut next = rec.clone();
            next.state = ContainerState::Exited(exit);
            self.transition(rec, next)?;
        }
        Ok(())
    }

    /// CreateContainer: mounts the rootfs, writes the spec, and has the monitor run
    /// `<runtime> create`. A spec the runtime rejects (missing executable…) fails here with
    /// [`Error::CreateFailed`], and everything made so far is undone.
    pub fn create_container(&self, req: CreateRequest) -> Result<ContainerInfo> {
        let id = req.id.clone();
        let oci = self.handler(&req.handler)?.clone();
        self.check_unified(&req.spec.resources)?;
        if self.entry(&id).is_some() {
            return Err(Error::ContainerExists { id: id.to_string() });
        }
        let run_dir = self.run_dir(&id);
        // create_dir (not _all) is the atomic claim on the id against a concurrent create.
        match fs::create_dir(&run_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::ContainerExists { id: id.to_string() });
            }
            Err(e) => return Err(Error::io("create directory", &run_dir, e)),
        }
        // From here every resource pushes its release; an early `?` runs them in reverse.
        let mut undo = Undo::new(format_args!("container {id}"));
        undo.push("remove its directories", || self.remove_container_dirs(&id));
        crate::hostpath::ensure_sources(&req.spec.mounts)?;
        let rootfs = OverlayRootfs::mount(
            &req.rootfs_lower,
            &run_dir.join("rootfs"),
            &self.layer_dir(&id),
        )?;
        undo.push("unmount the rootfs", || self.rootfs(&id).unmount());

        let built = spec::build(&id, &req.spec, rootfs.target(), &self.host)?;
        if let Some((asked, got)) = built.oom_score_adj_clamped
            && !self.oom_warned.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                container = %id,
                "oom_score_adj {asked} cannot be set on this node (no CAP_SYS_RESOURCE); \
                 using the daemon's own {got} (warned once)"
            );
        }
        for what in &built.runtime_default_skipped {
            let (warned, what) = match what {
                spec::Confinement::Seccomp => (&self.seccomp_default_warned, "seccomp"),
                spec::Confinement::AppArmor => (&self.apparmor_default_warned, "apparmor"),
            };
            if !warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    container = %id,
                    "{what} RuntimeDefault profile requested: rootstock has no default \
                     profile yet, the container runs without one (warned once)"
                );
            }
        }
        let spec_err = |e: serde_json::Error| Error::Spec {
            id: id.to_string(),
            message: e.to_string(),
        };
        let mut spec = serde_json::to_value(&built.spec).map_err(spec_err)?;
        crate::devices::apply(&mut spec, &req.spec.devices)?;
        crate::cdi::apply(
            &mut spec,
            &req.spec.cdi_devices,
            &self.opts.config.cdi_spec_dirs,
        )?;
        let config = serde_json::to_vec_pretty(&spec).map_err(spec_err)?;
        let config_path = run_dir.join("config.json");
        rootstock_fsutil::write_atomic(&config_path, &config)
            .map_err(|e| Error::io("write", &config_path, e))?;

        let kill_all = req.spec.namespaces.needs_kill_all();
        let args = MonitorArgs {
            runtime: oci.binary().to_owned(),
            runtime_root: oci.root().to_owned(),
            id: id.to_string(),
            bundle: run_dir.clone(),
            run_dir: run_dir.clone(),
            log_path: req.log_path.clone(),
            cgroup: built.cgroup_path.clone(),
            kill_all,
            tty: req.spec.tty,
            stdin: req.spec.stdin,
            stdin_once: req.spec.stdin_once,
        };
        // Pushed before the spawn: a monitor that fails half-way may have left `runc init`.
        undo.push("delete the runtime's container", || oci.delete(&id, true));
        let timeout = Duration::from_secs(self.opts.config.create_timeout_secs.max(1));
        let created = monitor::spawn(&self.monitor_binary, &args, timeout).map_err(|message| {
            Error::CreateFailed {
                id: id.to_string(),
                message,
            }
        })?;
        let rec = ContainerRecord {
            version: RECORD_VERSION,
            id: id.clone(),
            handler: oci.handler().to_owned(),
            state: ContainerState::Created,
            created_at_unix_nanos: util::now_unix_nanos(),
            started_at_unix_nanos: None,
            monitor: Some(created.monitor),
            init_pid: created.init_pid,
            boot_id: self.boot_id.clone(),
            cgroup_path: built.cgroup_path,
            kill_all_on_exit: kill_all,
            log_path: req.log_path,
            sandbox_id: req.sandbox_id,
            client_data: req.client_data,
        };
        self.persist(&rec)?;
        undo.commit();
        let info = self.info(&rec);
        lock(&self.containers).insert(id.clone(), Arc::new(Mutex::new(rec)));
        Ok(info)
    }

    /// StartContainer: `<runtime> start`, then Running is persisted.
    pub fn start_container(&self, id: &ContainerId) -> Result<ContainerInfo> {
        let entry = self.entry_or_not_found(id)?;
        let mut rec = lock(&entry);
        self.refresh(&mut rec)?;
        if !rec.state.can_start() {
            return Err(Error::BadState {
                id: id.to_string(),
                action: "start",
                state: rec.state.to_string(),
            });
        }
        // Taken before `start`: the process runs from inside that call and may have exited
        // (and the monitor recorded the exit time) before it returns.
        let started_at = util::now_unix_nanos();
        self.handler(&rec.handler)?.start(id)?;
        let mut next = rec.clone();
        next.state = ContainerState::Running;
        next.started_at_unix_nanos = Some(started_at);
        self.transition(&mut rec, next)?;
        Ok(self.info(&rec))
    }

    /// StopContainer: `signal` (the image's StopSignal or SIGTERM), then SIGKILL once
    /// `timeout` has passed (at once for a zero timeout or a never-started container).
    /// Without a private PID namespace every process of the cgroup is signalled. Stopping
    /// an unknown or already stopped container is OK (CRI: StopContainer is idempotent).
    pub fn stop_container(
        &self,
        id: &ContainerId,
        signal: Signal,
        timeout: Duration,
    ) -> Result<()> {
        let Some(entry) = self.entry(id) else {
            return Ok(());
        };
        let (oci, kill_all, state) = {
            let mut rec = lock(&entry);
            self.refresh(&mut rec)?;
            (
                self.handler(&rec.handler)?.clone(),
                rec.kill_all_on_exit,
                rec.state,
            )
        };
        if !state.can_kill() {
            return Ok(());
        }
        // `runc init` waiting for start only dies of SIGKILL (PID 1 ignores unhandled signals).
        if signal != Signal::KILL && !timeout.is_zero() && state == ContainerState::Running {
            self.signal(&oci, id, signal, kill_all)?;
            if self.wait_exit(&entry, timeout)? {
                return Ok(());
            }
        }
        self.signal(&oci, id, Signal::KILL, kill_all)?;
        if self.wait_exit(&entry, KILL_WAIT)? {
            return Ok(());
        }
        Err(Error::Runtime {
            id: id.to_string(),
            runtime: oci.handler().to_owned(),
            action: "kill",
            message: format!("still running {KILL_WAIT:?} after SIGKILL"),
        })
    }

    fn signal(&self, oci: &OciRuntime, id: &ContainerId, signal: Signal, all: bool) -> Result<()> {
        match oci.kill(id, signal, all) {
            Ok(()) => Ok(()),
            // It exited between our check and the kill: the wait below sees the exit file.
            Err(e) if matches!(oci.state(id), Ok(Some(ref s)) if s.status == "stopped") => {
                tracing::debug!(container = %id, "kill raced with exit: {e}");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Polls until the monitor recorded the exit; true when it did within `timeout`. The
    /// record lock is not held while waiting, so status and list calls are not blocked.
    fn wait_exit(&self, entry: &Entry, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        let mut interval = EXIT_POLL_FIRST;
        loop {
            {
                let mut rec = lock(entry);
                self.refresh(&mut rec)?;
                if rec.state.is_final() {
                    return Ok(true);
                }
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(interval);
            interval = (interval * 2).min(EXIT_POLL_MAX);
        }
    }

    /// Sends `signal` to the container (`all`: every process of its cgroup).
    pub fn kill_container(&self, id: &ContainerId, signal: Signal, all: bool) -> Result<()> {
        let entry = self.entry_or_not_found(id)?;
        let rec = lock(&entry);
        if !rec.state.can_kill() {
            return Err(Error::BadState {
                id: id.to_string(),
                action: "signal",
                state: rec.state.to_string(),
            });
        }
        let oci = self.handler(&rec.handler)?;
        self.signal(oci, id, signal, all || rec.kill_all_on_exit)
    }

    /// RemoveContainer: stops it if needed (SIGKILL), deletes the OCI runtime's state,
    /// unmounts the rootfs and removes its directories and record. Removing an unknown
    /// container is OK (CRI: RemoveContainer is idempotent).
    pub fn remove_container(&self, id: &ContainerId) -> Result<()> {
        let Some(entry) = self.entry(id) else {
            return Ok(());
        };
        // Without its run directory (removed by another daemon instance's recovery) there
        // is nothing to stop or persist: only forget it, after the idempotent teardown.
        if self.run_dir(id).exists() {
            self.stop_container(id, Signal::KILL, Duration::ZERO)?;
        }
        let rec = lock(&entry);
        let oci = self.handler(&rec.handler)?.clone();
        self.destroy(id, &oci)?;
        self.layer_usage.forget(self.rootfs(id).upper());
        lock(&self.containers).remove(id);
        Ok(())
    }

    /// ContainerStats: the container's cgroup counters and its writable layer's cached usage.
    pub fn container_usage(&self, id: &ContainerId) -> Result<ContainerUsage> {
        let entry = self.entry_or_not_found(id)?;
        let cgroup_path = lock(&entry).cgroup_path.clone();
        let upper_dir = self.rootfs(id).upper().to_owned();
        Ok(ContainerUsage {
            cgroup: self.cgroups.usage(&cgroup_path),
            writable_layer: self.layer_usage.get(&upper_dir),
            upper_dir,
        })
    }

    /// Where the writable layers live, and their usage from the background walk (`None`
    /// until the first one finished): ImageFsInfo's `container_filesystems`.
    pub fn writable_layers_usage(&self) -> (PathBuf, Option<DiskUsage>) {
        let dir = self.opts.layers_dir.clone();
        let usage = self.layer_usage.get(&dir);
        (dir, usage)
    }

    /// The counters of any cgroup (a pod's), hierarchical.
    pub fn cgroup_usage(&self, cgroup: &str) -> CgroupUsage {
        self.cgroups.usage(cgroup)
    }

    /// Deletes everything of a container but its in-memory entry. Idempotent.
    pub(crate) fn destroy(&self, id: &ContainerId, oci: &OciRuntime) -> Result<()> {
        oci.delete(id, true)?;
        self.remove_container_files(id)
    }

    /// Unmounts the rootfs and removes the run and writable-layer directories. Idempotent.
    pub(crate) fn remove_container_files(&self, id: &ContainerId) -> Result<()> {
        self.rootfs(id).unmount()?;
        self.remove_container_dirs(id)
    }

    /// Removes the run and writable-layer directories (the rootfs must be unmounted).
    /// Idempotent.
    fn remove_container_dirs(&self, id: &ContainerId) -> Result<()> {
        for d in [self.run_dir(id), self.layer_dir(id)] {
            match fs::remove_dir_all(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove", &d, e)),
            }
        }
        Ok(())
    }

    /// ContainerStatus: the record, refreshed from the monitor's exit file.
    pub fn container(&self, id: &ContainerId) -> Result<ContainerInfo> {
        let entry = self.entry_or_not_found(id)?;
        let mut rec = lock(&entry);
        self.refresh(&mut rec)?;
        Ok(self.info(&rec))
    }

    /// Replaces the caller's data stored with the record (persisted first).
    pub fn set_client_data(&self, id: &ContainerId, data: serde_json::Value) -> Result<()> {
        let entry = self.entry_or_not_found(id)?;
        let mut rec = lock(&entry);
        let mut next = rec.clone();
        next.client_data = data;
        self.transition(&mut rec, next)
    }

    /// The OCI spec the container was created with (`config.json` of its bundle).
    pub fn container_spec(&self, id: &ContainerId) -> Result<serde_json::Value> {
        let path = self.run_dir(id).join("config.json");
        let data = fs::read(&path).map_err(|e| Error::io("read", &path, e))?;
        serde_json::from_slice(&data).map_err(|e| Error::ReadState {
            path,
            message: e.to_string(),
        })
    }

    /// The ids of every container (for prefix lookups).
    pub fn container_ids(&self) -> Vec<ContainerId> {
        lock(&self.containers).keys().cloned().collect()
    }

    /// ListContainers: every container, refreshed (cheap: one `stat` of an exit file per
    /// live container).
    pub fn list_containers(&self) -> Vec<ContainerInfo> {
        let entries: Vec<Entry> = lock(&self.containers).values().cloned().collect();
        entries
            .iter()
            .map(|e| {
                let mut rec = lock(e);
                if let Err(err) = self.refresh(&mut rec) {
                    tracing::warn!(container = %rec.id, "refresh: {err}");
                }
                self.info(&rec)
            })
            .collect()
    }

    /// ExecSync: runs `req` in the running container; on timeout the exec'd process is
    /// killed and [`Error::ExecTimeout`] returned.
    pub fn exec_sync(
        &self,
        id: &ContainerId,
        req: &ExecRequest,
        timeout: Option<Duration>,
    ) -> Result<ExecOutput> {
        let entry = self.entry_or_not_found(id)?;
        let oci = {
            let mut rec = lock(&entry);
            self.refresh(&mut rec)?;
            if !rec.state.can_exec() {
                return Err(Error::BadState {
                    id: id.to_string(),
                    action: "exec in",
                    state: rec.state.to_string(),
                });
            }
            self.handler(&rec.handler)?.clone()
        };
        oci.exec(id, req, timeout, &self.run_dir(id))
    }

    /// The OCI runtime to exec with in container `id`, which must be running.
    fn exec_handler(&self, id: &ContainerId) -> Result<OciRuntime> {
        let entry = self.entry_or_not_found(id)?;
        let mut rec = lock(&entry);
        self.refresh(&mut rec)?;
        if !rec.state.can_exec() {
            return Err(Error::BadState {
                id: id.to_string(),
                action: "exec in",
                state: rec.state.to_string(),
            });
        }
        Ok(self.handler(&rec.handler)?.clone())
    }

    /// Streaming Exec: starts `req` in the running container with its stdio as pipes
    /// (stdin only when `stdin`); the caller pumps them and waits (see [`crate::exec_stream::ExecChild`]).
    pub fn exec_spawn(
        &self,
        id: &ContainerId,
        req: &ExecRequest,
        stdin: bool,
    ) -> Result<crate::exec_stream::ExecChild> {
        let oci = self.exec_handler(id)?;
        oci.exec_spawn(id, req, stdin, &self.run_dir(id))
    }

    /// Streaming Exec with a TTY of `size` (width, height): the command and its pty master.
    pub fn exec_spawn_tty(
        &self,
        id: &ContainerId,
        req: &ExecRequest,
        size: Option<(u16, u16)>,
    ) -> Result<(crate::exec_stream::ExecChild, std::fs::File)> {
        let oci = self.exec_handler(id)?;
        oci.exec_spawn_tty(id, req, size, &self.run_dir(id))
    }

    /// UpdateContainerResources: the new cgroup limits; on cgroup v1 through
    /// `<runtime> update`, on v2 written by rootstock ([`CgroupLayout::apply_v2`]: the
    /// cgroup2 values, and kubelet's `unified` map, are ours to compute). The
    /// `oom_score_adj` of a running process is not changed, as with containerd.
    pub fn update_container_resources(
        &self,
        id: &ContainerId,
        resources: &spec::Resources,
    ) -> Result<()> {
        let entry = self.entry_or_not_found(id)?;
        let mut rec = lock(&entry);
        self.refresh(&mut rec)?;
        self.check_unified(resources)?;
        // An exited container has no cgroup left to change: nothing to do, as containerd
        // answers (kubelet may resize a pod whose container just ended).
        if !rec.state.can_kill() {
            return Ok(());
        }
        if self.cgroups.is_v2() {
            return self.cgroups.apply_v2(&rec.cgroup_path, resources);
        }
        let oci = self.handler(&rec.handler)?;
        oci.update(id, &spec::linux_resources(resources), &self.run_dir(id))
    }

    /// `unified` names cgroup v2 files: a v1 node cannot honour it, and saying so beats the
    /// OCI runtime's error after the rootfs is mounted.
    fn check_unified(&self, resources: &spec::Resources) -> Result<()> {
        if self.cgroups.is_v2() || resources.unified.is_empty() {
            return Ok(());
        }
        let keys: Vec<&str> = resources.unified.keys().map(String::as_str).collect();
        Err(Error::InvalidArgument(format!(
            "unified cgroup resources ({}) need cgroup v2; this node runs cgroup v1",
            keys.join(", ")
        )))
    }

    /// ReopenContainerLog: the monitor reopens the log path; returns once the new file
    /// exists (kubelet renames the old one first and then expects writes to the new one).
    /// A container that is not running writes no more output: nothing to reopen, OK.
    pub fn reopen_container_log(&self, id: &ContainerId) -> Result<()> {
        let entry = self.entry_or_not_found(id)?;
        let (monitor, log_path) = {
            let mut rec = lock(&entry);
            self.refresh(&mut rec)?;
            if rec.state != ContainerState::Running {
                return Ok(());
            }
            (rec.monitor, rec.log_path.clone())
        };
        let Some(monitor) = monitor else {
            return Err(Error::BadState {
                id: id.to_string(),
                action: "reopen the log of",
                state: "without monitor".to_owned(),
            });
        };
        monitor::request_log_reopen(&monitor)
            .map_err(|e| Error::io("signal monitor for", &log_path, e))?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while !log_path.exists() {
            if Instant::now() >= deadline {
                return Err(Error::io(
                    "reopen",
                    &log_path,
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "monitor did not reopen the log",
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }
}

/// The monitor next to the running executable (the daemon's; for tests, see the tests).
pub fn default_monitor_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| Error::io("locate", "/proc/self/exe", e))?;
    Ok(exe.with_file_name("rootstock-monitor"))
}
