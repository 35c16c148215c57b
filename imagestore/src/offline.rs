//! Store maintenance from outside the daemon (`rootstock store gc`, `store verify --repair`):
//! the root lock the daemon holds for its lifetime, and offline collection.

use std::collections::HashSet;
use std::fs::{File, TryLockError};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::config::ImagesConfig;
use crate::error::{Error, Result};
use crate::metadata::Metadata;
use crate::store::ImageStore;

/// Take `<root>/rootstock.lock` without waiting: [`Error::StoreLocked`] while a daemon (or
/// another maintenance command) holds it. The lock lasts as long as the returned file.
pub fn lock_root(root: &Path) -> Result<File> {
    let lock_path = root.join("rootstock.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| Error::io("open lock", &lock_path, e))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(TryLockError::WouldBlock) => Err(Error::StoreLocked { path: lock_path }),
        Err(TryLockError::Error(e)) => Err(Error::io("lock", &lock_path, e)),
    }
}

/// Open the metadata of an existing store (never creates one), migrated to the current
/// schema as a daemon's start would (the caller holds the root lock).
pub(crate) fn open_metadata(root: &Path) -> Result<Metadata> {
    let db = root.join("meta.redb");
    if !db.exists() {
        return Err(Error::io(
            "open metadata",
            &db,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no image store here"),
        ));
    }
    let meta = Metadata::open(&db)?;
    crate::migrate::migrate(root, &meta)?;
    Ok(meta)
}

/// What an offline collection freed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Bytes the store occupied on disk before.
    pub bytes_before: u64,
    /// And after.
    pub bytes_after: u64,
}

impl std::fmt::Display for GcReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        writeln!(
            f,
            "store: {:.1} MiB before, {:.1} MiB after, {:.1} MiB freed",
            mib(self.bytes_before),
            mib(self.bytes_after),
            mib(self.bytes_before.saturating_sub(self.bytes_after))
        )
    }
}

/// Collect garbage in the store at `root` with no daemon running: what a daemon's start
/// after an unclean stop sweeps (blobs, layers and trees nothing holds, directories without
/// records, objects no layer or tree links), forced even after a clean stop. Takes the root
/// lock, so it refuses while a daemon runs.
pub async fn gc_offline(root: &Path, config: &ImagesConfig) -> Result<GcReport> {
    let _lock = lock_root(root)?;
    drop(open_metadata(root)?);
    let bytes_before = disk_usage(root);
    // Without the clean-stop marker, open runs the full sweep.
    let marker = root.join(crate::store::CLEAN_MARKER);
    match std::fs::remove_file(&marker) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("remove marker", &marker, e)),
    }
    let store = ImageStore::open(root, config)?;
    store.close().await?;
    drop(store);
    Ok(GcReport {
        bytes_before,
        bytes_after: disk_usage(root),
    })
}

/// Bytes allocated below `dir`, each inode counted once (objects are hard-linked).
fn disk_usage(dir: &Path) -> u64 {
    fn walk(dir: &Path, seen: &mut HashSet<(u64, u64)>, total: &mut u64) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in rd.flatten() {
            let Ok(m) = entry.metadata() else { continue };
            if seen.insert((m.dev(), m.ino())) {
                *total += m.blocks() * 512;
            }
            if m.is_dir() {
                walk(&entry.path(), seen, total);
            }
        }
    }
    let mut total = 0;
    walk(dir, &mut HashSet::new(), &mut total);
    total
}
