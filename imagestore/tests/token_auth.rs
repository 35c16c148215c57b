//! The Bearer token flows against a token-auth front (`common`) over a real `docker-registry`:
//! Basic credentials for a token (what `oci-client` does), the identity-token exchange (ours,
//! on `reqwest`), and a registry token sent as is.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on failure

mod common;

use common::{
    ACCESS_TOKEN, Front, FrontOptions, IDENTITY_TOKEN, PASSWORD, USER, store_behind_front,
};
use rootstock_imagestore::{Credentials, Error, ErrorKind, ImageStore};
use rootstock_testkit::registry::Registry;

/// The store behind a token-auth front, and the name of busybox there.
async fn setup() -> (Registry, Front, ImageStore, tempfile::TempDir, String) {
    let options = FrontOptions {
        token_auth: true,
        ..Default::default()
    };
    let (registry, front, store, dir) = store_behind_front("secure", options).await;
    let name = format!("{}/secure:latest", front.host);
    (registry, front, store, dir, name)
}

#[tokio::test]
async fn an_identity_token_is_exchanged_for_an_access_token() {
    let (_registry, front, store, _dir, name) = setup().await;
    let creds = Credentials {
        identity_token: IDENTITY_TOKEN.into(),
        server_address: front.host.clone(),
        ..Default::default()
    };
    store.pull(&name, Some(creds)).await.unwrap();
    let events = front.events();
    assert!(
        events.contains(&"POST /token ok=true".to_string()),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| e.contains("/manifests/latest")),
        "{events:?}"
    );

    let wrong = Credentials {
        identity_token: "stale".into(),
        ..Default::default()
    };
    let err = store.pull(&name, Some(wrong)).await.unwrap_err();
    assert!(matches!(err, Error::AuthenticationFailed { .. }), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::Unauthenticated);
}

#[tokio::test]
async fn basic_credentials_get_a_bearer_token_from_the_realm() {
    let (_registry, front, store, _dir, name) = setup().await;
    let creds = Credentials {
        username: USER.into(),
        password: PASSWORD.into(),
        ..Default::default()
    };
    store.pull(&name, Some(creds)).await.unwrap();
    assert!(front.events().contains(&"GET /token ok=true".to_string()));

    let wrong = Credentials {
        username: USER.into(),
        password: "nope".into(),
        ..Default::default()
    };
    let err = store.pull(&name, Some(wrong)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{err}");
    assert!(err.to_string().contains("token request refused"), "{err}");
}

#[tokio::test]
async fn a_registry_token_is_sent_as_is() {
    let (_registry, front, store, _dir, name) = setup().await;
    let creds = Credentials {
        registry_token: ACCESS_TOKEN.into(),
        ..Default::default()
    };
    store.pull(&name, Some(creds)).await.unwrap();
    assert!(!front.events().iter().any(|e| e.contains("/token")));
}
