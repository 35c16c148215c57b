//! Host devices in a container (CRI `devices`, what device plugins hand kubelet: `/dev/fuse`,
//! GPUs, `/dev/kvm`…): each becomes a device node in the spec, with the host node's type,
//! numbers, mode and owner, at the requested path, and a device-cgroup rule allowing exactly
//! the requested access, as containerd's `WithDevices` does. A path that is not a device node
//! or an access string other than a subset of `rwm` is refused, never skipped. CDI devices
//! ([`crate::cdi`]) add their nodes through the same function.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::error::{Error, Result};

/// A CRI `Device`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRequest {
    /// Where it appears in the container.
    pub container_path: PathBuf,
    /// The node (or a symlink to it) on the host.
    pub host_path: PathBuf,
    /// Device-cgroup access: a subset of `rwm`; empty means `rwm`.
    pub permissions: String,
}

/// A device node as the OCI spec describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Node {
    /// `c` or `b`.
    pub typ: char,
    /// Major number.
    pub major: u64,
    /// Minor number.
    pub minor: u64,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

impl Node {
    /// The node at `path` (symlinks followed, as kubelet's device paths often are links).
    pub fn of(path: &Path) -> std::result::Result<Self, String> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let typ = if meta.file_type().is_char_device() {
            'c'
        } else if meta.file_type().is_block_device() {
            'b'
        } else {
            return Err(format!("{} is not a device node", path.display()));
        };
        let rdev = meta.rdev();
        Ok(Self {
            typ,
            major: u64::from(nix::sys::stat::major(rdev) as u32),
            minor: u64::from(nix::sys::stat::minor(rdev) as u32),
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
        })
    }
}

/// `permissions` checked: a non-empty subset of `rwm` (empty reads as `rwm`).
pub fn access(permissions: &str) -> std::result::Result<String, String> {
    if permissions.is_empty() {
        return Ok("rwm".to_owned());
    }
    let mut seen = String::new();
    for c in permissions.chars() {
        if !matches!(c, 'r' | 'w' | 'm') || seen.contains(c) {
            return Err(format!(
                "{permissions:?} is not a combination of r, w and m"
            ));
        }
        seen.push(c);
    }
    Ok(seen)
}

/// Adds `node` at `container_path` to the spec's devices, and a device-cgroup rule allowing
/// `access` to it (after the default deny, so it wins).
pub fn add_node(spec: &mut Value, container_path: &Path, node: Node, access: &str) {
    let linux = &mut spec["linux"];
    let device = json!({
        "path": container_path,
        "type": node.typ.to_string(),
        "major": node.major,
        "minor": node.minor,
        "fileMode": node.mode,
        "uid": node.uid,
        "gid": node.gid,
    });
    push(&mut linux["devices"], device);
    let rule = json!({
        "allow": true,
        "type": node.typ.to_string(),
        "major": node.major,
        "minor": node.minor,
        "access": access,
    });
    push(&mut linux["resources"]["devices"], rule);
}

/// Appends to a JSON array, making it if absent.
pub(crate) fn push(slot: &mut Value, item: Value) {
    if !slot.is_array() {
        *slot = Value::Array(Vec::new());
    }
    if let Value::Array(items) = slot {
        items.push(item);
    }
}

/// Applies CRI `devices` to a built spec (as JSON). Errors name `devices[i]` and the field.
pub fn apply(spec: &mut Value, devices: &[DeviceRequest]) -> Result<()> {
    for (i, d) in devices.iter().enumerate() {
        let bad = |field: &str, why: String| {
            Error::InvalidArgument(format!("devices[{i}].{field}: {why}"))
        };
        if !d.container_path.is_absolute() {
            return Err(bad(
                "container_path",
                format!("{} is not an absolute path", d.container_path.display()),
            ));
        }
        let node = Node::of(&d.host_path).map_err(|e| bad("host_path", e))?;
        let access = access(&d.permissions).map_err(|e| bad("permissions", e))?;
        add_node(spec, &d.container_path, node, &access);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_device_becomes_a_node_and_a_cgroup_rule() {
        let mut spec =
            json!({"linux": {"resources": {"devices": [{"allow": false, "access": "rwm"}]}}});
        apply(
            &mut spec,
            &[DeviceRequest {
                container_path: "/dev/xnull".into(),
                host_path: "/dev/null".into(),
                permissions: "rw".into(),
            }],
        )
        .unwrap();
        assert_eq!(spec["linux"]["devices"][0]["path"], "/dev/xnull");
        assert_eq!(spec["linux"]["devices"][0]["major"], 1);
        assert_eq!(spec["linux"]["devices"][0]["minor"], 3);
        let rules = spec["linux"]["resources"]["devices"].as_array().unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[1]["access"], "rw");
        for (host, perms, field) in [
            ("/etc/hostname", "rw", "host_path"),
            ("/dev/nope", "rw", "host_path"),
            ("/dev/null", "rx", "permissions"),
        ] {
            let err = apply(
                &mut spec,
                &[DeviceRequest {
                    container_path: "/dev/x".into(),
                    host_path: host.into(),
                    permissions: perms.into(),
                }],
            )
            .unwrap_err();
            assert!(err.to_string().contains(field), "{err}");
        }
    }
}
