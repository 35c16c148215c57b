//! The one way `cri/` runs blocking work off the async workers (STYLE rule 13): runtime
//! operations fork, wait and fsync; stats read cgroup files; the store opens its database.
//! On 2 cores, one such call on a tokio worker stalls every RPC queued behind it.
//!
//! Reads that serve memory (ContainerStatus, ListContainers, PodSandboxStatus,
//! ListPodSandbox) do not come through here: they never block.

use crate::error::CriError;

/// Runs `call` on tokio's blocking pool; its error becomes a [`CriError`] through the one
/// mapping in `error.rs`, and a panic in it an Internal error naming the call.
pub(crate) async fn blocking<T, E, F>(call: F) -> Result<T, CriError>
where
    T: Send + 'static,
    E: Into<CriError> + Send + 'static,
    F: FnOnce() -> Result<T, E> + Send + 'static,
{
    let result = tokio::task::spawn_blocking(call).await;
    // What it allocated is freed by now: the heap is trimmed once the burst is over.
    crate::trim::poke();
    result
        .map_err(|e| CriError::Internal(format!("blocking task failed: {e}")))?
        .map_err(Into::into)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn errors_keep_their_kind_and_panics_become_internal() {
        let err = blocking(|| -> Result<(), rootstock_runtime::Error> {
            Err(rootstock_runtime::Error::ContainerNotFound { id: "c1".into() })
        })
        .await
        .unwrap_err();
        assert!(err.is_not_found(), "{err}");
        let err = blocking(|| -> Result<(), CriError> { panic!("boom") })
            .await
            .unwrap_err();
        assert!(
            matches!(err, CriError::Internal(ref m) if m.contains("blocking task")),
            "{err}"
        );
        assert_eq!(blocking(|| Ok::<_, CriError>(7)).await.unwrap(), 7);
    }
}
