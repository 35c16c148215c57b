//! Container lifecycle and its persisted record.
//!
//! ```text
//!   CreateContainer (monitor reported "created")
//!          │
//!          ▼
//!       Created ──StartContainer──▶ Running
//!          │                           │
//!          │ killed before start       │ init exits (monitor wrote exit.json)
//!          ▼                           ▼
//!       Exited ◀───────────────────────┘
//!          │ RemoveContainer
//!          ▼
//!      (removed: runtime state, rootfs mount, directories and record deleted)
//!
//!   Unknown: a record that could not be read; it can only be removed.
//! ```
//! Every transition is written to disk (atomically) before memory changes and before the
//! caller is answered, so a daemon killed at any point restarts into a state it reported.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::id::{ContainerId, SandboxId};
use crate::monitor::{ExitRecord, ProcessIdentity};

/// Current version of [`ContainerRecord`]'s on-disk format.
pub const RECORD_VERSION: u32 = 1;

/// Why a container is Exited (CRI's `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitReason {
    /// Exit code 0.
    Completed,
    /// Non-zero exit code.
    Error,
    /// The memory cgroup's OOM killer killed a process of it.
    OomKilled,
    /// The exit was not observed (monitor lost, node rebooted).
    Unknown,
}

impl ExitReason {
    /// The CRI `reason` string.
    pub fn as_cri(&self) -> &'static str {
        match self {
            ExitReason::Completed => "Completed",
            ExitReason::Error => "Error",
            ExitReason::OomKilled => "OOMKilled",
            ExitReason::Unknown => "Unknown",
        }
    }
}

/// How a container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// Exit code (128 + signal when killed by one; 255 when unknown).
    pub exit_code: i32,
    /// When it exited (or when the loss was noticed).
    pub exited_at_unix_nanos: i64,
    /// Why.
    pub reason: ExitReason,
}

impl From<ExitRecord> for ExitInfo {
    fn from(r: ExitRecord) -> Self {
        let reason = if r.oom_killed {
            ExitReason::OomKilled
        } else if r.exit_code == 0 {
            ExitReason::Completed
        } else {
            ExitReason::Error
        };
        Self {
            exit_code: r.exit_code,
            exited_at_unix_nanos: r.exited_at_unix_nanos,
            reason,
        }
    }
}

impl ExitInfo {
    /// An exit nobody observed.
    pub fn unknown(at: i64) -> Self {
        Self {
            exit_code: 255,
            exited_at_unix_nanos: at,
            reason: ExitReason::Unknown,
        }
    }
}

/// The container's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ContainerState {
    /// Created by the OCI runtime; its init waits for `start`.
    Created,
    /// Started.
    Running,
    /// Its init has exited.
    Exited(ExitInfo),
    /// The record could not be read; only removal is possible.
    Unknown,
}

impl ContainerState {
    /// `start` is allowed only once, from Created.
    pub fn can_start(&self) -> bool {
        matches!(self, ContainerState::Created)
    }

    /// Signals make sense while the init (or `runc init`) is alive.
    pub fn can_kill(&self) -> bool {
        matches!(self, ContainerState::Created | ContainerState::Running)
    }

    /// Exec needs a running container.
    pub fn can_exec(&self) -> bool {
        matches!(self, ContainerState::Running)
    }

    /// Whether the container has finished (or cannot be known to run).
    pub fn is_final(&self) -> bool {
        matches!(self, ContainerState::Exited(_) | ContainerState::Unknown)
    }
}

impl fmt::Display for ContainerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ContainerState::Created => "Created",
            ContainerState::Running => "Running",
            ContainerState::Exited(_) => "Exited",
            ContainerState::Unknown => "Unknown",
        })
    }
}

/// Everything the runtime persists about a container (`<state_dir>/containers/<id>/state.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// [`RECORD_VERSION`].
    pub version: u32,
    /// Container id.
    pub id: ContainerId,
    /// RuntimeClass handler it runs under.
    pub handler: String,
    /// Lifecycle state.
    #[serde(flatten)]
    pub state: ContainerState,
    /// When CreateContainer succeeded.
    pub created_at_unix_nanos: i64,
    /// When StartContainer succeeded.
    pub started_at_unix_nanos: Option<i64>,
    /// The container's monitor.
    pub monitor: Option<ProcessIdentity>,
    /// Host pid of the container's init.
    pub init_pid: i32,
    /// Boot the container was created in.
    pub boot_id: String,
    /// Its cgroup (`<cgroup_parent>/<id>`).
    pub cgroup_path: String,
    /// No private PID namespace: stop kills every process in the cgroup.
    pub kill_all_on_exit: bool,
    /// Absolute CRI log path.
    pub log_path: PathBuf,
    /// The pod sandbox it belongs to. Records written before the field existed lack it:
    /// recovery fills it in from the caller's data (see [`crate::recovery`]).
    #[serde(default)]
    pub sandbox_id: Option<SandboxId>,
    /// Opaque data of the caller (CRI metadata, labels, annotations, image…), persisted
    /// with the record so a restarted daemon can echo it exactly.
    #[serde(default)]
    pub client_data: crate::ClientData,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_is_versioned() {
        let r = ContainerRecord {
            version: RECORD_VERSION,
            id: ContainerId::new("c1").unwrap(),
            handler: "runc".into(),
            state: ContainerState::Exited(ExitInfo {
                exit_code: 137,
                exited_at_unix_nanos: 5,
                reason: ExitReason::Error,
            }),
            created_at_unix_nanos: 1,
            started_at_unix_nanos: Some(2),
            monitor: Some(ProcessIdentity {
                pid: 10,
                start_time: 20,
            }),
            init_pid: 11,
            boot_id: "b".into(),
            cgroup_path: "/p/c1".into(),
            kill_all_on_exit: false,
            log_path: "/var/log/pods/p/c/0.log".into(),
            sandbox_id: Some(SandboxId::new("s1").unwrap()),
            client_data: serde_json::json!({"labels": {"a": "b"}}).into(),
        };
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"version\":1"), "{json}");
        assert!(json.contains("\"state\":\"exited\""), "{json}");
        let back: ContainerRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);

        // A record written before `sandbox_id` existed still reads (recovery fills it in).
        let mut old: serde_json::Value = serde_json::from_str(&json).unwrap();
        old.as_object_mut().unwrap().remove("sandbox_id");
        let back: ContainerRecord = serde_json::from_value(old).unwrap();
        assert_eq!(back.sandbox_id, None);
    }

    #[test]
    fn guards() {
        assert!(ContainerState::Created.can_start());
        assert!(!ContainerState::Running.can_start());
        assert!(ContainerState::Running.can_exec());
        assert!(!ContainerState::Created.can_exec());
        assert!(ContainerState::Unknown.is_final());
    }
}
