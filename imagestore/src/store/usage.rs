//! The store's usage as `ImageFsInfo` reports it: bytes (blocks, as `du`) and inodes of
//! everything under `blobs/`, `objects/`, `layers/`, `trees/` and `tmp/`, each inode once
//! however many names it has. Cached; a walk refreshes it after removals and failed pulls
//! (before they return) and after a successful pull on a blocking thread of its own, off
//! the pull's path: pulls that finish while a walk runs share the next one, and a reader
//! that comes before that walk ran does it itself, so the figures it gets are exact.
//!
//! The cache is its own `Arc`, apart from the store: a refresh still running never keeps
//! the store's database open after the store was dropped.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug)]
pub(super) struct Usage {
    root: PathBuf,
    bytes: AtomicU64,
    inodes: AtomicU64,
    /// A change is not counted yet.
    stale: AtomicBool,
    /// One walk at a time.
    walk: Mutex<()>,
}

impl Usage {
    pub(super) fn new(root: PathBuf) -> Arc<Self> {
        Arc::new(Usage {
            root,
            bytes: AtomicU64::new(0),
            inodes: AtomicU64::new(0),
            stale: AtomicBool::new(false),
            walk: Mutex::new(()),
        })
    }

    /// (bytes, inodes), after the walk under way if there is one, or one now if a change is
    /// not counted yet (a walk clears `stale` when it starts, so `stale` alone does not
    /// tell whether the figures are current). Blocking then.
    pub(super) fn get(&self) -> (u64, u64) {
        let _one = self
            .walk
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.stale.load(Ordering::SeqCst) {
            self.walk_now();
        }
        (
            self.bytes.load(Ordering::Relaxed),
            self.inodes.load(Ordering::Relaxed),
        )
    }

    /// The store changed: refresh on a blocking thread, not on the caller's path. Needs a
    /// tokio runtime.
    pub(super) fn changed(self: &Arc<Self>) {
        self.stale.store(true, Ordering::SeqCst);
        let usage = self.clone();
        tokio::task::spawn_blocking(move || usage.get());
    }

    /// Walk now (blocking). Callers that changed the store call it before they return.
    pub(super) fn refresh(&self) {
        let _one = self
            .walk
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.walk_now();
    }

    /// Caller holds `walk`.
    fn walk_now(&self) {
        use std::os::unix::fs::MetadataExt;
        // Changes made before this point are counted by this walk.
        self.stale.store(false, Ordering::SeqCst);
        let mut seen: HashSet<(u64, u64)> = HashSet::new();
        let (mut bytes, mut inodes) = (0u64, 0u64);
        let mut stack: Vec<PathBuf> = ["blobs", "objects", "layers", "trees", "tmp"]
            .iter()
            .map(|d| self.root.join(d))
            .collect();
        while let Some(dir) = stack.pop() {
            if let Ok(m) = std::fs::symlink_metadata(&dir)
                && seen.insert((m.dev(), m.ino()))
            {
                bytes += m.blocks() * 512;
                inodes += 1;
            }
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in rd.flatten() {
                let Ok(m) = entry.metadata() else { continue };
                if m.is_dir() {
                    stack.push(entry.path());
                } else if seen.insert((m.dev(), m.ino())) {
                    bytes += m.blocks() * 512;
                    inodes += 1;
                }
            }
        }
        self.bytes.store(bytes, Ordering::Relaxed);
        self.inodes.store(inodes, Ordering::Relaxed);
    }
}
