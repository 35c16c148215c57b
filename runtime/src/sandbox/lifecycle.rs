//! The sandbox lifecycle on the runtime: create (files, namespaces, pod-init, record), stop,
//! remove, look-ups and recovery at start-up.

use std::fs::{self, File};
use std::io::Read;
use std::path::PathBuf;

use super::namespaces::node_hostname;
use super::recovery::open_pin;
use super::{
    SANDBOX_FILE, SANDBOX_RECORD_VERSION, SandboxInfo, SandboxPidMode, SandboxRecord, SandboxSpec,
    SandboxState,
};
use crate::error::{Error, Result};
use crate::id::SandboxId;
use crate::runtime::{Runtime, lock};
use crate::steps::Step;
use crate::undo::Undo;
use crate::{sysctl, util};

/// Where the pod cgroups the runtime chooses itself live (`<root>/<sandbox id>`).
pub const OWN_CGROUP_ROOT: &str = "/rootstock";

impl Runtime {
    pub(super) fn sandbox_dir(&self, id: &SandboxId) -> PathBuf {
        self.opts.state_dir.join("sandboxes").join(id.as_str())
    }

    /// The sandbox as clients see it: one whose pod-init has died is NotReady (its PID
    /// namespace is gone with it; kubelet then recreates the pod).
    pub(super) fn sandbox_info(&self, rec: &SandboxRecord) -> SandboxInfo {
        let mut record = rec.clone();
        // The exit watcher noted the pod init's end: no /proc read on this (status) path.
        if record.state == SandboxState::Ready
            && record.pod_init.is_some()
            && lock(&self.pod_inits_gone).contains(&rec.id)
        {
            record.state = SandboxState::NotReady;
        }
        SandboxInfo {
            record,
            dir: self.sandbox_dir(&rec.id),
        }
    }

    fn persist_sandbox(&self, rec: &SandboxRecord) -> Result<()> {
        util::write_record(&self.sandbox_dir(&rec.id).join(SANDBOX_FILE), rec)
    }

    /// RunPodSandbox's runtime part: namespaces, hostname, files, `/dev/shm`. CNI ADD is
    /// the caller's next step, with [`SandboxInfo::netns_path`].
    pub fn create_sandbox(&self, spec: SandboxSpec) -> Result<SandboxInfo> {
        self.create_sandbox_with(spec, |_| {})
    }

    /// [`Runtime::create_sandbox`], calling `pinned` as soon as the namespaces are pinned,
    /// before pod-init is started and the record written: the caller starts CNI ADD there,
    /// so that the network is set up while the rest is made (ADD needs nothing else).
    /// `pinned` must not block. When this fails after `pinned` ran, the namespaces are
    /// released again: the caller must wait for what it started and undo it.
    pub fn create_sandbox_with(
        &self,
        spec: SandboxSpec,
        pinned: impl FnOnce(&SandboxInfo),
    ) -> Result<SandboxInfo> {
        crate::cgroup_warm::warm();
        let id = spec.id.clone();
        let own = sysctl::OwnNamespaces {
            net: !spec.host_network,
            ipc: !spec.host_ipc,
            uts: !spec.host_network,
        };
        for (k, v) in &spec.sysctls {
            sysctl::check(k, v, own)?;
        }
        let dir = self.sandbox_dir(&id);
        fs::create_dir_all(dir.parent().unwrap_or(&dir))
            .map_err(|e| Error::io("create directory", &dir, e))?;
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::SandboxExists { id: id.to_string() });
            }
            Err(e) => return Err(Error::io("create directory", &dir, e)),
        }
        // kubelet always sends its pod cgroup; a bare client (crictl without one) gets one
        // of the runtime's own, which `remove_sandbox` then also removes.
        let (cgroup_parent, own_cgroup) = match spec.cgroup_parent.trim_end_matches('/') {
            "" => (format!("{OWN_CGROUP_ROOT}/{id}"), true),
            given => (given.to_owned(), false),
        };
        // Unfinished until the caller commits it (recovery removes it otherwise).
        super::recovery::mark_unfinished(&dir, &cgroup_parent, own_cgroup)?;
        let mut rec = SandboxRecord {
            version: SANDBOX_RECORD_VERSION,
            id: id.clone(),
            state: SandboxState::Ready,
            // No hostname asked: the pod keeps the node's, as with containerd.
            hostname: if spec.hostname.is_empty() {
                node_hostname()
            } else {
                spec.hostname.clone()
            },
            host_network: spec.host_network,
            host_ipc: spec.host_ipc,
            pid: spec.pid,
            created_at_unix_nanos: util::now_unix_nanos(),
            boot_id: self.boot_id.clone(),
            pod_init: None,
            pod_init_cgroup: None,
            cgroup_parent,
            own_cgroup,
            client_data: spec.client_data.clone(),
            userns: spec.userns,
        };
        let info = self.sandbox_info(&rec);
        // From here every resource pushes its release; an early `?` runs them in reverse.
        let mut undo = Undo::new(format_args!("sandbox {id}"));
        if own_cgroup {
            // Made by pod-init or the first container (their cgroups are leaves below it).
            undo.push("remove the pod cgroup", || {
                self.remove_cgroup(&info.record.cgroup_parent)
            });
        }
        // Tolerates what was never made: pushed before the steps that make it.
        undo.push("release its namespaces and files", || {
            self.teardown_sandbox(&info, true)
        });
        self.steps.time(Step::PinNamespaces, || {
            self.pin_sandbox_namespaces(&spec, &info)
        })?;
        pinned(&info);
        rootstock_fsutil::failpoint::hit("sandbox.namespaces-pinned");
        // While CNI ADD runs: nothing of it reads these.
        self.prepare_sandbox_files(&spec, &info)?;
        if spec.pid == SandboxPidMode::Pod {
            let cgroup = format!("{}/{id}", rec.cgroup_parent);
            let init = self.start_pod_init(&info, Some(&cgroup))?;
            rec.pod_init_cgroup = Some(cgroup);
            rec.pod_init = Some(init);
            rootstock_fsutil::failpoint::hit("sandbox.cgroup-created");
            let stopped = rec.clone();
            undo.push("stop pod-init", move || {
                self.stop_pod_init(&stopped);
                Ok::<(), Error>(())
            });
        }
        self.persist_sandbox(&rec)?;
        rootstock_fsutil::failpoint::hit("sandbox.record-persisted");
        undo.commit();
        let info = self.sandbox_info(&rec);
        if let Some(init) = rec.pod_init {
            self.watch_pod_init(&id, init);
        }
        lock(&self.sandboxes).insert(id, rec);
        Ok(info)
    }

    /// StopPodSandbox's runtime part (after the caller stopped the containers and ran CNI
    /// DEL): releases the namespaces and `/dev/shm`; NotReady is persisted. Stopping an
    /// unknown or stopped sandbox is OK (CRI idempotence).
    ///
    /// The map is locked only to copy the record out and the new one in, never across the
    /// kill, unmounts and record write: PodSandboxStatus and ListPodSandbox read it
    /// meanwhile. The caller serializes stop and remove of one sandbox (the daemon's
    /// per-sandbox lock).
    pub fn stop_sandbox(&self, id: &SandboxId) -> Result<()> {
        let Some(rec) = lock(&self.sandboxes).get(id).cloned() else {
            return Ok(());
        };
        let info = self.sandbox_info(&rec);
        // SIGKILL of a PID namespace's init kills every process left in it.
        self.stop_pod_init(&rec);
        // DEL emptied the network namespace: it is let go with others' (netns_reaper). Every
        // other teardown (recovery, a failed start) lets it go at once, since its end is
        // also what removes an interface DEL did not.
        if let Ok(net) = open_pin(&info.dir.join("ns/net"), libc::CLONE_NEWNET) {
            self.netns_reaper.let_go(net.into());
        }
        self.teardown_sandbox(&info, false)?;
        rootstock_fsutil::failpoint::hit("sandbox-stop.namespaces-released");
        if rec.state != SandboxState::NotReady || rec.pod_init.is_some() {
            let mut next = rec.clone();
            next.state = SandboxState::NotReady;
            next.pod_init = None;
            self.persist_sandbox(&next)?;
            // Never resurrects a sandbox removed meanwhile.
            if let Some(cur) = lock(&self.sandboxes).get_mut(id) {
                *cur = next;
            }
        }
        Ok(())
    }

    /// RemovePodSandbox's runtime part (the caller removes the containers first). Removing
    /// an unknown sandbox is OK.
    pub fn remove_sandbox(&self, id: &SandboxId) -> Result<()> {
        // As in stop_sandbox: the map is not held across the teardown.
        let info = match lock(&self.sandboxes).get(id) {
            Some(rec) => self.sandbox_info(rec),
            None => return Ok(()),
        };
        self.stop_pod_init(&info.record);
        self.teardown_sandbox(&info, true)?;
        rootstock_fsutil::failpoint::hit("sandbox-remove.torn-down");
        // Its containers' cgroups are gone by now (the OCI runtime removes them at delete).
        if info.record.own_cgroup {
            self.remove_cgroup(&info.record.cgroup_parent)?;
        }
        lock(&self.sandboxes).remove(id);
        lock(&self.pod_inits_gone).remove(id);
        Ok(())
    }

    /// PodSandboxStatus's runtime part.
    pub fn sandbox(&self, id: &SandboxId) -> Result<SandboxInfo> {
        lock(&self.sandboxes)
            .get(id)
            .map(|r| self.sandbox_info(r))
            .ok_or_else(|| Error::SandboxNotFound { id: id.to_string() })
    }

    /// The ids of every sandbox (for prefix lookups).
    pub fn sandbox_ids(&self) -> Vec<SandboxId> {
        lock(&self.sandboxes).keys().cloned().collect()
    }

    /// Every sandbox.
    pub fn list_sandboxes(&self) -> Vec<SandboxInfo> {
        lock(&self.sandboxes)
            .values()
            .map(|r| self.sandbox_info(r))
            .collect()
    }

    /// Loads sandbox records at start-up; those of another boot, and those whose pinned
    /// namespaces are gone, become NotReady; unfinished ones are reported
    /// (`sandbox/recovery.rs`).
    pub(crate) fn recover_sandboxes(&self) -> Result<super::SandboxRecovery> {
        let mut report = super::SandboxRecovery::default();
        let dir = self.opts.state_dir.join("sandboxes");
        let Ok(entries) = fs::read_dir(&dir) else {
            return Ok(report);
        };
        for e in entries.flatten() {
            let Ok(id) = SandboxId::new(e.file_name().to_string_lossy().into_owned()) else {
                continue;
            };
            let path = e.path().join(SANDBOX_FILE);
            let mut data = Vec::new();
            let loaded = File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut data))
                .map_err(|e| e.to_string())
                .and_then(|_| {
                    serde_json::from_slice::<SandboxRecord>(&data).map_err(|e| e.to_string())
                });
            match loaded {
                Ok(mut rec) => {
                    let migrated = adopt_legacy_cgroup(&mut rec);
                    let stale = rec.boot_id != self.boot_id && rec.state == SandboxState::Ready;
                    if stale {
                        rec.state = SandboxState::NotReady;
                    }
                    let lost = self.release_lost_namespaces(&mut rec)?;
                    if let Some(why) = &lost {
                        tracing::warn!(sandbox = %id, "recovery: namespaces lost, NotReady: {why}");
                        report.lost_namespaces.push(id.clone());
                    }
                    if super::recovery::is_unfinished(&e.path()) {
                        report.unfinished.push(id.clone());
                    }
                    if migrated || stale || lost.is_some() {
                        self.persist_sandbox(&rec)?;
                    }
                    if let Some(init) = rec.pod_init.filter(|_| rec.state == SandboxState::Ready) {
                        self.watch_pod_init(&id, init);
                    }
                    lock(&self.sandboxes).insert(id, rec);
                }
                Err(msg) => {
                    // A sandbox whose create never completed, or whose record a power loss
                    // tore (records are not fsynced): release what it pinned.
                    tracing::warn!(sandbox = %id, "removing unreadable sandbox {}: {msg}", path.display());
                    let info = SandboxInfo {
                        record: SandboxRecord::unknown(id.clone()),
                        dir: e.path(),
                    };
                    self.release_unrecorded_cgroups(&info);
                    self.teardown_sandbox(&info, true)?;
                }
            }
        }
        Ok(report)
    }
}

/// Records written before the runtime owned the pod cgroup lack `cgroup_parent`: the daemon
/// kept it, and whether it chose it, in its own data (`cgroup_parent`, `own_cgroup`). Taken
/// over once at load; true when the record changed and must be persisted.
fn adopt_legacy_cgroup(rec: &mut SandboxRecord) -> bool {
    if !rec.cgroup_parent.is_empty() {
        return false;
    }
    let data = rec.client_data.to_value();
    let Some(parent) = data
        .get("cgroup_parent")
        .and_then(serde_json::Value::as_str)
        .filter(|p| !p.is_empty())
    else {
        return false;
    };
    rec.cgroup_parent = parent.to_owned();
    rec.own_cgroup = data
        .get("own_cgroup")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    true
}
