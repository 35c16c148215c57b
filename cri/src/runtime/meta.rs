//! What rootstock stores as the runtime crate's opaque `client_data` of each sandbox and
//! container: the CRI values kubelet rebuilds its world from (metadata, labels, annotations,
//! image, log path…), echoed exactly, also after a daemon restart. The CRI messages are
//! prost types without serde, hence these mirrors.

use std::collections::HashMap;

use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, LinuxContainerResources, Mount, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata,
};
use rootstock_runtime::sandbox::SandboxRecord;
use rootstock_runtime::{ContainerInfo, ContainerRecord, SandboxInfo, Signal};
use serde::{Deserialize, Serialize};

/// Version of the layout below; bumped when a field changes meaning.
const META_VERSION: u32 = 1;

/// A sandbox's CRI values.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub(super) struct SandboxMeta {
    pub version: u32,
    pub name: String,
    pub uid: String,
    pub namespace: String,
    pub attempt: u32,
    pub labels: HashMap<String, String>,
    pub annotations: HashMap<String, String>,
    pub runtime_handler: String,
    pub log_directory: String,
    /// `NamespaceOption` as given (network, pid, ipc modes and `target_id`), echoed in status.
    pub network_mode: i32,
    pub pid_mode: i32,
    pub ipc_mode: i32,
    pub target_id: String,
    /// The config as given (verbose PodSandboxStatus `config`, as containerd shows it).
    pub config: Option<PodSandboxConfig>,
}

impl SandboxMeta {
    pub fn new(metadata: &PodSandboxMetadata) -> Self {
        Self {
            version: META_VERSION,
            name: metadata.name.clone(),
            uid: metadata.uid.clone(),
            namespace: metadata.namespace.clone(),
            attempt: metadata.attempt,
            ..Self::default()
        }
    }

    /// The meta of a recorded sandbox; a record without one (not ours, or unreadable) reads
    /// as empty rather than failing the list it is in.
    pub fn of(info: &SandboxInfo) -> Self {
        // Read from the record's shared text, never a copy of it.
        info.record.client_data.parse().unwrap_or_default()
    }

    pub fn metadata(&self) -> PodSandboxMetadata {
        PodSandboxMetadata {
            name: self.name.clone(),
            uid: self.uid.clone(),
            namespace: self.namespace.clone(),
            attempt: self.attempt,
        }
    }

    pub fn namespace_options(&self) -> NamespaceOption {
        NamespaceOption {
            network: self.network_mode,
            pid: self.pid_mode,
            ipc: self.ipc_mode,
            target_id: self.target_id.clone(),
            // As the pod asked for it (containerd echoes it too): mode and mappings.
            userns_options: self
                .config
                .as_ref()
                .and_then(|c| c.linux.as_ref())
                .and_then(|l| l.security_context.as_ref())
                .and_then(|s| s.namespace_options.as_ref())
                .and_then(|n| n.userns_options.clone()),
        }
    }

    /// The name that stays reserved until the sandbox is removed. The uid is part of it, as
    /// in containerd's `makeSandboxName`: a pod re-created under the same name is another pod.
    pub fn reserved_name(&self) -> String {
        format!(
            "{}_{}_{}_{}",
            self.name, self.namespace, self.uid, self.attempt
        )
    }
}

/// What ListPodSandbox shows of a sandbox's meta. Read instead of [`SandboxMeta`] on the
/// list path: serde skips the fields not named here (the whole pod config) without building
/// them, where the full meta rebuilt every map of the config per sandbox per relist.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct SandboxListed {
    pub name: String,
    pub uid: String,
    pub namespace: String,
    pub attempt: u32,
    pub labels: HashMap<String, String>,
    pub annotations: HashMap<String, String>,
    pub runtime_handler: String,
}

impl SandboxListed {
    /// As [`SandboxMeta::of`]: an unreadable meta reads as empty.
    pub fn of(rec: &SandboxRecord) -> Self {
        rec.client_data.parse().unwrap_or_default()
    }

    pub fn metadata(&self) -> PodSandboxMetadata {
        PodSandboxMetadata {
            name: self.name.clone(),
            uid: self.uid.clone(),
            namespace: self.namespace.clone(),
            attempt: self.attempt,
        }
    }
}

/// What ListContainers shows of a container's meta (see [`SandboxListed`]: the config,
/// resources and mounts are skipped, not built).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct ContainerListed {
    pub name: String,
    pub attempt: u32,
    pub labels: HashMap<String, String>,
    pub annotations: HashMap<String, String>,
    pub image_requested: String,
    pub image_id: String,
    pub image_ref: String,
}

impl ContainerListed {
    /// As [`ContainerMeta::of_record`]: an unreadable meta reads as empty.
    pub fn of(rec: &ContainerRecord) -> Self {
        rec.client_data.parse().unwrap_or_default()
    }
}

/// A CRI mount as given, echoed in ContainerStatus.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub(super) struct MountMeta {
    pub container_path: String,
    pub host_path: String,
    pub readonly: bool,
    pub propagation: i32,
}

impl MountMeta {
    pub fn to_cri(&self) -> Mount {
        Mount {
            container_path: self.container_path.clone(),
            host_path: self.host_path.clone(),
            readonly: self.readonly,
            propagation: self.propagation,
            ..Mount::default()
        }
    }
}

/// A container's CRI values.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub(super) struct ContainerMeta {
    pub version: u32,
    pub name: String,
    pub attempt: u32,
    pub labels: HashMap<String, String>,
    pub annotations: HashMap<String, String>,
    /// The image as the request named it.
    pub image_requested: String,
    /// `sha256:<config digest>`.
    pub image_id: String,
    /// The image's first repo tag (ContainerStatus `image`), else its id.
    pub image_tag: String,
    /// The image's first repo digest (ContainerStatus `image_ref`), else its id.
    pub image_ref: String,
    /// The tree lease held for the rootfs, released at RemoveContainer.
    pub tree_lease: Option<String>,
    /// Signal StopContainer sends first (from the image's `StopSignal`; 0 in records
    /// written before it was kept), read through [`ContainerMeta::stop_signal`].
    pub stop_signal: i32,
    pub mounts: Vec<MountMeta>,
    /// The config as given (verbose ContainerStatus `config`, as containerd shows it).
    pub config: Option<ContainerConfig>,
    /// The limits in force: as created, then as updated (ContainerStatus `resources`, which
    /// kubelet's in-place resize compares with what it asked for).
    pub resources: Option<LinuxContainerResources>,
}

impl ContainerMeta {
    pub fn of(info: &ContainerInfo) -> Self {
        Self::of_record(&info.record)
    }

    pub fn of_record(rec: &ContainerRecord) -> Self {
        // As `SandboxMeta::of`.
        rec.client_data.parse().unwrap_or_default()
    }

    pub fn metadata(&self) -> ContainerMetadata {
        ContainerMetadata {
            name: self.name.clone(),
            attempt: self.attempt,
        }
    }

    /// Reserved until removal, per sandbox (containerd's `makeContainerName` is equivalent:
    /// it spells out the sandbox's name instead of its id).
    pub fn reserved_name(&self, info: &ContainerInfo) -> String {
        container_name(&sandbox_of(info), &self.name, self.attempt)
    }

    /// The signal StopContainer sends first: the image's, SIGTERM for a record without one.
    pub fn stop_signal(&self) -> Signal {
        Signal::from_raw(self.stop_signal).unwrap_or(Signal::TERM)
    }
}

/// The id of the sandbox a container belongs to, as CRI messages carry it (empty for a
/// container of no sandbox, which only a runtime-level test makes).
pub(super) fn sandbox_of(info: &ContainerInfo) -> String {
    info.record
        .sandbox_id
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default()
}

pub(super) fn container_name(sandbox_id: &str, name: &str, attempt: u32) -> String {
    format!("{sandbox_id}/{name}/{attempt}")
}

pub(super) fn to_json<T: Serialize>(value: &T) -> serde_json::Value {
    // These structs hold only strings, numbers and maps of strings: serialising cannot fail.
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

/// A fresh 64-hex-digit id (as containerd's): 32 bytes of the kernel's randomness.
pub(super) fn new_id() -> Result<String, crate::error::CriError> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| crate::error::CriError::Internal(format!("reading /dev/urandom: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
