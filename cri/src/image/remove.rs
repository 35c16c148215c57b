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
        let present = self.store.status(name).ok().flatten().is_some();
        let before = self.store.fs_usage().used_bytes;
        self.store.remove(name).await?;
        if present {
            // The store collects what the image alone held as part of the removal.
            self.metrics.gc_runs.inc();
            let after = self.store.fs_usage().used_bytes;
            self.metrics
                .gc_freed_bytes
                .inc_by(before.saturating_sub(after));
        }
        info!(image = name, "removed");
        Ok(RemoveImageResponse {})
    }
}
