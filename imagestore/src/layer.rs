//! The seam between the registry side and what becomes of a layer: [`LayerSink`].
//!
//! The pull hands a sink each layer it does not already have, as a blocking `Read` of the
//! compressed blob that verifies size and digest as it goes and reports end-of-stream only
//! when both checks passed ([`crate::blobs::VerifyingReader`]). The sink decompresses, checks
//! the uncompressed tar against the config's diff_id, and commits. The store uses
//! [`crate::TreeLayerSink`] (file objects and layer trees); [`BlobLayerSink`], which only
//! keeps the compressed blob, remains for tools and tests that want blobs without unpacking.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest as _, Sha256};

use crate::blobs::BlobStore;
use crate::error::{Error, Result};
use crate::manifest::Compression;
use crate::metadata::{LayerRecord, Metadata};
use crate::reference::Digest;

/// What the pull knows about a layer it hands to a sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerInput {
    /// Index in the manifest (bottom = 0), for messages.
    pub index: usize,
    /// Digest of the compressed blob.
    pub digest: Digest,
    /// Media type of the blob (decides the decompressor).
    pub media_type: String,
    /// Size of the compressed blob.
    pub size: u64,
    /// The config's diff_id at `index`: what the uncompressed tar must hash to.
    pub diff_id: Digest,
    /// What the image this layer belongs to may still unpack (shared by its layers).
    pub budget: Arc<ImageBudget>,
}

/// The uncompressed bytes and tar entries one image's pull may unpack
/// (`images.max_image_bytes`, `images.max_image_entries`), shared by its layers, which
/// unpack concurrently. A layer that overdraws it fails with [`Error::LayerLimit`].
#[derive(Debug)]
pub struct ImageBudget {
    bytes: AtomicU64,
    entries: AtomicU64,
    max_bytes: u64,
    max_entries: u64,
}

impl ImageBudget {
    /// A budget of `max_bytes` uncompressed bytes and `max_entries` entries.
    pub fn new(max_bytes: u64, max_entries: u64) -> Arc<Self> {
        Arc::new(ImageBudget {
            bytes: AtomicU64::new(0),
            entries: AtomicU64::new(0),
            max_bytes,
            max_entries,
        })
    }

    /// No limits (tools and tests).
    pub fn unlimited() -> Arc<Self> {
        Self::new(u64::MAX, u64::MAX)
    }

    /// Charge `n` uncompressed bytes (stream bytes, and the holes of sparse files).
    pub(crate) fn bytes(&self, layer: &LayerInput, n: u64) -> Result<()> {
        let total = self.bytes.fetch_add(n, Ordering::Relaxed).saturating_add(n);
        if total > self.max_bytes {
            return Err(Error::LayerLimit {
                digest: layer.digest.clone(),
                index: layer.index,
                limit: "images.max_image_bytes",
                detail: format!("the image unpacks to more than {} bytes", self.max_bytes),
            });
        }
        Ok(())
    }

    /// Charge one tar entry.
    pub(crate) fn entry(&self, layer: &LayerInput) -> Result<()> {
        let total = self
            .entries
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if total > self.max_entries {
            return Err(Error::LayerLimit {
                digest: layer.digest.clone(),
                index: layer.index,
                limit: "images.max_image_entries",
                detail: format!("the image has more than {} entries", self.max_entries),
            });
        }
        Ok(())
    }
}

/// Budgets never make two inputs differ.
impl PartialEq for ImageBudget {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for ImageBudget {}

/// Where verified layer blobs go. Methods are blocking: the store calls them on a blocking
/// thread (`spawn_blocking`).
pub trait LayerSink: Send + Sync + 'static {
    /// The layer committed under `diff_id`, if any; the pull then skips its download.
    fn lookup(&self, diff_id: &Digest) -> Result<Option<LayerRecord>>;

    /// Commit a layer from `blob`, the compressed bytes. `blob` returns an error instead of
    /// end-of-stream when the bytes fail size or digest verification, so a sink must read it
    /// to the end (`Ok(0)`) before committing anything. The sink must also check that the
    /// uncompressed content hashes to `layer.diff_id` and fail with
    /// [`Error::DiffIdMismatch`] otherwise. On any error, nothing may be left outside `tmp/`
    /// and no layer record may exist.
    fn commit(&self, layer: &LayerInput, blob: &mut dyn Read) -> Result<LayerRecord>;

    /// Remove layers no image holds any more (record first, then content).
    fn remove(&self, layers: &[LayerRecord]) -> Result<()>;
}

/// The sink until the tree cache lands: keeps each layer's compressed blob in the blob store
/// and records it in the `layers` table, after checking its diff_id by decompressing it while
/// it streams to disk.
#[derive(Debug)]
pub struct BlobLayerSink {
    blobs: Arc<BlobStore>,
    meta: Arc<Metadata>,
}

impl BlobLayerSink {
    /// A sink over the store's blob directory and metadata.
    pub fn new(blobs: Arc<BlobStore>, meta: Arc<Metadata>) -> Self {
        BlobLayerSink { blobs, meta }
    }
}

/// Copies everything read through it to `out`.
struct Tee<'a, R, W> {
    inner: R,
    out: &'a mut W,
}

impl<R: Read, W: Write> Read for Tee<'_, R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.out.write_all(&buf[..n])?;
        Ok(n)
    }
}

struct HashWriter {
    hasher: Sha256,
    count: u64,
}

impl Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.hasher.update(buf);
        self.count += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Decompress `input` per `compression` into a hasher, then drain what the decoder left
/// unread so every compressed byte passes verification. Returns (diff_id, uncompressed size).
///
/// When decompression fails, the rest of the blob is still read: if the blob fails its digest
/// check, that is the real cause and the one reported (a corrupted gzip stream usually breaks
/// the decoder before the digest can be checked).
pub fn hash_uncompressed<R: Read>(
    input: R,
    compression: Compression,
    layer: &LayerInput,
) -> Result<(Digest, u64)> {
    let mut hash = HashWriter {
        hasher: Sha256::new(),
        count: 0,
    };
    let scratch = Path::new("layer stream");
    let decompress_err = |detail: String| Error::Decompress {
        digest: layer.digest.clone(),
        media_type: layer.media_type.clone(),
        detail,
    };
    // Errors that travelled up from the verifying reader come back typed.
    let classify = |e: io::Error, drained: io::Result<u64>| -> Error {
        let is_ours = e.get_ref().is_some_and(|i| i.is::<Error>());
        if is_ours {
            return Error::from_io(e, "read layer", scratch);
        }
        match drained {
            Err(d) if d.get_ref().is_some_and(|i| i.is::<Error>()) => {
                Error::from_io(d, "read layer", scratch)
            }
            _ => decompress_err(e.to_string()),
        }
    };
    match compression {
        Compression::None => {
            let mut input = input;
            io::copy(&mut input, &mut hash)
                .map_err(|e| Error::from_io(e, "read layer", scratch))?;
        }
        Compression::Gzip => {
            let mut decoder = flate2::read::MultiGzDecoder::new(input);
            if let Err(e) = io::copy(&mut decoder, &mut hash) {
                let drained = io::copy(decoder.get_mut(), &mut io::sink());
                return Err(classify(e, drained));
            }
            io::copy(decoder.get_mut(), &mut io::sink())
                .map_err(|e| Error::from_io(e, "read layer", scratch))?;
        }
        Compression::Zstd => {
            let mut decoder = zstd::stream::read::Decoder::new(input)
                .map_err(|e| decompress_err(e.to_string()))?;
            if let Err(e) = io::copy(&mut decoder, &mut hash) {
                let drained = io::copy(decoder.get_mut(), &mut io::sink());
                return Err(classify(e, drained));
            }
            io::copy(decoder.get_mut(), &mut io::sink())
                .map_err(|e| Error::from_io(e, "read layer", scratch))?;
        }
    }
    Ok((
        Digest::from_sha256(hash.hasher.finalize().into()),
        hash.count,
    ))
}

impl LayerSink for BlobLayerSink {
    fn lookup(&self, diff_id: &Digest) -> Result<Option<LayerRecord>> {
        let Some(record) = self.meta.layer(diff_id)? else {
            return Ok(None);
        };
        // A record whose blob vanished (someone deleted files by hand) is not usable.
        match &record.blob {
            Some(blob) if !self.blobs.contains(blob) => Ok(None),
            _ => Ok(Some(record)),
        }
    }

    fn commit(&self, layer: &LayerInput, blob: &mut dyn Read) -> Result<LayerRecord> {
        let compression = Compression::of_layer_media_type(&layer.media_type).ok_or_else(|| {
            Error::UnsupportedMediaType {
                reference: String::new(),
                what: format!("layer {}", layer.index),
                media_type: layer.media_type.clone(),
            }
        })?;
        let mut temp = self.blobs.temp()?;
        let (diff_id, uncompressed_size) = {
            let tee = Tee {
                inner: blob,
                out: &mut temp,
            };
            hash_uncompressed(tee, compression, layer)?
        };
        if diff_id != layer.diff_id {
            return Err(Error::DiffIdMismatch {
                index: layer.index,
                digest: layer.digest.clone(),
                expected: layer.diff_id.clone(),
                actual: diff_id,
            });
        }
        // The reader reached its verified end, so `temp` holds exactly the blob's bytes.
        if temp.written() != layer.size {
            return Err(Error::BlobSizeMismatch {
                digest: layer.digest.clone(),
                expected: layer.size,
                actual: temp.written(),
            });
        }
        self.blobs.commit(temp, &layer.digest)?;
        let record = LayerRecord {
            version: 1,
            diff_id: layer.diff_id.clone(),
            blob: Some(layer.digest.clone()),
            media_type: layer.media_type.clone(),
            compression,
            size: layer.size,
            uncompressed_size,
            tree: None,
        };
        if let Err(e) = self.meta.put_layer(&record) {
            // No record, no blob: a failed commit leaves nothing behind.
            let _ = self.blobs.remove(std::slice::from_ref(&layer.digest));
            return Err(e);
        }
        Ok(record)
    }

    fn remove(&self, layers: &[LayerRecord]) -> Result<()> {
        let diff_ids: Vec<Digest> = layers.iter().map(|l| l.diff_id.clone()).collect();
        self.meta.delete_layers(&diff_ids)?;
        let blobs: Vec<Digest> = layers.iter().filter_map(|l| l.blob.clone()).collect();
        self.blobs.remove(&blobs)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::blobs::VerifyingReader;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn input(blob: &[u8], tar: &[u8], media_type: &str) -> LayerInput {
        LayerInput {
            index: 0,
            digest: Digest::of(blob),
            media_type: media_type.into(),
            size: blob.len() as u64,
            diff_id: Digest::of(tar),
            budget: ImageBudget::unlimited(),
        }
    }

    fn sink() -> (tempfile::TempDir, BlobLayerSink) {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Arc::new(BlobStore::open(dir.path()).unwrap());
        let meta = Arc::new(Metadata::open(&dir.path().join("meta.redb")).unwrap());
        (dir, BlobLayerSink::new(blobs, meta))
    }

    #[test]
    fn gzip_and_zstd_layers_commit_with_their_diff_id() {
        let (_dir, sink) = sink();
        let tar = vec![7u8; 100_000];
        let gz = gzip(&tar);
        let layer = input(&gz, &tar, "application/vnd.oci.image.layer.v1.tar+gzip");
        let mut r = VerifyingReader::new(&gz[..], layer.digest.clone(), layer.size);
        let rec = sink.commit(&layer, &mut r).unwrap();
        assert_eq!(rec.uncompressed_size, 100_000);
        assert!(sink.lookup(&layer.diff_id).unwrap().is_some());

        let zst = zstd::encode_all(&b"zstd layer"[..], 3).unwrap();
        let layer = input(
            &zst,
            b"zstd layer",
            "application/vnd.oci.image.layer.v1.tar+zstd",
        );
        let mut r = VerifyingReader::new(&zst[..], layer.digest.clone(), layer.size);
        sink.commit(&layer, &mut r).unwrap();
        sink.remove(&[sink.lookup(&layer.diff_id).unwrap().unwrap()])
            .unwrap();
        assert!(sink.lookup(&layer.diff_id).unwrap().is_none());
    }

    #[test]
    fn a_wrong_diff_id_fails_and_leaves_nothing() {
        let (dir, sink) = sink();
        let gz = gzip(b"real content");
        let mut layer = input(
            &gz,
            b"claimed content",
            "application/vnd.oci.image.layer.v1.tar+gzip",
        );
        layer.index = 2;
        let mut r = VerifyingReader::new(&gz[..], layer.digest.clone(), layer.size);
        let err = sink.commit(&layer, &mut r).unwrap_err();
        assert!(
            matches!(err, Error::DiffIdMismatch { index: 2, .. }),
            "{err}"
        );
        assert!(sink.lookup(&layer.diff_id).unwrap().is_none());
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("blobs/sha256"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn a_corrupted_gzip_blob_reports_the_digest_mismatch() {
        let (_dir, sink) = sink();
        let tar = vec![3u8; 50_000];
        let gz = gzip(&tar);
        let layer = input(&gz, &tar, "application/vnd.oci.image.layer.v1.tar+gzip");
        let mut bad = gz.clone();
        let mid = bad.len() / 2;
        for b in &mut bad[mid..mid + 8] {
            *b ^= 0xff;
        }
        let mut r = VerifyingReader::new(&bad[..], layer.digest.clone(), layer.size);
        let err = sink.commit(&layer, &mut r).unwrap_err();
        assert!(matches!(err, Error::BlobDigestMismatch { .. }), "{err}");
    }
}
