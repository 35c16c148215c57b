//! Rebuilding the runtime's view from disk at daemon start-up: records, exit files, monitor
//! liveness (pid *and* start time) and the boot id.
//!
//! - A run directory without a record is a create that never completed (the daemon died
//!   between the mount and the acknowledgement, possibly leaving `runc init` waiting): it is
//!   deleted, unmounted and removed.
//! - A record from another boot: the container cannot be running; it becomes
//!   Exited(Unknown), and the OCI runtime's leftover state is deleted.
//! - Created/Running records: the exit file, if the monitor wrote one meanwhile, decides;
//!   a monitor that is gone without one means Exited(Unknown).
//! - A torn record (empty or cut short: records are per-boot state, written without fsync,
//!   so a power loss can leave one so) is no record: the container is removed as above. A
//!   record of another shape (a newer version's) is kept as Unknown (listable, removable),
//!   never fatal.
//! - A record written before the runtime kept the container's sandbox takes it over from
//!   the daemon's data, once, and is persisted with it.

use std::fs;

use crate::entry::{self, Entry};
use crate::error::{Error, Result};
use crate::id::{ContainerId, SandboxId};
use crate::runtime::{Runtime, RuntimeOptions, STATE_FILE};
use crate::state::{ContainerRecord, ContainerState, ExitInfo, RECORD_VERSION};
use crate::util;

/// What recovery found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Containers loaded (in any state).
    pub loaded: Vec<ContainerId>,
    /// Half-created containers that were cleaned up.
    pub cleaned_up: Vec<ContainerId>,
    /// Containers whose record was torn (a power loss), removed like half-created ones.
    pub torn: Vec<ContainerId>,
    /// Containers from a previous boot, now Exited(Unknown).
    pub previous_boot: Vec<ContainerId>,
    /// Records that could not be read (kept as Unknown), with the reason.
    pub unreadable: Vec<(ContainerId, String)>,
    /// Created records whose container the OCI runtime reports running (the daemon died
    /// between `start` and persisting Running): now Running.
    pub started: Vec<ContainerId>,
    /// Sandboxes: unfinished ones and those that lost their namespaces.
    pub sandboxes: crate::sandbox::SandboxRecovery,
}

impl Runtime {
    /// Opens the runtime and recovers every container found under the state directory.
    pub fn open(opts: RuntimeOptions) -> Result<(Self, RecoveryReport)> {
        let rt = Runtime::new(opts)?;
        let sandboxes = rt.recover_sandboxes()?;
        let mut report = rt.recover()?;
        report.sandboxes = sandboxes;
        Ok((rt, report))
    }

    fn recover(&self) -> Result<RecoveryReport> {
        let mut report = RecoveryReport::default();
        let dir = self.opts.state_dir.join("containers");
        let entries = fs::read_dir(&dir).map_err(|e| Error::io("read directory", &dir, e))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(id) = ContainerId::new(&name) else {
                tracing::warn!("ignoring {}: not a container id", entry.path().display());
                continue;
            };
            match self.recover_one(&id, &mut report) {
                Ok(Some(rec)) => {
                    report.loaded.push(id.clone());
                    let spec = self.read_spec(&id);
                    self.insert_entry(id.clone(), Entry::new(self.run_dir(&id), rec, spec));
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(container = %id, "recovery: {e}");
                    report.unreadable.push((id.clone(), e.to_string()));
                    let rec = self.unknown_record(&id);
                    let entry = Entry::new(self.run_dir(&id), rec, serde_json::Value::Null);
                    self.insert_entry(id, entry);
                }
            }
        }
        // Writable layers whose container is gone entirely (crash between removing the run
        // directory and the layer).
        if let Ok(layers) = fs::read_dir(&self.opts.layers_dir) {
            for l in layers.flatten() {
                let Ok(id) = ContainerId::new(l.file_name().to_string_lossy().into_owned()) else {
                    continue;
                };
                if !self.run_dir(&id).exists()
                    && let Err(e) = fs::remove_dir_all(l.path())
                {
                    tracing::warn!(container = %id, "remove orphaned layer: {e}");
                }
            }
        }
        Ok(report)
    }

    fn recover_one(
        &self,
        id: &ContainerId,
        report: &mut RecoveryReport,
    ) -> Result<Option<ContainerRecord>> {
        let path = self.run_dir(id).join(STATE_FILE);
        let parsed = match fs::read(&path) {
            Ok(data) => serde_json::from_slice::<ContainerRecord>(&data),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.clean_half_created(id)?;
                report.cleaned_up.push(id.clone());
                return Ok(None);
            }
            Err(e) => return Err(Error::io("read", &path, e)),
        };
        let mut rec = match parsed {
            Ok(rec) => rec,
            Err(e) if e.is_eof() || e.is_syntax() => {
                tracing::warn!(container = %id, "recovery: torn record {}: {e}", path.display());
                self.clean_half_created(id)?;
                report.torn.push(id.clone());
                return Ok(None);
            }
            Err(e) => {
                return Err(Error::ReadState {
                    path,
                    message: e.to_string(),
                });
            }
        };
        if rec.version != RECORD_VERSION {
            return Err(Error::ReadState {
                path,
                message: format!("unsupported record version {}", rec.version),
            });
        }
        if rec.sandbox_id.is_none()
            && let Some(sandbox) = legacy_sandbox_id(&rec.client_data.to_value())
        {
            let mut next = rec.clone();
            next.sandbox_id = Some(sandbox);
            entry::persist(&self.run_dir(id), &next)?;
            rec = next;
        }
        if rec.boot_id != self.boot_id {
            if !rec.state.is_final() {
                let mut next = rec.clone();
                next.state = ContainerState::Exited(ExitInfo::unknown(util::now_unix_nanos()));
                entry::persist(&self.run_dir(id), &next)?;
                rec = next;
            }
            // The previous boot's OCI state and mount are stale; the record stays until
            // kubelet removes the container.
            if let Ok(oci) = self.handler(&rec.handler)
                && let Err(e) = oci.delete(id, true)
            {
                tracing::warn!(container = %id, "delete stale runtime state: {e}");
            }
            report.previous_boot.push(id.clone());
            return Ok(Some(rec));
        }
        // Exits while the daemon was down; later ones the exit watcher records.
        if !rec.state.is_final()
            && let Some(exit) = entry::discover_exit(&self.run_dir(id), &rec)?
        {
            let mut next = rec.clone();
            next.state = ContainerState::Exited(exit);
            entry::persist(&self.run_dir(id), &next)?;
            rec = next;
        }
        // Created, but the OCI runtime says running: the daemon died between `start` and
        // persisting Running. The start happened; say so (kubelet would otherwise see a
        // container stuck in Created whose process runs, and a retried start would fail).
        if rec.state == ContainerState::Created
            && let Ok(oci) = self.handler(&rec.handler)
            && matches!(oci.state(id), Ok(Some(ref s)) if s.status == "running")
        {
            let mut next = rec.clone();
            next.state = ContainerState::Running;
            // The real start time was never recorded; now is its upper bound.
            next.started_at_unix_nanos = Some(util::now_unix_nanos());
            entry::persist(&self.run_dir(id), &next)?;
            report.started.push(id.clone());
            rec = next;
        }
        Ok(Some(rec))
    }

    /// The OCI spec of a recovered container, read once here so that ContainerStatus
    /// serves it from memory; `null` (and a warning) when unreadable.
    fn read_spec(&self, id: &ContainerId) -> serde_json::Value {
        let path = self.run_dir(id).join("config.json");
        let parsed = fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|d| serde_json::from_slice(&d).map_err(|e| e.to_string()));
        parsed.unwrap_or_else(|e| {
            tracing::warn!(container = %id, "recovery: reading {}: {e}", path.display());
            serde_json::Value::Null
        })
    }

    fn clean_half_created(&self, id: &ContainerId) -> Result<()> {
        // The monitor and its `<runtime> create` may still be at work (the daemon died
        // right after spawning them): stopped first, or a create finishing after the
        // delete below would leave a container nobody knows of.
        kill_creators(id);
        // We do not know which handler it was created with: ask each (delete is idempotent).
        for oci in self.handlers.values() {
            if let Err(e) = oci.delete(id, true) {
                tracing::warn!(container = %id, handler = oci.handler(), "delete half-created: {e}");
            }
        }
        // A create killed before the runtime wrote its state leaves `<runtime> init` in the
        // container's cgroup, unknown to `delete`.
        if let Some(cgroup) = self.spec_cgroup(id) {
            for pid in self.cgroups.procs(&cgroup).unwrap_or_default() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            if let Err(e) = self.cgroups.remove(&cgroup) {
                tracing::warn!(container = %id, "half-created container's cgroup: {e}");
            }
        }
        self.remove_container_files(id)
    }

    /// `linux.cgroupsPath` of the container's written spec, if there is one.
    fn spec_cgroup(&self, id: &ContainerId) -> Option<String> {
        let data = fs::read(self.run_dir(id).join("config.json")).ok()?;
        let spec: serde_json::Value = serde_json::from_slice(&data).ok()?;
        let path = spec.get("linux")?.get("cgroupsPath")?.as_str()?;
        (!path.is_empty()).then(|| path.to_owned())
    }

    fn unknown_record(&self, id: &ContainerId) -> ContainerRecord {
        ContainerRecord {
            version: RECORD_VERSION,
            id: id.clone(),
            handler: self.opts.config.default_handler.clone(),
            state: ContainerState::Unknown,
            created_at_unix_nanos: 0,
            started_at_unix_nanos: None,
            monitor: None,
            init_pid: 0,
            boot_id: self.boot_id.clone(),
            cgroup_path: String::new(),
            kill_all_on_exit: false,
            log_path: Default::default(),
            sandbox_id: None,
            client_data: crate::ClientData::default(),
        }
    }
}

/// Records written before the runtime kept the container→sandbox link lack `sandbox_id`:
/// the daemon kept it in its own data (`sandbox_id`). Taken over once at load.
fn legacy_sandbox_id(client_data: &serde_json::Value) -> Option<SandboxId> {
    let id = client_data.get("sandbox_id")?.as_str()?;
    SandboxId::new(id).ok()
}

/// SIGKILLs every process that names container `id` in its arguments (its monitor, `--id
/// <id>`, and the OCI runtime's `create … <id>` the monitor runs) and waits up to 2 s for
/// them to be gone. Ids are 64 random hex digits: nothing else names one.
fn kill_creators(id: &ContainerId) {
    let me = std::process::id().to_string();
    let mut victims = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(pid) = name.parse::<i32>() else {
            continue;
        };
        if name == me {
            continue;
        }
        let Ok(cmdline) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if cmdline
            .split(|b| *b == 0)
            .any(|arg| arg == id.as_str().as_bytes())
            && let Ok(start) = util::process_start_time(pid)
        {
            tracing::info!(container = %id, pid, "recovery: killing a process still creating it");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            victims.push((pid, start));
        }
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while victims.iter().any(|(p, s)| util::process_matches(*p, *s))
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
