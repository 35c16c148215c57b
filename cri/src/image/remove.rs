//! RemoveImage.

use k8s_cri::v1::{RemoveImageRequest, RemoveImageResponse};
use tracing::info;

use super::{ImageApi, image_name};
use crate::error::CriError;

impl ImageApi {
    /// Any tag, digest or id removes the whole image with every name it has (critest
    /// `image.go`); an absent image is OK, since kubelet's image GC may race a removal.
    pub(super) async fn handle_remove_image(
        &self,
        req: RemoveImageRequest,
    ) -> Result<RemoveImageResponse, CriError> {
        let name = image_name(req.image.as_ref())?;
        self.store.remove(name).await?;
        info!(image = name, "removed");
        Ok(RemoveImageResponse {})
    }
}
