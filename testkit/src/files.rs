//! Looking at what a store left on disk.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Every path below `root` whose inode is `ino`: the names one file object has (the object
/// itself, layer views, trees). Panics on an unreadable directory: a walk that skipped one
/// would miss links and make a "no link left" check vacuous.
pub fn links_of(root: &Path, ino: u64) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries =
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
        for entry in entries {
            let path = entry
                .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
                .path();
            let m = std::fs::symlink_metadata(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            if m.is_dir() {
                stack.push(path);
            } else if m.ino() == ino {
                found.push(path);
            }
        }
    }
    found
}
