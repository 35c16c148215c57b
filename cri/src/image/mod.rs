//! `ImageService`: the dispatch table. Each RPC family lives in its own module as inherent
//! methods on [`ImageApi`]; this table only unwraps the request and converts the result.

mod fs_info;
mod pull;
mod remove;
mod status;

use std::sync::Arc;

use k8s_cri::v1::image_service_server::ImageService;
use k8s_cri::v1::*;
use rootstock_imagestore::ImageStore;
use rootstock_runtime::Runtime;
use tonic::{Request, Response, Status};

use crate::error::reply;

/// State shared by the image RPCs.
pub struct ImageApi {
    store: Arc<ImageStore>,
    /// The containers' writable layers, reported apart when they sit on another
    /// filesystem than the store (probed once: kubelet's eviction manager then watches both).
    layers: Option<Arc<Runtime>>,
    /// The daemon's Prometheus metrics (pulls, image GC).
    metrics: Arc<crate::metrics::DaemonMetrics>,
}

impl ImageApi {
    pub fn new(
        store: Arc<ImageStore>,
        rt: Arc<Runtime>,
        metrics: Arc<crate::metrics::DaemonMetrics>,
    ) -> Self {
        use std::os::unix::fs::MetadataExt;
        let dev = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.dev()).ok();
        let (layers_dir, _) = rt.writable_layers_usage();
        let apart = dev(&layers_dir) != dev(store.root());
        Self {
            store,
            layers: apart.then_some(rt),
            metrics,
        }
    }
}

#[tonic::async_trait]
impl ImageService for ImageApi {
    async fn list_images(
        &self,
        req: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        reply(self.handle_list_images(req.into_inner()))
    }

    async fn image_status(
        &self,
        req: Request<ImageStatusRequest>,
    ) -> Result<Response<ImageStatusResponse>, Status> {
        reply(self.handle_image_status(req.into_inner()))
    }

    async fn pull_image(
        &self,
        req: Request<PullImageRequest>,
    ) -> Result<Response<PullImageResponse>, Status> {
        let deadline = pull::grpc_timeout(req.metadata());
        reply(self.handle_pull_image(req.into_inner(), deadline).await)
    }

    async fn remove_image(
        &self,
        req: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        reply(self.handle_remove_image(req.into_inner()).await)
    }

    async fn image_fs_info(
        &self,
        _req: Request<ImageFsInfoRequest>,
    ) -> Result<Response<ImageFsInfoResponse>, Status> {
        reply(self.handle_image_fs_info())
    }
}

/// The image name of a request's `ImageSpec`, which CRI allows to be absent.
fn image_name(spec: Option<&ImageSpec>) -> Result<&str, crate::error::CriError> {
    match spec.map(|s| s.image.trim()) {
        Some(name) if !name.is_empty() => Ok(name),
        _ => Err(crate::error::CriError::InvalidArgument(
            "no image given (ImageSpec.image is empty)".to_owned(),
        )),
    }
}
