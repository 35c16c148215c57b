//! The seam between the registry side and what becomes of a layer: [`LayerSink`].
//!
//! The pull hands a sink each layer it does not already have, as a blocking `BufRead` of the
//! compressed blob that verifies size and digest as it goes and reports end-of-stream only
//! when both checks passed ([`crate::blobs::VerifyingReader`]). The sink decompresses, checks
//! the uncompressed tar against the config's diff_id, and commits. The store's one sink is
//! [`crate::TreeLayerSink`] (file objects and layer trees).

use std::io::BufRead;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::metadata::LayerRecord;
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

    /// Commit a layer from `blob`, the compressed bytes (a `BufRead`, so that they are
    /// decoded where they lie). `blob` returns an error instead of end-of-stream when the
    /// bytes fail size or digest verification, so a sink must read it to the end (`Ok(0)`)
    /// before committing anything. The sink must also check that the uncompressed content
    /// hashes to `layer.diff_id` and fail with [`Error::DiffIdMismatch`] otherwise. On any
    /// error, nothing may be left outside `tmp/` and no layer record may exist.
    fn commit(&self, layer: &LayerInput, blob: &mut dyn BufRead) -> Result<LayerRecord>;

    /// Remove layers no image holds any more (record first, then content).
    fn remove(&self, layers: &[LayerRecord]) -> Result<()>;
}
