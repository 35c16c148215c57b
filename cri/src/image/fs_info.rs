//! ImageFsInfo: the eviction manager polls it about every 10 s, so it is answered from the
//! store's cached figures, never by walking the store. The writable layers are reported as
//! `container_filesystems` when they sit on another filesystem than the store (kubelet then
//! manages the two apart); on the same one they are part of the image filesystem's figures.

use std::time::{SystemTime, UNIX_EPOCH};

use k8s_cri::v1::{FilesystemIdentifier, FilesystemUsage, ImageFsInfoResponse, UInt64Value};

use super::ImageApi;
use crate::error::CriError;

impl ImageApi {
    pub(super) fn handle_image_fs_info(&self) -> Result<ImageFsInfoResponse, CriError> {
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
            container_filesystems: self
                .layers
                .as_ref()
                .map(|rt| {
                    let (dir, usage) = rt.writable_layers_usage();
                    let usage = usage.unwrap_or_default();
                    FilesystemUsage {
                        timestamp: if usage.timestamp_unix_nanos == 0 {
                            timestamp
                        } else {
                            usage.timestamp_unix_nanos
                        },
                        fs_id: Some(FilesystemIdentifier {
                            mountpoint: dir.display().to_string(),
                        }),
                        used_bytes: Some(UInt64Value { value: usage.bytes }),
                        inodes_used: Some(UInt64Value {
                            value: usage.inodes,
                        }),
                    }
                })
                .into_iter()
                .collect(),
        })
    }
}
