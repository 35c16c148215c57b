//! Container Device Interface (CDI, `tags.cncf.io/container-device-interface`): devices
//! asked for by fully qualified name (`vendor.com/class=name`, from CRI `CDI_devices` or the
//! `cdi.k8s.io/*` annotations) are looked up in the CDI spec files (JSON or YAML) of the
//! configured directories (`/etc/cdi`, then `/var/run/cdi`, which wins for a name both
//! define), and their container edits applied to the OCI spec: device nodes, mounts,
//! environment, hooks, additional groups. The spec-level edits of a file apply once when any
//! of its devices is asked for. An unknown device, or an edit rootstock cannot apply
//! (`intelRdt`, `netDevices`), is `InvalidArgument`: nothing asked for is dropped silently.
//! No maintained Rust crate implements CDI; the format is small and documented in the CDI
//! repository's `SPEC.md`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::devices::{self, Node, push};
use crate::error::{Error, Result};

/// Annotation prefix kubelet's device plugins (and users) use to ask for CDI devices.
pub const ANNOTATION_PREFIX: &str = "cdi.k8s.io/";

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpecFile {
    #[allow(dead_code)]
    cdi_version: String,
    kind: String,
    devices: Vec<DeviceSpec>,
    #[serde(default)]
    container_edits: Edits,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeviceSpec {
    name: String,
    #[serde(default)]
    container_edits: Edits,
}

/// `containerEdits`. Unknown keys are kept (not dropped) so that a non-empty one refuses the
/// device instead of being ignored.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Edits {
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    device_nodes: Vec<DeviceNode>,
    #[serde(default)]
    hooks: Vec<Hook>,
    #[serde(default)]
    mounts: Vec<CdiMount>,
    #[serde(default)]
    additional_gids: Vec<u32>,
    #[serde(flatten)]
    unsupported: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeviceNode {
    path: PathBuf,
    host_path: Option<PathBuf>,
    #[serde(rename = "type")]
    typ: Option<String>,
    major: Option<u64>,
    minor: Option<u64>,
    file_mode: Option<u32>,
    permissions: Option<String>,
    uid: Option<u32>,
    gid: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Hook {
    hook_name: String,
    path: PathBuf,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Vec<String>,
    timeout: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CdiMount {
    host_path: PathBuf,
    container_path: PathBuf,
    #[serde(rename = "type")]
    typ: Option<String>,
    #[serde(default)]
    options: Vec<String>,
}

/// The CDI device names a container asks for: CRI `CDI_devices`, then the values of
/// `cdi.k8s.io/*` annotations (comma-separated), without repeats.
pub fn requested<'a>(
    cdi_devices: impl IntoIterator<Item = &'a str>,
    annotations: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let from_annotations = annotations
        .into_iter()
        .filter(|(k, _)| k.starts_with(ANNOTATION_PREFIX))
        .flat_map(|(_, v)| v.split(','));
    for name in cdi_devices.into_iter().chain(from_annotations) {
        let name = name.trim();
        if !name.is_empty() && !out.iter().any(|n| n == name) {
            out.push(name.to_owned());
        }
    }
    out
}

/// Every spec file of `dirs`, later directories winning, each with where it came from.
fn load(dirs: &[PathBuf]) -> Vec<(PathBuf, SpecFile)> {
    let mut out = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            if !matches!(ext, "json" | "yaml" | "yml") {
                continue;
            }
            // JSON is YAML: one parser reads both.
            let parsed = std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|t| serde_yaml_ng::from_str::<SpecFile>(&t).map_err(|e| e.to_string()));
            match parsed {
                Ok(spec) => out.push((path, spec)),
                // Not fatal for the other files: a device it defines is then unknown, and
                // the message points here.
                Err(e) => tracing::warn!(file = %path.display(), "CDI spec skipped: {e}"),
            }
        }
    }
    out
}

/// Resolves `names` in the spec files of `dirs` and applies their edits to `spec` (the OCI
/// spec as JSON).
pub fn apply(spec: &mut Value, names: &[String], dirs: &[PathBuf]) -> Result<()> {
    if names.is_empty() {
        return Ok(());
    }
    let files = load(dirs);
    let mut used_files: Vec<usize> = Vec::new();
    let mut edits: Vec<(String, &Edits)> = Vec::new();
    for name in names {
        let (kind, device) = name.split_once('=').ok_or_else(|| {
            Error::InvalidArgument(format!(
                "CDI device {name:?} is not a fully qualified name (vendor.com/class=device)"
            ))
        })?;
        // The last definition wins (later directories, later files).
        let found = files.iter().enumerate().rev().find_map(|(i, (_, f))| {
            (f.kind == kind)
                .then(|| f.devices.iter().find(|d| d.name == device))
                .flatten()
                .map(|d| (i, d))
        });
        let Some((file, dev)) = found else {
            return Err(Error::InvalidArgument(format!(
                "unknown CDI device {name:?}: no CDI spec in {} defines it",
                dirs.iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        if !used_files.contains(&file) {
            used_files.push(file);
            edits.push((
                format!("{} (spec {})", name, files[file].0.display()),
                &files[file].1.container_edits,
            ));
        }
        edits.push((name.clone(), &dev.container_edits));
    }
    for (what, e) in edits {
        apply_edits(spec, e)
            .map_err(|m| Error::InvalidArgument(format!("CDI device {what}: {m}")))?;
    }
    Ok(())
}

fn apply_edits(spec: &mut Value, e: &Edits) -> std::result::Result<(), String> {
    if let Some((key, _)) = e.unsupported.iter().find(|(_, v)| !is_empty(v)) {
        return Err(format!(
            "containerEdits.{key} is not supported by rootstock"
        ));
    }
    for kv in &e.env {
        set_env(spec, kv);
    }
    for n in &e.device_nodes {
        let host = n.host_path.as_deref().unwrap_or(&n.path);
        let node = match (n.typ.as_deref(), n.major, n.minor) {
            (Some(t @ ("c" | "b" | "u")), Some(major), Some(minor)) => Node {
                typ: if t == "b" { 'b' } else { 'c' },
                major,
                minor,
                mode: n.file_mode.unwrap_or(0o666),
                uid: n.uid.unwrap_or(0),
                gid: n.gid.unwrap_or(0),
            },
            _ => {
                let mut node = Node::of(host)?;
                node.mode = n.file_mode.unwrap_or(node.mode);
                node.uid = n.uid.unwrap_or(node.uid);
                node.gid = n.gid.unwrap_or(node.gid);
                node
            }
        };
        let access = devices::access(n.permissions.as_deref().unwrap_or(""))?;
        devices::add_node(spec, &n.path, node, &access);
    }
    for m in &e.mounts {
        let typ = m.typ.clone().unwrap_or_else(|| "bind".to_owned());
        let mut options = m.options.clone();
        if typ == "bind" && !options.iter().any(|o| o == "bind" || o == "rbind") {
            options.push("rbind".to_owned());
        }
        push(
            &mut spec["mounts"],
            json!({"destination": m.container_path, "type": typ, "source": m.host_path, "options": options}),
        );
    }
    for h in &e.hooks {
        let key = match h.hook_name.as_str() {
            "prestart" => "prestart",
            "createRuntime" => "createRuntime",
            "createContainer" => "createContainer",
            "startContainer" => "startContainer",
            "poststart" => "poststart",
            "poststop" => "poststop",
            other => return Err(format!("unknown hook {other:?}")),
        };
        let mut hook = json!({"path": h.path});
        if !h.args.is_empty() {
            hook["args"] = json!(h.args);
        }
        if !h.env.is_empty() {
            hook["env"] = json!(h.env);
        }
        if let Some(t) = h.timeout {
            hook["timeout"] = json!(t);
        }
        push(&mut spec["hooks"][key], hook);
    }
    for gid in &e.additional_gids {
        push(&mut spec["process"]["user"]["additionalGids"], json!(gid));
    }
    Ok(())
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// Sets `KEY=VALUE` in the process env, replacing the key if present.
fn set_env(spec: &mut Value, kv: &str) {
    let key = kv.split_once('=').map_or(kv, |(k, _)| k);
    let env = &mut spec["process"]["env"];
    if let Value::Array(items) = env
        && let Some(slot) = items.iter_mut().find(|v| {
            v.as_str()
                .is_some_and(|s| s.split_once('=').map_or(s, |(k, _)| k) == key)
        })
    {
        *slot = json!(kv);
        return;
    }
    push(env, json!(kv));
}

/// The default spec directories, lowest priority first (the CDI specification's).
pub fn default_dirs() -> Vec<PathBuf> {
    vec![PathBuf::from("/etc/cdi"), PathBuf::from("/var/run/cdi")]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_and_json_specs_apply_and_unknown_or_unsupported_is_refused() {
        let low = tempfile::tempdir().unwrap();
        let high = tempfile::tempdir().unwrap();
        std::fs::write(
            low.path().join("v.yaml"),
            "cdiVersion: 0.6.0\nkind: vendor.com/gpu\ncontainerEdits:\n  env: [SHARED=1]\n\
             devices:\n- name: a\n  containerEdits:\n    env: [A=low]\n\
             - name: rdt\n  containerEdits:\n    intelRdt: {closID: x}\n",
        )
        .unwrap();
        std::fs::write(
            high.path().join("v.json"),
            r#"{"cdiVersion":"0.6.0","kind":"vendor.com/gpu","devices":[{"name":"a",
               "containerEdits":{"env":["A=high"],"deviceNodes":[{"path":"/dev/gpu0","hostPath":"/dev/null"}],
               "mounts":[{"hostPath":"/tmp","containerPath":"/gpu"}],
               "hooks":[{"hookName":"createContainer","path":"/bin/true"}]}}]}"#,
        )
        .unwrap();
        let dirs = vec![low.path().to_owned(), high.path().to_owned()];
        let mut spec = json!({"process": {"env": ["A=image"]}, "linux": {}});
        apply(&mut spec, &["vendor.com/gpu=a".into()], &dirs).unwrap();
        assert_eq!(spec["process"]["env"], json!(["A=high"]));
        assert_eq!(spec["linux"]["devices"][0]["path"], "/dev/gpu0");
        assert_eq!(spec["mounts"][0]["destination"], "/gpu");
        assert_eq!(spec["hooks"]["createContainer"][0]["path"], "/bin/true");

        let err = apply(&mut spec, &["vendor.com/gpu=nope".into()], &dirs).unwrap_err();
        assert!(err.to_string().contains("unknown CDI device"), "{err}");
        let err = apply(&mut spec, &["vendor.com/gpu=rdt".into()], &dirs).unwrap_err();
        assert!(err.to_string().contains("intelRdt"), "{err}");
        // The spec-level edits of the low file came with its device.
        let mut spec = json!({"process": {"env": []}, "linux": {}});
        let _ = apply(&mut spec, &["vendor.com/gpu=rdt".into()], &dirs);
        assert_eq!(spec["process"]["env"], json!(["SHARED=1"]));
        assert_eq!(
            requested(["a=b"], [("cdi.k8s.io/x", "a=b,c=d"), ("other", "e=f")]),
            ["a=b", "c=d"]
        );
    }
}
