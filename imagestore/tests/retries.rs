//! Retries: 5xx and connections cut mid-blob are retried with back-off; 4xx never.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on failure

mod common;

use common::{FrontOptions, store_behind_front};
use rootstock_imagestore::Error;

#[tokio::test]
async fn server_errors_are_retried_until_the_registry_answers() {
    let (_registry, front, store, _dir) = store_behind_front(
        "app",
        FrontOptions {
            blob_503s: 2,
            ..Default::default()
        },
    )
    .await;
    store
        .pull(&format!("{}/app:latest", front.host), None)
        .await
        .unwrap();
    let events = front.events();
    assert_eq!(events.iter().filter(|e| e.starts_with("503")).count(), 2);
}

#[tokio::test]
async fn a_connection_cut_mid_blob_restarts_the_layer() {
    let (_registry, front, store, _dir) = store_behind_front(
        "app",
        FrontOptions {
            blob_cuts: 1,
            ..Default::default()
        },
    )
    .await;
    let image = store
        .pull(&format!("{}/app:latest", front.host), None)
        .await
        .unwrap();
    assert_eq!(image.layers.len(), 2);
    assert_eq!(
        front
            .events()
            .iter()
            .filter(|e| e.starts_with("cut"))
            .count(),
        1
    );
    assert_eq!(store.metadata().layers().unwrap().len(), 2);
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let (_registry, front, store, _dir) = store_behind_front("app", FrontOptions::default()).await;
    let err = store
        .pull(&format!("{}/app:missing", front.host), None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ManifestNotFound { .. }), "{err:?}");
    let manifest_requests = front
        .events()
        .iter()
        .filter(|e| e.contains("/manifests/missing"))
        .count();
    assert_eq!(manifest_requests, 1);
}
