//! A sandbox's containers and the pod's resource usage: the container→sandbox link lives in
//! each container's record (`sandbox_id`), so the pod RPCs ask the runtime instead of
//! re-parsing the caller's data on every call.

use super::SandboxInfo;
use crate::error::{ErrorKind, Result};
use crate::id::SandboxId;
use crate::runtime::{ContainerInfo, ContainerUsage, Runtime, lock};
use crate::state::ContainerState;
use crate::stats::CgroupUsage;

/// A pod's usage, for PodSandboxStats.
#[derive(Debug, Clone)]
pub struct SandboxUsage {
    /// The pod's counters: its own cgroup's (hierarchical, so they cover its containers and
    /// anything else kubelet put there), or the sum of its running containers' when the pod
    /// cgroup cannot be read.
    pub cgroup: CgroupUsage,
    /// Each running container of the pod with its own usage (exited ones have no cgroup
    /// left to read, as containerd reports them: not at all).
    pub containers: Vec<(ContainerInfo, ContainerUsage)>,
}

impl Runtime {
    /// The containers of sandbox `id`, in any state (refreshed as [`Runtime::list_containers`]).
    /// Filtered on the shared snapshots before anything is copied: PodSandboxStatus (polled
    /// for every pod) lists its pod's containers through here.
    pub fn containers_of(&self, id: &SandboxId) -> Vec<ContainerInfo> {
        let entries: Vec<_> = lock(&self.containers).values().cloned().collect();
        entries
            .iter()
            .map(|e| e.snapshot())
            .filter(|rec| rec.sandbox_id.as_ref() == Some(id))
            .map(|rec| self.info(&rec))
            .collect()
    }

    /// PodSandboxStats' numbers for `sandbox` (see [`SandboxUsage`]).
    pub fn sandbox_usage(&self, sandbox: &SandboxInfo) -> Result<SandboxUsage> {
        let mut containers = Vec::new();
        let mut sum = CgroupUsage::default();
        for c in self.containers_of(&sandbox.record.id) {
            if c.record.state != ContainerState::Running {
                continue;
            }
            match self.container_usage(&c.record.id) {
                Ok(u) => {
                    sum.add(&u.cgroup);
                    containers.push((c, u));
                }
                // Removed between the listing and the read: not part of the pod any more.
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let pod = self.cgroup_usage(&sandbox.record.cgroup_parent);
        Ok(SandboxUsage {
            cgroup: if pod.is_readable() { pod } else { sum },
            containers,
        })
    }
}
