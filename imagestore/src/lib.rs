//! rootstock's image store: references, the registry client, the content-addressed blob
//! store, image metadata, and the layer-sink seam the tree cache plugs into.
//!
//! The gRPC `ImageService` uses [`ImageStore`]:
//!
//! ```no_run
//! # async fn demo() -> rootstock_imagestore::Result<()> {
//! use rootstock_imagestore::{ImageStore, ImagesConfig};
//! let store = ImageStore::open("/var/lib/rootstock".as_ref(), &ImagesConfig::default())?;
//! let image = store.pull("busybox", None).await?;
//! assert!(store.status(image.id.as_str())?.is_some());
//! store.remove("busybox").await?;
//! # Ok(()) }
//! ```
//!
//! Layers are unpacked by [`TreeLayerSink`] into deduplicated file objects and layer trees,
//! and each image gets one flattened tree ([`Image::tree_path`]). The runtime holds a tree
//! for a container with [`ImageStore::lease_tree`] / [`ImageStore::release`] and mounts it
//! as the one `lowerdir` of the container's overlay (the runtime's business, not the
//! store's); the daemon calls [`ImageStore::close`] on shutdown;
//! `rootstock store verify` is [`verify::verify_offline`], `store verify --repair`
//! [`repair::repair_offline`], `store gc` [`offline::gc_offline`].
//!
//! Errors are one enum, [`Error`]; [`Error::kind`] picks the gRPC status code.

pub mod blobs;
pub mod config;
mod entries;
pub mod error;
pub mod failpoint;
mod fsutil;
pub mod gzip;
pub mod layer;
mod layout;
pub mod leases;
pub mod manifest;
pub mod metadata;
mod migrate;
pub mod offline;
pub mod reference;
pub mod registry;
mod render;
pub mod repair;
pub mod store;
mod tarstream;
pub mod unpack;
pub mod verify;
mod writers;

pub use config::{ImagesConfig, RegistryConfig};
pub use error::{Error, ErrorKind, Result};
pub use layer::{ImageBudget, LayerInput, LayerSink};
pub use manifest::RuntimeConfig;
pub use reference::{ChainId, Digest, ImageLookup, ImageRef, ReferenceError};
pub use registry::Credentials;
pub use store::{FsUsage, Image, ImageStore, ImageUser};
pub use unpack::{SinkLimits, TreeLayerSink};
