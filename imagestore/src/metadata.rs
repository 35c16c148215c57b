//! Image metadata in `redb` (`<root>/meta.redb`).
//!
//! Tables (string keys, JSON values of versioned records, so a record can grow fields without
//! a table migration):
//!
//! | table    | key                                   | value            | used by |
//! |----------|---------------------------------------|------------------|---------|
//! | `images` | image id `sha256:<config digest>`     | [`ImageRecord`]  | issue 4 |
//! | `refs`   | repo tag `name:tag` / repo digest `name@sha256:…` | image id | issue 4 (the tag index) |
//! | `layers` | diff_id                               | [`LayerRecord`]  | layer sink (blob-keeping now, tree cache next) |
//! | `trees`  | chain id of an image's top layer      | [`TreeRecord`]   | tree cache (issue 5) |
//! | `leases` | lease id                              | [`LeaseRecord`]  | containers holding a tree (issue 5) |
//! | `meta`   | `schema`                              | schema version   | start-up check |
//!
//! Every change is one write transaction. Layer records are committed without an fsync (a
//! pull of 1,000 small layers would otherwise pay 1,000 flushes of the whole file system):
//! every durable commit first flushes the store's file system when a layer was recorded since
//! the last flush, so no durable record (image, tree, lease, or the layer record a durable
//! commit carries along) ever names layer content that a power loss could tear. A crash
//! before the next durable commit loses those layer records; `ImageStore::open` then removes
//! their directories and objects like any other unrecorded ones.
//!
//! A failed write (a full disk: `ENOSPC` in a commit) leaves redb refusing every later
//! operation ("Previous I/O error … re-open the database"): the next transaction reopens it
//! (#19), so the store works again once space was freed, without a daemon restart. The
//! failed transaction is rolled back like any other (redb's commit is atomic).

use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::manifest::{Compression, RuntimeConfig};
use crate::reference::{ChainId, Digest};

const IMAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("images");
const REFS: TableDefinition<&str, &str> = TableDefinition::new("refs");
const LAYERS: TableDefinition<&str, &[u8]> = TableDefinition::new("layers");
const TREES: TableDefinition<&str, &[u8]> = TableDefinition::new("trees");
const LEASES: TableDefinition<&str, &[u8]> = TableDefinition::new("leases");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The schema this code writes. Bump on an incompatible change and migrate in `open`.
/// 1: file objects keyed by SHA-256; 2: by BLAKE3 (#18), migrated by `crate::migrate`.
/// An older rootstock refuses a store of a newer schema at open (it would mix key formats).
pub const SCHEMA_VERSION: u64 = 2;
/// The oldest schema `ImageStore::open` migrates from.
pub const OLDEST_SCHEMA: u64 = 1;

/// A layer of an image as its manifest describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRef {
    /// Digest of the compressed blob.
    pub digest: Digest,
    /// Media type of the blob.
    pub media_type: String,
    /// Size of the compressed blob.
    pub size: u64,
    /// Digest of the uncompressed tar (the config's diff_id at this index).
    pub diff_id: Digest,
}

/// An image, keyed by its id (the config digest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Record format version.
    pub version: u32,
    /// `sha256:<config digest>`.
    pub id: Digest,
    /// `name:tag` references that point here.
    pub repo_tags: Vec<String>,
    /// `name@sha256:<manifest or index digest>` references that point here.
    pub repo_digests: Vec<String>,
    /// Bytes as containerd reports: compressed layers + config + manifest (+ index).
    pub size: u64,
    /// The runtime part of the image config.
    pub config: RuntimeConfig,
    /// `created` of the config, RFC 3339, if present.
    pub created: Option<String>,
    /// The layers, bottom first.
    pub layers: Vec<LayerRef>,
    /// Chain id of the top layer (`None` for an image without layers).
    pub chain_id: Option<ChainId>,
    /// Blobs in the blob store this image holds: config, manifests, indexes.
    pub blobs: Vec<Digest>,
    /// When the image was first pulled, seconds since the epoch.
    pub pulled_at: u64,
}

/// A committed layer, keyed by diff_id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Record format version.
    pub version: u32,
    /// Digest of the uncompressed tar.
    pub diff_id: Digest,
    /// The compressed blob kept in the blob store, if the sink keeps blobs.
    pub blob: Option<Digest>,
    /// Media type of the blob it was committed from.
    pub media_type: String,
    /// How that blob was compressed.
    pub compression: Compression,
    /// Size of the compressed blob.
    pub size: u64,
    /// Size of the uncompressed tar.
    pub uncompressed_size: u64,
    /// Where the unpacked layer tree lives (tree cache; `None` while layers are kept as blobs).
    pub tree: Option<PathBuf>,
}

/// A flattened tree of an image's top chain (issue 5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeRecord {
    /// Record format version.
    pub version: u32,
    /// The chain id the tree renders.
    pub chain_id: ChainId,
    /// The diff_ids rendered, bottom first.
    pub diff_ids: Vec<Digest>,
    /// The tree's directory.
    pub path: PathBuf,
    /// When it was rendered, seconds since the epoch.
    pub created: u64,
    /// Entries rendered (layer entries and hard links applied), for `verify`.
    #[serde(default)]
    pub entries: u64,
}

/// A hold on a tree by a container (issue 5): GC keeps what a lease names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// Record format version.
    pub version: u32,
    /// The lease id (e.g. the container id).
    pub id: String,
    /// The tree held.
    pub chain_id: ChainId,
    /// When the lease was taken, seconds since the epoch.
    pub created: u64,
}

/// Changes to images and refs applied in one transaction.
#[derive(Debug, Default)]
pub(crate) struct ImageChanges {
    pub put: Vec<ImageRecord>,
    pub delete: Vec<Digest>,
    pub put_refs: Vec<(String, Digest)>,
    pub delete_refs: Vec<String>,
}

/// The metadata database.
#[derive(Debug)]
pub struct Metadata {
    /// `None` only while being reopened after an I/O failure (and if that failed).
    db: RwLock<Option<Database>>,
    /// A commit failed on I/O: redb needs reopening before the next transaction.
    io_failed: AtomicBool,
    path: PathBuf,
    /// A layer record was committed without a flush of the file system since the last one.
    unsynced_layers: AtomicBool,
}

/// Open (or create) the database file.
fn create(path: &Path) -> Result<Database> {
    Database::create(path).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => Error::StoreLocked {
            path: path.to_path_buf(),
        },
        other => Error::metadata("open", format!("{}: {other}", path.display())),
    })
}

fn closed(path: &Path) -> Error {
    Error::Metadata {
        op: "use",
        detail: format!(
            "{}: not open (reopening after an I/O error failed)",
            path.display()
        ),
    }
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| Error::metadata("encode record", e))
}

fn from_json<T: DeserializeOwned>(table: &'static str, key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::Metadata {
        op: "decode record",
        detail: format!("{table}[{key}]: {e}"),
    })
}

impl Metadata {
    /// Open (or create) the database at `path` and make sure every table exists.
    pub fn open(path: &Path) -> Result<Self> {
        let db = create(path)?;
        let meta = Metadata {
            db: RwLock::new(Some(db)),
            io_failed: AtomicBool::new(false),
            path: path.to_path_buf(),
            unsynced_layers: AtomicBool::new(false),
        };
        let tx = meta.begin_write()?;
        {
            tx.open_table(IMAGES)
                .map_err(|e| Error::metadata("create table", e))?;
            tx.open_table(REFS)
                .map_err(|e| Error::metadata("create table", e))?;
            tx.open_table(LAYERS)
                .map_err(|e| Error::metadata("create table", e))?;
            tx.open_table(TREES)
                .map_err(|e| Error::metadata("create table", e))?;
            tx.open_table(LEASES)
                .map_err(|e| Error::metadata("create table", e))?;
            let mut m = tx
                .open_table(META)
                .map_err(|e| Error::metadata("create table", e))?;
            let version = m
                .get("schema")
                .map_err(|e| Error::metadata("read schema", e))?
                .map(|v| v.value());
            match version {
                None => {
                    m.insert("schema", SCHEMA_VERSION)
                        .map_err(|e| Error::metadata("write schema", e))?;
                }
                // Older: opened as it is; `ImageStore::open` migrates it before any use.
                Some(v) if (OLDEST_SCHEMA..=SCHEMA_VERSION).contains(&v) => {}
                Some(v) => {
                    return Err(Error::Metadata {
                        op: "open",
                        detail: format!(
                            "{} has schema {v}, this rootstock understands {SCHEMA_VERSION}",
                            path.display()
                        ),
                    });
                }
            }
        }
        tx.commit().map_err(|e| Error::metadata("commit", e))?;
        Ok(meta)
    }

    /// The schema the database is at ([`SCHEMA_VERSION`] unless a migration is due).
    pub fn schema(&self) -> Result<u64> {
        let tx = self.begin_read()?;
        let t = tx
            .open_table(META)
            .map_err(|e| Error::metadata("open table", e))?;
        let v = t
            .get("schema")
            .map_err(|e| Error::metadata("read schema", e))?
            .map(|v| v.value());
        Ok(v.unwrap_or(SCHEMA_VERSION))
    }

    /// Record that the store is at schema `version` (durably: the end of a migration).
    pub(crate) fn set_schema(&self, version: u64) -> Result<()> {
        let tx = self.begin_write()?;
        {
            let mut m = tx
                .open_table(META)
                .map_err(|e| Error::metadata("open table", e))?;
            m.insert("schema", version)
                .map_err(|e| Error::metadata("write schema", e))?;
        }
        self.noting_io(tx.commit().map_err(|e| Error::metadata("commit", e)))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn begin_write(&self) -> Result<redb::WriteTransaction> {
        self.with_db(|db| {
            db.begin_write()
                .map_err(|e| Error::metadata("begin write", e))
        })
    }

    /// Run `f` on the open database (reopened first after an I/O failure), noting an I/O
    /// failure it reports.
    fn with_db<T>(&self, f: impl FnOnce(&Database) -> Result<T>) -> Result<T> {
        self.reopen_if_failed()?;
        let db = self
            .db
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let r = f(db.as_ref().ok_or_else(|| closed(&self.path))?);
        self.noting_io(r)
    }

    /// A redb error that means it must be reopened: an I/O error (what a full disk gives),
    /// or its refusal after an earlier one.
    fn noting_io<T>(&self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r
            && (e.is_disk_full()
                || e.to_string().contains("os error")
                || e.to_string().contains("Previous I/O error"))
        {
            self.io_failed.store(true, Ordering::SeqCst);
        }
        r
    }

    /// Reopen the database after an I/O failure. Transactions still running on the old
    /// handle keep its file lock until they end (moments: none spans an await), so the open
    /// is retried for a while.
    fn reopen_if_failed(&self) -> Result<()> {
        if !self.io_failed.load(Ordering::SeqCst) {
            return Ok(());
        }
        let mut db = self
            .db
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !self.io_failed.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        drop(db.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match create(&self.path) {
                Ok(new) => {
                    tracing::warn!(path = %self.path.display(),
                        "reopened the metadata database after an I/O error");
                    *db = Some(new);
                    return Ok(());
                }
                Err(Error::StoreLocked { .. }) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => {
                    self.io_failed.store(true, Ordering::SeqCst);
                    return Err(e);
                }
            }
        }
    }

    /// Commit durably, flushing the file system first if a layer record committed without
    /// one would become durable with this commit. Write transactions are exclusive, so no
    /// layer record can slip in between the flush and the commit.
    fn commit(&self, tx: redb::WriteTransaction) -> Result<()> {
        if self.unsynced_layers.swap(false, Ordering::SeqCst) {
            let dir = self.path.parent().unwrap_or(Path::new("."));
            if let Err(e) = crate::fsutil::sync_fs(dir) {
                self.unsynced_layers.store(true, Ordering::SeqCst);
                return Err(Error::io("sync", dir, e));
            }
        }
        self.noting_io(tx.commit().map_err(|e| Error::metadata("commit", e)))
    }

    fn begin_read(&self) -> Result<redb::ReadTransaction> {
        self.with_db(|db| {
            db.begin_read()
                .map_err(|e| Error::metadata("begin read", e))
        })
    }

    /// Every image record.
    pub fn images(&self) -> Result<Vec<ImageRecord>> {
        self.all(IMAGES, "images")
    }

    /// Every ref → image id.
    pub fn refs(&self) -> Result<Vec<(String, Digest)>> {
        let tx = self.begin_read()?;
        let table = tx
            .open_table(REFS)
            .map_err(|e| Error::metadata("open refs", e))?;
        let mut out = Vec::new();
        for item in table.iter().map_err(|e| Error::metadata("read refs", e))? {
            let (k, v) = item.map_err(|e| Error::metadata("read refs", e))?;
            let id = v.value().parse::<Digest>().map_err(|e| Error::Metadata {
                op: "decode ref",
                detail: format!("refs[{}]: {e}", k.value()),
            })?;
            out.push((k.value().to_string(), id));
        }
        Ok(out)
    }

    /// Apply image and ref changes atomically.
    pub(crate) fn apply(&self, changes: &ImageChanges) -> Result<()> {
        let tx = self.begin_write()?;
        {
            let mut images = tx
                .open_table(IMAGES)
                .map_err(|e| Error::metadata("open images", e))?;
            for id in &changes.delete {
                images
                    .remove(id.as_str())
                    .map_err(|e| Error::metadata("delete image", e))?;
            }
            for record in &changes.put {
                images
                    .insert(record.id.as_str(), to_json(record)?.as_slice())
                    .map_err(|e| Error::metadata("write image", e))?;
            }
            let mut refs = tx
                .open_table(REFS)
                .map_err(|e| Error::metadata("open refs", e))?;
            for r in &changes.delete_refs {
                refs.remove(r.as_str())
                    .map_err(|e| Error::metadata("delete ref", e))?;
            }
            for (r, id) in &changes.put_refs {
                refs.insert(r.as_str(), id.as_str())
                    .map_err(|e| Error::metadata("write ref", e))?;
            }
        }
        self.commit(tx)
    }

    /// The layer committed under `diff_id`.
    pub fn layer(&self, diff_id: &Digest) -> Result<Option<LayerRecord>> {
        self.get(LAYERS, "layers", diff_id.as_str())
    }

    /// Every committed layer.
    pub fn layers(&self) -> Result<Vec<LayerRecord>> {
        self.all(LAYERS, "layers")
    }

    /// Record a committed layer, without flushing (see the module doc): the layer's files
    /// become durable with the next durable commit, which flushes them first.
    pub fn put_layer(&self, record: &LayerRecord) -> Result<()> {
        let mut tx = self.begin_write()?;
        tx.set_durability(Durability::None)
            .map_err(|e| Error::metadata("set durability", e))?;
        {
            let mut table = tx
                .open_table(LAYERS)
                .map_err(|e| Error::metadata("open table", e))?;
            table
                .insert(record.diff_id.as_str(), to_json(record)?.as_slice())
                .map_err(|e| Error::metadata("write", e))?;
        }
        // Set while this transaction still excludes every other writer.
        self.unsynced_layers.store(true, Ordering::SeqCst);
        self.noting_io(tx.commit().map_err(|e| Error::metadata("commit", e)))
    }

    /// Forget layers.
    pub fn delete_layers(&self, diff_ids: &[Digest]) -> Result<()> {
        let keys: Vec<&str> = diff_ids.iter().map(Digest::as_str).collect();
        self.delete(LAYERS, &keys)
    }

    /// The tree of `chain_id` (issue 5).
    pub fn tree(&self, chain_id: &ChainId) -> Result<Option<TreeRecord>> {
        self.get(TREES, "trees", chain_id.0.as_str())
    }

    /// Every tree (issue 5).
    pub fn trees(&self) -> Result<Vec<TreeRecord>> {
        self.all(TREES, "trees")
    }

    /// Record a tree (issue 5).
    pub fn put_tree(&self, record: &TreeRecord) -> Result<()> {
        self.put(TREES, record.chain_id.0.as_str(), record)
    }

    /// Forget trees (issue 5).
    pub fn delete_trees(&self, chain_ids: &[ChainId]) -> Result<()> {
        let keys: Vec<&str> = chain_ids.iter().map(|c| c.0.as_str()).collect();
        self.delete(TREES, &keys)
    }

    /// Every lease (issue 5).
    pub fn leases(&self) -> Result<Vec<LeaseRecord>> {
        self.all(LEASES, "leases")
    }

    /// Record a lease (issue 5).
    pub fn put_lease(&self, record: &LeaseRecord) -> Result<()> {
        self.put(LEASES, &record.id, record)
    }

    /// Drop a lease; absent is fine (issue 5).
    pub fn delete_lease(&self, id: &str) -> Result<()> {
        self.delete(LEASES, &[id])
    }

    fn get<T: DeserializeOwned>(
        &self,
        def: TableDefinition<&str, &[u8]>,
        name: &'static str,
        key: &str,
    ) -> Result<Option<T>> {
        let tx = self.begin_read()?;
        let table = tx
            .open_table(def)
            .map_err(|e| Error::metadata("open table", e))?;
        let value = table.get(key).map_err(|e| Error::metadata("read", e))?;
        value.map(|v| from_json(name, key, v.value())).transpose()
    }

    fn all<T: DeserializeOwned>(
        &self,
        def: TableDefinition<&str, &[u8]>,
        name: &'static str,
    ) -> Result<Vec<T>> {
        let tx = self.begin_read()?;
        let table = tx
            .open_table(def)
            .map_err(|e| Error::metadata("open table", e))?;
        let mut out = Vec::new();
        for item in table.iter().map_err(|e| Error::metadata("read", e))? {
            let (k, v) = item.map_err(|e| Error::metadata("read", e))?;
            out.push(from_json(name, k.value(), v.value())?);
        }
        Ok(out)
    }

    fn put<T: Serialize>(&self, def: TableDefinition<&str, &[u8]>, key: &str, v: &T) -> Result<()> {
        let tx = self.begin_write()?;
        {
            let mut table = tx
                .open_table(def)
                .map_err(|e| Error::metadata("open table", e))?;
            table
                .insert(key, to_json(v)?.as_slice())
                .map_err(|e| Error::metadata("write", e))?;
        }
        self.commit(tx)
    }

    fn delete(&self, def: TableDefinition<&str, &[u8]>, keys: &[&str]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let tx = self.begin_write()?;
        {
            let mut table = tx
                .open_table(def)
                .map_err(|e| Error::metadata("open table", e))?;
            for key in keys {
                table
                    .remove(*key)
                    .map_err(|e| Error::metadata("delete", e))?;
            }
        }
        self.commit(tx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn record(n: u8) -> ImageRecord {
        let diff = Digest::of(&[n, 1]);
        ImageRecord {
            version: 1,
            id: Digest::of(&[n]),
            repo_tags: vec![format!("docker.io/library/x{n}:latest")],
            repo_digests: vec![format!("docker.io/library/x{n}@{}", Digest::of(&[n, 2]))],
            size: 1234,
            config: RuntimeConfig {
                user: "1000".into(),
                cmd: vec!["sh".into()],
                ..Default::default()
            },
            created: Some("2024-01-01T00:00:00Z".into()),
            layers: vec![LayerRef {
                digest: Digest::of(&[n, 3]),
                media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                size: 1000,
                diff_id: diff.clone(),
            }],
            chain_id: ChainId::of(&[diff]),
            blobs: vec![Digest::of(&[n])],
            pulled_at: 1,
        }
    }

    #[test]
    fn images_refs_and_layers_round_trip_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        {
            let meta = Metadata::open(&path).unwrap();
            let (a, b) = (record(1), record(2));
            meta.apply(&ImageChanges {
                put: vec![a.clone(), b.clone()],
                put_refs: vec![
                    (a.repo_tags[0].clone(), a.id.clone()),
                    (b.repo_tags[0].clone(), b.id.clone()),
                ],
                ..Default::default()
            })
            .unwrap();
            meta.put_layer(&LayerRecord {
                version: 1,
                diff_id: Digest::of(b"d"),
                blob: Some(Digest::of(b"b")),
                media_type: "m".into(),
                compression: Compression::Gzip,
                size: 5,
                uncompressed_size: 10,
                tree: None,
            })
            .unwrap();
            meta.apply(&ImageChanges {
                delete: vec![b.id.clone()],
                delete_refs: vec![b.repo_tags[0].clone()],
                ..Default::default()
            })
            .unwrap();
        }
        let meta = Metadata::open(&path).unwrap();
        assert_eq!(meta.images().unwrap(), vec![record(1)]);
        assert_eq!(
            meta.refs().unwrap(),
            vec![(record(1).repo_tags[0].clone(), record(1).id)]
        );
        let layer = meta.layer(&Digest::of(b"d")).unwrap().unwrap();
        assert_eq!(layer.uncompressed_size, 10);
        meta.delete_layers(&[Digest::of(b"d")]).unwrap();
        assert!(meta.layers().unwrap().is_empty());
    }

    #[test]
    fn trees_and_leases_tables_exist_for_the_tree_cache() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Metadata::open(&dir.path().join("meta.redb")).unwrap();
        let chain = ChainId(Digest::of(b"c"));
        meta.put_tree(&TreeRecord {
            version: 1,
            chain_id: chain.clone(),
            diff_ids: vec![Digest::of(b"c")],
            path: "/x".into(),
            created: 0,
            entries: 0,
        })
        .unwrap();
        meta.put_lease(&LeaseRecord {
            version: 1,
            id: "ctr".into(),
            chain_id: chain.clone(),
            created: 0,
        })
        .unwrap();
        assert!(meta.tree(&chain).unwrap().is_some());
        assert_eq!(meta.leases().unwrap().len(), 1);
        meta.delete_lease("ctr").unwrap();
        meta.delete_trees(&[chain]).unwrap();
        assert!(meta.trees().unwrap().is_empty() && meta.leases().unwrap().is_empty());
    }

    #[test]
    fn a_second_open_reports_the_store_locked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        let _first = Metadata::open(&path).unwrap();
        let err = Metadata::open(&path).unwrap_err();
        assert!(matches!(err, Error::StoreLocked { .. }), "{err}");
    }
}
