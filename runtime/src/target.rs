//! CRI's PID namespace mode `TARGET` (`kubectl debug --target`): a container joins another
//! container's PID namespace, by the path of that container's init. The init's pid is checked
//! to still be that container's (its cgroup is the container's) so a recycled pid is never
//! joined.

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::id::ContainerId;
use crate::runtime::Runtime;
use crate::state::ContainerState;

impl Runtime {
    /// The PID namespace of running container `target`, for another container to join.
    pub fn pid_namespace_of(&self, target: &ContainerId) -> Result<PathBuf> {
        let info = self.container(target)?;
        let rec = &info.record;
        if rec.state != ContainerState::Running {
            return Err(Error::BadState {
                id: target.to_string(),
                action: "share the PID namespace of",
                state: rec.state.to_string(),
            });
        }
        let cgroups =
            std::fs::read_to_string(format!("/proc/{}/cgroup", rec.init_pid)).unwrap_or_default();
        if !cgroups
            .lines()
            .any(|l| l.split(':').nth(2) == Some(rec.cgroup_path.as_str()))
        {
            return Err(Error::BadState {
                id: target.to_string(),
                action: "share the PID namespace of",
                state: format!("init {} gone", rec.init_pid),
            });
        }
        Ok(PathBuf::from(format!("/proc/{}/ns/pid", rec.init_pid)))
    }
}
