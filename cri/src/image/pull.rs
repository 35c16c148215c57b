//! PullImage.

use std::collections::HashSet;
use std::time::Duration;

use k8s_cri::v1::{AuthConfig, PullImageRequest, PullImageResponse};
use rootstock_imagestore::{Credentials, Digest, Image, ImageRef};
use tracing::debug;

use super::{ImageApi, image_name};
use crate::blocking::blocking;
use crate::error::CriError;

/// Finish a little before the caller's deadline, so the answer is ours (DeadlineExceeded, as
/// containerd answers and critest expects) and not tonic's own timeout (Cancelled).
const DEADLINE_MARGIN: Duration = Duration::from_millis(5);

impl ImageApi {
    /// `deadline`: the request's `grpc-timeout`. When it passes, the pull is dropped, which
    /// stops its download and cleans it up (see `ImageStore::pull`).
    pub(super) async fn handle_pull_image(
        &self,
        req: PullImageRequest,
        deadline: Option<Duration>,
    ) -> Result<PullImageResponse, CriError> {
        let name = image_name(req.image.as_ref())?;
        let known = self.known_layers().await;
        let started = std::time::Instant::now();
        let pull = self.store.pull(name, req.auth.map(credentials));
        let image = match deadline {
            Some(d) => tokio::time::timeout(d.saturating_sub(DEADLINE_MARGIN), pull)
                .await
                .map_err(|_| {
                    CriError::DeadlineExceeded(format!(
                        "pull of {name}: the caller's deadline ({d:?}) passed"
                    ))
                })
                .and_then(|pulled| pulled.map_err(CriError::from)),
            None => pull.await.map_err(CriError::from),
        };
        self.record_pull(name, image.as_ref().ok(), known, started.elapsed());
        let image = image?;
        // The operator's line (size, time, rate) is the store's; this one adds the id.
        debug!(image = name, id = %image.id, "pulled");
        // kubelet passes this id back in CreateContainer (images/image_manager.go).
        Ok(PullImageResponse {
            image_ref: image.id.to_string(),
        })
    }
}

impl ImageApi {
    /// The layers in the store before a pull, so that its metrics count the layers it
    /// unpacked (`None` when the metadata could not be read: nothing is counted then).
    async fn known_layers(&self) -> Option<HashSet<Digest>> {
        let store = self.store.clone();
        let layers = blocking(move || store.metadata().layers()).await;
        layers
            .inspect_err(|e| tracing::debug!("pull metrics: listing layers: {e}"))
            .ok()
            .map(|ls| ls.into_iter().map(|l| l.diff_id).collect())
    }

    /// Pull metrics, by the registry the reference names (`docker.io` for a short name).
    fn record_pull(
        &self,
        name: &str,
        image: Option<&Image>,
        known: Option<HashSet<Digest>>,
        took: Duration,
    ) {
        let registry = ImageRef::parse(name)
            .map(|r| r.registry().to_owned())
            .unwrap_or_else(|_| "invalid".to_owned());
        // A layer the store had is neither downloaded nor unpacked again (DESIGN: layer
        // trees are shared by diff_id), so only the others count.
        let result = image
            .map(|i| match known {
                Some(known) => {
                    let new = i.layers.iter().filter(|l| !known.contains(&l.diff_id));
                    new.fold((0, 0), |(bytes, n), l| (bytes + l.size, n + 1))
                }
                None => (i.size, 0),
            })
            .ok_or(());
        self.metrics.pull_done(&registry, result, took);
    }
}

/// The `grpc-timeout` header (`<digits><H|M|S|m|u|n>`), if the caller set a deadline.
pub(super) fn grpc_timeout(meta: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let v = meta.get("grpc-timeout")?.to_str().ok()?;
    let (num, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units_parse() {
        let of = |v: &str| {
            let mut m = tonic::metadata::MetadataMap::new();
            m.insert("grpc-timeout", v.parse().unwrap());
            grpc_timeout(&m)
        };
        assert_eq!(of("999u"), Some(Duration::from_micros(999)));
        assert_eq!(of("2S"), Some(Duration::from_secs(2)));
        assert_eq!(of("1M"), Some(Duration::from_secs(60)));
        assert_eq!(of("5m"), Some(Duration::from_millis(5)));
        assert_eq!(of("x"), None);
        assert_eq!(of("10Q"), None);
        assert_eq!(grpc_timeout(&tonic::metadata::MetadataMap::new()), None);
    }
}
