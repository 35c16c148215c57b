//! Garbage: collecting what a removal or a failed pull offers (blobs, layers, trees), the
//! object sweep, the start-up sweeps of what a crash left, and the usage cache.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tracing::{debug, warn};

use super::{Inner, blocking, file_disk_bytes, now_secs};
use crate::error::{Error, Result};
use crate::fsutil;
use crate::fsutil::create_private_dir;
use crate::layout::{LayerManifest, object_rel};
use crate::reference::{ChainId, Digest};

/// At open: remove a directory left behind, or, when that fails, move it to `quarantine/`
/// and go on — one bad tree must not keep the daemon from starting. The operator is told
/// where it went.
pub(super) fn remove_or_quarantine(root: &Path, path: &Path) {
    let Err(e) = fsutil::remove_tree(path) else {
        return;
    };
    let dir = root.join("quarantine");
    let name = format!(
        "{}-{}",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        now_secs()
    );
    let dest = dir.join(name);
    let moved = create_private_dir(&dir)
        .map_err(|e| e.to_string())
        .and_then(|()| std::fs::rename(path, &dest).map_err(|e| e.to_string()));
    match moved {
        Ok(()) => warn!(path = %path.display(), error = %e, quarantine = %dest.display(),
            "could not remove a directory at start-up; moved it aside, remove it by hand"),
        Err(m) => warn!(path = %path.display(), error = %e, rename_error = %m,
            "could not remove a directory at start-up nor move it aside; going on"),
    }
}

impl Inner {
    pub(super) fn refresh_db_size(&self) {
        self.db_bytes
            .store(file_disk_bytes(self.meta.path()), Ordering::Relaxed);
    }

    /// Delete those of `blobs` and layers `diff_ids` that no image names and no pull leases.
    /// True when a tree or layer went: only then can an object have lost its last link.
    /// Caller holds `gc_lock`. Blocking.
    pub(super) fn collect(
        &self,
        blobs: &[Digest],
        diff_ids: &[Digest],
        chains: &[ChainId],
    ) -> Result<bool> {
        let trees_removed = self.collect_trees(chains)?;
        let (held_blobs, held_layers) = {
            let index = self.read_index();
            let mut held_blobs = HashSet::new();
            let mut held_layers = HashSet::new();
            for record in index.images.values() {
                held_blobs.extend(record.blobs.iter().cloned());
                held_layers.extend(record.layers.iter().map(|l| l.diff_id.clone()));
            }
            (held_blobs, held_layers)
        };
        let leased: HashSet<Digest> = match self.leases.lock() {
            Ok(l) => l.keys().cloned().collect(),
            Err(p) => p.into_inner().keys().cloned().collect(),
        };
        let mut layers = Vec::new();
        for diff_id in diff_ids.iter().collect::<BTreeSet<_>>() {
            if held_layers.contains(diff_id) || leased.contains(diff_id) {
                continue;
            }
            if let Some(record) = self.meta.layer(diff_id)? {
                layers.push(record);
            }
        }
        let layers_removed = !layers.is_empty();
        if layers_removed {
            debug!(count = layers.len(), "removing unreferenced layers");
            self.sink.remove(&layers)?;
        }
        let doomed: Vec<Digest> = blobs
            .iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter(|d| !held_blobs.contains(*d) && !leased.contains(*d))
            .cloned()
            .collect();
        self.blobs.remove(&doomed)?;
        Ok(trees_removed || layers_removed)
    }

    /// Chains held by an image or a persisted lease, plus those a pull leases in memory.
    fn held_chains(&self) -> Result<HashSet<Digest>> {
        let mut held: HashSet<Digest> = self
            .read_index()
            .images
            .values()
            .filter_map(|r| r.chain_id.as_ref().map(|c| c.0.clone()))
            .collect();
        held.extend(self.meta.leases()?.into_iter().map(|l| l.chain_id.0));
        match self.leases.lock() {
            Ok(l) => held.extend(l.keys().cloned()),
            Err(p) => held.extend(p.into_inner().keys().cloned()),
        }
        Ok(held)
    }

    /// Remove the trees of `chains` nothing holds: record first, then the directory (moved
    /// into `tmp/` first, so a crash leaves no half-deleted tree under `trees/`). Caller
    /// holds `gc_lock`. Blocking.
    /// True when one went.
    fn collect_trees(&self, chains: &[ChainId]) -> Result<bool> {
        if chains.is_empty() {
            return Ok(false);
        }
        let held = self.held_chains()?;
        let mut removed = false;
        for chain in chains.iter().collect::<BTreeSet<_>>() {
            if held.contains(&chain.0) || self.meta.tree(chain)?.is_none() {
                continue;
            }
            self.meta.delete_trees(std::slice::from_ref(chain))?;
            crate::failpoint::hit("gc.tree-record-deleted");
            self.remove_tree_dir(&chain.0)?;
            debug!(%chain, "removed tree");
            removed = true;
        }
        Ok(removed)
    }

    fn remove_tree_dir(&self, hex_of: &Digest) -> Result<()> {
        let dir = self.paths.trees.join(hex_of.hex());
        if !dir.exists() {
            return Ok(());
        }
        let doomed = self.paths.tmp_name("gone-tree");
        std::fs::rename(&dir, &doomed).map_err(|e| Error::io("move tree", &dir, e))?;
        fsutil::remove_tree(&doomed).map_err(|e| Error::io("remove tree", &doomed, e))
    }

    /// At open: trees whose record is gone or that nothing holds, and layer or tree
    /// directories without a record (a crash between a rename and its record).
    pub(super) fn sweep_trees_and_layer_dirs(&self) -> Result<()> {
        let held = self.held_chains()?;
        let mut known_trees = HashSet::new();
        for tree in self.meta.trees()? {
            if held.contains(&tree.chain_id.0) {
                known_trees.insert(tree.chain_id.0.hex().to_string());
            } else {
                warn!(chain = %tree.chain_id, "removing a tree nothing holds");
                self.meta
                    .delete_trees(std::slice::from_ref(&tree.chain_id))?;
                remove_or_quarantine(&self.root, &self.paths.trees.join(tree.chain_id.0.hex()));
            }
        }
        let known_layers: HashSet<String> = self
            .meta
            .layers()?
            .iter()
            .map(|l| l.diff_id.hex().to_string())
            .collect();
        for (dir, known) in [
            (&self.paths.trees, &known_trees),
            (&self.paths.layers, &known_layers),
        ] {
            let entries = std::fs::read_dir(dir).map_err(|e| Error::io("list", dir, e))?;
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !known.contains(&name) {
                    warn!(path = %entry.path().display(), "removing a directory without a record");
                    remove_or_quarantine(&self.root, &entry.path());
                }
            }
        }
        Ok(())
    }

    /// After an unclean stop: objects no committed layer names may have torn content (a
    /// power loss between their write and the layer's sync), so they go before any pull.
    pub(super) fn sweep_unreferenced_objects(&self) -> Result<()> {
        let mut referenced = HashSet::new();
        for layer in self.meta.layers()? {
            let m = LayerManifest::load(&self.paths.layer_dir(&layer.diff_id))?;
            for e in m.entries {
                if let crate::layout::Kind::File {
                    object: Some(key), ..
                } = e.kind
                {
                    referenced.insert(object_rel(&key));
                }
            }
        }
        let removed = self.for_each_object(|rel, _| !referenced.contains(rel))?;
        if removed > 0 {
            warn!(
                removed,
                "unclean stop: removed objects no committed layer names"
            );
        }
        Ok(())
    }

    /// Remove objects whose only name is their own (link count 1: no layer or tree uses
    /// them). Caller holds `sweep_lock` (or is `open`).
    pub(super) fn sweep_objects(&self) -> Result<()> {
        crate::failpoint::hit("gc.object-sweep");
        let removed = self.for_each_object(|_, nlink| nlink <= 1)?;
        if removed > 0 {
            debug!(removed, "removed unused objects");
        }
        Ok(())
    }

    /// Unlink every object for which `doomed(rel, nlink)` says so; returns how many.
    fn for_each_object(&self, doomed: impl Fn(&str, u64) -> bool) -> Result<usize> {
        let objects = fsutil::open_dir(&self.paths.objects)
            .map_err(|e| Error::io("open", &self.paths.objects, e))?;
        let mut removed = 0;
        for i in 0..=255u8 {
            let fan = format!("{i:02x}");
            let dir = match fsutil::resolve_dir(&objects, &fan) {
                Ok(d) => d,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("open", self.paths.objects.join(&fan), e)),
            };
            // Exclusive per fan-out directory: unpacks wait microseconds, not a whole sweep.
            let _no_linking = self
                .objects_lock
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let names = fsutil::list_dir(&dir).map_err(|e| Error::io("list", &fan, e))?;
            let mut any = false;
            for name in names {
                let Some(st) =
                    fsutil::stat_at(&dir, &name).map_err(|e| Error::io("stat", &name, e))?
                else {
                    continue;
                };
                if doomed(&format!("{fan}/{name}"), st.st_nlink) {
                    match rustix::fs::unlinkat(&dir, name.as_str(), rustix::fs::AtFlags::empty()) {
                        Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                        Err(e) => return Err(Error::io("remove object", &name, e.into())),
                    }
                    removed += 1;
                    any = true;
                }
            }
            if any {
                crate::fsutil::sync_dir(&self.paths.objects.join(&fan))?;
            }
        }
        Ok(removed)
    }

    /// The object sweep (one at a time, concurrent with pulls), then the usage refreshed.
    pub(super) async fn sweep_objects_guarded(self: Arc<Self>) -> Result<()> {
        let _one = self.sweep_lock.lock().await;
        let inner = self.clone();
        blocking("sweep objects", move || {
            inner.sweep_objects()?;
            inner.usage.refresh();
            Ok(())
        })
        .await
    }

    /// At open: drop layer records no image names, and blobs neither an image nor a layer
    /// names (a crash between a blob's commit and its image's leaves those).
    pub(super) fn sweep_orphans(&self) -> Result<()> {
        let index = self.read_index();
        let mut held_blobs: HashSet<Digest> = HashSet::new();
        let mut held_layers: HashSet<Digest> = HashSet::new();
        for record in index.images.values() {
            held_blobs.extend(record.blobs.iter().cloned());
            held_layers.extend(record.layers.iter().map(|l| l.diff_id.clone()));
        }
        drop(index);
        let orphan_layers: Vec<_> = self
            .meta
            .layers()?
            .into_iter()
            .filter(|l| !held_layers.contains(&l.diff_id))
            .collect();
        if !orphan_layers.is_empty() {
            warn!(
                count = orphan_layers.len(),
                "removing layers no image references"
            );
            self.sink.remove(&orphan_layers)?;
        }
        for layer in self.meta.layers()? {
            if let Some(blob) = layer.blob {
                held_blobs.insert(blob);
            }
        }
        let orphan_blobs: Vec<Digest> = self
            .blobs
            .list()?
            .into_iter()
            .map(|(d, _)| d)
            .filter(|d| !held_blobs.contains(d))
            .collect();
        if !orphan_blobs.is_empty() {
            warn!(
                count = orphan_blobs.len(),
                "removing blobs no image references"
            );
            self.blobs.remove(&orphan_blobs)?;
        }
        Ok(())
    }
}
