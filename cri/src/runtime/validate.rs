//! Input kubelet never sends, refused at the boundary with `InvalidArgument` naming the
//! field, before anything is made: a path that would resolve against the daemon's working
//! directory (a relative `host_path` "." mounted the container's own bundle into it), a log
//! path leaving the pod's log directory, values the kernel or the OCI runtime would turn into
//! an `Internal` error or silently ignore.

use std::path::{Component, Path, PathBuf};

use k8s_cri::v1::{ContainerConfig, LinuxContainerResources};

use crate::error::CriError;

fn invalid(field: &str, why: String) -> CriError {
    CriError::InvalidArgument(format!("CreateContainer: {field}: {why}"))
}

/// The CRI mounts: absolute host and container paths; `recursive_read_only` only with
/// `readonly` and private propagation (the CRI contract; critest checks the refusals).
pub(super) fn check_mounts(config: &ContainerConfig) -> Result<(), CriError> {
    for (i, m) in config.mounts.iter().enumerate() {
        if m.recursive_read_only && !m.readonly {
            return Err(invalid(
                &format!("mounts[{i}].recursive_read_only"),
                "needs readonly to be true as well".to_owned(),
            ));
        }
        if m.recursive_read_only && m.propagation != 0 {
            return Err(invalid(
                &format!("mounts[{i}].recursive_read_only"),
                "needs private propagation (PROPAGATION_PRIVATE)".to_owned(),
            ));
        }
        for (field, path) in [
            ("host_path", &m.host_path),
            ("container_path", &m.container_path),
        ] {
            if !Path::new(path).is_absolute() {
                return Err(invalid(
                    &format!("mounts[{i}].{field}"),
                    format!("{path:?} is not an absolute path"),
                ));
            }
        }
    }
    Ok(())
}

/// Resource values outside what the kernel and the OCI runtime take: `oom_score_adj` in
/// [-1000, 1000], `cpu_quota` positive or -1 (no limit). `field` names the message's path.
pub(super) fn check_resources(r: &LinuxContainerResources, field: &str) -> Result<(), CriError> {
    let bad = |name: &str, why: String| {
        CriError::InvalidArgument(format!("{field}.resources.{name}: {why}"))
    };
    if !(-1000..=1000).contains(&r.oom_score_adj) {
        return Err(bad(
            "oom_score_adj",
            format!("{} is outside [-1000, 1000]", r.oom_score_adj),
        ));
    }
    for (key, value) in &r.unified {
        rootstock_runtime::cgroup::check_unified(key, value)
            .map_err(|e| bad(&format!("unified[{key:?}]"), e.to_string()))?;
    }
    if r.cpu_quota < -1 {
        return Err(bad(
            "cpu_quota",
            format!("{} is negative (only -1, no limit, is)", r.cpu_quota),
        ));
    }
    Ok(())
}

/// The CRI log path: the pod's `log_directory` joined with the container's `log_path`,
/// which must stay inside it. Nothing is created here. With no log requested (a bare
/// client), output is discarded.
pub(super) fn log_path(log_directory: &str, log_path: &str) -> Result<PathBuf, CriError> {
    if log_path.is_empty() {
        return Ok(PathBuf::from("/dev/null"));
    }
    let relative = Path::new(log_path);
    if !Path::new(log_directory).is_absolute() {
        return Err(invalid(
            "log_path",
            format!(
                "{log_path:?} needs an absolute sandbox log_directory (it is {log_directory:?})"
            ),
        ));
    }
    if !relative
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        || relative.file_name().is_none()
    {
        return Err(invalid(
            "log_path",
            format!("{log_path:?} must be a file name inside the pod's log_directory"),
        ));
    }
    Ok(Path::new(log_directory).join(relative))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_path_stays_in_the_log_directory() {
        assert_eq!(log_path("", "").ok(), Some(PathBuf::from("/dev/null")));
        assert_eq!(
            log_path("/var/log/pods/p", "c/0.log").ok(),
            Some(PathBuf::from("/var/log/pods/p/c/0.log"))
        );
        for bad in ["../../x.log", "/etc/x.log", "c/../../x", "."] {
            assert!(log_path("/var/log/pods/p", bad).is_err(), "{bad}");
        }
        assert!(log_path("", "relative.log").is_err());
    }
}
