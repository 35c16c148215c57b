//! `rootstock store verify`: check that the store is what its metadata says.
//!
//! * every object's name is the key of its content and metadata (content re-hashed), and
//!   something besides its own name links it;
//! * every layer record has its directory and manifest, and every file of the manifest is in
//!   the layer's view, as the object it names (or a private copy);
//! * every tree record has its directory, holding every entry of its top layer (nothing can
//!   hide those) with the right type;
//! * references are consistent: images name recorded layers, trees and blobs; leases name
//!   recorded trees; no layer or tree directory lacks a record; `tmp/` is empty.
//!
//! Offline ([`verify_offline`]) it takes the root lock first, so it refuses while a daemon
//! runs; in-process ([`crate::ImageStore::verify`]) it runs under the store guard.

use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::error::Result;
use crate::fsutil::{self, Meta};
use crate::layout::{ContentHasher, Kind, LayerManifest, StorePaths, object_key, object_rel};
use crate::metadata::Metadata;

/// What `verify` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Objects checked.
    pub objects: u64,
    /// Layers checked.
    pub layers: u64,
    /// Trees checked.
    pub trees: u64,
    /// Images checked.
    pub images: u64,
    /// Every problem found, one line each; empty when the store is consistent.
    pub problems: Vec<String>,
}

impl Report {
    /// No problem found.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "checked {} images, {} trees, {} layers, {} objects: {}",
            self.images,
            self.trees,
            self.layers,
            self.objects,
            if self.is_clean() {
                "clean".to_string()
            } else {
                format!("{} problems", self.problems.len())
            }
        )?;
        for p in &self.problems {
            writeln!(f, "  {p}")?;
        }
        Ok(())
    }
}

/// Verify the store at `root` from outside the daemon: takes `<root>/rootstock.lock` (the
/// daemon's lock) without waiting, and fails with [`Error::StoreLocked`] while a daemon holds
/// it.
pub fn verify_offline(root: &Path) -> Result<Report> {
    let lock = crate::offline::lock_root(root)?;
    let meta = crate::offline::open_metadata(root)?;
    let report = check(root, &meta);
    drop(lock);
    report
}

/// Re-hash an object and compute its key from what is on disk.
pub(crate) fn key_on_disk(path: &Path) -> std::io::Result<(String, u64)> {
    let f = File::open(path)?;
    let nlink = f.metadata()?.nlink();
    Ok((key_of_file(f)?, nlink))
}

/// The object key of an open regular file: its content and inode metadata.
pub(crate) fn key_of_file(mut f: File) -> std::io::Result<String> {
    let m = f.metadata()?;
    let mut h = ContentHasher::new();
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let meta = Meta {
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        mtime: m.mtime(),
        xattrs: fsutil::read_xattrs(&f)?,
    };
    Ok(object_key(h.finalize().as_bytes(), &meta))
}

/// The checks (blocking).
pub(crate) fn check(root: &Path, meta: &Metadata) -> Result<Report> {
    let paths = StorePaths::new(root);
    let mut r = Report::default();
    let mut problem = |s: String| r.problems.push(s);
    let mut problems = Vec::new();

    // Objects.
    let mut objects_ok = 0;
    for i in 0..=255u8 {
        let fan = paths.objects.join(format!("{i:02x}"));
        let Ok(rd) = std::fs::read_dir(&fan) else {
            continue;
        };
        for entry in rd.flatten() {
            let name = format!("{i:02x}{}", entry.file_name().to_string_lossy());
            match key_on_disk(&entry.path()) {
                Ok((key, nlink)) => {
                    if key != name {
                        problems.push(format!("object {name}: content/metadata hash to {key}"));
                    }
                    if nlink < 2 {
                        problems.push(format!("object {name}: nothing links it"));
                    }
                }
                Err(e) => problems.push(format!("object {name}: {e}")),
            }
            objects_ok += 1;
        }
    }

    // Layers.
    let layers = meta.layers()?;
    let mut layer_ids = HashSet::new();
    for layer in &layers {
        layer_ids.insert(layer.diff_id.hex().to_string());
        let dir = paths.layer_dir(&layer.diff_id);
        let manifest = match LayerManifest::load(&dir) {
            Ok(m) => m,
            Err(e) => {
                problems.push(format!("layer {}: {e}", layer.diff_id));
                continue;
            }
        };
        let view = paths.layer_root(&layer.diff_id);
        // Paths below the view may be longer than PATH_MAX (a deep tree): resolved in it.
        let view_fd = crate::fsutil::open_dir(&view).ok();
        for e in &manifest.entries {
            if let Kind::File {
                object: Some(key),
                private,
                ..
            } = &e.kind
            {
                let obj = paths.objects.join(object_rel(key));
                let file = match &view_fd {
                    Some(v) => crate::fsutil::open_file_in(v, &e.path).and_then(|f| f.metadata()),
                    None => std::fs::symlink_metadata(view.join(&e.path)),
                };
                match (file, std::fs::metadata(&obj)) {
                    (Ok(f), Ok(o)) if !private && f.ino() != o.ino() => {
                        problems.push(format!(
                            "layer {}: {} is not object {key}",
                            layer.diff_id, e.path
                        ));
                    }
                    (Ok(_), Ok(_)) => {}
                    (Err(_), _) => problems.push(format!(
                        "layer {}: {} missing from its view",
                        layer.diff_id, e.path
                    )),
                    (_, Err(_)) if !private => problems.push(format!(
                        "layer {}: object {key} of {} missing",
                        layer.diff_id, e.path
                    )),
                    _ => {}
                }
            }
        }
        if let Some(blob) = &layer.blob
            && !root.join("blobs/sha256").join(blob.hex()).exists()
        {
            problems.push(format!("layer {}: kept blob {blob} missing", layer.diff_id));
        }
    }

    // Trees.
    let trees = meta.trees()?;
    let mut tree_ids = HashSet::new();
    for tree in &trees {
        tree_ids.insert(tree.chain_id.0.hex().to_string());
        if !tree.path.is_dir() {
            problems.push(format!(
                "tree {}: directory {} missing",
                tree.chain_id,
                tree.path.display()
            ));
            continue;
        }
        let Some(top) = tree.diff_ids.last() else {
            continue;
        };
        if !layer_ids.contains(top.hex()) {
            // A tree may outlive its layers (a container's lease); nothing to compare.
            continue;
        }
        let Ok(manifest) = LayerManifest::load(&paths.layer_dir(top)) else {
            continue;
        };
        for e in &manifest.entries {
            let p = tree.path.join(&e.path);
            let ok = match std::fs::symlink_metadata(&p) {
                Ok(m) => match &e.kind {
                    Kind::Dir { .. } => m.is_dir(),
                    Kind::File { .. } => m.is_file(),
                    Kind::Symlink { .. } => m.file_type().is_symlink(),
                    _ => true,
                },
                Err(_) => false,
            };
            if !ok {
                problems.push(format!(
                    "tree {}: {} missing or of the wrong type",
                    tree.chain_id, e.path
                ));
            }
        }
    }

    // References.
    let images = meta.images()?;
    for image in &images {
        for l in &image.layers {
            if !layer_ids.contains(l.diff_id.hex()) {
                problems.push(format!(
                    "image {}: layer {} has no record",
                    image.id, l.diff_id
                ));
            }
        }
        if let Some(c) = &image.chain_id
            && !tree_ids.contains(c.0.hex())
        {
            problems.push(format!("image {}: tree {c} has no record", image.id));
        }
        for b in &image.blobs {
            if !root.join("blobs/sha256").join(b.hex()).exists() {
                problems.push(format!("image {}: blob {b} missing", image.id));
            }
        }
    }
    for lease in meta.leases()? {
        if !tree_ids.contains(lease.chain_id.0.hex()) {
            problems.push(format!(
                "lease {}: tree {} has no record",
                lease.id, lease.chain_id
            ));
        }
    }
    for (dir, known, what) in [
        (&paths.layers, &layer_ids, "layer"),
        (&paths.trees, &tree_ids, "tree"),
    ] {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !known.contains(&name) {
                problems.push(format!("{what} directory {name} has no record"));
            }
        }
    }
    for entry in std::fs::read_dir(&paths.tmp)
        .into_iter()
        .flatten()
        .flatten()
    {
        problems.push(format!(
            "tmp/ holds {}",
            entry.file_name().to_string_lossy()
        ));
    }
    for p in problems {
        problem(p);
    }
    r.objects = objects_ok;
    r.layers = layers.len() as u64;
    r.trees = trees.len() as u64;
    r.images = images.len() as u64;
    Ok(r)
}
