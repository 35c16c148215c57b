//! The sandbox lifecycle on the runtime: create (files, namespaces, pod-init, record), stop,
//! remove, look-ups and recovery at start-up.

use std::fs::{self, File};
use std::io::Read;
use std::path::PathBuf;

use super::namespaces::{node_hostname, stop_pod_init};
use super::{
    SANDBOX_FILE, SANDBOX_RECORD_VERSION, SandboxInfo, SandboxPidMode, SandboxRecord, SandboxSpec,
    SandboxState,
};
use crate::error::{Error, Result};
use crate::id::SandboxId;
use crate::runtime::{Runtime, lock};
use crate::{sysctl, util};

impl Runtime {
    pub(super) fn sandbox_dir(&self, id: &SandboxId) -> PathBuf {
        self.opts.state_dir.join("sandboxes").join(id.as_str())
    }

    /// The sandbox as clients see it: one whose pod-init has died is NotReady (its PID
    /// namespace is gone with it; kubelet then recreates the pod).
    pub(super) fn sandbox_info(&self, rec: &SandboxRecord) -> SandboxInfo {
        let mut record = rec.clone();
        if record.state == SandboxState::Ready && record.pod_init.is_some_and(|i| !i.is_alive()) {
            record.state = SandboxState::NotReady;
        }
        SandboxInfo {
            record,
            dir: self.sandbox_dir(&rec.id),
        }
    }

    fn persist_sandbox(&self, rec: &SandboxRecord) -> Result<()> {
        let path = self.sandbox_dir(&rec.id).join(SANDBOX_FILE);
        let data = serde_json::to_vec_pretty(rec).map_err(|e| Error::WriteState {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        rootstock_fsutil::write_atomic(&path, &data)
            .map_err(|source| Error::WriteState { path, source })
    }

    /// RunPodSandbox's runtime part: namespaces, hostname, files, `/dev/shm`. CNI ADD is
    /// the caller's next step, with [`SandboxInfo::netns_path`].
    pub fn create_sandbox(&self, spec: SandboxSpec) -> Result<SandboxInfo> {
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
            client_data: spec.client_data.clone(),
        };
        let info = self.sandbox_info(&rec);
        let prepared = self.prepare_sandbox(&spec, &info).and_then(|()| {
            if spec.pid == SandboxPidMode::Pod {
                let cgroup = (!spec.cgroup_parent.is_empty())
                    .then(|| format!("{}/{id}", spec.cgroup_parent.trim_end_matches('/')));
                rec.pod_init_cgroup = cgroup.clone();
                rec.pod_init = Some(self.start_pod_init(&info, cgroup.as_deref())?);
            }
            self.persist_sandbox(&rec)
        });
        if let Err(e) = prepared {
            stop_pod_init(&rec);
            if let Err(c) = self.teardown_sandbox(&info, true) {
                tracing::warn!(sandbox = %id, "cleanup after failed create: {c}");
            }
            return Err(e);
        }
        let info = self.sandbox_info(&rec);
        lock(&self.sandboxes).insert(id, rec);
        Ok(info)
    }

    /// StopPodSandbox's runtime part (after the caller stopped the containers and ran CNI
    /// DEL): releases the namespaces and `/dev/shm`; NotReady is persisted. Stopping an
    /// unknown or stopped sandbox is OK (CRI idempotence).
    pub fn stop_sandbox(&self, id: &SandboxId) -> Result<()> {
        let mut map = lock(&self.sandboxes);
        let Some(rec) = map.get_mut(id) else {
            return Ok(());
        };
        let info = self.sandbox_info(rec);
        // SIGKILL of a PID namespace's init kills every process left in it.
        stop_pod_init(rec);
        self.teardown_sandbox(&info, false)?;
        if rec.state != SandboxState::NotReady || rec.pod_init.is_some() {
            let mut next = rec.clone();
            next.state = SandboxState::NotReady;
            next.pod_init = None;
            self.persist_sandbox(&next)?;
            *rec = next;
        }
        Ok(())
    }

    /// RemovePodSandbox's runtime part (the caller removes the containers first). Removing
    /// an unknown sandbox is OK.
    pub fn remove_sandbox(&self, id: &SandboxId) -> Result<()> {
        let mut map = lock(&self.sandboxes);
        let info = match map.get(id) {
            Some(rec) => self.sandbox_info(rec),
            None => return Ok(()),
        };
        stop_pod_init(&info.record);
        self.teardown_sandbox(&info, true)?;
        map.remove(id);
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

    /// Loads sandbox records at start-up; those of another boot become NotReady.
    pub(crate) fn recover_sandboxes(&self) -> Result<()> {
        let dir = self.opts.state_dir.join("sandboxes");
        let Ok(entries) = fs::read_dir(&dir) else {
            return Ok(());
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
                    if rec.boot_id != self.boot_id && rec.state == SandboxState::Ready {
                        rec.state = SandboxState::NotReady;
                        self.persist_sandbox(&rec)?;
                    }
                    lock(&self.sandboxes).insert(id, rec);
                }
                Err(msg) => {
                    // A sandbox whose create never completed: release what it pinned.
                    tracing::warn!(sandbox = %id, "removing unreadable sandbox {}: {msg}", path.display());
                    let info = SandboxInfo {
                        record: SandboxRecord {
                            version: SANDBOX_RECORD_VERSION,
                            id: id.clone(),
                            state: SandboxState::NotReady,
                            hostname: String::new(),
                            host_network: false,
                            host_ipc: false,
                            pid: SandboxPidMode::Container,
                            created_at_unix_nanos: 0,
                            boot_id: String::new(),
                            pod_init: None,
                            pod_init_cgroup: None,
                            client_data: serde_json::Value::Null,
                        },
                        dir: e.path(),
                    };
                    self.teardown_sandbox(&info, true)?;
                }
            }
        }
        Ok(())
    }
}
