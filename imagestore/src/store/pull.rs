//! One pull: resolve the reference, fetch manifests and config, download and unpack the
//! layers a few at a time, render the image's tree, commit the image. Everything it uses is
//! leased first; a failed pull offers what it touched to the collector.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use tracing::{debug, info, warn};

use super::{Image, Inner, RECORD_VERSION, blocking, now_secs};
use crate::error::{Error, Result};
use crate::layer::LayerInput;
use crate::manifest::{
    Compression, DOCKER_CONFIG, Descriptor, ImageConfigFile, ImageManifest, Manifest, OCI_CONFIG,
    choose_platform, host_platform,
};
use crate::metadata::{ImageRecord, LayerRef, TreeRecord};
use crate::reference::{ChainId, Digest, ImageRef};
use crate::registry::{Credentials, Session};

/// Largest config blob accepted (configs are read whole; real ones are a few KiB). 4 MiB,
/// containerd's cap on manifests and configs read into memory.
const MAX_CONFIG_SIZE: u64 = 4 << 20;
/// Layers downloaded at once per pull.
const PARALLEL_LAYERS: usize = 3;
/// A pull running longer than this logs progress, and again every such interval.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);

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

/// Pull progress, logged at info by a ticker for long pulls (#20), and once per finished
/// pull: what an operator watching the log needs to tell a slow registry from a stuck one.
pub(super) struct Progress {
    /// Closed when the caller is gone (see [`ImageStore::pull`]).
    pub(super) gone: tokio::sync::watch::Receiver<()>,
    reference: String,
    /// Bytes of the layers and config to download.
    total: AtomicU64,
    /// Bytes downloaded so far.
    pub(super) done: AtomicU64,
    /// Layers of the image, and those finished (downloaded and unpacked, or present).
    layers: AtomicU64,
    pub(super) layers_done: AtomicU64,
    /// Layers that were already in the store.
    pub(super) layers_present: AtomicU64,
    started: Instant,
}

impl Progress {
    fn new(reference: String, gone: tokio::sync::watch::Receiver<()>) -> Self {
        Progress {
            gone,
            reference,
            total: AtomicU64::new(0),
            done: AtomicU64::new(0),
            layers: AtomicU64::new(0),
            layers_done: AtomicU64::new(0),
            layers_present: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// The caller of the pull went away.
    fn abandoned(&self) -> bool {
        self.gone.has_changed().is_err()
    }

    pub(super) fn abandoned_error(&self) -> Error {
        Error::Interrupted {
            what: format!("pull of {}", self.reference),
            detail: "the caller cancelled the request".into(),
        }
    }

    /// One line: while pulling (`final_id` `None`) the layer being worked on, bytes so far
    /// and the rate; at the end the size, time and rate (decimal MB, as registries and
    /// `crictl` count).
    fn log(&self, final_id: Option<&Digest>) {
        let mb = |b: u64| b as f64 / 1e6;
        let done = self.done.load(Ordering::Relaxed);
        let total = self.total.load(Ordering::Relaxed);
        let layers = self.layers.load(Ordering::Relaxed);
        let finished = self.layers_done.load(Ordering::Relaxed);
        let present = self.layers_present.load(Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = mb(done) / secs;
        match final_id {
            Some(id) => info!(
                image = %self.reference, %id, layers, present,
                "pulled {}: {:.1} MB in {secs:.2} s ({rate:.1} MB/s)",
                self.reference, mb(done)
            ),
            None => info!(
                image = %self.reference,
                "pulling {}: layer {}/{layers}, {:.1} of {:.1} MB, {rate:.1} MB/s",
                self.reference, (finished + 1).min(layers.max(1)), mb(done), mb(total)
            ),
        }
    }
}

/// What a pull committed or relied on, offered to the collector if it fails.
#[derive(Default)]
struct Touched {
    blobs: Vec<Digest>,
    diff_ids: Vec<Digest>,
    chains: Vec<ChainId>,
}

/// What resolving a reference gave: the session bound to the endpoint that had it, the
/// digest the reference resolved to, every manifest fetched on the way (the index and the
/// image manifest it chose, or the image manifest alone) and the image manifest.
struct Resolved {
    session: Arc<Session>,
    top_digest: Digest,
    manifests: Vec<(Digest, Bytes)>,
    manifest: ImageManifest,
}

/// Refuse a config or layer media type we cannot read before downloading anything.
fn check_media_types(reference: &str, manifest: &ImageManifest) -> Result<()> {
    if manifest.config.media_type != OCI_CONFIG && manifest.config.media_type != DOCKER_CONFIG {
        return Err(Error::UnsupportedMediaType {
            reference: reference.to_string(),
            what: "config".into(),
            media_type: manifest.config.media_type.clone(),
        });
    }
    for (i, layer) in manifest.layers.iter().enumerate() {
        if Compression::of_layer_media_type(&layer.media_type).is_none() {
            return Err(Error::UnsupportedMediaType {
                reference: reference.to_string(),
                what: format!("layer {i}"),
                media_type: layer.media_type.clone(),
            });
        }
    }
    Ok(())
}

/// The image record a pull commits. `size` counts as containerd does: compressed layers,
/// config, manifests (and index). `blobs` are the manifests and the config.
fn image_record(
    image: &ImageRef,
    resolved: &Resolved,
    config: &ImageConfigFile,
    diff_ids: &[Digest],
    layers_and_config: u64,
    blobs: Vec<Digest>,
) -> ImageRecord {
    let manifest = &resolved.manifest;
    let layers: Vec<LayerRef> = manifest
        .layers
        .iter()
        .zip(diff_ids)
        .map(|(d, diff_id)| LayerRef {
            digest: d.digest.clone(),
            media_type: d.media_type.clone(),
            size: d.size,
            diff_id: diff_id.clone(),
        })
        .collect();
    let documents: u64 = resolved.manifests.iter().map(|(_, b)| b.len() as u64).sum();
    ImageRecord {
        version: RECORD_VERSION,
        id: manifest.config.digest.clone(),
        repo_tags: image.repo_tag().into_iter().collect(),
        repo_digests: vec![image.repo_digest(&resolved.top_digest)],
        size: layers_and_config + documents,
        config: config.config.clone(),
        created: config.created.clone(),
        chain_id: ChainId::of(diff_ids),
        layers,
        blobs,
        pulled_at: now_secs(),
    }
}

impl Inner {
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

    pub(super) async fn pull(
        self: Arc<Self>,
        image: ImageRef,
        auth: Option<Credentials>,
        gone: tokio::sync::watch::Receiver<()>,
    ) -> Result<Image> {
        let progress = Arc::new(Progress::new(image.to_string(), gone));
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
                // A full disk is the operator's to fix, and says which disk (#19).
                let e = if e.is_disk_full() && !matches!(e, Error::DiskFull { .. }) {
                    Error::DiskFull {
                        root: self.root.clone(),
                        source: Box::new(e),
                    }
                } else {
                    e
                };
                warn!(image = %image, error = %e, "pull failed");
                // Leave no trace: what this pull committed and nothing else holds goes.
                let guard = self.gc_lock.lock().await;
                let inner = self.clone();
                let cleanup = blocking("pull cleanup", move || {
                    inner.collect(&touched.blobs, &touched.diff_ids, &touched.chains)
                })
                .await;
                if let Err(c) = cleanup {
                    warn!(image = %image, error = %c, "cleanup after failed pull");
                }
                drop(guard);
                // The objects its unpacks linked lost their other names with the layers'
                // work directories: sweep them now, not at the next removal or restart (a
                // pull that filled the disk would otherwise keep it full), which also makes
                // the usage `ImageFsInfo` reports exact again.
                if let Err(c) = self.clone().sweep_objects_guarded().await {
                    warn!(image = %image, error = %c, "object sweep after failed pull");
                }
                self.refresh_db_size();
                drop(store_guard);
                Err(e)
            }
        }
    }

    /// A pull, step by step. Every blob, layer and chain a step relies on is leased in
    /// `leases` before it is looked for, and what a step commits is noted in `touched`, so
    /// a failed pull's cleanup offers exactly that to the collector.
    async fn pull_steps(
        self: &Arc<Self>,
        image: &ImageRef,
        auth: Option<&Credentials>,
        progress: &Arc<Progress>,
        leases: &mut Leases,
        touched: &mut Touched,
    ) -> Result<Image> {
        let reference = image.to_string();
        let resolved = self.resolve_manifest(image, auth).await?;
        let manifest = &resolved.manifest;
        check_media_types(&reference, manifest)?;
        let total: u64 = manifest.layers.iter().map(|l| l.size).sum::<u64>() + manifest.config.size;
        progress.total.store(total, Ordering::Relaxed);
        progress
            .layers
            .store(manifest.layers.len() as u64, Ordering::Relaxed);

        // Manifests and config: lease, then fetch once, then commit.
        let mut small: Vec<Digest> = resolved.manifests.iter().map(|(d, _)| d.clone()).collect();
        small.push(manifest.config.digest.clone());
        self.lease(leases, &small).await;
        touched.blobs.extend(small.iter().cloned());
        self.store_manifests(&resolved.manifests).await?;
        let config_bytes = self
            .fetch_config(&resolved.session, &manifest.config)
            .await?;
        progress
            .done
            .fetch_add(manifest.config.size, Ordering::Relaxed);
        let config = ImageConfigFile::parse(&reference, &manifest.config.digest, &config_bytes)?;
        let diff_ids = config.rootfs.diff_ids.clone();
        if diff_ids.len() != manifest.layers.len() {
            return Err(Error::LayerCountMismatch {
                reference,
                layers: manifest.layers.len(),
                diff_ids: diff_ids.len(),
            });
        }
        self.lease(leases, &diff_ids).await;
        touched.diff_ids.extend(diff_ids.iter().cloned());

        self.pull_layers(&resolved, &diff_ids, progress).await?;

        let record = image_record(image, &resolved, &config, &diff_ids, total, small);
        if let Some(chain) = &record.chain_id {
            self.lease(leases, std::slice::from_ref(&chain.0)).await;
            touched.chains.push(chain.clone());
            self.ensure_tree(chain, &diff_ids).await?;
        }
        self.commit(record).await
    }

    /// Resolve `image` on the first endpoint that has it; from an index, fetch the image
    /// manifest of the host's platform.
    async fn resolve_manifest(
        &self,
        image: &ImageRef,
        auth: Option<&Credentials>,
    ) -> Result<Resolved> {
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
        Ok(Resolved {
            session: Arc::new(session),
            top_digest,
            manifests,
            manifest,
        })
    }

    /// Put the fetched manifests (and index) into the blob store.
    async fn store_manifests(self: &Arc<Self>, manifests: &[(Digest, Bytes)]) -> Result<()> {
        for (digest, bytes) in manifests {
            let (inner, digest, bytes) = (self.clone(), digest.clone(), bytes.clone());
            blocking("store manifest", move || {
                inner
                    .blobs
                    .put_verified(&digest, bytes.len() as u64, &bytes)
            })
            .await?;
        }
        Ok(())
    }

    /// Download and unpack the layers, a few at a time; every started layer runs to its end
    /// so nothing is still writing when a failed pull cleans up.
    async fn pull_layers(
        self: &Arc<Self>,
        resolved: &Resolved,
        diff_ids: &[Digest],
        progress: &Arc<Progress>,
    ) -> Result<()> {
        let layers = &resolved.manifest.layers;
        let failed = Arc::new(AtomicBool::new(false));
        let budget = crate::layer::ImageBudget::new(self.image_limits.0, self.image_limits.1);
        let inputs: Vec<LayerInput> = layers
            .iter()
            .zip(diff_ids)
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
            futures_util::stream::iter(inputs.into_iter().zip(layers.iter().cloned()))
                .map(|(input, desc)| {
                    let (inner, session, failed, progress) = (
                        self.clone(),
                        resolved.session.clone(),
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
                        match &r {
                            Ok(()) => {
                                progress.layers_done.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(_) => failed.store(true, Ordering::Relaxed),
                        }
                        r
                    }
                })
                .buffered(PARALLEL_LAYERS)
                .collect()
                .await;
        results.into_iter().collect()
    }

    /// Commit the image record (under `gc_lock`); the usage figures are refreshed after.
    async fn commit(self: &Arc<Self>, record: ImageRecord) -> Result<Image> {
        let guard = self.gc_lock.lock().await;
        let inner = self.clone();
        let committed = blocking("commit image", move || inner.commit_image(record)).await?;
        self.refresh_db_size();
        drop(guard);
        self.usage.changed();
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(media_type: &str) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest: Digest::of(media_type.as_bytes()),
            size: 1,
            platform: None,
            urls: None,
        }
    }

    #[test]
    fn media_types_are_checked_before_anything_is_downloaded() {
        let layers = |types: &[&str]| types.iter().map(|t| desc(t)).collect::<Vec<_>>();
        let ok = ImageManifest {
            config: desc(DOCKER_CONFIG),
            layers: layers(&[
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                "application/vnd.oci.image.layer.v1.tar+zstd",
            ]),
        };
        assert!(check_media_types("r", &ok).is_ok());
        let config = ImageManifest {
            config: desc("application/vnd.cncf.helm.config.v1+json"),
            layers: vec![],
        };
        let layer = ImageManifest {
            config: desc(OCI_CONFIG),
            layers: layers(&[
                "application/vnd.oci.image.layer.v1.tar",
                "application/vnd.oci.image.layer.v1.tar+bzip2",
            ]),
        };
        for (manifest, named) in [(config, "config"), (layer, "layer 1")] {
            match check_media_types("r", &manifest) {
                Err(Error::UnsupportedMediaType { what, .. }) => assert_eq!(what, named),
                other => panic!("{named}: {other:?}"),
            }
        }
    }
}
