//! ImageStatus and ListImages, answered from the store's in-memory index.

use std::collections::HashMap;

use k8s_cri::v1::{
    Image, ImageSpec, ImageStatusRequest, ImageStatusResponse, Int64Value, ListImagesRequest,
    ListImagesResponse,
};
use rootstock_imagestore::ImageUser;

use super::{ImageApi, image_name};
use crate::error::CriError;

impl ImageApi {
    /// An absent image is an empty answer, not an error (CRI; kubelet pulls on `None`).
    pub(super) fn handle_image_status(
        &self,
        req: ImageStatusRequest,
    ) -> Result<ImageStatusResponse, CriError> {
        let name = image_name(req.image.as_ref())?;
        let Some(image) = self.store.status(name)? else {
            return Ok(ImageStatusResponse::default());
        };
        let mut info = HashMap::new();
        if req.verbose {
            // crictl decodes every info value as a JSON object.
            let verbose = serde_json::json!({
                "id": image.id.to_string(),
                "chainID": image.chain_id.as_ref().map(ToString::to_string),
                "diffIDs": image.diff_ids.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "created": image.created,
                "config": image.config,
            });
            info.insert("info".to_owned(), verbose.to_string());
        }
        Ok(ImageStatusResponse {
            image: Some(to_cri(&image)),
            info,
        })
    }

    pub(super) fn handle_list_images(
        &self,
        req: ListImagesRequest,
    ) -> Result<ListImagesResponse, CriError> {
        let wanted = req.filter.and_then(|f| f.image).map(|s| s.image);
        let images = match wanted.as_deref().map(str::trim) {
            Some(name) if !name.is_empty() => self.store.status(name)?.into_iter().collect(),
            _ => self.store.list(),
        };
        Ok(ListImagesResponse {
            images: images.iter().map(to_cri).collect(),
        })
    }
}

fn to_cri(image: &rootstock_imagestore::Image) -> Image {
    let (uid, username) = match &image.user {
        ImageUser::Unset => (None, String::new()),
        ImageUser::Uid(uid) => (Some(Int64Value { value: *uid }), String::new()),
        ImageUser::Name(name) => (None, name.clone()),
    };
    Image {
        id: image.id.to_string(),
        repo_tags: image.repo_tags.clone(),
        repo_digests: image.repo_digests.clone(),
        size: image.size,
        uid,
        username,
        spec: Some(ImageSpec {
            image: image.id.to_string(),
            ..ImageSpec::default()
        }),
        pinned: image.pinned,
    }
}
