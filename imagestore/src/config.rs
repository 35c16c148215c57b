//! The `[images]` part of the daemon's TOML configuration.
//!
//! ```toml
//! [images.registries."docker.io"]
//! mirrors = ["https://mirror.example.com", "http://127.0.0.1:5000"]
//!
//! [images.registries."registry.internal:5443"]
//! ca_files = ["/etc/rootstock/certs/internal-ca.pem"]
//! username = "puller"
//! password = "secret"
//!
//! [images.registries."127.0.0.1:5000"]
//! insecure = true
//! ```
//!
//! Keys are registry hosts as they appear in image names (`docker.io` for Docker Hub) or as a
//! mirror's host. Every key here is used by the registry client; nothing is accepted and
//! ignored.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Default of `max_image_bytes`: 128 GiB.
pub const DEFAULT_MAX_IMAGE_BYTES: u64 = 128 << 30;
/// Default of `max_image_entries`.
pub const DEFAULT_MAX_IMAGE_ENTRIES: u64 = 1_000_000;
/// Default of `max_path_depth` (Linux's PATH_MAX of 4096 allows about 2048 levels).
pub const DEFAULT_MAX_PATH_DEPTH: usize = 1024;

/// Settings of the image store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImagesConfig {
    /// Per-registry-host settings, keyed by `host[:port]` (`docker.io`, `127.0.0.1:5000`).
    pub registries: BTreeMap<String, RegistryConfig>,
    /// Keep each layer's compressed blob in `blobs/` besides its unpacked tree (default
    /// false: layers are streamed into the tree cache and the blob is not stored).
    pub keep_layer_blobs: bool,
    /// Create device nodes a layer carries (default false: they are skipped with a warning;
    /// the runtime mounts its own `/dev`, so an image's nodes are never visible anyway).
    pub allow_device_nodes: bool,
    /// Uncompressed bytes one image may unpack (all its layers' tar streams, plus the holes
    /// of sparse files); a pull past it fails naming the layer. Default 128 GiB.
    pub max_image_bytes: u64,
    /// Tar entries one image may have, all layers together. Default 1,000,000.
    pub max_image_entries: u64,
    /// Path components one entry may have. Default 1024.
    pub max_path_depth: usize,
    /// Deadline of each registry request that is not a blob body (manifests, tokens, the
    /// identity-token exchange, a blob request until its headers), in seconds. Default 60.
    pub request_timeout_secs: u64,
    /// A blob download slower than this many bytes per second over `blob_stall_secs` is
    /// abandoned as stalled (a slow-drip server cannot hold a pull forever). Default 16384.
    pub blob_min_bytes_per_sec: u64,
    /// The window, in seconds, over which `blob_min_bytes_per_sec` is measured. Default 60.
    pub blob_stall_secs: u64,
}

impl Default for ImagesConfig {
    fn default() -> Self {
        ImagesConfig {
            registries: BTreeMap::new(),
            keep_layer_blobs: false,
            allow_device_nodes: false,
            max_image_bytes: DEFAULT_MAX_IMAGE_BYTES,
            max_image_entries: DEFAULT_MAX_IMAGE_ENTRIES,
            max_path_depth: DEFAULT_MAX_PATH_DEPTH,
            request_timeout_secs: 60,
            blob_min_bytes_per_sec: 16 << 10,
            blob_stall_secs: 60,
        }
    }
}

/// Settings for one registry host (or mirror host).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Mirrors tried in order before this registry itself, each `host[:port]` or
    /// `http(s)://host[:port]`. A mirror that fails (unreachable, 404, bad content) falls
    /// through to the next one and finally to the registry. `http://` means plain HTTP for
    /// that mirror; a bare host takes `insecure`/`ca_files`/credentials from its own
    /// `registries."<mirror host>"` entry.
    pub mirrors: Vec<String>,
    /// Talk plain HTTP to this host (never TLS). Only for registries on trusted networks.
    pub insecure: bool,
    /// PEM files of extra CAs trusted for this host, in addition to the system roots.
    pub ca_files: Vec<PathBuf>,
    /// User name for this host (with `password`); used when the pull request brings no
    /// credentials for the host.
    pub username: Option<String>,
    /// Password for `username`.
    pub password: Option<String>,
    /// `base64(username:password)`, as in Docker's `config.json`; alternative to
    /// `username`/`password`.
    pub auth: Option<String>,
}

/// A parsed mirror entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MirrorSpec {
    /// `host[:port]`.
    pub host: String,
    /// `Some(true)` for `http://`, `Some(false)` for `https://`, `None` for a bare host (the
    /// host's own `insecure` setting decides).
    pub plain_http: Option<bool>,
}

impl ImagesConfig {
    /// Check every key once at start-up, so a typo is reported with its key rather than at
    /// the first pull.
    pub fn validate(&self) -> Result<()> {
        for (key, value) in [
            ("max_image_bytes", self.max_image_bytes),
            ("max_image_entries", self.max_image_entries),
            ("max_path_depth", self.max_path_depth as u64),
            ("request_timeout_secs", self.request_timeout_secs),
            ("blob_stall_secs", self.blob_stall_secs),
        ] {
            if value == 0 {
                return Err(Error::Config {
                    key: key.into(),
                    reason: "must be greater than 0".into(),
                });
            }
        }
        for (host, registry) in &self.registries {
            let key = |field: &str| format!("registries.\"{host}\".{field}");
            if host.is_empty() || host.contains('/') || host.contains("://") {
                return Err(Error::Config {
                    key: format!("registries.\"{host}\""),
                    reason: "a registry key is a host[:port], without scheme or path".into(),
                });
            }
            for (i, mirror) in registry.mirrors.iter().enumerate() {
                parse_mirror(mirror).map_err(|reason| Error::Config {
                    key: key(&format!("mirrors[{i}]")),
                    reason,
                })?;
            }
            for (i, path) in registry.ca_files.iter().enumerate() {
                std::fs::metadata(path).map_err(|e| Error::Config {
                    key: key(&format!("ca_files[{i}]")),
                    reason: format!("{}: {e}", path.display()),
                })?;
            }
            if registry.username.is_some() != registry.password.is_some() {
                return Err(Error::Config {
                    key: key("username"),
                    reason: "username and password must be given together".into(),
                });
            }
            if registry.auth.is_some() && registry.username.is_some() {
                return Err(Error::Config {
                    key: key("auth"),
                    reason: "give either auth or username/password, not both".into(),
                });
            }
            if let Some(auth) = &registry.auth {
                crate::registry::decode_basic_auth(auth).map_err(|reason| Error::Config {
                    key: key("auth"),
                    reason,
                })?;
            }
        }
        Ok(())
    }

    /// The settings for `host`, or the defaults.
    pub(crate) fn registry(&self, host: &str) -> RegistryConfig {
        self.registries.get(host).cloned().unwrap_or_default()
    }
}

pub(crate) fn parse_mirror(mirror: &str) -> std::result::Result<MirrorSpec, String> {
    let (plain_http, rest) = if let Some(rest) = mirror.strip_prefix("http://") {
        (Some(true), rest)
    } else if let Some(rest) = mirror.strip_prefix("https://") {
        (Some(false), rest)
    } else if mirror.contains("://") {
        return Err(format!(
            "{mirror:?}: only http:// and https:// mirrors are supported"
        ));
    } else {
        (None, mirror)
    };
    let host = rest.strip_suffix('/').unwrap_or(rest);
    if host.is_empty() || host.contains('/') {
        return Err(format!(
            "{mirror:?}: a mirror is [http(s)://]host[:port] without a path"
        ));
    }
    Ok(MirrorSpec {
        host: host.to_string(),
        plain_http,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_parse_scheme_and_host() {
        assert_eq!(
            parse_mirror("http://127.0.0.1:5000/").unwrap(),
            MirrorSpec {
                host: "127.0.0.1:5000".into(),
                plain_http: Some(true)
            }
        );
        assert_eq!(parse_mirror("mirror.example").unwrap().plain_http, None);
        assert!(parse_mirror("ftp://x").is_err());
        assert!(parse_mirror("https://x/v2/proxy").is_err());
    }

    #[test]
    fn config_round_trips_and_refuses_unknown_keys() {
        let mut cfg = ImagesConfig::default();
        cfg.registries.insert(
            "docker.io".into(),
            RegistryConfig {
                mirrors: vec!["http://127.0.0.1:5000".into()],
                ..Default::default()
            },
        );
        let json = serde_json::to_string(&cfg).unwrap();
        assert_eq!(serde_json::from_str::<ImagesConfig>(&json).unwrap(), cfg);
        let bad = r#"{"registries":{"x":{"mirrorz":[]}}}"#;
        assert!(serde_json::from_str::<ImagesConfig>(bad).is_err());
        assert_eq!(
            serde_json::from_str::<ImagesConfig>("{}").unwrap(),
            ImagesConfig::default()
        );
    }

    #[test]
    fn validate_names_the_key() {
        let mut cfg = ImagesConfig::default();
        cfg.registries.insert(
            "r.example".into(),
            RegistryConfig {
                username: Some("u".into()),
                ..Default::default()
            },
        );
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("registries.\"r.example\".username"), "{err}");
    }
}
