//! Store schema 1 → 2: file objects re-keyed from SHA-256 to BLAKE3 (#18, see
//! [`crate::layout`]). Run by `ImageStore::open` (and the offline commands, which hold the
//! root lock) before anything else reads the objects.
//!
//! An object is one inode; its key is only its name under `objects/` and the `object` field of
//! the layer manifests naming it. Layer views and image trees are hard links to the inode and
//! do not change. So the migration is, per key: hash the object once (both algorithms in one
//! read), give the inode its new name next to the old one, rewrite each layer manifest, then
//! drop the old names and record schema 2.
//!
//! Crash safety: every step is idempotent and the schema stays 1 until the last one, so a
//! start after a SIGKILL anywhere runs the migration again from the top.
//! 1. The old → new key map is computed from the manifests and written to
//!    [`MAP_FILE`] (temp + rename, synced) before anything changes; a rerun reuses it, since
//!    once old names are gone the map can no longer be recomputed from the objects.
//! 2. New names are hard links to the old ones (`EEXIST`: done before).
//! 3. Each `layer.json` is replaced by temp + rename; keys not in the map stay as they are
//!    (already new, or unknown).
//! 4. One `syncfs`, then the old names are unlinked (`ENOENT`: done before), another
//!    `syncfs`, then schema 2 is committed durably and the map file removed.
//!
//! The migration runs before the start-up sweeps, so no sweep ever sees a half-migrated
//! store (the sweep of unreferenced objects after an unclean stop would otherwise remove
//! whichever name the manifests do not mention yet).
//!
//! An object whose content no longer hashes to its old key is not renamed (it would turn a
//! damaged object into a valid-looking one): its manifest keeps the old key, and
//! `store verify` reports it as before; `--repair` re-derives it under its new key from the
//! layer blob.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::Path;

use sha2::{Digest as _, Sha256};
use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::failpoint;
use crate::fsutil::{self, Meta};
use crate::layout::{Kind, LAYER_MANIFEST, LayerManifest, StorePaths, hash_meta, object_key};
use crate::metadata::{Metadata, SCHEMA_VERSION};

/// The old → new key map of an unfinished migration, at the store's root.
pub(crate) const MAP_FILE: &str = "migrate-objects-v2.json";

/// The schema-1 object key: SHA-256 over a version tag, the content's SHA-256 and the
/// metadata. Frozen: only the migration computes it.
fn object_key_v1(content: &[u8; 32], meta: &Meta) -> String {
    let mut h = Sha256::new();
    h.update(b"rootstock-object-v1\0");
    h.update(content);
    hash_meta(meta, |b| h.update(b));
    hex::encode(h.finalize())
}

/// Migrate the store at `root` to [`SCHEMA_VERSION`] if it is older; nothing to do otherwise.
pub(crate) fn migrate(root: &Path, meta: &Metadata) -> Result<()> {
    let schema = meta.schema()?;
    if schema >= SCHEMA_VERSION {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let paths = StorePaths::new(root);
    let map_path = root.join(MAP_FILE);
    let map = match load_map(&map_path)? {
        Some(map) => map,
        None => {
            let map = compute_map(&paths, meta)?;
            let json = serde_json::to_vec(&map).map_err(|e| Error::metadata("encode", e))?;
            write_synced(&map_path, &json)?;
            map
        }
    };
    failpoint::hit("migrate.map-written");
    // 2. New names next to the old ones.
    for (old, new) in &map {
        let (from, to) = (paths.objects.join(rel(old)), paths.objects.join(rel(new)));
        match std::fs::hard_link(&from, &to) {
            Ok(()) => failpoint::hit("migrate.object-linked"),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            // Removed by an earlier run (or its start-up sweep) once the new name existed;
            // or a private copy's key that never had an object.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("link object", &to, e)),
        }
    }
    // 3. Manifests.
    for layer in meta.layers()? {
        let dir = paths.layer_dir(&layer.diff_id);
        let mut m = match LayerManifest::load(&dir) {
            Ok(m) => m,
            // A layer whose directory is gone is the start-up sweep's (it drops the record).
            Err(e) => {
                warn!(diff_id = %layer.diff_id, error = %e, "migration: layer manifest unreadable; left alone");
                continue;
            }
        };
        let mut changed = false;
        for e in &mut m.entries {
            if let Kind::File {
                object: Some(key), ..
            } = &mut e.kind
                && let Some(new) = map.get(key.as_str())
            {
                *key = new.clone();
                changed = true;
            }
        }
        if changed {
            let json =
                serde_json::to_vec(&m).map_err(|e| Error::metadata("encode layer manifest", e))?;
            let tmp = dir.join(format!("{LAYER_MANIFEST}.migrate"));
            std::fs::write(&tmp, json).map_err(|e| Error::io("write layer manifest", &tmp, e))?;
            let dest = dir.join(LAYER_MANIFEST);
            std::fs::rename(&tmp, &dest).map_err(|e| Error::io("rename", &dest, e))?;
            failpoint::hit("migrate.manifest-written");
        }
    }
    // 4. The new names and manifests are durable before any old name goes.
    fsutil::sync_fs(root).map_err(|e| Error::io("sync", root, e))?;
    failpoint::hit("migrate.manifests-done");
    for old in map.keys() {
        let path = paths.objects.join(rel(old));
        match std::fs::remove_file(&path) {
            Ok(()) => failpoint::hit("migrate.object-unlinked"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove old object name", &path, e)),
        }
    }
    fsutil::sync_fs(root).map_err(|e| Error::io("sync", root, e))?;
    failpoint::hit("migrate.before-schema");
    meta.set_schema(SCHEMA_VERSION)?;
    match std::fs::remove_file(&map_path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("remove", &map_path, e)),
    }
    info!(
        objects = map.len(),
        secs = started.elapsed().as_secs_f64(),
        "image store migrated from schema {schema} to {SCHEMA_VERSION} (file objects keyed by BLAKE3)"
    );
    Ok(())
}

fn rel(key: &str) -> String {
    crate::layout::object_rel(key)
}

fn load_map(path: &Path) -> Result<Option<BTreeMap<String, String>>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Metadata {
                op: "decode migration map",
                detail: format!("{}: {e}", path.display()),
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", path, e)),
    }
}

/// `path` replaced by `bytes`, durably (temp + fsync + rename + directory sync).
fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io("write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io("rename", path, e))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    fsutil::sync_dir(dir)
}

/// Old key → new key for every object key the layer manifests name that is a valid schema-1
/// key of its content (hashed from the object, or the view's copy when there is no object).
fn compute_map(paths: &StorePaths, meta: &Metadata) -> Result<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    let mut seen = std::collections::HashSet::new();
    let mut buf = vec![0u8; 256 << 10];
    for layer in meta.layers()? {
        let Ok(m) = LayerManifest::load(&paths.layer_dir(&layer.diff_id)) else {
            continue;
        };
        let view = fsutil::open_dir(&paths.layer_root(&layer.diff_id)).ok();
        for e in &m.entries {
            let Kind::File {
                object: Some(key), ..
            } = &e.kind
            else {
                continue;
            };
            if !seen.insert(key.clone()) {
                continue;
            }
            let file =
                std::fs::File::open(paths.objects.join(rel(key))).or_else(|err| match &view {
                    Some(v) => fsutil::open_file_in(v, &e.path),
                    None => Err(err),
                });
            let hashed = file.and_then(|f| hash_both(f, &mut buf));
            let (sha, b3) = match hashed {
                Ok(h) => h,
                Err(err) => {
                    warn!(object = %key, path = %e.path, error = %err,
                        "migration: object unreadable; its key is left as it is");
                    continue;
                }
            };
            if object_key_v1(&sha, &e.meta) == *key {
                map.insert(key.clone(), object_key(&b3, &e.meta));
            } else if object_key(&b3, &e.meta) != *key {
                warn!(object = %key, path = %e.path,
                    "migration: object does not hash to its key; left for `store verify`");
            }
        }
    }
    Ok(map)
}

/// SHA-256 and BLAKE3 of a file's content, in one read.
fn hash_both(mut f: std::fs::File, buf: &mut [u8]) -> io::Result<([u8; 32], [u8; 32])> {
    let (mut sha, mut b3) = (Sha256::new(), blake3::Hasher::new());
    loop {
        let n = f.read(buf)?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
        b3.update(&buf[..n]);
    }
    Ok((sha.finalize().into(), *b3.finalize().as_bytes()))
}
