//! Pod sandboxes and containers: namespaces, cgroups, mounts, the OCI runtime spec, the
//! per-container monitor, state persistence and recovery. Knows nothing about gRPC.
//!
//! Operations block (fork/exec, waitpid, mounts): the daemon calls them from
//! `spawn_blocking`. Reads of containers and sandboxes (status, list, spec) serve memory and
//! return at once, whatever operation is in progress; exits are recorded by a thread of the
//! runtime's own as the monitors end (`exit_watch.rs`). The crate has no async runtime and no
//! global state.
//!
//! How the daemon drives it:
//! ```text
//! start-up        Runtime::open(RuntimeOptions { state_dir, layers_dir, config }) -> (rt, report)
//! RunPodSandbox   rt.create_sandbox(SandboxSpec) -> SandboxInfo; CNI ADD on info.netns_path()
//! CreateContainer ContainerSpec { namespaces: sb.container_namespaces(),
//!                                 hostname: sb.container_hostname(),
//!                                 sandbox_mounts: sb.container_mounts(), .. }
//!                 rt.create_container(CreateRequest { id, handler, spec, rootfs_lower, log_path,
//!                                                     sandbox_id, client_data })
//! StartContainer  rt.start_container(&id)
//! StopContainer   rt.stop_container(&id, Signal, timeout)      (unknown id: Ok)
//! RemoveContainer rt.remove_container(&id)                     (unknown id: Ok)
//! Status / List   rt.container(&id), rt.list_containers()
//! ExecSync        rt.exec_sync(&id, &ExecRequest, Some(timeout))  (Error::ExecTimeout → DeadlineExceeded)
//! ReopenLog       rt.reopen_container_log(&id)
//! UpdateResources rt.update_container_resources(&id, &Resources)
//! StopPodSandbox  (rt.containers_of(&id): stop each, CNI DEL) rt.stop_sandbox(&id)
//! RemovePodSandbox (remove containers) rt.remove_sandbox(&id)   (and the pod cgroup it chose)
//! PodSandboxStats rt.sandbox_usage(&sandbox)
//! ```
//! The runtime owns the pod's facts: each container's record names its sandbox
//! (`CreateRequest::sandbox_id`), and a sandbox created without kubelet's `cgroup_parent`
//! gets one of the runtime's own, removed with it. Every create pushes the release of each
//! resource it acquires onto an [`undo::Undo`] stack, run in reverse unless committed.
//! Errors carry an [`ErrorKind`] for the one place that maps them to gRPC codes.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod attach;
pub mod cdi;
pub mod cgroup;
pub mod cgroup_join;
pub mod cgroup_layout;
pub mod cgroup_warm;
pub mod client_data;
pub mod clock;
pub mod config;
pub mod confine;
pub mod crilog;
pub mod devices;
mod entry;
pub mod error;
pub mod events;
pub mod exec;
pub mod exec_stream;
mod exit_watch;
pub mod flatjson;
pub mod hostpath;
pub mod id;
pub mod inspect;
mod lifecycle;
pub mod monitor;
pub mod monitor_proto;
mod netns_reaper;
pub mod oci;
pub mod pod_helpers;
mod query;
pub mod recovery;
pub mod resident;
pub mod rootfs;
pub mod runtime;
pub mod sandbox;
pub mod sealed_exe;
pub mod seccomp_default;
pub mod signal;
pub mod spec;
pub mod state;
pub mod stats;
pub mod stdin;
pub mod steps;
pub mod sysctl;
pub mod target;
pub mod undo;
pub mod user;
pub mod userns;
pub mod util;

pub use client_data::ClientData;
pub use config::{HandlerConfig, RuntimeConfig};
pub use error::{Error, ErrorKind, Result};
pub use id::{ContainerId, SandboxId};
pub use runtime::{ContainerInfo, ContainerUsage, CreateRequest, Runtime, RuntimeOptions};
pub use sandbox::{
    DnsConfig, SandboxInfo, SandboxPidMode, SandboxSpec, SandboxState, SandboxUsage,
};
pub use signal::Signal;
pub use state::{ContainerRecord, ContainerState, ExitInfo, ExitReason};
