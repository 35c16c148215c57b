//! A rendered tree as the comparisons see it: every path's type, mode, owner, mtime, size,
//! content digest, link target and xattrs, and which paths are hard links of each other.
//! Shared by the fidelity tests against `umoci`/`tar` (`trees.rs`, `corpus.rs`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use rootstock_testkit::fixtures::sha256_digest;

/// What a path is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    /// Files only; 0 otherwise.
    pub size: u64,
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// The sha256 of a file's content.
    pub content: Option<String>,
    /// A symlink's target.
    pub link: Option<String>,
}

/// Every xattr of `path` (not followed), sorted by name.
pub fn xattrs(path: &Path) -> Vec<(String, Vec<u8>)> {
    let mut names = vec![0u8; 65536];
    let Ok(n) = rustix::fs::llistxattr(path, &mut names[..]) else {
        return vec![];
    };
    let mut out = vec![];
    for raw in names[..n].split(|b| *b == 0).filter(|s| !s.is_empty()) {
        let name = String::from_utf8_lossy(raw).into_owned();
        let mut v = vec![0u8; 65536];
        let len = rustix::fs::lgetxattr(path, name.as_str(), &mut v[..]).unwrap();
        v.truncate(len);
        out.push((name, v));
    }
    out.sort();
    out
}

/// `path` itself (not followed).
pub fn node(path: &Path) -> Node {
    let m = std::fs::symlink_metadata(path).unwrap();
    let ft = m.file_type();
    let kind = if ft.is_dir() {
        "dir"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_char_device() {
        "char"
    } else if ft.is_file() {
        "file"
    } else {
        "other"
    };
    Node {
        kind,
        // A symlink's mode and xattrs are not its own on Linux: leave them out.
        mode: if kind == "symlink" {
            0
        } else {
            m.mode() & 0o7777
        },
        uid: m.uid(),
        gid: m.gid(),
        mtime: m.mtime(),
        size: if kind == "file" { m.len() } else { 0 },
        xattrs: if kind == "symlink" {
            vec![]
        } else {
            xattrs(path)
        },
        content: (kind == "file").then(|| sha256_digest(&std::fs::read(path).unwrap())),
        link: (kind == "symlink").then(|| {
            std::fs::read_link(path)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        }),
    }
}

/// Every path below `root` (not the root itself) → node, and the hard-link groups.
pub fn snapshot(root: &Path) -> (BTreeMap<String, Node>, BTreeSet<Vec<String>>) {
    let mut out = BTreeMap::new();
    let mut inodes: HashMap<u64, Vec<String>> = HashMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let n = node(&path);
            if n.kind == "dir" {
                stack.push(path.clone());
            } else {
                let ino = std::fs::symlink_metadata(&path).unwrap().ino();
                inodes.entry(ino).or_default().push(rel.clone());
            }
            out.insert(rel, n);
        }
    }
    let groups = inodes
        .into_values()
        .filter(|v| v.len() > 1)
        .map(|mut v| {
            v.sort();
            v
        })
        .collect();
    (out, groups)
}
