//! [`TreeLayerSink`]: the tree cache's layer sink. One pass per layer blob:
//! verified download → decompress (gzip via zlib-rs, zstd) → hash the tar (diff_id) → tar
//! entries → file objects and the layer tree, written under `tmp/` and renamed into
//! `layers/<diffid-hex>/` only after the diff_id matched and the file system was synced.
//!
//! A layer directory holds:
//! * `root/` — the layer's own view: directories, symlinks, fifos, whiteout markers (empty
//!   `.wh.*` files, as in the tar), regular files as hard links to their objects (or private
//!   copies for empty files and when the object hit `EMLINK`). Its links keep objects alive.
//! * `layer.json` — a `LayerManifest`: every entry's metadata, the whiteouts, opaque
//!   directories and hard links, which rendering replays without reading any tar again.
//!
//! Objects live in `objects/<aa>/<rest>`, named by `object_key`: sha256 of the content and
//! the metadata an inode carries (mode, owner, mtime, xattrs), so a hard link to an object
//! reproduces the file exactly.
//!
//! The tar reading is ours too ([`crate::tarstream`]): every record it holds in memory is
//! capped, sparse files arrive as segments (holes stay holes), and each image's pull has a
//! budget of uncompressed bytes and entries ([`crate::layer::ImageBudget`]). Paths are
//! root-relative: a leading `/` is contained like `tar -x` and umoci do, `..` is refused.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tracing::{debug, warn};

use crate::blobs::BlobStore;
use crate::entries::{Unpack, tar_error};
use crate::error::{Error, Result};
use crate::failpoint;
use crate::fsutil::{self, Meta};
use crate::layer::{LayerInput, LayerSink};
use crate::manifest::Compression;
use crate::metadata::{LayerRecord, Metadata};
use crate::reference::Digest;
use crate::tarstream::TarReader;

const LAYER_MANIFEST: &str = "layer.json";
const LAYER_ROOT: &str = "root";
const MANIFEST_VERSION: u32 = 1;
const COPY_BUFFER: usize = 256 << 10;

/// What an entry of a layer is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Kind {
    /// A directory; `implicit` when the tar had no entry for it (only a parent of one).
    Dir {
        #[serde(default)]
        implicit: bool,
    },
    /// A regular file: its object key, `None` for an empty file; `private` when the layer
    /// tree holds its own copy (`EMLINK`).
    File {
        object: Option<String>,
        size: u64,
        #[serde(default)]
        private: bool,
    },
    /// A symbolic link (target verbatim; never followed by the store).
    Symlink { target: String },
    /// A named pipe.
    Fifo,
    /// A character device.
    Char { major: u32, minor: u32 },
    /// A block device.
    Block { major: u32, minor: u32 },
}

/// One entry of a layer manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ManEntry {
    /// Path relative to the root, `/`-separated, normalised ("" is the root itself).
    pub path: String,
    #[serde(flatten)]
    pub kind: Kind,
    pub meta: Meta,
}

/// A layer as rendering replays it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LayerManifest {
    pub version: u32,
    pub diff_id: String,
    /// Entries by path; parents sort before children.
    pub entries: Vec<ManEntry>,
    /// `(path, target)` hard links in tar order; the target may live in a lower layer.
    pub hardlinks: Vec<(String, String)>,
    /// Paths a `.wh.<name>` deletes from lower layers.
    pub whiteouts: Vec<String>,
    /// Directories a `.wh..wh..opq` empties of lower layers' content.
    pub opaques: Vec<String>,
}

impl LayerManifest {
    /// Read `layers/<hex>/layer.json`.
    pub(crate) fn load(layer_dir: &Path) -> Result<LayerManifest> {
        let path = layer_dir.join(LAYER_MANIFEST);
        let bytes = std::fs::read(&path).map_err(|e| Error::io("read layer manifest", &path, e))?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Metadata {
            op: "decode layer manifest",
            detail: format!("{}: {e}", path.display()),
        })
    }
}

/// The object key of a regular file: sha256 over a version tag, the content digest and the
/// metadata a hard link shares.
pub(crate) fn object_key(content: &[u8; 32], meta: &Meta) -> String {
    let mut h = Sha256::new();
    h.update(b"rootstock-object-v1\0");
    h.update(content);
    h.update(
        format!(
            "{:o} {} {} {}\0",
            meta.mode & 0o7777,
            meta.uid,
            meta.gid,
            meta.mtime
        )
        .as_bytes(),
    );
    for (k, v) in &meta.xattrs {
        h.update(k.as_bytes());
        h.update([0]);
        h.update((v.len() as u64).to_le_bytes());
        h.update(v);
    }
    hex::encode(h.finalize())
}

/// `objects/<aa>/<rest>` relative to the objects directory.
pub(crate) fn object_rel(key: &str) -> String {
    match (key.get(..2), key.get(2..)) {
        (Some(fan), Some(rest)) => format!("{fan}/{rest}"),
        // Only a corrupted manifest holds such a key; it then names no object.
        _ => format!("invalid/{key}"),
    }
}

/// Paths of the store the tree cache uses.
#[derive(Debug, Clone)]
pub(crate) struct StorePaths {
    pub root: PathBuf,
    pub objects: PathBuf,
    pub layers: PathBuf,
    pub trees: PathBuf,
    pub tmp: PathBuf,
}

impl StorePaths {
    pub(crate) fn new(root: &Path) -> Self {
        StorePaths {
            root: root.to_path_buf(),
            objects: root.join("objects"),
            layers: root.join("layers"),
            trees: root.join("trees"),
            tmp: root.join("tmp"),
        }
    }

    /// `layers/<hex>` of a diff_id.
    pub(crate) fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.layers.join(diff_id.hex())
    }

    /// The view of a layer.
    pub(crate) fn layer_root(&self, diff_id: &Digest) -> PathBuf {
        self.layer_dir(diff_id).join(LAYER_ROOT)
    }

    /// Create the directories (0700), with the 256 object fan-out directories.
    pub(crate) fn create(&self) -> Result<()> {
        for d in [&self.objects, &self.layers, &self.trees, &self.tmp] {
            crate::blobs::create_private_dir(d)?;
        }
        for i in 0..=255u8 {
            crate::blobs::create_private_dir(&self.objects.join(format!("{i:02x}")))?;
        }
        Ok(())
    }

    /// A fresh directory name under `tmp/`.
    pub(crate) fn tmp_name(&self, prefix: &str) -> PathBuf {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        self.tmp
            .join(format!("{prefix}-{}-{n}", std::process::id()))
    }
}

/// A directory under `tmp/` removed on drop unless disarmed.
pub(crate) struct TmpDir {
    pub path: PathBuf,
    armed: bool,
}

impl TmpDir {
    pub(crate) fn create(path: PathBuf) -> Result<TmpDir> {
        crate::blobs::create_private_dir(&path)?;
        Ok(TmpDir { path, armed: true })
    }
    pub(crate) fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        if self.armed
            && let Err(e) = fsutil::remove_tree(&self.path)
        {
            warn!(path = %self.path.display(), error = %e, "could not remove a temporary dir");
        }
    }
}

/// The sink that unpacks layers into objects and layer trees.
#[derive(Debug)]
pub struct TreeLayerSink {
    paths: StorePaths,
    meta: Arc<Metadata>,
    blobs: Arc<BlobStore>,
    keep_blobs: bool,
    allow_device_nodes: bool,
    limits: SinkLimits,
    objects_lock: ObjectsLock,
}

/// Held shared while an unpack links a file to an object, exclusively while objects are
/// judged unused and unlinked: no object gains a name between the check and the unlink.
pub(crate) type ObjectsLock = Arc<std::sync::RwLock<()>>;

/// Limits a layer's entries must keep (per-image byte and entry budgets travel with each
/// [`LayerInput`]).
#[derive(Debug, Clone)]
pub struct SinkLimits {
    /// Path components an entry may have (`images.max_path_depth`).
    pub max_path_depth: usize,
}

impl Default for SinkLimits {
    fn default() -> Self {
        SinkLimits {
            max_path_depth: crate::config::DEFAULT_MAX_PATH_DEPTH,
        }
    }
}

impl TreeLayerSink {
    /// A sink over the store at `root` (directories created by [`crate::ImageStore::open`]).
    pub fn new(
        root: &Path,
        meta: Arc<Metadata>,
        blobs: Arc<BlobStore>,
        keep_blobs: bool,
        allow_device_nodes: bool,
        limits: SinkLimits,
    ) -> Self {
        TreeLayerSink {
            paths: StorePaths::new(root),
            meta,
            blobs,
            keep_blobs,
            allow_device_nodes,
            limits,
            objects_lock: ObjectsLock::default(),
        }
    }

    /// Share `lock` with the store's object sweep.
    pub(crate) fn with_objects_lock(mut self, lock: ObjectsLock) -> Self {
        self.objects_lock = lock;
        self
    }
}

/// Counts what passes and optionally copies it to a kept blob.
/// The first typed error of the blob stream is kept: decoders and the tar reader wrap the
/// errors they pass on, and the real cause (a cut connection, a digest mismatch) must
/// survive to decide retries and messages.
struct BlobSide<'a> {
    inner: &'a mut dyn Read,
    keep: Option<&'a mut crate::blobs::TempBlob>,
    first_error: Option<Error>,
}

impl Read for BlobSide<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(e) = &self.first_error {
            return Err(io::Error::other(e.to_string()));
        }
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => {
                let err = Error::from_io(e, "read layer", Path::new("layer stream"));
                let msg = err.to_string();
                self.first_error = Some(err);
                return Err(io::Error::other(msg));
            }
        };
        if let Some(k) = self.keep.as_mut() {
            k.write_all(&buf[..n])?;
        }
        Ok(n)
    }
}

/// Hashes the uncompressed stream as the tar reader pulls it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Split a tar path into normal components: `.`, empty parts and a leading `/` dropped (an
/// absolute path is root-relative, as `tar -x` and umoci read it), `..` refused (an entry
/// can never name anything outside the root by its path).
pub(crate) fn normalize(raw: &str) -> std::result::Result<Vec<String>, String> {
    let mut out = Vec::new();
    for c in raw.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err("path has a `..` component".into()),
            c => out.push(c.to_string()),
        }
    }
    Ok(out)
}

impl TreeLayerSink {
    fn unpack(&self, layer: &LayerInput, blob: &mut dyn Read) -> Result<(LayerRecord, u64)> {
        let compression = Compression::of_layer_media_type(&layer.media_type).ok_or_else(|| {
            Error::UnsupportedMediaType {
                reference: String::new(),
                what: format!("layer {}", layer.index),
                media_type: layer.media_type.clone(),
            }
        })?;
        let mut work = TmpDir::create(
            self.paths
                .tmp_name(&format!("layer-{}", &layer.diff_id.hex()[..12])),
        )?;
        let view_path = work.path.join(LAYER_ROOT);
        crate::blobs::create_private_dir(&view_path)?;
        let objects_work = work.path.join("incoming");
        crate::blobs::create_private_dir(&objects_work)?;
        failpoint::hit("unpack.begin");
        let mut kept = if self.keep_blobs {
            Some(self.blobs.temp()?)
        } else {
            None
        };
        let mut side = BlobSide {
            inner: blob,
            keep: kept.as_mut(),
            first_error: None,
        };
        let open = |p: &Path| fsutil::open_dir(p).map_err(|e| Error::io("open directory", p, e));
        let mut state = Unpack {
            layer,
            allow_devices: self.allow_device_nodes,
            view: open(&view_path)?,
            work: open(&objects_work)?,
            objects: open(&self.paths.objects)?,
            entries: BTreeMap::new(),
            hardlinks: Vec::new(),
            whiteouts: Vec::new(),
            opaques: Vec::new(),
            parent_cache: None,
            tmp_counter: 0,
            buf: vec![0u8; COPY_BUFFER],
            limits: self.limits.clone(),
            objects_lock: self.objects_lock.clone(),
            skipped_devices: 0,
            dropped_xattrs: 0,
        };
        let decompress_err = |detail: String| Error::Decompress {
            digest: layer.digest.clone(),
            media_type: layer.media_type.clone(),
            detail,
        };
        let result: Result<(Digest, u64)> = (|| {
            let decoder: Box<dyn Read + '_> = match compression {
                Compression::None => Box::new(&mut side),
                Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(&mut side)),
                Compression::Zstd => Box::new(
                    zstd::stream::read::Decoder::new(&mut side)
                        .map_err(|e| decompress_err(e.to_string()))?,
                ),
            };
            let mut hashing = HashingReader {
                inner: decoder,
                hasher: Sha256::new(),
                count: 0,
            };
            let mut tar = TarReader::new(&mut hashing);
            let mut charged = 0u64;
            loop {
                let next = tar.next_entry().map_err(|e| tar_error(layer, e, ""))?;
                // Every byte of the stream counts against the image's budget: headers,
                // extension records and data.
                // The entry's data is charged before it is written (it is consumed later).
                layer.budget.bytes(
                    layer,
                    tar.consumed().saturating_sub(charged) + tar.data_left(),
                )?;
                charged = tar.consumed() + tar.data_left();
                let Some(h) = next else { break };
                state.entry(&mut tar, h)?;
            }
            // The tar's end padding and anything after it belong to the diff_id too.
            io::copy(&mut hashing, &mut io::sink()).map_err(|e| decompress_err(e.to_string()))?;
            Ok((
                Digest::from_sha256(hashing.hasher.finalize().into()),
                hashing.count,
            ))
        })();
        // Every compressed byte must pass verification; when unpacking failed, a digest
        // mismatch found by draining is the real cause and the one reported.
        let drained = io::copy(&mut side, &mut io::sink());
        if let Some(e) = side.first_error.take() {
            return Err(e);
        }
        let (diff_id, uncompressed_size) = match (result, drained) {
            (_, Err(d)) if d.get_ref().is_some_and(|i| i.is::<Error>()) => {
                return Err(Error::from_io(d, "read layer", Path::new("layer stream")));
            }
            (Err(e), _) => return Err(e),
            (Ok(_), Err(d)) => {
                return Err(Error::from_io(d, "read layer", Path::new("layer stream")));
            }
            (Ok(r), Ok(_)) => r,
        };
        if diff_id != layer.diff_id {
            return Err(Error::DiffIdMismatch {
                index: layer.index,
                digest: layer.digest.clone(),
                expected: layer.diff_id.clone(),
                actual: diff_id,
            });
        }
        failpoint::hit("unpack.entries-done");
        if state.skipped_devices > 0 {
            warn!(diff_id = %layer.diff_id, count = state.skipped_devices,
                "skipped device nodes (images.allow_device_nodes = false)");
        }
        if state.dropped_xattrs > 0 {
            warn!(diff_id = %layer.diff_id, count = state.dropped_xattrs,
                "dropped trusted.overlay.* xattrs from the layer");
        }
        let manifest = LayerManifest {
            version: MANIFEST_VERSION,
            diff_id: layer.diff_id.to_string(),
            entries: std::mem::take(&mut state.entries).into_values().collect(),
            hardlinks: std::mem::take(&mut state.hardlinks),
            whiteouts: std::mem::take(&mut state.whiteouts),
            opaques: std::mem::take(&mut state.opaques),
        };
        let count = manifest.entries.len() as u64;
        drop(state);
        let json = serde_json::to_vec(&manifest)
            .map_err(|e| Error::metadata("encode layer manifest", e))?;
        let mpath = work.path.join(LAYER_MANIFEST);
        std::fs::write(&mpath, json).map_err(|e| Error::io("write layer manifest", &mpath, e))?;
        std::fs::remove_dir(&objects_work).map_err(|e| Error::io("remove", &objects_work, e))?;
        if let Some(k) = &kept
            && k.written() != layer.size
        {
            return Err(Error::BlobSizeMismatch {
                digest: layer.digest.clone(),
                expected: layer.size,
                actual: k.written(),
            });
        }
        // No flush here: the layer record is not durable until a durable commit flushes the
        // file system first (see `metadata`).
        failpoint::hit("unpack.before-rename");
        let dest = self.paths.layer_dir(&layer.diff_id);
        // A directory without a record (a crash after the rename) is replaced.
        fsutil::remove_tree(&dest).map_err(|e| Error::io("remove stale layer", &dest, e))?;
        std::fs::rename(&work.path, &dest).map_err(|e| Error::io("rename layer", &dest, e))?;
        work.disarm();
        failpoint::hit("unpack.after-rename");
        let blob = match kept {
            Some(k) => {
                self.blobs.commit(k, &layer.digest)?;
                Some(layer.digest.clone())
            }
            None => None,
        };
        let record = LayerRecord {
            version: 1,
            diff_id: layer.diff_id.clone(),
            blob,
            media_type: layer.media_type.clone(),
            compression,
            size: layer.size,
            uncompressed_size,
            tree: Some(dest),
        };
        Ok((record, count))
    }
}

impl LayerSink for TreeLayerSink {
    fn lookup(&self, diff_id: &Digest) -> Result<Option<LayerRecord>> {
        let Some(record) = self.meta.layer(diff_id)? else {
            return Ok(None);
        };
        if !self.paths.layer_dir(diff_id).join(LAYER_MANIFEST).exists() {
            return Ok(None);
        }
        match &record.blob {
            Some(blob) if self.keep_blobs && !self.blobs.contains(blob) => Ok(None),
            _ => Ok(Some(record)),
        }
    }

    fn commit(&self, layer: &LayerInput, blob: &mut dyn Read) -> Result<LayerRecord> {
        let started = std::time::Instant::now();
        let (record, entries) = self.unpack(layer, blob)?;
        if let Err(e) = self.meta.put_layer(&record) {
            // No record: the directory goes too (objects stay for the GC).
            let _ = fsutil::remove_tree(&self.paths.layer_dir(&layer.diff_id));
            return Err(e);
        }
        failpoint::hit("unpack.after-record");
        let secs = started.elapsed().as_secs_f64().max(1e-6);
        debug!(diff_id = %layer.diff_id, entries,
            mib_per_s = record.uncompressed_size as f64 / secs / 1048576.0, "layer unpacked");
        Ok(record)
    }

    fn remove(&self, layers: &[LayerRecord]) -> Result<()> {
        let diff_ids: Vec<Digest> = layers.iter().map(|l| l.diff_id.clone()).collect();
        self.meta.delete_layers(&diff_ids)?;
        for d in &diff_ids {
            let dir = self.paths.layer_dir(d);
            fsutil::remove_tree(&dir).map_err(|e| Error::io("remove layer", &dir, e))?;
        }
        let blobs: Vec<Digest> = layers.iter().filter_map(|l| l.blob.clone()).collect();
        self.blobs.remove(&blobs)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn normalize_refuses_escapes_and_drops_dots() {
        assert_eq!(normalize("./a//b/").unwrap(), vec!["a", "b"]);
        assert!(normalize("a/../../b").is_err());
        assert_eq!(normalize("/etc/passwd").unwrap(), vec!["etc", "passwd"]);
        assert!(normalize("").unwrap().is_empty());
    }

    #[test]
    fn object_keys_depend_on_metadata() {
        let c = [1u8; 32];
        let m = Meta {
            mode: 0o644,
            ..Meta::default()
        };
        let mut m2 = m.clone();
        m2.xattrs.push(("security.capability".into(), vec![1]));
        assert_ne!(object_key(&c, &m), object_key(&c, &m2));
        assert_eq!(object_key(&c, &m), object_key(&c, &m.clone()));
    }
}
