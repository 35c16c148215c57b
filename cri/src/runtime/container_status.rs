//! ContainerStatus and ListContainers, from the runtime's in-memory records (exits are
//! recorded as the monitors end) and the CRI values stored with them. Neither blocks: they
//! run on the async worker and never wait for an operation on the container.

use std::collections::HashMap;

use k8s_cri::v1::{
    Container, ContainerMetadata, ContainerResources, ContainerState as CriState, ContainerStatus,
    ContainerStatusRequest, ContainerStatusResponse, ImageSpec, ListContainersRequest,
    ListContainersResponse,
};
use rootstock_runtime::{ContainerRecord, ContainerState, ExitReason, SandboxId};

use super::meta::{ContainerListed, ContainerMeta, sandbox_of};
use super::{RuntimeApi, labels_match};
use crate::error::CriError;

impl RuntimeApi {
    pub(super) fn handle_container_status(
        &self,
        req: ContainerStatusRequest,
    ) -> Result<ContainerStatusResponse, CriError> {
        let id = self.container_id(&req.container_id)?;
        let info = self.rt.container(&id)?;
        // Kept in memory since create: no file is read on this path (kubelet polls it).
        let runtime_spec = self.rt.container_spec(&id)?;
        let mut info_map = HashMap::new();
        if req.verbose {
            let meta = ContainerMeta::of(&info);
            let rec = &info.record;
            // containerd's keys (`crictl inspect -o go-template` scripts read them), then
            // ours. crictl decodes every info value as a JSON object.
            let verbose = serde_json::json!({
                "sandboxID": sandbox_of(&info),
                "pid": rec.init_pid,
                "removing": false,
                "runtimeType": rec.handler,
                "config": meta.config,
                // Read from the bundle: memory keeps only what the status shows.
                "runtimeSpec": *self.rt.container_full_spec(&id)?,
                "id": id.as_str(),
                "cgroupPath": rec.cgroup_path,
                "runDir": info.run_dir,
                "rootfs": info.rootfs,
                "imageRequested": meta.image_requested,
            });
            info_map.insert("info".to_owned(), verbose.to_string());
        }
        Ok(ContainerStatusResponse {
            status: Some(cri_status(&info.record, &runtime_spec)),
            info: info_map,
        })
    }

    /// The statuses of every container of sandbox `id`, for PodSandboxStatus and events
    /// (kubelet's evented PLEG takes the pod's containers from there).
    pub(super) fn container_statuses_of(&self, id: &SandboxId) -> Vec<ContainerStatus> {
        self.rt
            .containers_of(id)
            .iter()
            .filter_map(|c| {
                // Removed between the listing and here: not part of the pod any more.
                let spec = self.rt.container_spec(&c.record.id).ok()?;
                Some(cri_status(&c.record, &spec))
            })
            .collect()
    }

    pub(super) fn handle_list_containers(
        &self,
        req: ListContainersRequest,
    ) -> Result<ListContainersResponse, CriError> {
        let mut filter = req.filter.unwrap_or_default();
        filter.id = self.container_filter(&filter.id)?;
        filter.pod_sandbox_id = self.sandbox_filter(&filter.pod_sandbox_id)?;
        // Records shared with memory (no copy); the cheap filters on the record first, then
        // only the meta fields a list shows are read (kubelet relists every second).
        let containers = self
            .rt
            .container_records()
            .iter()
            .filter(|rec| filter.id.is_empty() || rec.id.as_str() == filter.id)
            .filter(|rec| {
                filter
                    .state
                    .as_ref()
                    .is_none_or(|s| s.state == cri_state(&rec.state) as i32)
            })
            .filter(|rec| {
                filter.pod_sandbox_id.is_empty()
                    || rec
                        .sandbox_id
                        .as_ref()
                        .is_some_and(|s| s.as_str() == filter.pod_sandbox_id)
            })
            .filter_map(|rec| {
                let meta = ContainerListed::of(rec);
                labels_match(&meta.labels, &filter.label_selector).then(|| Container {
                    id: rec.id.to_string(),
                    pod_sandbox_id: rec
                        .sandbox_id
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                    metadata: Some(ContainerMetadata {
                        name: meta.name,
                        attempt: meta.attempt,
                    }),
                    // The image id, never a tag: `crictl rmi --prune` resolves this with
                    // ImageStatus to keep the image in use, and a tag may have moved to a
                    // newer image since (kubelet's own config names the id, too).
                    image: Some(ImageSpec {
                        image: meta.image_id.clone(),
                        user_specified_image: meta.image_requested,
                        ..ImageSpec::default()
                    }),
                    image_ref: meta.image_ref,
                    state: cri_state(&rec.state) as i32,
                    created_at: rec.created_at_unix_nanos,
                    image_id: meta.image_id,
                    labels: meta.labels,
                    annotations: meta.annotations,
                })
            })
            .collect();
        Ok(ListContainersResponse { containers })
    }
}

/// A container's CRI status from its record and the OCI spec it was created with.
pub(super) fn cri_status(
    rec: &ContainerRecord,
    runtime_spec: &serde_json::Value,
) -> ContainerStatus {
    let meta = ContainerMeta::of_record(rec);
    let (finished_at, exit_code, reason) = match rec.state {
        ContainerState::Exited(exit) => (
            exit.exited_at_unix_nanos,
            exit.exit_code,
            exit.reason.as_cri().to_owned(),
        ),
        _ => (0, 0, String::new()),
    };
    // Said where the reason alone does not explain the state.
    let message = match rec.state {
        ContainerState::Exited(exit) if exit.reason == ExitReason::Unknown => {
            "the container's exit was not observed (its monitor was lost or the node \
             rebooted); the exit code is unknown"
                .to_owned()
        }
        _ => String::new(),
    };
    ContainerStatus {
        id: rec.id.to_string(),
        metadata: Some(meta.metadata()),
        state: cri_state(&rec.state) as i32,
        created_at: rec.created_at_unix_nanos,
        started_at: rec.started_at_unix_nanos.unwrap_or_default(),
        finished_at,
        exit_code,
        // The first repo tag, for display (kubelet shows it as the pod's image).
        image: Some(ImageSpec {
            image: meta.image_tag.clone(),
            user_specified_image: meta.image_requested.clone(),
            ..ImageSpec::default()
        }),
        image_ref: meta.image_ref.clone(),
        reason,
        message,
        mounts: meta.mounts.iter().map(|m| m.to_cri()).collect(),
        log_path: log_path(rec),
        resources: meta.resources.clone().map(|linux| ContainerResources {
            linux: Some(linux),
            windows: None,
        }),
        image_id: meta.image_id.clone(),
        user: container_user(runtime_spec),
        labels: meta.labels,
        annotations: meta.annotations,
    }
}

fn cri_state(state: &ContainerState) -> CriState {
    match state {
        ContainerState::Created => CriState::ContainerCreated,
        ContainerState::Running => CriState::ContainerRunning,
        ContainerState::Exited(_) => CriState::ContainerExited,
        ContainerState::Unknown => CriState::ContainerUnknown,
    }
}

/// The absolute log path; empty when the container was created without one.
fn log_path(rec: &ContainerRecord) -> String {
    let path = &rec.log_path;
    if path.as_os_str() == "/dev/null" {
        String::new()
    } else {
        path.display().to_string()
    }
}

/// The identity the container's first process started with (CRI `ContainerStatus.user`):
/// `process.user` of the spec it was created with, after the image's `/etc/passwd` and
/// `/etc/group` were resolved.
fn container_user(spec: &serde_json::Value) -> Option<k8s_cri::v1::ContainerUser> {
    let user = spec.get("process")?.get("user")?;
    let id = |k: &str| user.get(k).and_then(serde_json::Value::as_i64);
    Some(k8s_cri::v1::ContainerUser {
        linux: Some(k8s_cri::v1::LinuxContainerUser {
            uid: id("uid")?,
            gid: id("gid")?,
            supplemental_groups: user
                .get("additionalGids")
                .and_then(serde_json::Value::as_array)
                .map(|a| a.iter().filter_map(serde_json::Value::as_i64).collect())
                .unwrap_or_default(),
        }),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use rootstock_runtime::{ExitInfo, ExitReason};

    #[test]
    fn every_state_maps_to_its_cri_state() {
        let exited = ContainerState::Exited(ExitInfo {
            exit_code: 1,
            exited_at_unix_nanos: 5,
            reason: ExitReason::Error,
        });
        for (state, cri) in [
            (ContainerState::Created, CriState::ContainerCreated),
            (ContainerState::Running, CriState::ContainerRunning),
            (exited, CriState::ContainerExited),
            (ContainerState::Unknown, CriState::ContainerUnknown),
        ] {
            assert_eq!(cri_state(&state), cri, "{state:?}");
        }
    }

    #[test]
    fn the_user_comes_from_the_spec_it_was_created_with() {
        let spec = serde_json::json!({
            "process": {"user": {"uid": 1000, "gid": 3000, "additionalGids": [3000, 10]}}
        });
        let user = container_user(&spec).unwrap().linux.unwrap();
        assert_eq!((user.uid, user.gid), (1000, 3000));
        assert_eq!(user.supplemental_groups, [3000, 10]);
        assert!(container_user(&serde_json::Value::Null).is_none());
        assert!(container_user(&serde_json::json!({"process": {"user": {}}})).is_none());
    }
}
