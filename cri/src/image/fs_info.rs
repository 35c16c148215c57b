//! ImageFsInfo: the eviction manager polls it about every 10 s, so it is answered from the
//! store's cached figures, never by walking the store.

use std::time::{SystemTime, UNIX_EPOCH};

use k8s_cri::v1::{FilesystemIdentifier, FilesystemUsage, ImageFsInfoResponse, UInt64Value};

use super::ImageApi;
use crate::error::CriError;

impl ImageApi {
    pub(super) fn fs_info(&self) -> Result<ImageFsInfoResponse, CriError> {
        let usage = self.store.fs_usage();
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or_default();
        Ok(ImageFsInfoResponse {
            image_filesystems: vec![FilesystemUsage {
                timestamp,
                fs_id: Some(FilesystemIdentifier {
                    mountpoint: usage.mountpoint.display().to_string(),
                }),
                used_bytes: Some(UInt64Value {
                    value: usage.used_bytes,
                }),
                inodes_used: Some(UInt64Value {
                    value: usage.inodes_used,
                }),
            }],
            container_filesystems: Vec::new(),
        })
    }
}
