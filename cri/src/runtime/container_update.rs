//! UpdateContainerResources: new cgroup limits (kubelet's CPU manager and in-place pod
//! resize), through the OCI runtime's `update` on cgroup v1 and written by the runtime crate
//! on cgroup v2. The `oom_score_adj` of a running process is not changed, as with containerd.
//! The limits in force are kept with the container (ContainerStatus `resources`); an exited
//! container has nothing to change and answers OK, as containerd does.

use k8s_cri::v1::{
    LinuxContainerResources, UpdateContainerResourcesRequest, UpdateContainerResourcesResponse,
};

use super::container_create::resources;
use super::meta::{ContainerMeta, to_json};
use super::{RuntimeApi, blocking, validate};
use crate::error::CriError;

impl RuntimeApi {
    pub(super) async fn handle_update_container_resources(
        &self,
        req: UpdateContainerResourcesRequest,
    ) -> Result<UpdateContainerResourcesResponse, CriError> {
        let id = self.container_id(&req.container_id)?;
        let given = req.linux.unwrap_or_default();
        validate::check_resources(&given, "UpdateContainerResources: linux")?;
        let limits = resources(Some(&given));
        let rt = self.rt.clone();
        let cid = id.clone();
        blocking(move || rt.update_container_resources(&cid, &limits)).await?;
        let mut meta = ContainerMeta::of(&self.rt.container(&id)?);
        meta.resources = Some(merged(meta.resources.unwrap_or_default(), given));
        let rt = self.rt.clone();
        blocking(move || rt.set_client_data(&id, to_json(&meta))).await?;
        Ok(UpdateContainerResourcesResponse {})
    }
}

/// The limits in force after an update: CRI's zero values leave a limit as it was (the
/// update does not touch it either). `oom_score_adj` is not updated on a running process.
fn merged(
    mut old: LinuxContainerResources,
    new: LinuxContainerResources,
) -> LinuxContainerResources {
    let set = |o: &mut i64, n: i64| {
        if n != 0 {
            *o = n;
        }
    };
    set(&mut old.cpu_period, new.cpu_period);
    set(&mut old.cpu_quota, new.cpu_quota);
    set(&mut old.cpu_shares, new.cpu_shares);
    set(&mut old.memory_limit_in_bytes, new.memory_limit_in_bytes);
    set(
        &mut old.memory_swap_limit_in_bytes,
        new.memory_swap_limit_in_bytes,
    );
    for (o, n) in [
        (&mut old.cpuset_cpus, new.cpuset_cpus),
        (&mut old.cpuset_mems, new.cpuset_mems),
    ] {
        if !n.is_empty() {
            *o = n;
        }
    }
    if !new.hugepage_limits.is_empty() {
        old.hugepage_limits = new.hugepage_limits;
    }
    old.unified.extend(new.unified);
    old
}
