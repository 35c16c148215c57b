//! Network configuration lists: finding the first valid file, validating it, and the built-in
//! default network.
//!
//! CNI spec 1.x, "Configuration format": a list has `cniVersion`, `name` and `plugins` (each
//! with a `type`); a single-plugin `.conf`/`.json` is wrapped into a list the way libcni's
//! `ConfListFromConf` does.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use crate::error::{CniError, Result};

/// `cniVersion`s whose results this crate parses (0.3.x and 0.4.0 share one result shape,
/// 1.x another). Debian's plugins 1.1.1 accept up to 1.0.0.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// File name extensions that are network configs (libcni's `ConfFiles`).
const EXTENSIONS: &[&str] = &["conflist", "conf", "json"];

/// Source path reported for the built-in default network.
pub const BUILTIN_SOURCE: &str = "<built-in default network>";

/// One plugin of a list: its `type` and its configuration object as written.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConfig {
    /// The plugin `type`: the binary's file name.
    pub plugin_type: String,
    /// The plugin's configuration object (without `name`/`cniVersion`, which the list supplies).
    pub conf: Map<String, Value>,
}

impl PluginConfig {
    /// Capabilities the plugin declares with `"capabilities": {"portMappings": true, ...}`;
    /// only these `runtimeConfig` keys are passed to it (CNI spec, "Deriving runtimeConfig").
    pub fn capabilities(&self) -> Vec<String> {
        match self.conf.get("capabilities") {
            Some(Value::Object(m)) => m
                .iter()
                .filter(|(_, v)| v.as_bool() == Some(true))
                .map(|(k, _)| k.clone())
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// A validated network configuration list.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfigList {
    /// The network name (`name`).
    pub name: String,
    /// The list's `cniVersion`, passed to every plugin.
    pub cni_version: String,
    /// `disableCheck: true` turns CHECK into a no-op (CNI spec).
    pub disable_check: bool,
    /// The plugins, in ADD order.
    pub plugins: Vec<PluginConfig>,
    /// The list as loaded (a wrapped single plugin becomes a list); this is what is cached so
    /// that DEL runs with exactly the config ADD used.
    pub raw: Value,
    /// Where it came from.
    pub source: PathBuf,
}

impl NetworkConfigList {
    /// Validates a parsed list. `path` is only used in error messages.
    pub fn from_value(raw: Value, path: &Path) -> Result<Self> {
        let invalid = |reason: String| CniError::InvalidConfig {
            path: path.to_path_buf(),
            reason,
        };
        let obj = raw
            .as_object()
            .ok_or_else(|| invalid("not a JSON object".into()))?;
        let name = match obj.get("name") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(_) => return Err(invalid("\"name\" must be a non-empty string".into())),
            None => return Err(invalid("missing \"name\"".into())),
        };
        // libcni 1.x rejects names that are not usable as file names; we use it in cache file
        // names too.
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
            || name.starts_with(['.', '-', '_'])
        {
            return Err(invalid(format!(
                "network name {name:?} must match [a-zA-Z0-9][a-zA-Z0-9_.-]*"
            )));
        }
        let cni_version = match obj.get("cniVersion") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err(invalid("missing or empty \"cniVersion\"".into())),
        };
        if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
            return Err(invalid(format!(
                "cniVersion {cni_version:?} is not supported (supported: {})",
                SUPPORTED_VERSIONS.join(", ")
            )));
        }
        let disable_check = obj
            .get("disableCheck")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let plugins_raw = match obj.get("plugins") {
            Some(Value::Array(a)) if !a.is_empty() => a,
            Some(Value::Array(_)) => return Err(invalid("\"plugins\" is empty".into())),
            _ => return Err(invalid("missing \"plugins\" array".into())),
        };
        let mut plugins = Vec::with_capacity(plugins_raw.len());
        for (i, p) in plugins_raw.iter().enumerate() {
            let conf = p
                .as_object()
                .ok_or_else(|| invalid(format!("plugins[{i}] is not an object")))?;
            let plugin_type = match conf.get("type") {
                Some(Value::String(t)) if !t.is_empty() => t.clone(),
                _ => return Err(invalid(format!("plugins[{i}] has no \"type\""))),
            };
            // The type is joined to bin dirs: never let it walk out of them.
            if plugin_type.contains('/') || plugin_type == "." || plugin_type == ".." {
                return Err(invalid(format!(
                    "plugins[{i}] type {plugin_type:?} is not a plain file name"
                )));
            }
            plugins.push(PluginConfig {
                plugin_type,
                conf: conf.clone(),
            });
        }
        Ok(Self {
            name,
            cni_version,
            disable_check,
            plugins,
            raw,
            source: path.to_path_buf(),
        })
    }

    /// Reads and validates one file. `.conflist` must be a list; `.conf`/`.json` holding a
    /// single plugin are wrapped into a one-plugin list.
    pub fn from_file(path: &Path) -> Result<Self> {
        let invalid = |reason: String| CniError::InvalidConfig {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| invalid(format!("read: {e}")))?;
        let value: Value =
            serde_json::from_slice(&bytes).map_err(|e| invalid(format!("parse JSON: {e}")))?;
        let is_list = path.extension().and_then(|e| e.to_str()) == Some("conflist")
            || value.get("plugins").is_some();
        let value = if is_list {
            value
        } else {
            wrap_single_plugin(value).map_err(invalid)?
        };
        Self::from_value(value, path)
    }

    /// The built-in default network: bridge `rootstock0` with host-local on 10.88.0.0/16 and
    /// portmap, `cniVersion` 1.0.0 (the newest Debian's plugins 1.1.1 accept).
    pub fn builtin_default() -> Result<Self> {
        let raw = json!({
            "cniVersion": "1.0.0",
            "name": "rootstock",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "rootstock0",
                    "isGateway": true,
                    "ipMasq": true,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "routes": [{ "dst": "0.0.0.0/0" }],
                        "ranges": [[{ "subnet": "10.88.0.0/16", "gateway": "10.88.0.1" }]]
                    }
                },
                { "type": "portmap", "capabilities": { "portMappings": true } }
            ]
        });
        Self::from_value(raw, Path::new(BUILTIN_SOURCE))
    }
}

/// libcni's `ConfListFromConf`: `{name, cniVersion, plugins: [conf]}`.
fn wrap_single_plugin(value: Value) -> std::result::Result<Value, String> {
    let obj = value.as_object().ok_or("not a JSON object")?;
    if !obj.contains_key("type") {
        return Err("single-plugin config has no \"type\" (a list must be a .conflist)".into());
    }
    Ok(json!({
        "cniVersion": obj.get("cniVersion").cloned().unwrap_or(Value::Null),
        "name": obj.get("name").cloned().unwrap_or(Value::Null),
        "plugins": [value],
    }))
}

/// The outcome of one scan of the conf dirs.
#[derive(Debug, Clone, Default)]
pub struct ScanResult {
    /// The first valid list, if any.
    pub network: Option<NetworkConfigList>,
    /// Files rejected before it, with the reason (reported by `status()` and logged).
    pub rejected: Vec<(PathBuf, String)>,
}

/// Finds the first valid config: directories in the given order, files in lexical order of
/// their names within each directory. Missing directories are skipped (the network add-on
/// may create them later).
pub fn scan(conf_dirs: &[PathBuf]) -> ScanResult {
    let mut out = ScanResult::default();
    for dir in conf_dirs {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                out.rejected.push((dir.clone(), format!("read dir: {e}")));
                continue;
            }
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| EXTENSIONS.contains(&e))
                    && p.is_file()
            })
            .collect();
        files.sort();
        for f in files {
            match NetworkConfigList::from_file(&f) {
                Ok(n) => {
                    out.network = Some(n);
                    return out;
                }
                Err(e) => out.rejected.push((f, e.to_string())),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn first_valid_file_in_lexical_order_wins_and_invalid_ones_are_reported() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("05-bad.conflist"), "{not json").unwrap();
        std::fs::write(
            d.path().join("10-b.conflist"),
            r#"{"cniVersion":"1.0.0","name":"b","plugins":[{"type":"bridge"}]}"#,
        )
        .unwrap();
        std::fs::write(
            d.path().join("20-a.conflist"),
            r#"{"cniVersion":"1.0.0","name":"a","plugins":[{"type":"bridge"}]}"#,
        )
        .unwrap();
        std::fs::write(d.path().join("00-ignored.txt"), "x").unwrap();
        let s = scan(&[PathBuf::from("/nonexistent"), d.path().to_path_buf()]);
        assert_eq!(s.network.unwrap().name, "b");
        assert_eq!(s.rejected.len(), 1);
        assert!(s.rejected[0].1.contains("05-bad.conflist"));
    }

    #[test]
    fn single_plugin_conf_is_wrapped() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("10-x.conf");
        std::fs::write(
            &p,
            r#"{"cniVersion":"0.4.0","name":"x","type":"bridge","bridge":"br9"}"#,
        )
        .unwrap();
        let n = NetworkConfigList::from_file(&p).unwrap();
        assert_eq!(n.plugins.len(), 1);
        assert_eq!(n.plugins[0].plugin_type, "bridge");
        assert_eq!(n.raw["plugins"][0]["bridge"], "br9");
    }

    #[test]
    fn validation_errors_name_the_file_and_the_problem() {
        let p = Path::new("/etc/cni/net.d/10-x.conflist");
        let cases = [
            (
                json!({"cniVersion":"1.0.0","plugins":[{"type":"a"}]}),
                "name",
            ),
            (json!({"name":"x","plugins":[{"type":"a"}]}), "cniVersion"),
            (
                json!({"name":"x","cniVersion":"9.9.9","plugins":[{"type":"a"}]}),
                "not supported",
            ),
            (
                json!({"name":"x","cniVersion":"1.0.0","plugins":[]}),
                "empty",
            ),
            (
                json!({"name":"x","cniVersion":"1.0.0","plugins":[{"ipam":{}}]}),
                "type",
            ),
            (
                json!({"name":"x","cniVersion":"1.0.0","plugins":[{"type":"../sh"}]}),
                "plain file",
            ),
            (
                json!({"name":"a b","cniVersion":"1.0.0","plugins":[{"type":"a"}]}),
                "must match",
            ),
        ];
        for (v, want) in cases {
            let e = NetworkConfigList::from_value(v, p).unwrap_err().to_string();
            assert!(e.contains("10-x.conflist") && e.contains(want), "{e}");
        }
    }

    #[test]
    fn builtin_default_is_valid_and_declares_port_mappings() {
        let n = NetworkConfigList::builtin_default().unwrap();
        assert_eq!(n.cni_version, "1.0.0");
        assert_eq!(
            n.plugins[1].capabilities(),
            vec!["portMappings".to_string()]
        );
    }
}
