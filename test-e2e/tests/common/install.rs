//! What the installation tests (`packaging.rs`, `chart.rs`) share: the repository and the files an install laid out.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The repository's root (the workspace).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Every file below `root`: relative path → (mode, content); directories by path only.
pub fn layout(root: &Path) -> BTreeMap<String, (u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let m = std::fs::symlink_metadata(&path).unwrap();
            if m.is_dir() {
                stack.push(path);
                out.insert(format!("{rel}/"), (m.permissions().mode() & 0o7777, vec![]));
            } else if m.is_file() {
                let content = std::fs::read(&path).unwrap();
                out.insert(rel, (m.permissions().mode() & 0o7777, content));
            }
        }
    }
    out
}

pub fn files_only(l: &BTreeMap<String, (u32, Vec<u8>)>) -> Vec<(String, u32)> {
    l.iter()
        .filter(|(p, _)| !p.ends_with('/'))
        .map(|(p, (mode, _))| (p.clone(), *mode))
        .collect()
}
