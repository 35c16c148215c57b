//! The `[runtime]` section of the daemon's configuration.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// OCI runtime handlers (the CRI `RuntimeClass` handler names) and which one an empty
/// handler means.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Handler used when a sandbox names none (kubelet sends "" without a RuntimeClass).
    pub default_handler: String,
    /// Handler name → OCI runtime binary.
    pub handlers: BTreeMap<String, HandlerConfig>,
    /// `rootstock-monitor` binary; empty means the one next to the daemon's executable.
    pub monitor_binary: PathBuf,
    /// How long CreateContainer waits for the monitor's report of `<runtime> create`.
    pub create_timeout_secs: u64,
    /// CDI spec directories, lowest priority first (containerd's `cdi_spec_dirs`).
    pub cdi_spec_dirs: Vec<PathBuf>,
    /// User-namespaced pods: accept only the id ranges kubelet allocates (host ids from
    /// 65536 on, a multiple of 65536 long). Off, any one range that maps container id 0 to
    /// a host id other than 0 is taken, as containerd does (critest's specs map 0→1000).
    pub userns_kubelet_ranges_only: bool,
}

/// One OCI runtime driven through its command line (`create`, `start`, `kill`, `delete`…).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerConfig {
    /// Path of the binary, or a bare name looked up in `PATH`.
    pub binary: PathBuf,
    /// Run the binary from one sealed in-memory copy the daemon keeps (see
    /// `sealed_exe.rs`). It pays where the runtime would otherwise copy itself on every call
    /// (crun 1.8: about 5 ms of CPU per create + start) and costs the binary's size in
    /// memory once; for Debian's runc 1.1 (8.5 MiB, ~1 ms per create) it does not pay.
    #[serde(default)]
    pub sealed_copy: bool,
}

impl HandlerConfig {
    /// The runtime this configures for handler `name`, keeping its state under `root`.
    pub fn runtime(&self, name: &str, root: PathBuf) -> crate::oci::OciRuntime {
        let oci = crate::oci::OciRuntime::new(name, &self.binary, root);
        if self.sealed_copy { oci.sealed() } else { oci }
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        let handler = |binary: &str, sealed_copy| HandlerConfig {
            binary: PathBuf::from(binary),
            sealed_copy,
        };
        Self {
            default_handler: "runc".to_owned(),
            handlers: BTreeMap::from([
                ("runc".to_owned(), handler("runc", false)),
                ("crun".to_owned(), handler("crun", true)),
            ]),
            monitor_binary: PathBuf::new(),
            create_timeout_secs: 60,
            cdi_spec_dirs: crate::cdi::default_dirs(),
            userns_kubelet_ranges_only: true,
        }
    }
}
