//! Manifests, indexes and image configs as the registry serves them, and the choice of the
//! node's platform from an index.
//!
//! We parse the JSON ourselves instead of with `oci-client`'s typed pull because its
//! platform resolver ignores variants and it refuses schema 1 with a generic error; we want
//! containerd's platform-matcher behaviour and a message that says what to do.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::reference::Digest;

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker schema 2 manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker schema 1 (unsigned).
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
/// Docker schema 1 (signed).
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// The `Accept` list for manifest requests: every kind we handle, and schema 1 last so that
/// a registry holding only schema 1 serves it and we can say so clearly.
pub const ACCEPTED_MANIFESTS: &[&str] = &[
    OCI_INDEX,
    DOCKER_MANIFEST_LIST,
    OCI_MANIFEST,
    DOCKER_MANIFEST,
    DOCKER_SCHEMA1_SIGNED,
    DOCKER_SCHEMA1,
];

/// How a layer blob is compressed, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

impl Compression {
    /// The compression of a layer media type, or `None` if it is not a layer type we unpack.
    pub fn of_layer_media_type(media_type: &str) -> Option<Compression> {
        match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
                Some(Compression::Gzip)
            }
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => {
                Some(Compression::Zstd)
            }
            _ => None,
        }
    }
}

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    /// Media type of the referenced content.
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// The platform, for index entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Alternative download URLs (foreign layers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
}

/// A platform of an index entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// `architecture`, e.g. amd64.
    pub architecture: String,
    /// `os`, e.g. linux.
    pub os: String,
    /// `variant`, e.g. v7 or v3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = self.variant.as_deref().filter(|v| !v.is_empty()) {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// A single-platform image manifest (OCI or Docker schema 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageManifest {
    /// The config blob.
    pub config: Descriptor,
    /// The layer blobs, bottom first.
    pub layers: Vec<Descriptor>,
}

/// What a manifest request returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifest {
    /// An image manifest.
    Image(ImageManifest),
    /// An index / manifest list.
    Index(Vec<Descriptor>),
}

#[derive(Deserialize)]
struct RawManifest {
    #[serde(rename = "schemaVersion")]
    schema_version: Option<i64>,
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    #[serde(rename = "fsLayers")]
    fs_layers: Option<serde_json::Value>,
}

impl Manifest {
    /// Parse manifest bytes fetched for `reference` with digest `digest`.
    pub fn parse(reference: &str, digest: &Digest, bytes: &[u8]) -> Result<Manifest> {
        let invalid = |reason: String| Error::InvalidContent {
            reference: reference.to_string(),
            what: "manifest".into(),
            digest: digest.clone(),
            reason,
        };
        let raw: RawManifest = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
        let media_type = raw.media_type.clone().unwrap_or_default();
        if raw.schema_version == Some(1)
            || media_type == DOCKER_SCHEMA1
            || media_type == DOCKER_SCHEMA1_SIGNED
            || raw.fs_layers.is_some()
        {
            return Err(Error::Schema1 {
                reference: reference.to_string(),
            });
        }
        if raw.schema_version != Some(2) {
            return Err(invalid(format!(
                "schemaVersion is {:?}, expected 2",
                raw.schema_version
            )));
        }
        let is_index = match media_type.as_str() {
            OCI_INDEX | DOCKER_MANIFEST_LIST => true,
            OCI_MANIFEST | DOCKER_MANIFEST => false,
            // The OCI spec lets mediaType be absent; the shape tells.
            "" => raw.manifests.is_some(),
            other => {
                return Err(Error::UnsupportedMediaType {
                    reference: reference.to_string(),
                    what: "manifest".into(),
                    media_type: other.to_string(),
                });
            }
        };
        if is_index {
            let manifests = raw
                .manifests
                .ok_or_else(|| invalid("index without manifests".into()))?;
            return Ok(Manifest::Index(manifests));
        }
        let config = raw
            .config
            .ok_or_else(|| invalid("manifest without config".into()))?;
        let layers = raw.layers.unwrap_or_default();
        Ok(Manifest::Image(ImageManifest { config, layers }))
    }
}

/// The platform images are pulled for: linux/amd64 (the nodes rootstock supports).
pub fn host_platform() -> Platform {
    Platform {
        architecture: "amd64".into(),
        os: "linux".into(),
        variant: None,
    }
}

/// Normalise as containerd's `platforms.Normalize`: lower case, architecture aliases, and the
/// default variant of an architecture spelt as none.
pub fn normalize(p: &Platform) -> Platform {
    let os = p.os.to_ascii_lowercase();
    let mut variant = p.variant.clone().unwrap_or_default().to_ascii_lowercase();
    let architecture = match p.architecture.to_ascii_lowercase().as_str() {
        "i386" => "386".to_string(),
        "x86_64" | "x86-64" => {
            if variant == "v1" {
                variant.clear();
            }
            "amd64".to_string()
        }
        "amd64" => {
            if variant == "v1" {
                variant.clear();
            }
            "amd64".to_string()
        }
        "aarch64" | "arm64" => {
            if variant == "8" || variant == "v8" {
                variant.clear();
            }
            "arm64".to_string()
        }
        "armhf" => {
            variant = "v7".into();
            "arm".to_string()
        }
        "armel" => {
            variant = "v6".into();
            "arm".to_string()
        }
        "arm" => {
            if variant.is_empty() || variant == "7" {
                variant = "v7".into();
            } else if variant == "5" || variant == "6" || variant == "8" {
                variant = format!("v{variant}");
            }
            "arm".to_string()
        }
        other => other.to_string(),
    };
    Platform {
        architecture,
        os,
        variant: (!variant.is_empty()).then_some(variant),
    }
}

/// The variants `want` can run, best first, as containerd's `platformVector`: an amd64/v3 host
/// also runs v2 and v1 (no variant) images; arm/v7 runs v6 and v5; arm64 runs arm/v8.
fn compatible(want: &Platform) -> Vec<Platform> {
    let want = normalize(want);
    let mut out = vec![want.clone()];
    let variant_num = want
        .variant
        .as_deref()
        .and_then(|v| v.strip_prefix('v'))
        .and_then(|n| n.parse::<u32>().ok());
    match want.architecture.as_str() {
        "amd64" => {
            if let Some(n) = variant_num {
                for lower in (1..n).rev() {
                    out.push(Platform {
                        variant: (lower > 1).then(|| format!("v{lower}")),
                        ..want.clone()
                    });
                }
            }
        }
        "arm" => {
            if let Some(n) = variant_num {
                for lower in (5..n).rev() {
                    out.push(Platform {
                        variant: Some(format!("v{lower}")),
                        ..want.clone()
                    });
                }
            }
        }
        _ => {}
    }
    out
}

/// Pick the index entry for `want`, as containerd's `platforms.Only(want)` with the first
/// best-ranked entry winning. Entries without a platform, of other OSes, or for a newer CPU
/// variant than `want` (amd64/v3 on a plain amd64 host) are not chosen. `None` when nothing
/// matches.
pub fn choose_platform<'a>(entries: &'a [Descriptor], want: &Platform) -> Option<&'a Descriptor> {
    let ranks = compatible(want);
    entries
        .iter()
        .filter_map(|entry| {
            let platform = normalize(entry.platform.as_ref()?);
            let rank = ranks.iter().position(|r| *r == platform)?;
            Some((rank, entry))
        })
        .min_by_key(|(rank, _)| *rank)
        .map(|(_, entry)| entry)
}

/// The subset of the image config the store and the runtime use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfigFile {
    /// When the image was built (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Architecture the image is for.
    #[serde(default)]
    pub architecture: String,
    /// OS the image is for.
    #[serde(default)]
    pub os: String,
    /// The runtime configuration.
    #[serde(default, deserialize_with = "null_as_default")]
    pub config: RuntimeConfig,
    /// The layer stack.
    pub rootfs: RootFs,
}

/// `rootfs` of an image config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Digests of the uncompressed layers, bottom first.
    #[serde(default, deserialize_with = "null_as_default")]
    pub diff_ids: Vec<Digest>,
}

/// What the runtime needs from an image to build a container's process: the `config` object
/// of an OCI/Docker image config. Docker writes `null` for empty lists; those read as empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RuntimeConfig {
    /// `User`: `uid`, `uid:gid`, `name` or `name:group`.
    #[serde(rename = "User", deserialize_with = "null_as_default")]
    pub user: String,
    /// `Entrypoint`.
    #[serde(rename = "Entrypoint", deserialize_with = "null_as_default")]
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    #[serde(rename = "Cmd", deserialize_with = "null_as_default")]
    pub cmd: Vec<String>,
    /// `Env`, `KEY=value` entries.
    #[serde(rename = "Env", deserialize_with = "null_as_default")]
    pub env: Vec<String>,
    /// `WorkingDir`.
    #[serde(rename = "WorkingDir", deserialize_with = "null_as_default")]
    pub working_dir: String,
    /// `StopSignal`, e.g. `SIGQUIT`.
    #[serde(rename = "StopSignal", deserialize_with = "null_as_default")]
    pub stop_signal: String,
    /// `Volumes`: paths that should be volumes.
    #[serde(
        rename = "Volumes",
        deserialize_with = "null_as_default",
        skip_serializing_if = "std::collections::BTreeMap::is_empty"
    )]
    pub volumes: std::collections::BTreeMap<String, serde_json::Value>,
    /// `ExposedPorts`.
    #[serde(
        rename = "ExposedPorts",
        deserialize_with = "null_as_default",
        skip_serializing_if = "std::collections::BTreeMap::is_empty"
    )]
    pub exposed_ports: std::collections::BTreeMap<String, serde_json::Value>,
    /// `Labels`.
    #[serde(rename = "Labels", deserialize_with = "null_as_default")]
    pub labels: std::collections::BTreeMap<String, String>,
}

fn null_as_default<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

impl ImageConfigFile {
    /// Parse a config blob.
    pub fn parse(reference: &str, digest: &Digest, bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|e| Error::InvalidContent {
            reference: reference.to_string(),
            what: "config".into(),
            digest: digest.clone(),
            reason: e.to_string(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn entry(n: u8, arch: &str, os: &str, variant: Option<&str>) -> Descriptor {
        Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: Digest::of(&[n]),
            size: 1,
            platform: Some(Platform {
                architecture: arch.into(),
                os: os.into(),
                variant: variant.map(Into::into),
            }),
            urls: None,
        }
    }

    #[test]
    fn index_picks_linux_amd64() {
        let entries = vec![
            entry(1, "arm64", "linux", Some("v8")),
            entry(2, "arm", "linux", Some("v7")),
            entry(3, "amd64", "windows", None),
            entry(4, "unknown", "unknown", None),
            entry(5, "amd64", "linux", None),
            entry(6, "ppc64le", "linux", None),
        ];
        let chosen = choose_platform(&entries, &host_platform()).unwrap();
        assert_eq!(chosen.digest, Digest::of(&[5]));
    }

    #[test]
    fn newer_amd64_variants_are_not_chosen_for_a_plain_host() {
        let entries = vec![
            entry(1, "amd64", "linux", Some("v3")),
            entry(2, "amd64", "linux", Some("v1")),
        ];
        let chosen = choose_platform(&entries, &host_platform()).unwrap();
        assert_eq!(chosen.digest, Digest::of(&[2]));
        assert!(choose_platform(&entries[..1], &host_platform()).is_none());
    }

    #[test]
    fn a_v3_host_prefers_v3_then_lower_variants() {
        let want = Platform {
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: Some("v3".into()),
        };
        let entries = vec![
            entry(1, "amd64", "linux", None),
            entry(2, "amd64", "linux", Some("v2")),
            entry(3, "amd64", "linux", Some("v3")),
            entry(4, "amd64", "linux", Some("v4")),
        ];
        assert_eq!(
            choose_platform(&entries, &want).unwrap().digest,
            Digest::of(&[3])
        );
        assert_eq!(
            choose_platform(&entries[..2], &want).unwrap().digest,
            Digest::of(&[2])
        );
    }

    #[test]
    fn aliases_and_arm_variants_normalise() {
        let entries = vec![entry(1, "x86_64", "Linux", None)];
        assert!(choose_platform(&entries, &host_platform()).is_some());
        let arm7 = Platform {
            architecture: "arm".into(),
            os: "linux".into(),
            variant: None,
        };
        let entries = vec![
            entry(1, "arm", "linux", Some("v6")),
            entry(2, "armhf", "linux", None),
        ];
        assert_eq!(
            choose_platform(&entries, &arm7).unwrap().digest,
            Digest::of(&[2])
        );
    }

    #[test]
    fn schema1_is_refused_with_a_clear_message() {
        let body = br#"{"schemaVersion":1,"name":"x","tag":"y","fsLayers":[]}"#;
        let err = Manifest::parse("r", &Digest::of(body), body).unwrap_err();
        assert!(matches!(err, Error::Schema1 { .. }));
        assert!(err.to_string().contains("schema 1"));
    }

    #[test]
    fn manifests_and_indexes_parse_with_or_without_media_type() {
        let d = Digest::of(b"c");
        let body = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"{OCI_CONFIG}","digest":"{d}","size":3}},"layers":[]}}"#
        );
        assert!(matches!(
            Manifest::parse("r", &d, body.as_bytes()).unwrap(),
            Manifest::Image(_)
        ));
        let body = r#"{"schemaVersion":2,"manifests":[]}"#.to_string();
        assert!(matches!(
            Manifest::parse("r", &d, body.as_bytes()).unwrap(),
            Manifest::Index(_)
        ));
        let body = r#"{"schemaVersion":2,"mediaType":"application/vnd.example+json"}"#;
        assert!(matches!(
            Manifest::parse("r", &d, body.as_bytes()).unwrap_err(),
            Error::UnsupportedMediaType { .. }
        ));
    }

    #[test]
    fn docker_nulls_read_as_empty() {
        let d = Digest::of(b"x");
        let body = format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{"User":"1000:1000","Env":null,"Cmd":["sh"],"Labels":null,"Volumes":{{"/data":{{}}}}}},"rootfs":{{"type":"layers","diff_ids":["{d}"]}}}}"#
        );
        let c = ImageConfigFile::parse("r", &d, body.as_bytes()).unwrap();
        assert_eq!(c.config.user, "1000:1000");
        assert!(c.config.env.is_empty());
        assert_eq!(c.config.cmd, vec!["sh"]);
        assert!(c.config.volumes.contains_key("/data"));
        assert_eq!(c.rootfs.diff_ids, vec![d]);
    }
}
