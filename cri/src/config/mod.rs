//! The daemon's configuration: `/etc/rootstock/config.toml`, optional, every key defaulted.
//!
//! Each domain crate owns its section's type; this module composes them, loads the file
//! strictly (an unknown key or a wrong type stops start-up, naming the file and the key), and
//! applies the command-line overrides.

mod docs;
#[cfg(test)]
mod prop;

use std::fmt;
use std::path::{Path, PathBuf};

use rootstock_cni::CniConfig;
use rootstock_imagestore::ImagesConfig;
use rootstock_runtime::RuntimeConfig;
use serde::{Deserialize, Serialize};

/// Where the configuration is read from when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/rootstock/config.toml";

/// The whole configuration. `rootstock config default` prints `Config::default()`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Persistent store: metadata, blobs, file objects, trees. Must not sit on overlayfs.
    pub root_dir: PathBuf,
    /// Per-boot state: sandboxes, containers, monitor state.
    pub state_dir: PathBuf,
    /// The CRI endpoint (unix socket, mode 0660).
    pub socket: PathBuf,
    /// `tracing` filter (`info`, `debug`, `rootstock=debug,h2=warn`…); `RUST_LOG` wins.
    pub log_level: String,
    /// Cgroup driver reported to kubelet; only `cgroupfs` exists so far.
    pub cgroup_driver: CgroupDriver,
    /// OCI runtime handlers.
    pub runtime: RuntimeConfig,
    /// Image store and registries.
    pub images: ImagesConfig,
    /// Pod networking.
    pub cni: CniConfig,
    /// The streaming server (Exec URLs).
    pub streaming: crate::streaming::StreamingConfig,
    /// Prometheus endpoint and the CRI pod metrics.
    pub metrics: crate::metrics::MetricsConfig,
    /// GetContainerEvents.
    pub events: crate::metrics::EventsConfig,
}

/// How cgroups are managed. kubelet's `cgroupDriver` must match what `RuntimeConfig` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    Cgroupfs,
    Systemd,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            root_dir: PathBuf::from("/var/lib/rootstock"),
            state_dir: PathBuf::from("/run/rootstock"),
            socket: PathBuf::from("/run/rootstock/rootstock.sock"),
            log_level: "info".to_owned(),
            cgroup_driver: CgroupDriver::Cgroupfs,
            runtime: RuntimeConfig::default(),
            images: ImagesConfig::default(),
            cni: CniConfig::default(),
            streaming: crate::streaming::StreamingConfig::default(),
            metrics: crate::metrics::MetricsConfig::default(),
            events: crate::metrics::EventsConfig::default(),
        }
    }
}

/// Command-line overrides, applied after the file.
#[derive(Debug, Default)]
pub struct Overrides {
    pub root_dir: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    /// Turn `cni.default_network` on.
    pub default_network: bool,
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the configuration: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {location}key `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        /// Dotted path of the offending key, e.g. `runtime.handlers.runc.binary`.
        key: String,
        location: Location,
        message: String,
    },
    #[error("{path}: key `{key}`: {message}")]
    Unsupported {
        path: PathBuf,
        key: &'static str,
        message: &'static str,
    },
    #[error("{path}: [images] {source}")]
    Images {
        path: PathBuf,
        source: rootstock_imagestore::Error,
    },
    #[error("{path}: {source}")]
    Streaming {
        path: PathBuf,
        source: crate::streaming::tls::TlsError,
    },
    #[error("{path}: key `metrics.address`: {message}")]
    MetricsAddress { path: PathBuf, message: String },
    #[error("cannot print the configuration as TOML: {0}")]
    Serialize(#[from] toml::ser::Error),
}

/// "line N: " of a parse error, when the parser knows it.
#[derive(Debug)]
pub struct Location(Option<usize>);

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(line) => write!(f, "line {line}: "),
            None => Ok(()),
        }
    }
}

impl Config {
    /// Reads `path`, or the default path when none is given. A missing file at the default
    /// path means "all defaults"; a missing file the operator named is an error.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let (path, explicit) = match path {
            Some(p) => (p, true),
            None => (Path::new(DEFAULT_CONFIG_PATH), false),
        };
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(Self::default());
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        Self::parse(&text, path)
    }

    /// Parses TOML strictly; errors name `path` and the dotted key.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let invalid = |key: String, span: Option<std::ops::Range<usize>>, message: &str| {
            let line = span.map(|s| {
                text.as_bytes()[..s.start.min(text.len())]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count()
                    + 1
            });
            ConfigError::Invalid {
                path: path.to_owned(),
                key,
                location: Location(line),
                message: message.trim().to_owned(),
            }
        };
        let de = toml::de::Deserializer::parse(text)
            .map_err(|e| invalid("(syntax)".to_owned(), e.span(), e.message()))?;
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            invalid(key, e.inner().span(), e.inner().message())
        })?;
        if config.cgroup_driver == CgroupDriver::Systemd {
            return Err(ConfigError::Unsupported {
                path: path.to_owned(),
                key: "cgroup_driver",
                message: "the systemd cgroup driver is not supported yet; use \"cgroupfs\" \
                          (and cgroupDriver: cgroupfs in kubelet's configuration)",
            });
        }
        config
            .metrics
            .socket_addr()
            .map_err(|message| ConfigError::MetricsAddress {
                path: path.to_owned(),
                message,
            })?;
        // Checked now (files exist, mirrors parse), so a typo is not found at the first pull.
        config
            .images
            .validate()
            .map_err(|source| ConfigError::Images {
                path: path.to_owned(),
                source,
            })?;
        // The TLS files too: a wrong path or a key that does not fit is named now.
        crate::streaming::tls::check(&config.streaming).map_err(|source| {
            ConfigError::Streaming {
                path: path.to_owned(),
                source,
            }
        })?;
        Ok(config)
    }

    pub fn with_overrides(mut self, o: Overrides) -> Self {
        if let Some(dir) = o.root_dir {
            self.root_dir = dir;
        }
        if let Some(dir) = o.state_dir {
            self.state_dir = dir;
        }
        if let Some(socket) = o.socket {
            self.socket = socket;
        }
        if o.default_network {
            self.cni.default_network = true;
        }
        self
    }

    pub fn to_toml(&self) -> Result<String, ConfigError> {
        Ok(toml::to_string_pretty(self)?)
    }

    /// The TOML with every key's one-line documentation as a comment above it (what
    /// `rootstock config default` prints; [`docs::DOCS`] holds the lines).
    pub fn to_commented_toml(&self) -> Result<String, ConfigError> {
        Ok(docs::annotate(&self.to_toml()?))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/rootstock/test.toml"))
    }

    #[test]
    fn default_config_round_trips_through_toml() {
        let text = Config::default().to_toml().unwrap();
        assert_eq!(parse(&text).unwrap(), Config::default());
    }

    #[test]
    fn empty_file_means_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn unknown_nested_key_is_named_with_its_section() {
        let err = parse("[runtime.handlers.runc]\nbinary = \"runc\"\nbinnary = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("/etc/rootstock/test.toml"), "{err}");
        assert!(err.contains("runtime.handlers.runc"), "{err}");
        assert!(err.contains("binnary"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn systemd_driver_is_refused_with_advice() {
        let err = parse("cgroup_driver = \"systemd\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cgroup_driver") && err.contains("cgroupfs"),
            "{err}"
        );
    }

    #[test]
    fn overrides_replace_paths() {
        let c = Config::default().with_overrides(Overrides {
            socket: Some("/tmp/x.sock".into()),
            ..Overrides::default()
        });
        assert_eq!(c.socket, Path::new("/tmp/x.sock"));
        assert_eq!(c.root_dir, Config::default().root_dir);
    }
}
