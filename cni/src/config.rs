//! The `[cni]` table of the daemon's TOML configuration.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// CNI settings of the daemon. Every key has a default, so an empty table is valid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CniConfig {
    /// Directories searched for network configs, in priority order. Within a directory the
    /// files are taken in lexical order (as libcni does); the first valid one is the network.
    pub conf_dirs: Vec<PathBuf>,
    /// Directories searched for plugin binaries, in order; also passed as `CNI_PATH`.
    pub bin_dirs: Vec<PathBuf>,
    /// Where ADD results and the exact config used are kept so that DEL works after a crash or
    /// a config change. Unset means `<daemon root>/cni/cache` (see [`CniConfig::cache_dir_in`]):
    /// it must survive reboots, because host-local's IP reservations do.
    pub cache_dir: Option<PathBuf>,
    /// Timeout of one plugin invocation; the plugin's process group is killed when it expires.
    pub plugin_timeout_secs: u64,
    /// Use the built-in bridge network (bridge `rootstock0`, host-local 10.88.0.0/16, portmap)
    /// when no config file exists. For standalone use (`make run`); off for real clusters,
    /// where the cluster's network add-on writes the config.
    pub default_network: bool,
    /// How often the conf dirs are re-read for a config written after start-up.
    pub poll_interval_ms: u64,
}

impl Default for CniConfig {
    fn default() -> Self {
        Self {
            conf_dirs: vec![PathBuf::from("/etc/cni/net.d")],
            bin_dirs: vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")],
            cache_dir: None,
            plugin_timeout_secs: 60,
            default_network: false,
            poll_interval_ms: 1000,
        }
    }
}

impl CniConfig {
    /// The cache directory: the configured one, or `<root>/cni/cache`.
    pub fn cache_dir_in(&self, root: &Path) -> PathBuf {
        self.cache_dir
            .clone()
            .unwrap_or_else(|| root.join("cni").join("cache"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn empty_table_gives_defaults_and_unknown_keys_are_rejected() {
        let c: CniConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, CniConfig::default());
        assert!(!c.default_network);
        assert_eq!(
            c.cache_dir_in(Path::new("/var/lib/rootstock")),
            PathBuf::from("/var/lib/rootstock/cni/cache")
        );
        assert!(serde_json::from_str::<CniConfig>(r#"{"conf_dir": "/x"}"#).is_err());
        let c: CniConfig =
            serde_json::from_str(r#"{"default_network": true, "cache_dir": "/c"}"#).unwrap();
        assert!(c.default_network);
        assert_eq!(c.cache_dir_in(Path::new("/r")), PathBuf::from("/c"));
    }
}
