//! [`ImageStore`]: the façade the gRPC `ImageService` calls.
//!
//! Concurrency and garbage:
//! * Every blob and layer a pull is about to use is *leased* (an in-memory refcount) before
//!   the pull looks for it, and released only after the image record is committed. Taking a
//!   lease and collecting garbage both happen under `gc_lock`, so a `RemoveImage` can never
//!   delete a blob between a pull finding it and the pull's image naming it.
//! * Garbage collection is by candidates, never by walking the store: removing an image (or
//!   failing a pull) offers exactly the blobs and layers it held; those that no image names
//!   and no pull leases are deleted (metadata first, then files). The one walk is at
//!   [`ImageStore::open`], which sweeps what a crash left between a blob's commit and its
//!   image's.
//! * Trees: after its layers, a pull renders (or finds) the tree of its top chain id, under a
//!   lease on the chain, before committing the image. Trees nothing holds (no image, no
//!   persisted container lease in the `leases` table, no pull) go with the image; objects
//!   whose link count fell to 1 then go in a sweep (one at a time, `sweep_lock`).
//! * Removal and GC never wait for a pull: they take `gc_lock` (which pulls hold only for
//!   moments: leasing, committing) and delete only what no pull leases — leases are per
//!   blob, layer and chain, never per store. The object sweep and an unpack's linking of a
//!   file to an object exclude each other for microseconds at a time (`objects_lock`, per
//!   fan-out directory), so no object gains a name between the sweep's check and its
//!   unlink. Only `close` and `verify` wait for pulls (`store_guard`), and a pull's wait is
//!   bounded by the registry deadlines.
//! * Crash safety: [`ImageStore::close`] writes a clean-shutdown marker that `open` consumes;
//!   without it, `open` removes objects no committed layer names (torn by a power loss)
//!   before returning, i.e. before any pull is served.
//! * A pull runs in its own task, so a dropped future never leaves it half-done; when its
//!   caller goes away (kubelet cancels the RPC or its deadline passes) the task stops
//!   downloading at the next chunk and cleans up like any failed pull.
//!
//! The façade is here; [`index`] resolves names and commits records, [`pull`] runs a pull
//! ([`download`] one layer of it), [`gc`] collects and sweeps.

mod download;
mod gc;
mod index;
mod pull;
mod usage;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::{debug, info, warn};

use crate::blobs::{BlobStore, FlightLocks};
use crate::config::ImagesConfig;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::fsutil::create_private_dir;
use crate::layer::LayerSink;
use crate::layout::StorePaths;
use crate::manifest::RuntimeConfig;
use crate::metadata::{ImageChanges, ImageRecord, LayerRef, LeaseRecord, Metadata};
use crate::reference::{ChainId, Digest, ImageRef};
use crate::registry::{Credentials, RegistryClient};
use crate::unpack::TreeLayerSink;
use gc::remove_or_quarantine;
use index::{Index, resolve};

const RECORD_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum ImageUser {
    /// No user set (the runtime's default, root).
    Unset,
    /// A numeric uid (`User` was `1000` or `1000:1000`) → `Image.uid`.
    Uid(i64),
    /// A user name (`User` was `nobody` or `nobody:nogroup`) → `Image.username`.
    Name(String),
}

impl ImageUser {
    /// Parse an image config `User`: the part before `:`, numeric → uid, else a name.
    pub fn parse(user: &str) -> ImageUser {
        let user = user.split(':').next().unwrap_or_default();
        if user.is_empty() {
            ImageUser::Unset
        } else if let Ok(uid) = user.parse::<i64>() {
            ImageUser::Uid(uid)
        } else {
            ImageUser::Name(user.to_string())
        }
    }
}

/// An image as the CRI `Image` message and the runtime need it. `Serialize` gives the JSON
/// object for `ImageStatus(verbose)`'s `info` map.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Image {
    /// `sha256:<config digest>`: `Image.id`, and what kubelet passes to `CreateContainer`.
    pub id: Digest,
    /// `Image.repo_tags` (`docker.io/library/busybox:latest`).
    pub repo_tags: Vec<String>,
    /// `Image.repo_digests` (`docker.io/library/busybox@sha256:…`).
    pub repo_digests: Vec<String>,
    /// `Image.size` in bytes (compressed layers + config + manifest (+ index), as containerd).
    pub size: u64,
    /// `Image.uid` / `Image.username`.
    pub user: ImageUser,
    /// Entrypoint, cmd, env, working dir, stop signal, volumes, labels… for the runtime.
    pub config: RuntimeConfig,
    /// The config's `created`, RFC 3339.
    pub created: Option<String>,
    /// Layer diff_ids, bottom first.
    pub diff_ids: Vec<Digest>,
    /// Chain id of the top layer (the tree the container will mount, issue 5).
    pub chain_id: Option<ChainId>,
    /// The layers as the manifest listed them.
    pub layers: Vec<LayerRef>,
    /// `Image.pinned`: always false (no pinning policy yet).
    pub pinned: bool,
    /// The flattened root filesystem (`trees/<chainid-hex>`), `None` for an image without
    /// layers. A container mounts it as its overlay's one `lowerdir` while holding a lease
    /// ([`ImageStore::lease_tree`]) so GC keeps it.
    pub tree: Option<PathBuf>,
}

impl Image {
    /// The image's flattened tree, the single `lowerdir` of its containers.
    pub fn tree_path(&self) -> Option<&Path> {
        self.tree.as_deref()
    }
}

impl From<&ImageRecord> for Image {
    fn from(r: &ImageRecord) -> Image {
        Image {
            id: r.id.clone(),
            repo_tags: r.repo_tags.clone(),
            repo_digests: r.repo_digests.clone(),
            size: r.size,
            user: ImageUser::parse(&r.config.user),
            config: r.config.clone(),
            created: r.created.clone(),
            diff_ids: r.layers.iter().map(|l| l.diff_id.clone()).collect(),
            chain_id: r.chain_id.clone(),
            layers: r.layers.clone(),
            pinned: false,
            tree: None,
        }
    }
}

/// What `ImageFsInfo` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsUsage {
    /// The store's root directory (containerd likewise reports its snapshotter root; kubelet's
    /// cAdvisor resolves the filesystem holding it).
    pub mountpoint: PathBuf,
    /// Bytes the store occupies on disk (blocks, as `du`).
    pub used_bytes: u64,
    /// Inodes the store uses.
    pub inodes_used: u64,
}

struct Inner {
    root: PathBuf,
    blobs: Arc<BlobStore>,
    meta: Arc<Metadata>,
    sink: Arc<dyn LayerSink>,
    registry: RegistryClient,
    index: RwLock<Index>,
    /// Serialises image commits, lease taking and garbage collection.
    gc_lock: tokio::sync::Mutex<()>,
    leases: Mutex<HashMap<Digest, usize>>,
    flights: FlightLocks,
    db_bytes: AtomicU64,
    paths: StorePaths,
    /// Pulls (unpack, render, commit) hold it shared; `close` and `verify` take it alone.
    /// Removal and GC never take it: they must not wait for a download (a slow registry
    /// would block `RemoveContainer`/`RemoveImage`, and a write-preferring lock then every
    /// new pull). They delete only what no pull leases (per blob, layer and chain), and
    /// the unpacker tolerates an object vanishing under it (it creates it again).
    store_guard: tokio::sync::RwLock<()>,
    /// One object sweep at a time.
    sweep_lock: tokio::sync::Mutex<()>,
    /// Shared with the unpacker (see [`crate::unpack::ObjectsLock`]).
    objects_lock: crate::unpack::ObjectsLock,
    closed: AtomicBool,
    /// (bytes, inodes) of the store, hard links counted once; refreshed after each change.
    usage: Arc<usage::Usage>,
    /// `images.max_image_bytes` and `images.max_image_entries`, each pull's budget.
    image_limits: (u64, u64),
    /// `images.blob_min_bytes_per_sec` over `images.blob_stall_secs`.
    blob_rate: (u64, Duration),
}

/// Written by [`ImageStore::close`], removed at open: its absence at open means the last run
/// did not stop cleanly, and objects no committed layer names may be torn.
pub(crate) const CLEAN_MARKER: &str = "clean-shutdown";

/// The image store. Cheap to clone (an `Arc`); all methods take `&self` and may run
/// concurrently.
#[derive(Clone)]
pub struct ImageStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageStore")
            .field("root", &self.inner.root)
            .finish_non_exhaustive()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn file_disk_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0)
}

async fn blocking<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Interrupted {
            what: what.to_string(),
            detail: e.to_string(),
        })?
}

impl ImageStore {
    /// Open the store at `root`: create its directories (mode 0700), clear `tmp/`, open the
    /// metadata, sweep what a crash left unreferenced, and load the images into memory.
    /// Blocking (call it before serving, or in `spawn_blocking`).
    pub fn open(root: &Path, config: &ImagesConfig) -> Result<Self> {
        config.validate()?;
        create_private_dir(root)?;
        let tmp = root.join("tmp");
        if tmp.exists() {
            remove_or_quarantine(root, &tmp);
        }
        create_private_dir(&tmp)?;
        crate::fsutil::spread_children(&tmp);
        // Trees are mounted as overlay lowers; the kernel stacks overlays at most two deep,
        // so a store on overlayfs (e.g. inside a container) cannot serve containers.
        const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;
        if let Ok(fs) = rustix::fs::statfs(root)
            && fs.f_type == OVERLAYFS_SUPER_MAGIC
        {
            return Err(Error::Config {
                key: "root_dir".into(),
                reason: format!(
                    "{} is on overlayfs; container root filesystems are overlays of the \
                     image trees kept here, and overlayfs cannot be stacked on itself: put \
                     root_dir on ext4 or xfs (a volume, not a container's writable layer)",
                    root.display()
                ),
            });
        }
        let paths = StorePaths::new(root);
        paths.create()?;
        let meta = Arc::new(Metadata::open(&root.join("meta.redb"))?);
        // Before the sweeps: they must never see a half-migrated store.
        crate::migrate::migrate(root, &meta)?;
        let blobs = Arc::new(BlobStore::open(root)?);
        let objects_lock = crate::unpack::ObjectsLock::default();
        let sink: Arc<dyn LayerSink> = Arc::new(
            TreeLayerSink::new(
                root,
                meta.clone(),
                blobs.clone(),
                config.keep_layer_blobs,
                config.allow_device_nodes,
                crate::unpack::SinkLimits {
                    max_path_depth: config.max_path_depth,
                },
            )
            .with_objects_lock(objects_lock.clone()),
        );
        let marker = root.join(CLEAN_MARKER);
        let clean = marker.exists();
        if clean {
            std::fs::remove_file(&marker).map_err(|e| Error::io("remove marker", &marker, e))?;
            crate::fsutil::sync_dir(root)?;
        }
        let mut index = Index::default();
        for record in meta.images()? {
            index.images.insert(record.id.clone(), record);
        }
        for (r, id) in meta.refs()? {
            index.refs.insert(r, id);
        }
        let inner = Inner {
            root: root.to_path_buf(),
            blobs,
            meta,
            sink,
            registry: RegistryClient::new(config),
            index: RwLock::new(index),
            gc_lock: tokio::sync::Mutex::new(()),
            leases: Mutex::new(HashMap::new()),
            flights: FlightLocks::default(),
            db_bytes: AtomicU64::new(0),
            paths,
            store_guard: tokio::sync::RwLock::new(()),
            sweep_lock: tokio::sync::Mutex::new(()),
            objects_lock,
            closed: AtomicBool::new(false),
            usage: usage::Usage::new(root.to_path_buf()),
            image_limits: (config.max_image_bytes, config.max_image_entries),
            blob_rate: (
                config.blob_min_bytes_per_sec,
                Duration::from_secs(config.blob_stall_secs),
            ),
        };
        // Garbage a crash or a failed removal left: each sweep that fails is logged and
        // start-up goes on (what it could not remove is removed or quarantined next time).
        // Only the unclean-stop object sweep is fatal: a torn object must never be linked.
        let sweep = |what: &str, r: Result<()>| {
            if let Err(e) = r {
                warn!(error = %e, "start-up sweep of {what} failed; going on");
            }
        };
        sweep("orphan layers and blobs", inner.sweep_orphans());
        sweep(
            "trees and layer directories",
            inner.sweep_trees_and_layer_dirs(),
        );
        if !clean {
            inner.sweep_unreferenced_objects()?;
        }
        sweep("unused objects", inner.sweep_objects());
        inner.refresh_db_size();
        inner.usage.refresh();
        Ok(ImageStore {
            inner: Arc::new(inner),
        })
    }

    /// Pull `reference` for linux/amd64 and return the image. `auth` are the CRI
    /// `AuthConfig` credentials for the image's registry. A failed pull leaves no image
    /// record and no blob outside `tmp/` (unless another image or pull holds it).
    pub async fn pull(&self, reference: &str, auth: Option<Credentials>) -> Result<Image> {
        let image =
            ImageRef::parse(reference).map_err(|e| Error::invalid_reference(reference, e))?;
        let inner = self.inner.clone();
        // Dropped with this future: a caller that goes away (kubelet cancels the RPC, its
        // deadline passes) closes the channel, and the pull stops downloading and cleans up.
        let (_caller, gone) = tokio::sync::watch::channel(());
        tokio::spawn(async move { inner.pull(image, auth, gone).await })
            .await
            .map_err(|e| Error::Interrupted {
                what: format!("pull of {reference}"),
                detail: e.to_string(),
            })?
    }

    /// The image `reference` names — a tag, a digest reference, a full id (`sha256:<hex>` or
    /// 64 hex), or a unique id prefix of at least 4 hex characters (tried when no name
    /// matches) — or `None`. Errors only for a malformed reference or an ambiguous prefix.
    pub fn status(&self, reference: &str) -> Result<Option<Image>> {
        let index = self.inner.read_index();
        Ok(resolve(&index, reference)?
            .and_then(|id| index.images.get(&id))
            .map(|r| self.inner.image(r)))
    }

    /// Every image, from memory.
    pub fn list(&self) -> Vec<Image> {
        let index = self.inner.read_index();
        let mut images: Vec<Image> = index.images.values().map(|r| self.inner.image(r)).collect();
        images.sort_by(|a, b| a.id.cmp(&b.id));
        images
    }

    /// Remove the image `reference` names (any tag, digest or id) with every tag and digest,
    /// and delete the blobs and layers nothing else holds. An absent image is `Ok`: the CRI
    /// makes `RemoveImage` idempotent (critest `image.go`).
    pub async fn remove(&self, reference: &str) -> Result<()> {
        let id = {
            let index = self.inner.read_index();
            resolve(&index, reference)?
        };
        let Some(id) = id else {
            debug!(image = reference, "remove: no such image");
            return Ok(());
        };
        let _guard = self.inner.gc_lock.lock().await;
        let Some(record) = self.inner.read_index().images.get(&id).cloned() else {
            return Ok(());
        };
        let changes = ImageChanges {
            delete: vec![id.clone()],
            delete_refs: record
                .repo_tags
                .iter()
                .chain(record.repo_digests.iter())
                .cloned()
                .collect(),
            ..Default::default()
        };
        let inner = self.inner.clone();
        blocking("remove image", move || {
            inner.meta.apply(&changes)?;
            {
                let mut index = inner.write_index();
                index.images.remove(&id);
                for r in &changes.delete_refs {
                    if index.refs.get(r) == Some(&id) {
                        index.refs.remove(r);
                    }
                }
            }
            info!(%id, tags = ?record.repo_tags, "removed image");
            let diff_ids: Vec<Digest> = record.layers.iter().map(|l| l.diff_id.clone()).collect();
            let chains: Vec<ChainId> = record.chain_id.iter().cloned().collect();
            inner.collect(&record.blobs, &diff_ids, &chains)?;
            inner.refresh_db_size();
            Ok(())
        })
        .await?;
        drop(_guard);
        self.inner.clone().sweep_objects_guarded().await
    }

    /// Bytes and inodes the store really uses (blocks, hard links counted once), from a
    /// cache refreshed after every pull, removal and release. Blocking only right after a
    /// pull, while its refresh has not run yet (then it runs here).
    pub fn fs_usage(&self) -> FsUsage {
        let (bytes, inodes) = self.inner.usage.get();
        FsUsage {
            mountpoint: self.inner.root.clone(),
            used_bytes: bytes + self.inner.db_bytes.load(Ordering::Relaxed),
            inodes_used: inodes + 1,
        }
    }

    /// Hold the flattened tree of the image `reference` names (tag, digest or id) for a
    /// container, under `lease_id` (e.g. the container id), and return its path. The lease
    /// is persisted: the tree survives `RemoveImage` and restarts until [`Self::release`].
    /// Taking the same lease again is fine (it moves to this image's tree).
    pub async fn lease_tree(&self, reference: &str, lease_id: &str) -> Result<PathBuf> {
        let _guard = self.inner.gc_lock.lock().await;
        let record = {
            let index = self.inner.read_index();
            resolve(&index, reference)?.and_then(|id| index.images.get(&id).cloned())
        };
        let Some(record) = record else {
            return Err(Error::ImageNotFound {
                reference: reference.to_string(),
            });
        };
        let Some(chain_id) = record.chain_id.clone() else {
            return Err(Error::ImageNotFound {
                reference: format!("{reference} (an image without layers has no tree)"),
            });
        };
        let inner = self.inner.clone();
        let lease_id = lease_id.to_string();
        blocking("lease tree", move || {
            let tree = inner
                .meta
                .tree(&chain_id)?
                .ok_or_else(|| Error::ImageNotFound {
                    reference: format!("tree {chain_id}"),
                })?;
            inner.meta.put_lease(&LeaseRecord {
                version: 1,
                id: lease_id,
                chain_id,
                created: now_secs(),
            })?;
            Ok(tree.path)
        })
        .await
    }

    /// Drop the lease `lease_id`; the tree goes if no image or other lease holds it.
    /// Releasing an unknown lease is fine (idempotent, like the CRI removals it backs).
    pub async fn release(&self, lease_id: &str) -> Result<()> {
        let guard = self.inner.gc_lock.lock().await;
        let inner = self.inner.clone();
        let lease_id = lease_id.to_string();
        let tree_removed = blocking("release lease", move || {
            let chain = inner
                .meta
                .leases()?
                .into_iter()
                .find(|l| l.id == lease_id)
                .map(|l| l.chain_id);
            inner.meta.delete_lease(&lease_id)?;
            match chain {
                Some(chain) => inner.collect(&[], &[], &[chain]),
                None => Ok(false),
            }
        })
        .await?;
        drop(guard);
        // The common case, the image still holding the tree, frees no object: no walk of
        // the whole object store on every RemoveContainer (it was on the pod's stop path,
        // serialized across pods, and grew with the store). A crash before the sweep is
        // covered by the unclean-start sweep.
        if tree_removed {
            self.inner.clone().sweep_objects_guarded().await?;
        }
        Ok(())
    }

    /// Stop accepting pulls, wait for those in flight, and write the clean-shutdown marker,
    /// so the next open skips the unclean-start object sweep. The daemon calls it on
    /// SIGTERM/SIGINT after the gRPC server stopped. Idempotent.
    pub async fn close(&self) -> Result<()> {
        self.inner.closed.store(true, Ordering::SeqCst);
        let _all = self.inner.store_guard.write().await;
        let _sweep = self.inner.sweep_lock.lock().await;
        let _gc = self.inner.gc_lock.lock().await;
        let root = self.inner.root.clone();
        blocking("close store", move || {
            fsutil::sync_fs(&root).map_err(|e| Error::io("sync", &root, e))?;
            let marker = root.join(CLEAN_MARKER);
            std::fs::write(&marker, b"").map_err(|e| Error::io("write marker", &marker, e))?;
            crate::fsutil::sync_dir(&root)
        })
        .await
    }

    /// Check the store: see [`crate::verify`]. Runs while the store is open (under the store
    /// guard, so no pull or sweep changes it meanwhile).
    pub async fn verify(&self) -> Result<crate::verify::Report> {
        let _all = self.inner.store_guard.write().await;
        let _sweep = self.inner.sweep_lock.lock().await;
        let _gc = self.inner.gc_lock.lock().await;
        let (root, meta) = (self.inner.root.clone(), self.inner.meta.clone());
        blocking("verify store", move || crate::verify::check(&root, &meta)).await
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The metadata database (for the tree cache and tooling).
    pub fn metadata(&self) -> &Metadata {
        &self.inner.meta
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn user_is_uid_or_name() {
        assert_eq!(ImageUser::parse(""), ImageUser::Unset);
        assert_eq!(ImageUser::parse("1000"), ImageUser::Uid(1000));
        assert_eq!(ImageUser::parse("1000:50"), ImageUser::Uid(1000));
        assert_eq!(
            ImageUser::parse("nobody:nogroup"),
            ImageUser::Name("nobody".into())
        );
        assert_eq!(ImageUser::parse(":5"), ImageUser::Unset);
    }

    #[test]
    fn open_creates_private_dirs_and_reopens() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        {
            let store = ImageStore::open(&root, &ImagesConfig::default()).unwrap();
            assert!(store.list().is_empty());
            std::fs::write(root.join("tmp/leftover"), b"x").unwrap();
            assert_eq!(store.fs_usage().mountpoint, root);
        }
        let store = ImageStore::open(&root, &ImagesConfig::default()).unwrap();
        assert!(!root.join("tmp/leftover").exists());
        for d in ["", "blobs", "blobs/sha256", "tmp"] {
            let mode = std::fs::metadata(root.join(d))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o700, "{d}");
        }
        assert_eq!(store.status("busybox").unwrap(), None);
        assert!(matches!(
            store.status("Busy Box").unwrap_err().kind(),
            crate::ErrorKind::InvalidArgument
        ));
    }
}
