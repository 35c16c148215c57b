//! Pushing fixture images over the Distribution HTTP API (monolithic blob uploads, manifests
//! and indexes by tag or digest) and reading manifests and blobs back.

use std::sync::atomic::{AtomicUsize, Ordering};

use reqwest::{Method, StatusCode};

use super::Registry;
use crate::fixtures::{Image, Index, sha256_digest};

/// A manifest as the registry serves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchedManifest {
    /// The body.
    pub bytes: Vec<u8>,
    /// The `Docker-Content-Digest` header.
    pub digest: String,
    /// The `Content-Type` header.
    pub content_type: String,
}

/// Every manifest and index type the fixtures write, for `Accept`.
const MANIFEST_ACCEPT: [&str; 4] = [
    crate::fixtures::MEDIA_OCI_MANIFEST,
    crate::fixtures::MEDIA_OCI_INDEX,
    crate::fixtures::MEDIA_DOCKER_MANIFEST,
    crate::fixtures::MEDIA_DOCKER_LIST,
];

impl Registry {
    /// Uploads `bytes` as a blob of `repo` unless the registry has it, and returns its digest.
    /// Uses a monolithic upload: `POST …/blobs/uploads/` then `PUT <Location>?digest=…`.
    pub async fn push_blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = sha256_digest(bytes);
        let head = self
            .send(self.request(Method::HEAD, &format!("/v2/{repo}/blobs/{digest}")))
            .await;
        if head.status() == StatusCode::OK {
            return digest;
        }
        let post = self
            .send(self.request(Method::POST, &format!("/v2/{repo}/blobs/uploads/")))
            .await;
        assert_eq!(
            post.status(),
            StatusCode::ACCEPTED,
            "starting an upload to {repo}: {}",
            post.text().await.unwrap_or_default()
        );
        let location = post
            .headers()
            .get("location")
            .expect("upload response has a Location")
            .to_str()
            .expect("Location is ASCII")
            .to_owned();
        // Location may be absolute or a path, and already carries the upload state in a query.
        let mut url = if location.starts_with('/') {
            self.url(&location)
        } else {
            location
        };
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str("digest=");
        url.push_str(&digest);
        let put = self.client.put(url);
        let put = self
            .authorize(put, &format!("/v2/{repo}/blobs/uploads/"))
            .header("content-type", "application/octet-stream")
            .body(bytes.to_vec());
        let put = self.send(put).await;
        assert_eq!(
            put.status(),
            StatusCode::CREATED,
            "uploading blob {digest} to {repo}: {}",
            put.text().await.unwrap_or_default()
        );
        digest
    }

    /// Puts a manifest (or index) under `reference` (a tag or its digest) with `media_type`
    /// as its Content-Type, and returns the digest the registry reports.
    pub async fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> String {
        let res = self
            .send(
                self.request(Method::PUT, &format!("/v2/{repo}/manifests/{reference}"))
                    .header("content-type", media_type)
                    .body(bytes.to_vec()),
            )
            .await;
        let status = res.status();
        let digest = res
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        assert_eq!(
            status,
            StatusCode::CREATED,
            "pushing manifest {repo}:{reference}: {}",
            res.text().await.unwrap_or_default()
        );
        digest.expect("the registry returned no Docker-Content-Digest")
    }

    /// Pushes the image's blobs and manifest as `repo:tag` and returns the manifest digest.
    pub async fn push(&self, repo: &str, tag: &str, image: &Image) -> String {
        self.push_image_blobs(repo, image).await;
        let digest = self
            .push_manifest(repo, tag, &image.media_type, &image.manifest)
            .await;
        assert_eq!(
            digest, image.manifest_digest,
            "the registry's digest for {repo}:{tag} differs from the manifest's sha256"
        );
        digest
    }

    /// Pushes the image like [`Registry::push`], but `streams` blobs at a time (an image of
    /// a thousand small layers is mostly round trips).
    pub async fn push_concurrently(
        &self,
        repo: &str,
        tag: &str,
        image: &Image,
        streams: usize,
    ) -> String {
        let blobs = image.blobs();
        let next = AtomicUsize::new(0);
        let worker = || async {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((digest, bytes)) = blobs.get(i) else {
                    return;
                };
                let pushed = self.push_blob(repo, bytes).await;
                debug_assert_eq!(&pushed, digest);
            }
        };
        // Workers on one task: the registry (its own process) does the work in parallel.
        let mut workers: Vec<_> = (0..streams.max(1)).map(|_| Box::pin(worker())).collect();
        std::future::poll_fn(|cx| {
            workers.retain_mut(|w| w.as_mut().poll(cx).is_pending());
            if workers.is_empty() {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await;
        let digest = self
            .push_manifest(repo, tag, &image.media_type, &image.manifest)
            .await;
        assert_eq!(
            digest, image.manifest_digest,
            "the registry's digest for {repo}:{tag} differs from the manifest's sha256"
        );
        digest
    }

    /// The digest the registry holds under `repo:reference` (HEAD of the manifest, any
    /// manifest or index type the fixtures write); `None` if it has none.
    pub async fn manifest_digest(&self, repo: &str, reference: &str) -> Option<String> {
        let res = self
            .send(
                self.request(Method::HEAD, &format!("/v2/{repo}/manifests/{reference}"))
                    .header("accept", MANIFEST_ACCEPT.join(", ")),
            )
            .await;
        match res.status() {
            StatusCode::OK => Some(
                res.headers()
                    .get("docker-content-digest")
                    .and_then(|v| v.to_str().ok())
                    .expect("a manifest HEAD answers with Docker-Content-Digest")
                    .to_owned(),
            ),
            StatusCode::NOT_FOUND => None,
            status => panic!("HEAD manifest {repo}:{reference}: {status}"),
        }
    }

    /// Whether the registry holds a manifest under `repo:reference` (tag or digest).
    pub async fn has_manifest(&self, repo: &str, reference: &str) -> bool {
        self.manifest_digest(repo, reference).await.is_some()
    }

    async fn push_image_blobs(&self, repo: &str, image: &Image) {
        for (digest, bytes) in image.blobs() {
            let pushed = self.push_blob(repo, bytes).await;
            debug_assert_eq!(pushed, digest);
        }
    }

    /// Pushes every image of the index (blobs, then manifest by digest), then the index as
    /// `repo:tag`; returns the index digest.
    pub async fn push_index(&self, repo: &str, tag: &str, index: &Index) -> String {
        for image in &index.images {
            self.push_image_blobs(repo, image).await;
            self.push_manifest(
                repo,
                &image.manifest_digest,
                &image.media_type,
                &image.manifest,
            )
            .await;
        }
        let digest = self
            .push_manifest(repo, tag, &index.media_type, &index.manifest)
            .await;
        assert_eq!(
            digest, index.digest,
            "the registry's digest for {repo}:{tag} differs from the index's sha256"
        );
        digest
    }

    /// Fetches the manifest `repo:reference` (tag or digest), accepting every manifest and
    /// index type the fixtures write.
    pub async fn manifest(&self, repo: &str, reference: &str) -> FetchedManifest {
        let accept = MANIFEST_ACCEPT.join(", ");
        let res = self
            .send(
                self.request(Method::GET, &format!("/v2/{repo}/manifests/{reference}"))
                    .header("accept", accept),
            )
            .await;
        assert_eq!(
            res.status(),
            StatusCode::OK,
            "fetching manifest {repo}:{reference}"
        );
        let header = |name: &str| {
            res.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let digest = header("docker-content-digest");
        let content_type = header("content-type");
        let bytes = res.bytes().await.expect("reading manifest body").to_vec();
        FetchedManifest {
            bytes,
            digest,
            content_type,
        }
    }

    /// Fetches the blob `digest` of `repo`.
    pub async fn blob(&self, repo: &str, digest: &str) -> Vec<u8> {
        let res = self
            .send(self.request(Method::GET, &format!("/v2/{repo}/blobs/{digest}")))
            .await;
        assert_eq!(
            res.status(),
            StatusCode::OK,
            "fetching blob {digest} of {repo}"
        );
        res.bytes().await.expect("reading blob body").to_vec()
    }
}
