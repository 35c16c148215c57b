//! [`TreeLayerSink`]: the tree cache's layer sink. One pass per layer blob:
//! verified download → decompress (gzip via zlib-rs, [`crate::gzip`]; zstd) → hash the tar
//! (diff_id) → tar entries → file objects and the layer tree, written under `tmp/` and renamed
//! into `layers/<diffid-hex>/` only after the diff_id matched and the file system was synced.
//!
//! What a layer directory and an object are is [`crate::layout`]'s.
//!
//! The tar reading is ours too ([`crate::tarstream`]): every record it holds in memory is
//! capped, sparse files arrive as segments (holes stay holes), and each image's pull has a
//! budget of uncompressed bytes and entries ([`crate::layer::ImageBudget`]). Paths are
//! root-relative: a leading `/` is contained like `tar -x` and umoci do, `..` is refused.

use std::collections::BTreeMap;
use std::io::{self, BufRead, Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest as _, Sha256};
use tracing::{debug, warn};

use crate::blobs::{BlobStore, Seen, read_via_fill_buf};
use crate::entries::{Unpack, tar_error};
use crate::error::{Error, Result};
use crate::failpoint;
use crate::fsutil;
use crate::layer::{LayerInput, LayerSink};
use crate::layout::{
    LAYER_MANIFEST, LAYER_ROOT, LayerManifest, MANIFEST_VERSION, StorePaths, TmpDir,
};
use crate::manifest::Compression;
use crate::metadata::{LayerRecord, Metadata};
use crate::reference::Digest;
use crate::tarstream::TarReader;
use crate::writers::{Context as WriterContext, Writers};

const COPY_BUFFER: usize = 256 << 10;

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

/// The compressed stream on its way to the decoder, optionally copied to a kept blob.
/// The first typed error of the blob stream is kept: decoders and the tar reader wrap the
/// errors they pass on, and the real cause (a cut connection, a digest mismatch) must
/// survive to decide retries and messages.
struct BlobSide<'a> {
    inner: &'a mut dyn BufRead,
    keep: Option<&'a mut crate::blobs::TempBlob>,
    seen: Seen,
    first_error: Option<Error>,
}

impl BufRead for BlobSide<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if let Some(e) = &self.first_error {
            return Err(io::Error::other(e.to_string()));
        }
        let err = match self.inner.fill_buf() {
            Ok(buf) => match self
                .keep
                .as_mut()
                .map(|k| k.write_all(self.seen.fresh(buf)))
            {
                // Typed, as a read error: a full disk must come out as one, not as a bad
                // stream.
                Some(Err(e)) => Error::io("write layer blob", Path::new("tmp"), e),
                _ => return Ok(buf),
            },
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => Error::from_io(e, "read layer", Path::new("layer stream")),
        };
        let msg = err.to_string();
        self.first_error = Some(err);
        Err(io::Error::other(msg))
    }

    fn consume(&mut self, n: usize) {
        self.seen.consume(n);
        self.inner.consume(n);
    }
}

impl Read for BlobSide<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        read_via_fill_buf(self, buf)
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

impl TreeLayerSink {
    fn unpack(&self, layer: &LayerInput, blob: &mut dyn BufRead) -> Result<(LayerRecord, u64)> {
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
        crate::fsutil::create_private_dir(&view_path)?;
        let objects_work = work.path.join("incoming");
        crate::fsutil::create_private_dir(&objects_work)?;
        failpoint::hit("unpack.begin");
        let mut kept = if self.keep_blobs {
            Some(self.blobs.temp()?)
        } else {
            None
        };
        let mut side = BlobSide {
            inner: blob,
            keep: kept.as_mut(),
            seen: Seen::default(),
            first_error: None,
        };
        let open = |p: &Path| fsutil::open_dir(p).map_err(|e| Error::io("open directory", p, e));
        let view = open(&view_path)?;
        // A set-group-id root dir would pass its group to every directory and file below.
        let owner_known = rustix::fs::fstat(&view)
            .map(|st| st.st_mode & 0o2000 == 0)
            .unwrap_or(false);
        let (work_dir, objects) = (open(&objects_work)?, open(&self.paths.objects)?);
        let dup = |fd: &OwnedFd| {
            fd.try_clone()
                .map(Arc::new)
                .map_err(|e| Error::io("dup directory", &objects_work, e))
        };
        let writers = Writers::new(WriterContext {
            layer: layer.clone(),
            objects: dup(&objects)?,
            work: dup(&work_dir)?,
            objects_lock: self.objects_lock.clone(),
            owner_known,
        });
        let mut state = Unpack {
            layer,
            allow_devices: self.allow_device_nodes,
            view,
            owner_known,
            work: work_dir,
            objects,
            entries: BTreeMap::new(),
            hardlinks: Vec::new(),
            whiteouts: Vec::new(),
            opaques: Vec::new(),
            parent_cache: None,
            placed: Default::default(),
            tmp_counter: 0,
            buf: vec![0u8; COPY_BUFFER],
            limits: self.limits.clone(),
            objects_lock: self.objects_lock.clone(),
            skipped_devices: 0,
            dropped_xattrs: 0,
            writers: Some(writers),
        };
        let result = read_entries(&mut side, compression, &mut state);
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
        let count = write_manifest(state, &work.path)?;
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

/// Decompress the blob, hash the tar (the diff_id) and place each entry; returns the
/// diff_id and the uncompressed size.
fn read_entries(
    side: &mut BlobSide<'_>,
    compression: Compression,
    state: &mut Unpack<'_>,
) -> Result<(Digest, u64)> {
    let layer = state.layer;
    let decompress_err = |detail: String| Error::Decompress {
        digest: layer.digest.clone(),
        media_type: layer.media_type.clone(),
        detail,
    };
    let decoder: Box<dyn Read + '_> = match compression {
        Compression::None => Box::new(side),
        // The decoders read the stream where it lies (`bufread`, `with_buffer`): no copy.
        Compression::Gzip => Box::new(crate::gzip::Members::new(side)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(side)
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
        // Every byte of the stream counts against the image's budget: headers, extension
        // records and data. The entry's data is charged before it is written (it is
        // consumed later).
        layer.budget.bytes(
            layer,
            tar.consumed().saturating_sub(charged) + tar.data_left(),
        )?;
        charged = tar.consumed() + tar.data_left();
        let Some(h) = next else { break };
        state.entry(&mut tar, h)?;
    }
    state.settle()?;
    // The tar's end padding and anything after it belong to the diff_id too.
    io::copy(&mut hashing, &mut io::sink()).map_err(|e| decompress_err(e.to_string()))?;
    Ok((
        Digest::from_sha256(hashing.hasher.finalize().into()),
        hashing.count,
    ))
}

/// Write `layer.json` into the layer's work dir from what the unpack collected, and say
/// what was left out; returns the entry count.
fn write_manifest(state: Unpack<'_>, work: &Path) -> Result<u64> {
    let layer = state.layer;
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
        entries: state.entries.into_values().collect(),
        hardlinks: state.hardlinks,
        whiteouts: state.whiteouts,
        opaques: state.opaques,
    };
    let json =
        serde_json::to_vec(&manifest).map_err(|e| Error::metadata("encode layer manifest", e))?;
    let path = work.join(LAYER_MANIFEST);
    std::fs::write(&path, json).map_err(|e| Error::io("write layer manifest", &path, e))?;
    Ok(manifest.entries.len() as u64)
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

    fn commit(&self, layer: &LayerInput, blob: &mut dyn BufRead) -> Result<LayerRecord> {
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
