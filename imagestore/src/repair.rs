//! `rootstock store verify --repair`: put damaged file objects back, offline.
//!
//! An object is one inode shared by `objects/<aa>/<rest>`, the layer views and the image
//! trees. It is *damaged* when its content or metadata no longer hash to its key, or when
//! its object file is gone. Each damaged object is re-derived, in this order, from:
//! 1. a layer view link that still hashes to the key (the object file alone was deleted):
//!    that inode becomes the object again, so nothing else changes;
//! 2. a layer blob kept in the store (`images.keep_layer_blobs`);
//! 3. the layer blob re-fetched from a registry that an image holding the layer names.
//!
//! A re-derived object is a *new* inode written in `tmp/` and renamed into place; every layer
//! view and tree path that used the object is then re-pointed at it the same way (link to a
//! temporary name, rename over). Nothing is ever written into an existing inode: overlayfs
//! caches lower inodes, and a running container's overlay keeps the inode it had (its upper
//! directory, under `containers/`, is never touched). Containers created afterwards see the
//! repaired content. Directory mtimes are restored after each rename.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use rustix::fs::{AtFlags, Mode, OFlags, Timestamps};
use sha2::{Digest as _, Sha256};

use crate::config::ImagesConfig;
use crate::error::{Error, Result};
use crate::fsutil::{self, Meta};
use crate::layout::{
    ContentHasher, Kind, LayerManifest, StorePaths, TmpDir, hash_zeros, normalize, object_key,
    object_rel,
};
use crate::manifest::{Compression, Descriptor};
use crate::metadata::{LayerRecord, Metadata};
use crate::reference::{Digest, ImageRef};
use crate::registry::RegistryClient;
use crate::tarstream::{EntryType, TarError, TarReader};
use crate::verify::{Report, key_of_file, key_on_disk};

/// What a repair did.
#[derive(Debug, Clone, Default)]
pub struct RepairReport {
    /// Objects that were damaged or missing and are whole again, with where they came from.
    pub repaired: Vec<String>,
    /// Layer-view and tree paths re-pointed at their object.
    pub paths_fixed: u64,
    /// What could not be repaired, one line each.
    pub unrepaired: Vec<String>,
    /// `verify` after the repair.
    pub after: Report,
}

impl std::fmt::Display for RepairReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "repaired {} objects, re-pointed {} paths",
            self.repaired.len(),
            self.paths_fixed
        )?;
        for r in &self.repaired {
            writeln!(f, "  repaired {r}")?;
        }
        for u in &self.unrepaired {
            writeln!(f, "  NOT repaired: {u}")?;
        }
        write!(f, "after repair: {}", self.after)
    }
}

/// One path of a layer view that is a file object.
#[derive(Debug, Clone)]
struct Use {
    diff_id: Digest,
    path: String,
    meta: Meta,
    private: bool,
}

/// Repair the store at `root` (see the module documentation). Takes the root lock, so it
/// refuses while a daemon runs. `config` supplies registry settings for re-fetching.
pub async fn repair_offline(root: &Path, config: &ImagesConfig) -> Result<RepairReport> {
    let _lock = crate::offline::lock_root(root)?;
    let meta = crate::offline::open_metadata(root)?;
    let paths = StorePaths::new(root);
    let mut report = RepairReport::default();
    let layers = meta.layers()?;
    let mut manifests = HashMap::new();
    let mut uses: BTreeMap<String, Vec<Use>> = BTreeMap::new();
    for layer in &layers {
        let m = match LayerManifest::load(&paths.layer_dir(&layer.diff_id)) {
            Ok(m) => m,
            Err(e) => {
                report
                    .unrepaired
                    .push(format!("layer {}: {e}", layer.diff_id));
                continue;
            }
        };
        for e in &m.entries {
            if let Kind::File {
                object: Some(key),
                private,
                ..
            } = &e.kind
            {
                uses.entry(key.clone()).or_default().push(Use {
                    diff_id: layer.diff_id.clone(),
                    path: e.path.clone(),
                    meta: e.meta.clone(),
                    private: *private,
                });
            }
        }
        manifests.insert(layer.diff_id.clone(), m);
    }

    // Damaged objects: missing, or hashing to another key.
    let mut damaged = BTreeSet::new();
    for key in uses.keys() {
        match key_on_disk(&paths.objects.join(object_rel(key))) {
            Ok((k, _)) if &k == key => {}
            _ => {
                damaged.insert(key.clone());
            }
        }
    }
    let work = TmpDir::create(paths.tmp_name("repair"))?;
    let mut found: HashMap<String, (PathBuf, String)> = HashMap::new();
    // 1. A layer view link that is still whole.
    for key in &damaged {
        for u in &uses[key] {
            let file = paths.layer_root(&u.diff_id).join(&u.path);
            if matches!(key_on_disk(&file), Ok((k, _)) if &k == key) {
                let tmp = work.path.join(key);
                std::fs::hard_link(&file, &tmp).map_err(|e| Error::io("link", &tmp, e))?;
                found.insert(key.clone(), (tmp, format!("layer view {}", u.path)));
                break;
            }
        }
    }
    // 2. and 3. Layer blobs, kept or re-fetched, one layer at a time.
    let client = RegistryClient::new(config);
    for layer in &layers {
        let wanted: HashMap<String, (String, Meta)> = damaged
            .iter()
            .filter(|k| !found.contains_key(*k))
            .flat_map(|k| uses[k].iter().map(move |u| (k, u)))
            .filter(|(_, u)| u.diff_id == layer.diff_id)
            .map(|(k, u)| (u.path.clone(), (k.clone(), u.meta.clone())))
            .collect();
        if wanted.is_empty() {
            continue;
        }
        let (blob, source) = match layer_blob(root, &meta, &client, layer, &work.path).await {
            Ok(b) => b,
            Err(e) => {
                report.unrepaired.push(format!(
                    "layer {}: no blob to repair from: {e}",
                    layer.diff_id
                ));
                continue;
            }
        };
        let file = File::open(&blob).map_err(|e| Error::io("open", &blob, e))?;
        let before: BTreeSet<String> = found.keys().cloned().collect();
        if let Err(e) = extract(file, layer.compression, &wanted, &work.path, &mut found) {
            report.unrepaired.push(format!(
                "layer {}: cannot re-read its {source}: {e}",
                layer.diff_id
            ));
        }
        for (key, (_, from)) in found.iter_mut() {
            if !before.contains(key) {
                *from = format!("{source} of layer {}", layer.diff_id);
            }
        }
    }
    for key in &damaged {
        match found.get(key) {
            Some((tmp, from)) => {
                let dest = paths.objects.join(object_rel(key));
                if let Some(fan) = dest.parent() {
                    crate::fsutil::create_private_dir(fan)?;
                }
                std::fs::rename(tmp, &dest).map_err(|e| Error::io("rename", &dest, e))?;
                report.repaired.push(format!("object {key} (from {from})"));
            }
            None => report.unrepaired.push(format!(
                "object {key}: no whole copy, kept blob or registry has it"
            )),
        }
    }
    fsutil::sync_fs(root).map_err(|e| Error::io("sync", root, e))?;

    let objects =
        fsutil::open_dir(&paths.objects).map_err(|e| Error::io("open", &paths.objects, e))?;
    let repaired: BTreeSet<&String> = damaged.iter().filter(|k| found.contains_key(*k)).collect();
    report.paths_fixed += relink_views(&paths, &objects, &uses, &repaired)?;
    for tree in meta.trees()? {
        let Some(layers) = tree
            .diff_ids
            .iter()
            .map(|d| manifests.get(d))
            .collect::<Option<Vec<_>>>()
        else {
            continue;
        };
        let files = replay(&layers);
        report.paths_fixed += relink_tree(&tree.path, &objects, &files)?;
    }
    fsutil::sync_fs(root).map_err(|e| Error::io("sync", root, e))?;
    drop(work);
    report.after = crate::verify::check(root, &meta)?;
    Ok(report)
}

/// A file of a layer blob on disk: the kept one, or one fetched into `dir`. Returns the path
/// and where it came from.
async fn layer_blob(
    root: &Path,
    meta: &Metadata,
    client: &RegistryClient,
    layer: &LayerRecord,
    dir: &Path,
) -> Result<(PathBuf, &'static str)> {
    if let Some(blob) = &layer.blob {
        let kept = root.join("blobs/sha256").join(blob.hex());
        if kept.exists() {
            return Ok((kept, "kept blob"));
        }
    }
    let mut last_err = None;
    for image in meta.images()? {
        let Some(lref) = image.layers.iter().find(|l| l.diff_id == layer.diff_id) else {
            continue;
        };
        let desc = Descriptor {
            media_type: lref.media_type.clone(),
            digest: lref.digest.clone(),
            size: lref.size,
            platform: None,
            urls: None,
        };
        for name in image.repo_digests.iter().chain(&image.repo_tags) {
            let Ok(image_ref) = ImageRef::parse(name) else {
                continue;
            };
            match fetch(client, &image_ref, &desc, dir).await {
                Ok(path) => return Ok((path, "re-fetched blob")),
                Err(e) => last_err = Some(e),
            }
        }
    }
    Err(last_err.unwrap_or_else(|| Error::Metadata {
        op: "repair",
        detail: "no image names a registry for this layer".into(),
    }))
}

/// Download `desc` from the registry of `image` into `dir`, verifying size and digest.
async fn fetch(
    client: &RegistryClient,
    image: &ImageRef,
    desc: &Descriptor,
    dir: &Path,
) -> Result<PathBuf> {
    let (session, _, _) = client.resolve(image, None).await?;
    let mut stream = session.open_blob(desc).await?;
    let path = dir.join(format!("blob-{}", desc.digest.hex()));
    let mut file = File::create(&path).map_err(|e| Error::io("create", &path, e))?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        size += chunk.len() as u64;
        if size > desc.size {
            break;
        }
        hasher.update(&chunk);
        file.write_all(&chunk)
            .map_err(|e| Error::io("write", &path, e))?;
    }
    if size != desc.size {
        return Err(Error::BlobSizeMismatch {
            digest: desc.digest.clone(),
            expected: desc.size,
            actual: size,
        });
    }
    let actual = Digest::from_sha256(hasher.finalize().into());
    if actual != desc.digest {
        return Err(Error::BlobDigestMismatch {
            digest: desc.digest.clone(),
            actual,
        });
    }
    Ok(path)
}

/// Read a layer blob and write each regular file of `wanted` (path → key and metadata) whose
/// content and metadata hash to its key to `dir/<key>`, recording it in `found`.
fn extract(
    blob: File,
    compression: Compression,
    wanted: &HashMap<String, (String, Meta)>,
    dir: &Path,
    found: &mut HashMap<String, (PathBuf, String)>,
) -> io::Result<()> {
    let decoder: Box<dyn Read> = match compression {
        Compression::None => Box::new(blob),
        Compression::Gzip => Box::new(crate::gzip::Members::new(io::BufReader::new(blob))),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(blob)?),
    };
    let tar_err = |e: TarError| match e {
        TarError::Io(e) => e,
        other => io::Error::other(format!("layer blob: {other:?}")),
    };
    let mut archive = TarReader::new(decoder);
    while let Some(entry) = archive.next_entry().map_err(tar_err)? {
        if entry.etype != EntryType::File {
            continue;
        }
        let raw = String::from_utf8_lossy(&entry.path).into_owned();
        let Ok(parts) = normalize(&raw) else {
            continue;
        };
        let Some((key, meta)) = wanted.get(&parts.join("/")) else {
            continue;
        };
        if found.contains_key(key) {
            continue;
        }
        let path = dir.join(key);
        let mut out = File::create(&path)?;
        let mut hasher = ContentHasher::new();
        // A sparse file's stored data is its segments one after the other: each is written
        // at its offset, and the holes between them hash as the zeros they read as.
        let segments = entry
            .sparse
            .clone()
            .unwrap_or_else(|| vec![(0, entry.size)]);
        let mut buf = vec![0u8; 256 << 10];
        let mut pos = 0u64;
        for (offset, len) in segments.into_iter().chain([(entry.size, 0)]) {
            hash_zeros(&mut hasher, offset.saturating_sub(pos));
            out.seek(SeekFrom::Start(offset))?;
            let mut left = len;
            while left > 0 {
                let want = left.min(buf.len() as u64) as usize;
                let n = archive.read_data(&mut buf[..want]).map_err(tar_err)?;
                if n == 0 {
                    return Err(io::Error::other(
                        "layer blob: a sparse segment is cut short",
                    ));
                }
                hasher.update(&buf[..n]);
                out.write_all(&buf[..n])?;
                left -= n as u64;
            }
            pos = offset.max(pos) + len;
        }
        out.set_len(entry.size)?;
        fsutil::apply_meta_fd(&out, meta)?;
        out.sync_all()?;
        // A tar may carry a path twice (the last one wins): only the matching one is kept.
        if &object_key(hasher.finalize().as_bytes(), meta) == key {
            found.insert(key.clone(), (path, String::new()));
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// Re-point every layer-view path at its object where it is missing, is another inode, or
/// its object was repaired. Returns the number of paths changed.
fn relink_views(
    paths: &StorePaths,
    objects: &OwnedFd,
    uses: &BTreeMap<String, Vec<Use>>,
    repaired: &BTreeSet<&String>,
) -> Result<u64> {
    let mut fixed = 0;
    for (key, list) in uses {
        let rel = object_rel(key);
        let Ok(obj) = rustix::fs::statat(objects, rel.as_str(), AtFlags::SYMLINK_NOFOLLOW) else {
            continue; // not repairable; reported already
        };
        for u in list {
            let view = paths.layer_root(&u.diff_id);
            let root = fsutil::open_dir(&view).map_err(|e| Error::io("open", &view, e))?;
            let ok = match (lstat_in(&root, &u.path), u.private) {
                (Some(st), false) => st.st_ino == obj.st_ino,
                (Some(_), true) => !repaired.contains(key),
                (None, _) => false,
            };
            if ok {
                continue;
            }
            let how = if u.private {
                Put::Copy(&u.meta)
            } else {
                Put::Link
            };
            put(&root, &u.path, objects, &rel, how)
                .map_err(|e| Error::io("repair", view.join(&u.path), e))?;
            fixed += 1;
        }
    }
    Ok(fixed)
}

/// A regular file of a tree: its object and how render placed it.
#[derive(Debug, Clone)]
struct TreeFile {
    key: String,
    meta: Meta,
    /// A hard link the image itself made: same inode as this path of the tree.
    link_of: Option<String>,
}

/// The regular files a tree of `layers` (bottom first) holds, replayed as render does:
/// opaque directories and whiteouts, then entries, then hard links, layer by layer.
fn replay(layers: &[&LayerManifest]) -> BTreeMap<String, TreeFile> {
    let mut files: BTreeMap<String, TreeFile> = BTreeMap::new();
    for m in layers {
        for o in &m.opaques {
            remove(&mut files, o, true, false);
        }
        for w in &m.whiteouts {
            remove(&mut files, w, true, true);
        }
        for e in &m.entries {
            match &e.kind {
                // A directory over a directory keeps its children; over a file, replaces it.
                Kind::Dir { .. } => remove(&mut files, &e.path, false, true),
                Kind::File {
                    object: Some(key), ..
                } => {
                    remove(&mut files, &e.path, true, true);
                    files.insert(
                        e.path.clone(),
                        TreeFile {
                            key: key.clone(),
                            meta: e.meta.clone(),
                            link_of: None,
                        },
                    );
                }
                _ => remove(&mut files, &e.path, true, true),
            }
        }
        for (path, target) in &m.hardlinks {
            remove(&mut files, path, true, true);
            if let Some(t) = files.get(target).cloned() {
                let link_of = Some(t.link_of.clone().unwrap_or_else(|| target.clone()));
                files.insert(path.clone(), TreeFile { link_of, ..t });
            }
        }
    }
    files
}

/// Remove from `files` what a whiteout, an opaque directory or a replacing entry at `path`
/// deletes: everything below it when `below`, `path` itself when `itself`. Hard links to a
/// removed path keep sharing their inode: the first left becomes the others' target.
fn remove(files: &mut BTreeMap<String, TreeFile>, path: &str, below: bool, itself: bool) {
    let prefix = format!("{path}/");
    let gone =
        |p: &str| (below && (path.is_empty() || p.starts_with(&prefix))) || (itself && p == path);
    let removed: Vec<String> = files.keys().filter(|p| gone(p)).cloned().collect();
    for p in &removed {
        files.remove(p);
        let orphans: Vec<String> = files
            .iter()
            .filter(|(_, f)| f.link_of.as_deref() == Some(p.as_str()))
            .map(|(k, _)| k.clone())
            .collect();
        let Some((first, rest)) = orphans.split_first() else {
            continue;
        };
        if let Some(f) = files.get_mut(first) {
            f.link_of = None;
        }
        for other in rest {
            if let Some(f) = files.get_mut(other) {
                f.link_of = Some(first.clone());
            }
        }
    }
}

/// Re-point the tree's files that are missing, or that are not their object's inode and do
/// not hash to its key (a damaged private copy, or a link to a repaired object's old inode). As render made them: the first path of an object links it, further
/// ones are private copies, the image's own hard links link their target.
fn relink_tree(tree: &Path, objects: &OwnedFd, files: &BTreeMap<String, TreeFile>) -> Result<u64> {
    let Ok(root) = fsutil::open_dir(tree) else {
        return Ok(0);
    };
    // Targets of hard links first, so a link finds its (fixed) target.
    let order = files
        .iter()
        .filter(|(_, f)| f.link_of.is_none())
        .chain(files.iter().filter(|(_, f)| f.link_of.is_some()));
    let mut used: BTreeSet<&String> = BTreeSet::new();
    let mut todo = Vec::new();
    for (path, f) in order {
        let Ok(obj) = rustix::fs::statat(
            objects,
            object_rel(&f.key).as_str(),
            AtFlags::SYMLINK_NOFOLLOW,
        ) else {
            continue; // not repairable; reported already
        };
        // A link to the (whole) object is whole; anything else (a private copy, a link to
        // a replaced object's old inode) is re-hashed.
        let whole = match lstat_in(&root, path) {
            None => None,
            Some(st) if st.st_ino == obj.st_ino => Some(st.st_ino),
            Some(st) => match fsutil::open_file_in(&root, path).and_then(key_of_file) {
                Ok(k) if k == f.key => Some(st.st_ino),
                _ => None,
            },
        };
        match whole {
            Some(ino) if ino == obj.st_ino => {
                used.insert(&f.key);
            }
            Some(_) => {}
            None => todo.push((path, f)),
        }
    }
    for (path, f) in &todo {
        let how = match &f.link_of {
            Some(target) => Put::LinkFrom(target),
            None if used.insert(&f.key) => Put::Link,
            None => Put::Copy(&f.meta),
        };
        put(&root, path, objects, &object_rel(&f.key), how)
            .map_err(|e| Error::io("repair", tree.join(path), e))?;
    }
    Ok(todo.len() as u64)
}

/// `lstat` of `path` below `root` without following symlinks on the way.
fn lstat_in(root: &OwnedFd, path: &str) -> Option<rustix::fs::Stat> {
    let (parent, name) = split(path);
    let dir = fsutil::resolve_dir(root, parent).ok()?;
    fsutil::stat_at(&dir, name).ok().flatten()
}

fn split(path: &str) -> (&str, &str) {
    match path.rsplit_once('/') {
        Some((p, n)) => (p, n),
        None => ("", path),
    }
}

/// How [`put`] makes the new file.
enum Put<'a> {
    /// A hard link to the object.
    Link,
    /// A hard link to another path of the same root.
    LinkFrom(&'a str),
    /// A private copy of the object's content with this metadata.
    Copy(&'a Meta),
}

/// Make `path` (below `root`, no symlink followed) the object `rel` as `how` says: written
/// to a temporary name in the same directory and renamed over, the directory's timestamps
/// restored afterwards.
fn put(root: &OwnedFd, path: &str, objects: &OwnedFd, rel: &str, how: Put<'_>) -> io::Result<()> {
    let (parent, name) = split(path);
    let parent_rel = if parent.is_empty() { "." } else { parent };
    let dir = rustix::fs::openat2(
        root,
        parent_rel,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        fsutil::contained(),
    )?;
    let times = rustix::fs::fstat(&dir)?;
    let tmp = format!(".rootstock-repair-{name}");
    let _ = rustix::fs::unlinkat(&dir, tmp.as_str(), AtFlags::empty());
    match how {
        Put::Link => rustix::fs::linkat(objects, rel, &dir, tmp.as_str(), AtFlags::empty())?,
        Put::LinkFrom(target) => {
            let (tp, tn) = split(target);
            let tdir = fsutil::resolve_dir(root, tp)?;
            rustix::fs::linkat(&tdir, tn, &dir, tmp.as_str(), AtFlags::empty())?
        }
        Put::Copy(meta) => {
            let mut src = fsutil::open_file_in(objects, rel)?;
            let fd = rustix::fs::openat(
                &dir,
                tmp.as_str(),
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )?;
            let mut dst = File::from(fd);
            io::copy(&mut src, &mut dst)?;
            fsutil::apply_meta_fd(&dst, meta)?;
        }
    }
    rustix::fs::renameat(&dir, tmp.as_str(), &dir, name)?;
    restore_times(&dir, &times)
}

fn restore_times(dir: &impl AsFd, st: &rustix::fs::Stat) -> io::Result<()> {
    let ts = |sec: i64, nsec: u64| rustix::fs::Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    };
    rustix::fs::futimens(
        dir,
        &Timestamps {
            last_access: ts(st.st_atime, st.st_atime_nsec),
            last_modification: ts(st.st_mtime, st.st_mtime_nsec),
        },
    )?;
    Ok(())
}
