//! Reads of the containers: status, list, spec, usage. They serve memory (the entries'
//! snapshots, kept current by the exit watcher) and never wait for an operation in progress,
//! so kubelet's relist stays fast while `runc start` or a stop's grace period runs.
//! Usage reads cgroup files (no lock held): the daemon calls it off its async workers.

use std::path::PathBuf;
use std::sync::Arc;

use crate::error::Result;
use crate::id::ContainerId;
use crate::runtime::{ContainerInfo, ContainerUsage, Runtime, lock};
use crate::state::ContainerRecord;
use crate::stats::{CgroupUsage, DiskUsage};

impl Runtime {
    /// ContainerStatus: the record as last persisted (exits are recorded as they happen).
    pub fn container(&self, id: &ContainerId) -> Result<ContainerInfo> {
        let entry = self.entry_or_not_found(id)?;
        Ok(self.info(&entry.snapshot()))
    }

    /// ListContainers: every container's record as last persisted.
    pub fn list_containers(&self) -> Vec<ContainerInfo> {
        let entries: Vec<_> = lock(&self.containers).values().cloned().collect();
        entries.iter().map(|e| self.info(&e.snapshot())).collect()
    }

    /// Every container's record as last persisted, shared with memory: no copy, so a list
    /// that needs only the records (ListContainers, kubelet's relist) costs a reference
    /// count per container.
    pub fn container_records(&self) -> Vec<Arc<ContainerRecord>> {
        let entries: Vec<_> = lock(&self.containers).values().cloned().collect();
        entries.iter().map(|e| e.snapshot()).collect()
    }

    /// The ids of every container (for prefix lookups).
    pub fn container_ids(&self) -> Vec<ContainerId> {
        lock(&self.containers).keys().cloned().collect()
    }

    /// What ContainerStatus shows of the OCI spec the container was created with,
    /// `{"process": {"user": …}}` (kept in memory since create or recovery; `null` when
    /// recovery could not read it). Reads no file.
    pub fn container_spec(&self, id: &ContainerId) -> Result<Arc<serde_json::Value>> {
        Ok(self.entry_or_not_found(id)?.spec())
    }

    /// The whole OCI spec (the bundle's `config.json`, read now: the verbose status only).
    pub fn container_full_spec(&self, id: &ContainerId) -> Result<Arc<serde_json::Value>> {
        Ok(self.entry_or_not_found(id)?.full_spec())
    }

    /// Replaces the caller's data stored with the record (persisted first).
    pub fn set_client_data(&self, id: &ContainerId, data: serde_json::Value) -> Result<()> {
        let entry = self.entry_or_not_found(id)?;
        entry.update(|cur| {
            let mut next = cur.clone();
            next.client_data = data.into();
            Some(next)
        })?;
        Ok(())
    }

    /// ContainerStats: the container's cgroup counters and its writable layer's cached usage.
    pub fn container_usage(&self, id: &ContainerId) -> Result<ContainerUsage> {
        let cgroup_path = self.entry_or_not_found(id)?.snapshot().cgroup_path.clone();
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
}
