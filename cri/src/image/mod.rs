//! `ImageService`: the dispatch table, one module per RPC family.

use std::sync::Arc;

use k8s_cri::v1::image_service_server::ImageService;
use k8s_cri::v1::*;
use tonic::{Request, Response, Status};

use crate::config::Config;
use crate::error::not_yet;

/// State shared by the image RPCs.
pub struct ImageApi {
    #[allow(dead_code)] // read by the image handlers once they exist
    config: Arc<Config>,
}

impl ImageApi {
    pub fn new(config: Arc<Config>) -> Self {
        Self { config }
    }
}

#[tonic::async_trait]
impl ImageService for ImageApi {
    async fn list_images(
        &self,
        _req: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        not_yet("ListImages")
    }

    async fn image_status(
        &self,
        _req: Request<ImageStatusRequest>,
    ) -> Result<Response<ImageStatusResponse>, Status> {
        not_yet("ImageStatus")
    }

    async fn pull_image(
        &self,
        _req: Request<PullImageRequest>,
    ) -> Result<Response<PullImageResponse>, Status> {
        not_yet("PullImage")
    }

    async fn remove_image(
        &self,
        _req: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        not_yet("RemoveImage")
    }

    async fn image_fs_info(
        &self,
        _req: Request<ImageFsInfoRequest>,
    ) -> Result<Response<ImageFsInfoResponse>, Status> {
        not_yet("ImageFsInfo")
    }
}
