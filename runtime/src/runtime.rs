//! [`Runtime`]: the containers of this node over the OCI runtime driver, the monitor, the
//! rootfs mount and the persisted records. This file holds the façade and CreateContainer;
//! the other operations are in `lifecycle.rs`, the memory-only reads in `query.rs`, the
//! per-container locking in `entry.rs`, exit notification in `exit_watch.rs`, and recovery
//! after a daemon restart in [`crate::recovery`].

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::cgroup::CgroupLayout;
use crate::config::RuntimeConfig;
use crate::entry::{self, Entry};
use crate::error::{Error, Result};
use crate::events::{EventBus, EventKind};
use crate::exit_watch::ExitWatcher;
use crate::id::{ContainerId, SandboxId};
use crate::monitor::{self, MonitorArgs};
use crate::netns_reaper::NetnsReaper;
use crate::oci::OciRuntime;
use crate::rootfs::OverlayRootfs;
use crate::sandbox::SandboxRecord;
use crate::spec::{self, ContainerSpec, HostFacts};
use crate::state::{ContainerRecord, ContainerState, RECORD_VERSION};
use crate::stats::{CgroupUsage, DiskUsage, DiskUsageCache};
use crate::steps::Step;
use crate::undo::Undo;
use crate::util;

/// File name of the persisted record inside the container's run directory.
pub const STATE_FILE: &str = "state.json";

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
    pub client_data: crate::ClientData,
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

/// The node's containers. Cheap to share behind an `Arc`. Reads of containers and sandboxes
/// (`container`, `list_containers`, `sandbox`, `list_sandboxes`, `container_spec`) serve
/// memory and return at once; every other method may block (fork/exec, waitpid, fsync).
#[derive(Debug)]
pub struct Runtime {
    pub(crate) opts: RuntimeOptions,
    pub(crate) handlers: BTreeMap<String, OciRuntime>,
    pub(crate) monitor_binary: PathBuf,
    pub(crate) host: HostFacts,
    pub(crate) boot_id: String,
    /// Held only to look up, insert or remove an entry: never across a runtime call.
    pub(crate) containers: Mutex<BTreeMap<ContainerId, Arc<Entry>>>,
    pub(crate) sandboxes: Mutex<BTreeMap<SandboxId, SandboxRecord>>,
    /// Sandboxes whose pod init the exit watcher saw end (they read as NotReady).
    pub(crate) pod_inits_gone: Arc<Mutex<BTreeSet<SandboxId>>>,
    oom_warned: AtomicBool,
    seccomp_default_warned: AtomicBool,
    apparmor_default_warned: AtomicBool,
    /// Probed once: stats read its files on every call.
    pub(crate) cgroups: CgroupLayout,
    /// Writable-layer usage, walked in the background.
    pub(crate) layer_usage: Arc<DiskUsageCache>,
    /// Records exits as the monitors end; dropping the runtime stops and joins its thread.
    pub(crate) exits: ExitWatcher,
    /// Whether user-namespaced pods can run here, probed once ([`crate::userns::probe`]):
    /// the error names what is missing.
    userns: std::result::Result<(), String>,
    /// Container lifecycle events (GetContainerEvents).
    pub(crate) events: Arc<EventBus>,
    /// Holds stopped pods' network namespaces to let them go together.
    pub(crate) netns_reaper: NetnsReaper,
    /// Reports the duration of each step of a pod's start ([`Runtime::observe_steps`]).
    pub(crate) steps: crate::steps::Steps,
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
        let (containers, sandboxes) = (
            opts.state_dir.join("containers"),
            opts.state_dir.join("sandboxes"),
        );
        for d in [&containers, &sandboxes, &opts.layers_dir] {
            // Other pods' state and writable layers: root only.
            rootstock_fsutil::create_private_dir(d)
                .map_err(|e| Error::io("create directory", d, e))?;
        }
        // Searchable, not listable: the OCI runtime reaches a user-namespaced container's
        // rootfs and its pod's files from inside the pod's user namespace. Each container
        // and sandbox directory below is 0700, or 0710 for its pod's root group
        // ([`util::restrict_dir`]).
        for d in [&opts.state_dir, &containers, &sandboxes] {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(d, fs::Permissions::from_mode(0o711))
                .map_err(|e| Error::io("chmod", d, e))?;
        }
        match crate::rootfs::spread_layers(&opts.layers_dir) {
            Ok(spread) => tracing::debug!(spread, "writable layers spread over block groups"),
            Err(e) => tracing::warn!(
                dir = %opts.layers_dir.display(),
                "cannot mark the writable layers' parent top-level (chattr +T): {e}"
            ),
        }
        let handlers = opts
            .config
            .handlers
            .iter()
            .map(|(name, h)| {
                let root = opts.state_dir.join("runtime").join(name);
                (name.clone(), h.runtime(name, root))
            })
            .collect();
        let monitor_binary = if opts.config.monitor_binary.as_os_str().is_empty() {
            default_monitor_binary()?
        } else {
            opts.config.monitor_binary.clone()
        };
        let opts_state_dir = opts.state_dir.clone();
        // On the store's filesystem (the layers' parent is the root directory), where the
        // image trees that get idmapped live.
        let scratch = opts.layers_dir.with_file_name("userns-probe");
        let started = std::time::Instant::now();
        let userns = crate::userns::check_searchable(&opts.state_dir)
            .and_then(|()| crate::userns::probe(&monitor_binary, &scratch));
        match &userns {
            Ok(()) => tracing::info!(
                probe_ms = started.elapsed().as_millis() as u64,
                "user-namespaced pods (hostUsers: false) are available"
            ),
            Err(missing) => tracing::warn!(
                "user-namespaced pods (hostUsers: false) are not available: {missing}"
            ),
        }
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
            pod_inits_gone: Arc::default(),
            oom_warned: AtomicBool::new(false),
            seccomp_default_warned: AtomicBool::new(false),
            apparmor_default_warned: AtomicBool::new(false),
            cgroups: CgroupLayout::detect(),
            // kubelet polls every 10 s: a layer is walked at most about that often.
            layer_usage: DiskUsageCache::new(Duration::from_secs(10)),
            exits: ExitWatcher::start()
                .map_err(|e| Error::io("start the exit watcher for", &opts_state_dir, e))?,
            userns,
            events: Arc::default(),
            netns_reaper: NetnsReaper::start().map_err(|e| {
                Error::io("start the network namespace reaper for", &opts_state_dir, e)
            })?,
            steps: Default::default(),
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

    /// Whether pods may have user namespaces of their own (probed at start-up); the error
    /// says what the node lacks.
    pub fn user_namespaces(&self) -> std::result::Result<(), &str> {
        self.userns.as_ref().map(|_| ()).map_err(String::as_str)
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

    pub(crate) fn info(&self, rec: &ContainerRecord) -> ContainerInfo {
        let rootfs = self.rootfs(&rec.id);
        ContainerInfo {
            record: rec.clone(),
            run_dir: self.run_dir(&rec.id),
            rootfs: rootfs.target().to_owned(),
            upper_dir: rootfs.upper().to_owned(),
        }
    }

    pub(crate) fn entry(&self, id: &ContainerId) -> Option<Arc<Entry>> {
        lock(&self.containers).get(id).cloned()
    }

    /// Publishes `kind` with container `id`'s current record, if it still exists.
    pub(crate) fn publish_event(&self, id: &ContainerId, kind: EventKind) {
        if let Some(entry) = self.entry(id) {
            entry.publish_event(kind);
        }
    }

    pub(crate) fn entry_or_not_found(&self, id: &ContainerId) -> Result<Arc<Entry>> {
        self.entry(id)
            .ok_or_else(|| Error::ContainerNotFound { id: id.to_string() })
    }

    /// Has the exit watcher note when sandbox `id`'s pod init ends, so that status reads
    /// NotReady from memory.
    pub(crate) fn watch_pod_init(&self, id: &SandboxId, init: monitor::ProcessIdentity) {
        let (gone, id) = (self.pod_inits_gone.clone(), id.clone());
        let events = self.events.clone();
        self.exits.watch_process(init, move || {
            lock(&gone).insert(id.clone());
            // The pod is NotReady from now on: evented PLEG learns it from this event.
            events.publish_sandbox(EventKind::Stopped, id, None);
        });
    }

    /// Makes `entry` visible to readers and has the exit watcher follow its monitor.
    pub(crate) fn insert_entry(&self, id: ContainerId, entry: Entry) {
        let entry = Arc::new(entry);
        entry.attach_events(self.events.clone());
        lock(&self.containers).insert(id, entry.clone());
        self.exits.watch(entry);
    }

    /// Has `observe` told how long each step of every later pod start took (see
    /// [`crate::steps`]); only the first observer set counts.
    pub fn observe_steps(&self, observe: impl Fn(Step, Duration) + Send + Sync + 'static) {
        if !self.steps.observe(Box::new(observe)) {
            tracing::warn!("a step observer is already set: the new one is ignored");
        }
    }

    /// The container lifecycle events: subscribe here (GetContainerEvents).
    pub fn events(&self) -> &EventBus {
        &self.events
    }

    /// CreateContainer: mounts the rootfs, writes the spec, and has the monitor run
    /// `<runtime> create`. A spec the runtime rejects (missing executable…) fails here with
    /// [`Error::CreateFailed`], and everything made so far is undone.
    pub fn create_container(&self, req: CreateRequest) -> Result<ContainerInfo> {
        self.create_container_when(req, || Ok(()))
    }

    /// [`Self::create_container`] that calls `ready` once the rootfs and the spec are in
    /// place, just before `<runtime> create`: what the caller does meanwhile (the image
    /// lease) overlaps the mount, and its error (`Err(message)`) fails and undoes the create.
    pub fn create_container_when(
        &self,
        mut req: CreateRequest,
        ready: impl FnOnce() -> std::result::Result<(), String>,
    ) -> Result<ContainerInfo> {
        crate::cgroup_warm::warm();
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
        let staged = run_dir.join(crate::userns::STAGED_MOUNTS);
        // From here every resource pushes its release; an early `?` runs them in reverse.
        let mut undo = Undo::new(format_args!("container {id}"));
        undo.push("remove its directories", || self.remove_container_dirs(&id));
        crate::hostpath::ensure_sources(&req.spec.mounts)?;
        let userns = req.spec.namespaces.user.clone();
        util::restrict_dir(&run_dir, userns.as_ref().map(|u| u.mapping.root_gid()))?;
        let userns = userns
            .map(|u| fs::File::open(&u.path).map_err(|e| Error::io("open", &u.path, e)))
            .transpose()?;
        let kill_all = req.spec.namespaces.needs_kill_all();
        // For a handler with `sealed_copy`, the monitor runs `create` from the runtime's
        // sealed copy (its stdin), so the runtime does not copy and re-exec itself
        // (see sealed_exe.rs).
        let runtime_copy = oci.sealed_copy();
        let args = MonitorArgs {
            runtime: match runtime_copy {
                Some(_) => monitor::RUNTIME_FROM_STDIN.into(),
                None => oci.binary().to_owned(),
            },
            runtime_root: oci.root().to_owned(),
            id: id.to_string(),
            bundle: run_dir.clone(),
            run_dir: run_dir.clone(),
            log_path: req.log_path.clone(),
            cgroup: spec::cgroup_path(&req.spec.cgroup_parent, &id),
            kill_all,
            tty: req.spec.tty,
            stdin: req.spec.stdin,
            stdin_once: req.spec.stdin_once,
        };
        // Pushed before the monitor starts: one that fails half-way may have left `runc init`.
        undo.push("delete the runtime's container", || oci.delete(&id, true));
        let timeout = Duration::from_secs(self.opts.config.create_timeout_secs.max(1));
        // Started before the rootfs and the spec exist, which it waits for (see monitor.rs);
        // declared after `undo`, so an early return ends it before the directories go.
        let monitor = self
            .steps
            .time(Step::MonitorStart, || {
                monitor::start(
                    &self.monitor_binary,
                    &args,
                    runtime_copy.as_deref(),
                    timeout,
                )
            })
            .map_err(|message| Error::CreateFailed {
                id: id.to_string(),
                message,
            })?;
        drop(runtime_copy);
        rootstock_fsutil::failpoint::hit("container.monitor-started");
        let rootfs = self.steps.time(Step::RootfsMount, || {
            OverlayRootfs::mount(
                &req.rootfs_lower,
                &run_dir.join("rootfs"),
                &self.layer_dir(&id),
                userns.as_ref(),
            )
        })?;
        undo.push("unmount the rootfs", || self.rootfs(&id).unmount());
        if let Some(ns) = &userns {
            undo.push("detach the staged mounts", || {
                crate::userns::detach_all_in(&staged).map_err(|e| Error::io("detach", &staged, e))
            });
            crate::userns::stage_mounts(&staged, &mut req.spec.mounts, ns)?;
        }
        rootstock_fsutil::failpoint::hit("container.rootfs-mounted");

        let spec_started = std::time::Instant::now();
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
        // Written plainly, never fsynced: only `<runtime> create` below reads it, and a
        // create that a crash interrupts leaves a run directory without a record, which
        // recovery removes whole. (Two fsyncs here were a tenth of a pod start.)
        let config_path = run_dir.join("config.json");
        fs::write(&config_path, &config).map_err(|e| Error::io("write", &config_path, e))?;
        self.steps.record(Step::Spec, spec_started.elapsed());
        rootstock_fsutil::failpoint::hit("container.spec-written");

        ready().map_err(|message| Error::CreateFailed {
            id: id.to_string(),
            message,
        })?;
        let created = self
            .steps
            .time(Step::RuntimeCreate, || monitor.create())
            .map_err(|message| Error::CreateFailed {
                id: id.to_string(),
                message,
            })?;
        // The container's mount namespace holds its own copies of the staged mounts.
        if let Err(e) = crate::userns::detach_all_in(&staged) {
            tracing::warn!(container = %id, "detaching staged mounts: {e}");
        }
        rootstock_fsutil::failpoint::hit("container.runc-created");
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
        entry::persist(&run_dir, &rec)?;
        rootstock_fsutil::failpoint::hit("container.record-persisted");
        undo.commit();
        let info = self.info(&rec);
        self.insert_entry(id.clone(), Entry::new(run_dir, rec, spec));
        self.publish_event(&id, EventKind::Created);
        Ok(info)
    }

    /// `unified` names cgroup v2 files: a v1 node cannot honour it, and saying so beats the
    /// OCI runtime's error after the rootfs is mounted.
    pub(crate) fn check_unified(&self, resources: &spec::Resources) -> Result<()> {
        if self.cgroups.is_v2() || resources.unified.is_empty() {
            return Ok(());
        }
        let keys: Vec<&str> = resources.unified.keys().map(String::as_str).collect();
        Err(Error::InvalidArgument(format!(
            "unified cgroup resources ({}) need cgroup v2; this node runs cgroup v1",
            keys.join(", ")
        )))
    }
}

/// The monitor next to the running executable (the daemon's; for tests, see the tests).
pub fn default_monitor_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| Error::io("locate", "/proc/self/exe", e))?;
    Ok(exe.with_file_name("rootstock-monitor"))
}
