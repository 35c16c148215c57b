//! The one error type of the crate. Every variant names the object it is about (plugin, file,
//! sandbox) so that the daemon can hand the message to kubelet unchanged.

use std::path::PathBuf;

/// How the gRPC layer should classify a [`CniError`] (it maps these onto `tonic::Code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request names something unusable (a sandbox id CNI cannot carry).
    InvalidArgument,
    /// The node is not in a state that allows the operation: no network is configured yet,
    /// or the sandbox has no recorded attachment. The caller can act on it (wait, set up).
    FailedPrecondition,
    /// Everything else is the node's: plugins, their config and results, the cache, netns.
    Internal,
}

/// Errors of CNI configuration loading, plugin execution, caching and netns handling.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// A network configuration file is unusable.
    #[error("invalid CNI network config {path}: {reason}")]
    InvalidConfig {
        /// The file (or `<built-in>` for the default network).
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// No valid network configuration was found, and the default network is off.
    #[error("CNI network not ready: {reason}")]
    NetworkNotReady {
        /// Why (no file, or why each file was rejected).
        reason: String,
    },

    /// The plugin binary is in none of the bin dirs.
    #[error("CNI plugin {plugin:?} not found in {searched:?}")]
    PluginNotFound {
        /// The plugin `type`.
        plugin: String,
        /// Every directory looked in.
        searched: Vec<PathBuf>,
    },

    /// The plugin ran and reported an error (CNI spec "Error" result, or a non-JSON failure).
    #[error(
        "CNI plugin {plugin} {command} failed (network {network}): {msg} (code {code}){}",
        details_suffix(details)
    )]
    PluginFailed {
        /// The plugin `type`.
        plugin: String,
        /// The network name of the list.
        network: String,
        /// `ADD`, `DEL` or `CHECK`.
        command: String,
        /// The CNI error code (0 when the plugin printed no error JSON).
        code: u32,
        /// The plugin's `msg` (or its stderr when it printed no JSON).
        msg: String,
        /// The plugin's `details`.
        details: String,
    },

    /// The plugin did not finish within the timeout and was killed.
    #[error("CNI plugin {plugin} {command} timed out after {timeout_secs}s and was killed")]
    PluginTimeout {
        /// The plugin `type`.
        plugin: String,
        /// `ADD`, `DEL` or `CHECK`.
        command: String,
        /// The configured timeout.
        timeout_secs: u64,
    },

    /// Starting or talking to the plugin process failed.
    #[error("CNI plugin {plugin} ({path}): {source}")]
    PluginExec {
        /// The plugin `type`.
        plugin: String,
        /// The binary.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The plugin succeeded but its stdout is not a result we understand.
    #[error("CNI plugin {plugin} returned an invalid result: {reason}")]
    InvalidResult {
        /// The plugin `type`.
        plugin: String,
        /// What is wrong with it.
        reason: String,
    },

    /// Reading or writing the result cache failed.
    #[error("CNI cache {path}: {source}")]
    Cache {
        /// The cache file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A cache entry exists but cannot be parsed.
    #[error("CNI cache entry {path} is corrupt: {reason}")]
    CorruptCache {
        /// The cache file.
        path: PathBuf,
        /// The parse error.
        reason: String,
    },

    /// No cached ADD exists for the sandbox (CHECK needs one).
    #[error("sandbox {sandbox_id}: no CNI network attachment is recorded")]
    NotAttached {
        /// The sandbox (CNI container) id.
        sandbox_id: String,
    },

    /// A sandbox id unusable as `CNI_CONTAINERID` or as part of a file name.
    #[error("invalid sandbox id {sandbox_id:?}: {reason}")]
    InvalidSandboxId {
        /// The offending id.
        sandbox_id: String,
        /// Why.
        reason: String,
    },

    /// A network namespace operation failed.
    #[error("netns {path}: {op}: {source}")]
    Netns {
        /// The namespace path.
        path: PathBuf,
        /// What was being done (`open`, `setns`, `bind mount`, ...).
        op: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A netlink request inside a namespace failed.
    #[error("netns {path}: netlink: {reason}")]
    Netlink {
        /// The namespace path.
        path: PathBuf,
        /// The rtnetlink error.
        reason: String,
    },
}

impl CniError {
    /// The classification the gRPC layer maps to a status code. Exhaustive on purpose: a
    /// new variant must be classified here, not fall into a catch-all.
    pub fn kind(&self) -> ErrorKind {
        match self {
            CniError::InvalidSandboxId { .. } => ErrorKind::InvalidArgument,
            CniError::NetworkNotReady { .. } | CniError::NotAttached { .. } => {
                ErrorKind::FailedPrecondition
            }
            CniError::InvalidConfig { .. }
            | CniError::PluginNotFound { .. }
            | CniError::PluginFailed { .. }
            | CniError::PluginTimeout { .. }
            | CniError::PluginExec { .. }
            | CniError::InvalidResult { .. }
            | CniError::Cache { .. }
            | CniError::CorruptCache { .. }
            | CniError::Netns { .. }
            | CniError::Netlink { .. } => ErrorKind::Internal,
        }
    }
}

fn details_suffix(details: &str) -> String {
    if details.is_empty() {
        String::new()
    } else {
        format!(": {details}")
    }
}

/// Result alias of the crate.
pub type Result<T, E = CniError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn io() -> std::io::Error {
        std::io::Error::other("boom")
    }

    /// One value of every variant with its kind (`kind()` is exhaustive, so a new variant
    /// cannot go unclassified; this pins what each one is classified as).
    #[test]
    fn every_variant_has_its_kind() {
        let s = String::new;
        let p = PathBuf::new;
        let cases = [
            (
                CniError::InvalidConfig {
                    path: p(),
                    reason: s(),
                },
                ErrorKind::Internal,
            ),
            (
                CniError::NetworkNotReady { reason: s() },
                ErrorKind::FailedPrecondition,
            ),
            (
                CniError::PluginNotFound {
                    plugin: s(),
                    searched: vec![],
                },
                ErrorKind::Internal,
            ),
            (
                CniError::PluginFailed {
                    plugin: s(),
                    network: s(),
                    command: s(),
                    code: 7,
                    msg: s(),
                    details: s(),
                },
                ErrorKind::Internal,
            ),
            (
                CniError::PluginTimeout {
                    plugin: s(),
                    command: s(),
                    timeout_secs: 1,
                },
                ErrorKind::Internal,
            ),
            (
                CniError::PluginExec {
                    plugin: s(),
                    path: p(),
                    source: io(),
                },
                ErrorKind::Internal,
            ),
            (
                CniError::InvalidResult {
                    plugin: s(),
                    reason: s(),
                },
                ErrorKind::Internal,
            ),
            (
                CniError::Cache {
                    path: p(),
                    source: io(),
                },
                ErrorKind::Internal,
            ),
            (
                CniError::CorruptCache {
                    path: p(),
                    reason: s(),
                },
                ErrorKind::Internal,
            ),
            (
                CniError::NotAttached { sandbox_id: s() },
                ErrorKind::FailedPrecondition,
            ),
            (
                CniError::InvalidSandboxId {
                    sandbox_id: s(),
                    reason: s(),
                },
                ErrorKind::InvalidArgument,
            ),
            (
                CniError::Netns {
                    path: p(),
                    op: "setns",
                    source: io(),
                },
                ErrorKind::Internal,
            ),
            (
                CniError::Netlink {
                    path: p(),
                    reason: s(),
                },
                ErrorKind::Internal,
            ),
        ];
        for (err, kind) in cases {
            assert_eq!(err.kind(), kind, "{err:?}");
        }
    }
}
