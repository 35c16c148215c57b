//! PullImage.

use k8s_cri::v1::{AuthConfig, PullImageRequest, PullImageResponse};
use rootstock_imagestore::Credentials;
use tracing::info;

use super::{ImageApi, image_name};
use crate::error::CriError;

impl ImageApi {
    pub(super) async fn pull(&self, req: PullImageRequest) -> Result<PullImageResponse, CriError> {
        let name = image_name(req.image.as_ref())?;
        let image = self.store.pull(name, req.auth.map(credentials)).await?;
        info!(image = name, id = %image.id, "pulled");
        // kubelet passes this id back in CreateContainer (images/image_manager.go).
        Ok(PullImageResponse {
            image_ref: image.id.to_string(),
        })
    }
}

fn credentials(auth: AuthConfig) -> Credentials {
    Credentials {
        username: auth.username,
        password: auth.password,
        auth: auth.auth,
        server_address: auth.server_address,
        identity_token: auth.identity_token,
        registry_token: auth.registry_token,
    }
}
