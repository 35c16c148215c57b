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

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use tracing::{debug, info, warn};

use crate::blobs::{BlobStore, ChannelReader, FlightLocks, VerifyingReader, create_private_dir};
use crate::config::ImagesConfig;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::layer::{LayerInput, LayerSink};
use crate::manifest::{
    Compression, DOCKER_CONFIG, Descriptor, ImageConfigFile, Manifest, OCI_CONFIG, RuntimeConfig,
    choose_platform, host_platform,
};
use crate::metadata::{ImageChanges, ImageRecord, LayerRef, Metadata};
use crate::metadata::{LeaseRecord, TreeRecord};
use crate::reference::{ChainId, Digest, ImageLookup, ImageRef};
use crate::registry::{Credentials, RegistryClient, Session};
use crate::unpack::{LayerManifest, StorePaths, TreeLayerSink, object_rel};

/// Largest config blob accepted (configs are read whole; real ones are a few KiB). 4 MiB,
/// containerd's cap on manifests and configs read into memory.
const MAX_CONFIG_SIZE: u64 = 4 << 20;
/// Layers downloaded at once per pull.
const PARALLEL_LAYERS: usize = 3;
/// A pull running longer than this logs progress, and again every such interval.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);
const RECORD_VERSION: u32 = 1;
/// Whole-layer attempts when the connection drops mid-blob.
const LAYER_ATTEMPTS: u32 = 3;
const LAYER_RETRY_BACKOFF: Duration = Duration::from_millis(500);

/// The user an image runs as, from its config's `User`, as CRI `ImageStatus` wants it.
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
    /// layers. Mount it through [`crate::overlay::OverlayMount`] while holding a lease
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

#[derive(Default)]
struct Index {
    images: HashMap<Digest, ImageRecord>,
    refs: HashMap<String, Digest>,
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
    usage: (AtomicU64, AtomicU64),
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

/// At open: remove a directory left behind, or, when that fails, move it to `quarantine/`
/// and go on — one bad tree must not keep the daemon from starting. The operator is told
/// where it went.
fn remove_or_quarantine(root: &Path, path: &Path) {
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

/// Leases a pull holds; released on drop.
struct Leases {
    inner: Arc<Inner>,
    held: Vec<Digest>,
}

impl Drop for Leases {
    fn drop(&mut self) {
        let mut leases = match self.inner.leases.lock() {
            Ok(l) => l,
            Err(p) => p.into_inner(),
        };
        for d in self.held.drain(..) {
            if let Some(n) = leases.get_mut(&d) {
                *n -= 1;
                if *n == 0 {
                    leases.remove(&d);
                }
            }
        }
    }
}

/// Pull progress, logged by a ticker for long pulls.
struct Progress {
    /// Closed when the caller is gone (see [`ImageStore::pull`]).
    gone: tokio::sync::watch::Receiver<()>,
    reference: String,
    total: AtomicU64,
    done: AtomicU64,
    started: Instant,
}

impl Progress {
    /// The caller of the pull went away.
    fn abandoned(&self) -> bool {
        self.gone.has_changed().is_err()
    }

    fn abandoned_error(&self) -> Error {
        Error::Interrupted {
            what: format!("pull of {}", self.reference),
            detail: "the caller cancelled the request".into(),
        }
    }

    fn log(&self, final_id: Option<&Digest>) {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let done = self.done.load(Ordering::Relaxed);
        let total = self.total.load(Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = mib(done) / secs;
        match final_id {
            Some(id) => info!(
                image = %self.reference, %id,
                "pulled {:.1} MiB in {secs:.1}s ({rate:.1} MiB/s)", mib(done)
            ),
            None => info!(
                image = %self.reference,
                "pulling: {:.1} of {:.1} MiB downloaded, {rate:.1} MiB/s", mib(done), mib(total)
            ),
        }
    }
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
            crate::blobs::sync_dir(root)?;
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
            usage: (AtomicU64::new(0), AtomicU64::new(0)),
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
        inner.refresh_usage();
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
    /// cache refreshed after every pull, removal and release.
    pub fn fs_usage(&self) -> FsUsage {
        FsUsage {
            mountpoint: self.inner.root.clone(),
            used_bytes: self.inner.usage.0.load(Ordering::Relaxed)
                + self.inner.db_bytes.load(Ordering::Relaxed),
            inodes_used: self.inner.usage.1.load(Ordering::Relaxed) + 1,
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
        blocking("release lease", move || {
            let chain = inner
                .meta
                .leases()?
                .into_iter()
                .find(|l| l.id == lease_id)
                .map(|l| l.chain_id);
            inner.meta.delete_lease(&lease_id)?;
            if let Some(chain) = chain {
                inner.collect(&[], &[], &[chain])?;
            }
            Ok(())
        })
        .await?;
        drop(guard);
        self.inner.clone().sweep_objects_guarded().await
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
            crate::blobs::sync_dir(&root)
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

    /// The blob store (manifests, configs, and layer blobs while they are kept).
    pub fn blobs(&self) -> &BlobStore {
        &self.inner.blobs
    }

    /// The metadata database (for the tree cache and tooling).
    pub fn metadata(&self) -> &Metadata {
        &self.inner.meta
    }
}

/// Resolve a lookup string to an image id.
fn resolve(index: &Index, input: &str) -> Result<Option<Digest>> {
    let lookup = ImageLookup::parse(input).map_err(|e| Error::invalid_reference(input, e))?;
    let by_prefix = |prefix: &str| -> Result<Option<Digest>> {
        let matches: Vec<&Digest> = index
            .images
            .keys()
            .filter(|id| id.hex().starts_with(prefix))
            .collect();
        match matches.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some((*one).clone())),
            many => Err(Error::AmbiguousId {
                prefix: prefix.to_string(),
                count: many.len(),
            }),
        }
    };
    match lookup {
        ImageLookup::Id(id) => Ok(index.images.contains_key(&id).then_some(id)),
        ImageLookup::Prefix(p) => by_prefix(&p),
        ImageLookup::Name { reference, prefix } => {
            let key = match reference.digest() {
                Some(d) => reference.repo_digest(d),
                None => reference
                    .repo_tag()
                    .unwrap_or_else(|| reference.to_string()),
            };
            if let Some(id) = index.refs.get(&key) {
                return Ok(Some(id.clone()));
            }
            match prefix {
                Some(p) => by_prefix(&p),
                None => Ok(None),
            }
        }
    }
}

impl Inner {
    fn read_index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        match self.index.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn write_index(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        match self.index.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn refresh_db_size(&self) {
        self.db_bytes
            .store(file_disk_bytes(self.meta.path()), Ordering::Relaxed);
    }

    /// Take leases on `digests` (under `gc_lock`, so no collection is half-way).
    async fn lease(self: &Arc<Self>, leases: &mut Leases, digests: &[Digest]) {
        let _guard = self.gc_lock.lock().await;
        let mut map = match self.leases.lock() {
            Ok(l) => l,
            Err(p) => p.into_inner(),
        };
        for d in digests {
            *map.entry(d.clone()).or_insert(0) += 1;
            leases.held.push(d.clone());
        }
    }

    /// Delete those of `blobs` and layers `diff_ids` that no image names and no pull leases.
    /// Caller holds `gc_lock`. Blocking.
    fn collect(&self, blobs: &[Digest], diff_ids: &[Digest], chains: &[ChainId]) -> Result<()> {
        self.collect_trees(chains)?;
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
        if !layers.is_empty() {
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
        self.blobs.remove(&doomed)
    }

    /// The `Image` for a record, with its tree path.
    fn image(&self, record: &ImageRecord) -> Image {
        let mut image = Image::from(record);
        image.tree = record
            .chain_id
            .as_ref()
            .map(|c| self.paths.trees.join(c.0.hex()));
        image
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
    fn collect_trees(&self, chains: &[ChainId]) -> Result<()> {
        if chains.is_empty() {
            return Ok(());
        }
        let held = self.held_chains()?;
        for chain in chains.iter().collect::<BTreeSet<_>>() {
            if held.contains(&chain.0) || self.meta.tree(chain)?.is_none() {
                continue;
            }
            self.meta.delete_trees(std::slice::from_ref(chain))?;
            crate::failpoint::hit("gc.tree-record-deleted");
            self.remove_tree_dir(&chain.0)?;
            debug!(%chain, "removed tree");
        }
        Ok(())
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

    /// Render the tree of `chain` unless it exists. Caller holds the store guard (shared) and
    /// a lease on the chain.
    async fn ensure_tree(self: &Arc<Self>, chain: &ChainId, diff_ids: &[Digest]) -> Result<()> {
        let _flight = self.flights.lock(&format!("tree:{chain}")).await;
        let (inner, chain, diff_ids) = (self.clone(), chain.clone(), diff_ids.to_vec());
        blocking("render tree", move || {
            if let Some(t) = inner.meta.tree(&chain)?
                && t.path.is_dir()
            {
                return Ok(());
            }
            let started = Instant::now();
            let rendered = crate::render::render(&inner.paths, &chain, &diff_ids)?;
            inner.meta.put_tree(&TreeRecord {
                version: 1,
                chain_id: chain.clone(),
                diff_ids: diff_ids.clone(),
                path: rendered.path,
                created: now_secs(),
                entries: rendered.entries,
            })?;
            crate::failpoint::hit("render.after-record");
            info!(%chain, layers = diff_ids.len(), entries = rendered.entries,
                ms = started.elapsed().as_millis() as u64, "rendered tree");
            Ok(())
        })
        .await
    }

    /// At open: trees whose record is gone or that nothing holds, and layer or tree
    /// directories without a record (a crash between a rename and its record).
    fn sweep_trees_and_layer_dirs(&self) -> Result<()> {
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
    fn sweep_unreferenced_objects(&self) -> Result<()> {
        let mut referenced = HashSet::new();
        for layer in self.meta.layers()? {
            let m = LayerManifest::load(&self.paths.layer_dir(&layer.diff_id))?;
            for e in m.entries {
                if let crate::unpack::Kind::File {
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
    fn sweep_objects(&self) -> Result<()> {
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
                crate::blobs::sync_dir(&self.paths.objects.join(&fan))?;
            }
        }
        Ok(removed)
    }

    /// The object sweep (one at a time, concurrent with pulls), then the usage refreshed.
    async fn sweep_objects_guarded(self: Arc<Self>) -> Result<()> {
        let _one = self.sweep_lock.lock().await;
        let inner = self.clone();
        blocking("sweep objects", move || {
            inner.sweep_objects()?;
            inner.refresh_usage();
            Ok(())
        })
        .await
    }

    /// Walk the store's directories (blobs, objects, layers, trees) once and cache (bytes,
    /// inodes), each inode counted once however many names it has.
    fn refresh_usage(&self) {
        use std::os::unix::fs::MetadataExt;
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
        self.usage.0.store(bytes, Ordering::Relaxed);
        self.usage.1.store(inodes, Ordering::Relaxed);
    }

    /// At open: drop layer records no image names, and blobs neither an image nor a layer
    /// names (a crash between a blob's commit and its image's leaves those).
    fn sweep_orphans(&self) -> Result<()> {
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

    async fn pull(
        self: Arc<Self>,
        image: ImageRef,
        auth: Option<Credentials>,
        gone: tokio::sync::watch::Receiver<()>,
    ) -> Result<Image> {
        let progress = Arc::new(Progress {
            gone,
            reference: image.to_string(),
            total: AtomicU64::new(0),
            done: AtomicU64::new(0),
            started: Instant::now(),
        });
        let ticker = {
            let progress = progress.clone();
            tokio::spawn(async move {
                let mut interval = tokio::time::interval(PROGRESS_INTERVAL);
                interval.tick().await;
                loop {
                    interval.tick().await;
                    progress.log(None);
                }
            })
        };
        let mut leases = Leases {
            inner: self.clone(),
            held: Vec::new(),
        };
        let mut touched = Touched::default();
        let store_guard = self.store_guard.read().await;
        let result = if self.closed.load(Ordering::SeqCst) {
            Err(Error::Closed)
        } else {
            self.pull_steps(&image, auth.as_ref(), &progress, &mut leases, &mut touched)
                .await
        };
        ticker.abort();
        drop(leases);
        match result {
            Ok(img) => {
                progress.log(Some(&img.id));
                Ok(img)
            }
            Err(e) => {
                warn!(image = %image, error = %e, "pull failed");
                // Leave no trace: what this pull committed and nothing else holds goes.
                let _guard = self.gc_lock.lock().await;
                let inner = self.clone();
                let cleanup = blocking("pull cleanup", move || {
                    inner.collect(&touched.blobs, &touched.diff_ids, &touched.chains)
                })
                .await;
                if let Err(c) = cleanup {
                    warn!(image = %image, error = %c, "cleanup after failed pull");
                }
                drop(store_guard);
                Err(e)
            }
        }
    }

    async fn pull_steps(
        self: &Arc<Self>,
        image: &ImageRef,
        auth: Option<&Credentials>,
        progress: &Arc<Progress>,
        leases: &mut Leases,
        touched: &mut Touched,
    ) -> Result<Image> {
        let reference = image.to_string();
        let (session, top_bytes, top_digest) = self.registry.resolve(image, auth).await?;
        debug!(image = %reference, host = session.host(), digest = %top_digest, "resolved");
        let mut manifests: Vec<(Digest, Bytes)> = vec![(top_digest.clone(), top_bytes.clone())];
        let manifest = match Manifest::parse(&reference, &top_digest, &top_bytes)? {
            Manifest::Image(m) => m,
            Manifest::Index(entries) => {
                let want = host_platform();
                let entry =
                    choose_platform(&entries, &want).ok_or_else(|| Error::NoMatchingPlatform {
                        reference: reference.clone(),
                        platform: want.to_string(),
                        available: entries
                            .iter()
                            .filter_map(|e| e.platform.as_ref().map(|p| p.to_string()))
                            .collect::<Vec<_>>()
                            .join(", "),
                    })?;
                let (bytes, digest) = session.fetch_manifest(entry.digest.as_str()).await?;
                if bytes.len() as u64 != entry.size {
                    return Err(Error::BlobSizeMismatch {
                        digest: entry.digest.clone(),
                        expected: entry.size,
                        actual: bytes.len() as u64,
                    });
                }
                let m = match Manifest::parse(&reference, &digest, &bytes)? {
                    Manifest::Image(m) => m,
                    Manifest::Index(_) => {
                        return Err(Error::InvalidContent {
                            reference: reference.clone(),
                            what: "index".into(),
                            digest: top_digest.clone(),
                            reason: "its linux/amd64 entry is another index".into(),
                        });
                    }
                };
                manifests.push((digest, bytes));
                m
            }
        };
        if manifest.config.media_type != OCI_CONFIG && manifest.config.media_type != DOCKER_CONFIG {
            return Err(Error::UnsupportedMediaType {
                reference: reference.clone(),
                what: "config".into(),
                media_type: manifest.config.media_type.clone(),
            });
        }
        for (i, layer) in manifest.layers.iter().enumerate() {
            if Compression::of_layer_media_type(&layer.media_type).is_none() {
                return Err(Error::UnsupportedMediaType {
                    reference: reference.clone(),
                    what: format!("layer {i}"),
                    media_type: layer.media_type.clone(),
                });
            }
        }
        let total: u64 = manifest.layers.iter().map(|l| l.size).sum::<u64>() + manifest.config.size;
        progress.total.store(total, Ordering::Relaxed);

        // Manifests and config: lease, then fetch once, then commit.
        let mut small: Vec<Digest> = manifests.iter().map(|(d, _)| d.clone()).collect();
        small.push(manifest.config.digest.clone());
        self.lease(leases, &small).await;
        touched.blobs.extend(small.iter().cloned());
        for (digest, bytes) in &manifests {
            let (inner, digest, bytes) = (self.clone(), digest.clone(), bytes.clone());
            blocking("store manifest", move || {
                inner
                    .blobs
                    .put_verified(&digest, bytes.len() as u64, &bytes)
            })
            .await?;
        }
        let config_bytes = self.fetch_config(&session, &manifest.config).await?;
        progress
            .done
            .fetch_add(manifest.config.size, Ordering::Relaxed);
        let config = ImageConfigFile::parse(&reference, &manifest.config.digest, &config_bytes)?;
        let diff_ids = config.rootfs.diff_ids.clone();
        if diff_ids.len() != manifest.layers.len() {
            return Err(Error::LayerCountMismatch {
                reference: reference.clone(),
                layers: manifest.layers.len(),
                diff_ids: diff_ids.len(),
            });
        }
        self.lease(leases, &diff_ids).await;
        touched.diff_ids.extend(diff_ids.iter().cloned());

        // Layers, a few at a time; every started layer runs to its end so nothing is still
        // writing when a failed pull cleans up.
        let failed = Arc::new(AtomicBool::new(false));
        let session = Arc::new(session);
        let budget = crate::layer::ImageBudget::new(self.image_limits.0, self.image_limits.1);
        let inputs: Vec<LayerInput> = manifest
            .layers
            .iter()
            .zip(&diff_ids)
            .enumerate()
            .map(|(index, (desc, diff_id))| LayerInput {
                index,
                digest: desc.digest.clone(),
                media_type: desc.media_type.clone(),
                size: desc.size,
                diff_id: diff_id.clone(),
                budget: budget.clone(),
            })
            .collect();
        let results: Vec<Result<()>> =
            futures_util::stream::iter(inputs.into_iter().zip(manifest.layers.iter().cloned()))
                .map(|(input, desc)| {
                    let (inner, session, failed, progress) = (
                        self.clone(),
                        session.clone(),
                        failed.clone(),
                        progress.clone(),
                    );
                    async move {
                        if failed.load(Ordering::Relaxed) {
                            return Ok(());
                        }
                        if progress.abandoned() {
                            failed.store(true, Ordering::Relaxed);
                            return Err(progress.abandoned_error());
                        }
                        let r = inner.pull_layer(&session, input, desc, &progress).await;
                        if r.is_err() {
                            failed.store(true, Ordering::Relaxed);
                        }
                        r
                    }
                })
                .buffered(PARALLEL_LAYERS)
                .collect()
                .await;
        for r in results {
            r?;
        }

        // Commit the image.
        let layers: Vec<LayerRef> = manifest
            .layers
            .iter()
            .zip(&diff_ids)
            .map(|(d, diff_id)| LayerRef {
                digest: d.digest.clone(),
                media_type: d.media_type.clone(),
                size: d.size,
                diff_id: diff_id.clone(),
            })
            .collect();
        let size = total + manifests.iter().map(|(_, b)| b.len() as u64).sum::<u64>();
        let record = ImageRecord {
            version: RECORD_VERSION,
            id: manifest.config.digest.clone(),
            repo_tags: image.repo_tag().into_iter().collect(),
            repo_digests: vec![image.repo_digest(&top_digest)],
            size,
            config: config.config.clone(),
            created: config.created.clone(),
            chain_id: ChainId::of(&diff_ids),
            layers,
            blobs: small,
            pulled_at: now_secs(),
        };
        if let Some(chain) = &record.chain_id {
            self.lease(leases, std::slice::from_ref(&chain.0)).await;
            touched.chains.push(chain.clone());
            self.ensure_tree(chain, &diff_ids).await?;
        }
        let _guard = self.gc_lock.lock().await;
        let inner = self.clone();
        let committed = blocking("commit image", move || inner.commit_image(record)).await?;
        self.refresh_db_size();
        let inner = self.clone();
        let _ = blocking("usage", move || {
            inner.refresh_usage();
            Ok(())
        })
        .await;
        Ok(self.image(&committed))
    }

    async fn fetch_config(&self, session: &Session, desc: &Descriptor) -> Result<Bytes> {
        let _flight = self.flights.lock(&format!("blob:{}", desc.digest)).await;
        if self.blobs.contains(&desc.digest) {
            let (blobs, digest) = (self.blobs.clone(), desc.digest.clone());
            return blocking("read config", move || blobs.read(&digest))
                .await
                .map(Bytes::from);
        }
        let bytes = session.fetch_small_blob(desc, MAX_CONFIG_SIZE).await?;
        let (blobs, digest, data, size) = (
            self.blobs.clone(),
            desc.digest.clone(),
            bytes.clone(),
            desc.size,
        );
        blocking("store config", move || {
            blobs.put_verified(&digest, size, &data)
        })
        .await?;
        Ok(bytes)
    }

    async fn pull_layer(
        self: &Arc<Self>,
        session: &Session,
        input: LayerInput,
        desc: Descriptor,
        progress: &Arc<Progress>,
    ) -> Result<()> {
        let _flight = self.flights.lock(&format!("layer:{}", input.diff_id)).await;
        let (sink, diff_id) = (self.sink.clone(), input.diff_id.clone());
        if blocking("look up layer", move || sink.lookup(&diff_id))
            .await?
            .is_some()
        {
            debug!(diff_id = %input.diff_id, "layer already present");
            return Ok(());
        }
        // A connection lost mid-blob restarts the layer (the sink committed nothing).
        let mut delay = LAYER_RETRY_BACKOFF;
        let mut attempt = 1;
        loop {
            match self
                .download_layer(session, input.clone(), &desc, progress)
                .await
            {
                Err(e) if e.is_transient() && attempt < LAYER_ATTEMPTS => {
                    warn!(digest = %input.digest, attempt, error = %e,
                        "layer download failed, retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn download_layer(
        self: &Arc<Self>,
        session: &Session,
        input: LayerInput,
        desc: &Descriptor,
        progress: &Arc<Progress>,
    ) -> Result<()> {
        let mut stream = session.open_blob(desc).await?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes>>(16);
        let sink = self.sink.clone();
        let layer = input.clone();
        let writer = tokio::task::spawn_blocking(move || {
            let mut reader =
                VerifyingReader::new(ChannelReader::new(rx), layer.digest.clone(), layer.size);
            sink.commit(&layer, &mut reader)
        });
        // A blob must keep arriving at `blob_min_bytes_per_sec`, measured over windows of
        // `blob_stall_secs` of time spent waiting on the network (time spent waiting on the
        // disk does not count): a server that drips cannot hold the pull for ever.
        let (min_rate, window) = self.blob_rate;
        let min_bytes = min_rate.saturating_mul(window.as_secs());
        let (mut waited, mut got) = (Duration::ZERO, 0u64);
        let mut gone = progress.gone.clone();
        loop {
            let started = Instant::now();
            let next = tokio::select! {
                _ = gone.changed() => Ok(Some(Err(progress.abandoned_error()))),
                r = tokio::time::timeout(window.saturating_sub(waited), stream.next()) => r,
            };
            waited += started.elapsed();
            let chunk = match next {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(_) => Err(Error::RegistryTimeout {
                    host: session.host().to_string(),
                    what: format!("blob {}", input.digest),
                    detail: format!(
                        "{got} bytes in {}s, less than images.blob_min_bytes_per_sec = \
                         {min_rate} over images.blob_stall_secs",
                        window.as_secs()
                    ),
                }),
            };
            if let Ok(c) = &chunk {
                got += c.len() as u64;
            }
            let chunk = if waited >= window {
                let slow = got < min_bytes;
                let detail = format!(
                    "{got} bytes in {}s, less than images.blob_min_bytes_per_sec = {min_rate} \
                     over images.blob_stall_secs",
                    waited.as_secs()
                );
                (waited, got) = (Duration::ZERO, 0);
                match chunk {
                    Ok(_) if slow => Err(Error::RegistryTimeout {
                        host: session.host().to_string(),
                        what: format!("blob {}", input.digest),
                        detail,
                    }),
                    other => other,
                }
            } else {
                chunk
            };
            let failed = chunk.is_err();
            if let Ok(c) = &chunk {
                progress.done.fetch_add(c.len() as u64, Ordering::Relaxed);
            }
            // A closed channel means the sink stopped (and will report why).
            if tx.send(chunk).await.is_err() || failed {
                break;
            }
        }
        drop(tx);
        let record = writer.await.map_err(|e| Error::Interrupted {
            what: format!("layer {}", input.digest),
            detail: e.to_string(),
        })??;
        debug!(diff_id = %record.diff_id, size = record.size, "layer committed");
        Ok(())
    }

    /// Write `record` (merged with an existing image of the same id) and move its tag away
    /// from any other image. Caller holds `gc_lock`. Blocking.
    fn commit_image(&self, record: ImageRecord) -> Result<ImageRecord> {
        let mut changes = ImageChanges::default();
        let merged = {
            let index = self.read_index();
            let mut merged = match index.images.get(&record.id) {
                Some(existing) => {
                    let mut m = existing.clone();
                    for t in &record.repo_tags {
                        if !m.repo_tags.contains(t) {
                            m.repo_tags.push(t.clone());
                        }
                    }
                    for d in &record.repo_digests {
                        if !m.repo_digests.contains(d) {
                            m.repo_digests.push(d.clone());
                        }
                    }
                    for b in &record.blobs {
                        if !m.blobs.contains(b) {
                            m.blobs.push(b.clone());
                        }
                    }
                    m
                }
                None => record.clone(),
            };
            merged.version = RECORD_VERSION;
            // A tag names one image: moving it here takes it from its previous holder
            // (which stays, untagged, until removed, as with containerd).
            for r in record.repo_tags.iter().chain(record.repo_digests.iter()) {
                if let Some(old_id) = index.refs.get(r)
                    && old_id != &record.id
                    && let Some(old) = index.images.get(old_id)
                {
                    let mut old = changes
                        .put
                        .iter()
                        .find(|p| &p.id == old_id)
                        .cloned()
                        .unwrap_or_else(|| old.clone());
                    old.repo_tags.retain(|t| t != r);
                    old.repo_digests.retain(|t| t != r);
                    changes.put.retain(|p| &p.id != old_id);
                    changes.put.push(old);
                }
                changes.put_refs.push((r.clone(), record.id.clone()));
            }
            merged
        };
        changes.put.push(merged.clone());
        self.meta.apply(&changes)?;
        let mut index = self.write_index();
        for r in &changes.put {
            index.images.insert(r.id.clone(), r.clone());
        }
        for (r, id) in &changes.put_refs {
            index.refs.insert(r.clone(), id.clone());
        }
        Ok(merged)
    }
}

/// What a pull committed or relied on, offered to the collector if it fails.
#[derive(Default)]
struct Touched {
    blobs: Vec<Digest>,
    diff_ids: Vec<Digest>,
    chains: Vec<ChainId>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn record(id: Digest, tag: &str) -> ImageRecord {
        ImageRecord {
            version: 1,
            id,
            repo_tags: vec![tag.to_string()],
            repo_digests: vec![],
            size: 0,
            config: RuntimeConfig::default(),
            created: None,
            layers: vec![],
            chain_id: None,
            blobs: vec![],
            pulled_at: 0,
        }
    }

    #[test]
    fn lookups_resolve_names_ids_and_unique_prefixes() {
        let a = Digest::from_hex(&format!("abcd1{}", "0".repeat(59))).unwrap();
        let b = Digest::from_hex(&format!("abcd2{}", "0".repeat(59))).unwrap();
        let mut index = Index::default();
        for (id, tag) in [
            (&a, "docker.io/library/a:latest"),
            (&b, "docker.io/library/b:1"),
        ] {
            index.images.insert(id.clone(), record(id.clone(), tag));
            index.refs.insert(tag.to_string(), id.clone());
        }
        assert_eq!(resolve(&index, "a").unwrap(), Some(a.clone()));
        assert_eq!(
            resolve(&index, "docker.io/library/b:1").unwrap(),
            Some(b.clone())
        );
        assert_eq!(resolve(&index, "b").unwrap(), None);
        assert_eq!(resolve(&index, a.as_str()).unwrap(), Some(a.clone()));
        assert_eq!(resolve(&index, "abcd1").unwrap(), Some(a.clone()));
        assert_eq!(resolve(&index, "sha256:abcd2").unwrap(), Some(b));
        let err = resolve(&index, "abcd").unwrap_err();
        assert!(matches!(err, Error::AmbiguousId { count: 2, .. }), "{err}");
        assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument);
        assert_eq!(resolve(&index, "ffff").unwrap(), None);
        let json = serde_json::to_value(Image::from(&record(a, "x"))).unwrap();
        assert!(json.is_object());
    }

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
