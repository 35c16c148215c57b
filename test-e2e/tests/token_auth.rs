//! The token issuer ([`TokenServer`]) against the real `docker-registry` configured for token
//! auth, and the harness's own requests through the Bearer challenge.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use reqwest::StatusCode;
use rootstock_test_e2e::fixtures::{MEDIA_OCI_MANIFEST, busybox_image, sha256_digest};
use rootstock_test_e2e::registry::{HARNESS_USER_AGENT, Registry, RegistryOptions};
use rootstock_test_e2e::token::{self, Access, TokenServer};
use serde_json::Value;

const USER: &str = "puller";
const PASSWORD: &str = "s3cret";

async fn start() -> (TokenServer, Registry) {
    let tokens = TokenServer::start(&[(USER, PASSWORD)]).await;
    let registry = Registry::start_with(RegistryOptions::default().token_auth(&tokens)).await;
    (tokens, registry)
}

/// `GET {realm}?service=…&scope=…` as a client would, with optional Basic credentials.
async fn fetch_token(
    tokens: &TokenServer,
    credentials: Option<(&str, &str)>,
    scope: &str,
) -> reqwest::Response {
    let url = format!(
        "{}?service={}&scope={}",
        tokens.realm(),
        tokens.service(),
        scope.replace(':', "%3A").replace(',', "%2C")
    );
    let req = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(url);
    let req = match credentials {
        Some((user, password)) => req.basic_auth(user, Some(password)),
        None => req,
    };
    req.send().await.expect("GET token")
}

async fn token_from(res: reqwest::Response) -> String {
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    body["token"].as_str().unwrap().to_owned()
}

fn challenge(res: &reqwest::Response) -> String {
    res.headers()
        .get("www-authenticate")
        .expect("a 401 carries WWW-Authenticate")
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn anonymous_requests_get_a_bearer_challenge_naming_the_realm() {
    let (tokens, registry) = start().await;

    let res = registry
        .client()
        .get(registry.url("/v2/"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let header = challenge(&res);
    assert!(header.starts_with("Bearer "), "{header}");
    assert!(
        header.contains(&format!("realm=\"{}\"", tokens.realm())),
        "{header}"
    );
    assert!(
        header.contains(&format!("service=\"{}\"", tokens.service())),
        "{header}"
    );

    // A repository request names the scope it needs.
    let res = registry
        .client()
        .get(registry.url("/v2/busybox/manifests/latest"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let header = challenge(&res);
    assert!(
        header.contains("scope=\"repository:busybox:pull\""),
        "{header}"
    );
    assert!(
        tokens.requests().is_empty(),
        "nobody fetched a token: {:?}",
        tokens.requests()
    );
}

#[tokio::test]
async fn a_token_fetched_with_good_credentials_reads_a_pushed_manifest() {
    let (tokens, registry) = start().await;
    let image = busybox_image().build();
    registry.push("busybox", "latest", &image).await;
    let before = tokens.requests_not_from(HARNESS_USER_AGENT).len();
    assert_eq!(before, 0);

    let res = fetch_token(&tokens, Some((USER, PASSWORD)), "repository:busybox:pull").await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    let jwt = body["token"].as_str().unwrap().to_owned();
    assert_eq!(body["access_token"], body["token"]);
    assert_eq!(body["expires_in"], 300);
    let issued_at = body["issued_at"].as_str().unwrap();
    assert!(
        issued_at.len() == 20 && issued_at.ends_with('Z') && &issued_at[10..11] == "T",
        "{issued_at}"
    );

    let header = token::header(&jwt);
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["typ"], "JWT");
    assert_eq!(header["x5c"].as_array().unwrap().len(), 1);
    let claims = token::claims(&jwt);
    assert_eq!(claims["iss"], tokens.issuer());
    assert_eq!(claims["sub"], USER);
    assert_eq!(claims["aud"], tokens.service());
    assert_eq!(
        claims["exp"].as_u64().unwrap(),
        claims["iat"].as_u64().unwrap() + 300
    );
    assert!(claims["jti"].as_str().is_some_and(|j| !j.is_empty()));
    assert_eq!(
        claims["access"],
        serde_json::json!([{"type": "repository", "name": "busybox", "actions": ["pull"]}])
    );

    // The registry accepts it: the self-signed x5c leaf verifies against rootcertbundle.
    let res = registry
        .client()
        .get(registry.url("/v2/busybox/manifests/latest"))
        .header("accept", MEDIA_OCI_MANIFEST)
        .bearer_auth(&jwt)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "log:\n{}", registry.log());
    assert_eq!(
        res.headers()["docker-content-digest"],
        image.manifest_digest.as_str()
    );
    assert_eq!(
        res.bytes().await.unwrap().as_ref(),
        image.manifest.as_slice()
    );

    // It grants exactly what was asked: a pull token cannot push.
    let res = registry
        .client()
        .put(registry.url("/v2/busybox/manifests/other"))
        .header("content-type", MEDIA_OCI_MANIFEST)
        .bearer_auth(&jwt)
        .body(image.manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(
        challenge(&res).contains("insufficient_scope"),
        "{}",
        challenge(&res)
    );

    // And the server recorded who asked for what.
    let served = tokens.requests_not_from(HARNESS_USER_AGENT);
    assert_eq!(served.len(), 1, "{served:?}");
    assert_eq!(served[0].method, "GET");
    assert_eq!(served[0].user.as_deref(), Some(USER));
    assert_eq!(served[0].service.as_deref(), Some(tokens.service()));
    assert_eq!(served[0].scopes, ["repository:busybox:pull"]);
    assert_eq!(served[0].status, 200);
    assert_eq!(
        served[0].granted,
        [Access::parse_scope("repository:busybox:pull").unwrap()]
    );
}

#[tokio::test]
async fn bad_credentials_get_401_and_anonymous_tokens_grant_nothing() {
    let (tokens, registry) = start().await;
    registry
        .push("busybox", "latest", &busybox_image().build())
        .await;

    for (user, password) in [(USER, "wrong"), ("nobody", PASSWORD), (USER, "")] {
        let res = fetch_token(&tokens, Some((user, password)), "repository:busybox:pull").await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{user}:{password}");
    }
    let refused: Vec<_> = tokens
        .requests_not_from(HARNESS_USER_AGENT)
        .into_iter()
        .map(|r| (r.user.unwrap(), r.status))
        .collect();
    assert_eq!(
        refused,
        [
            (USER.to_owned(), 401),
            ("nobody".to_owned(), 401),
            (USER.to_owned(), 401)
        ]
    );

    // Anonymous: a valid token without access, which the registry refuses for the repository.
    let jwt = token_from(fetch_token(&tokens, None, "repository:busybox:pull").await).await;
    assert_eq!(token::claims(&jwt)["access"], serde_json::json!([]));
    assert_eq!(token::claims(&jwt)["sub"], "");
    let res = registry
        .client()
        .get(registry.url("/v2/busybox/manifests/latest"))
        .bearer_auth(&jwt)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(
        challenge(&res).contains("insufficient_scope"),
        "{}",
        challenge(&res)
    );
}

#[tokio::test]
async fn the_registry_rejects_tokens_signed_by_another_key() {
    let (tokens, registry) = start().await;
    registry
        .push("busybox", "latest", &busybox_image().build())
        .await;
    let pull = [Access::parse_scope("repository:busybox:pull").unwrap()];

    // Same issuer, service and claims, but a certificate the registry does not trust.
    let impostor = TokenServer::start(&[(USER, PASSWORD)]).await;
    let forged = impostor.issue(USER, &pull);
    let res = registry
        .client()
        .get(registry.url("/v2/busybox/manifests/latest"))
        .bearer_auth(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(
        challenge(&res).contains("invalid_token"),
        "{}",
        challenge(&res)
    );

    // The genuine issuer's token for the same claims works (the check above is the key's).
    let genuine = tokens.issue(USER, &pull);
    let res = registry
        .client()
        .get(registry.url("/v2/busybox/manifests/latest"))
        .header("accept", MEDIA_OCI_MANIFEST)
        .bearer_auth(&genuine)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn oauth2_password_grant_is_served_too() {
    let (tokens, registry) = start().await;
    registry
        .push("busybox", "latest", &busybox_image().build())
        .await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let form = |password: &str| {
        format!(
            "grant_type=password&client_id=test&username={USER}&password={password}\
             &service={}&scope=repository%3Abusybox%3Apull",
            tokens.service()
        )
    };
    let post = |body: String| {
        client
            .post(tokens.realm())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    assert_eq!(
        post(form("wrong")).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let res = post(form(PASSWORD)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    let jwt = body["access_token"].as_str().unwrap();
    let res = registry
        .client()
        .get(registry.url("/v2/busybox/manifests/latest"))
        .header("accept", MEDIA_OCI_MANIFEST)
        .bearer_auth(jwt)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn refresh_tokens_are_exchanged_for_access_tokens() {
    let (tokens, registry) = start().await;
    registry
        .push("busybox", "latest", &busybox_image().build())
        .await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let exchange = |refresh_token: String| {
        let form = [
            ("grant_type", "refresh_token".to_owned()),
            ("refresh_token", refresh_token),
            ("client_id", "test".to_owned()),
            ("scope", "repository:busybox:pull".to_owned()),
            ("service", tokens.service().to_owned()),
        ];
        let body = form
            .iter()
            .map(|(n, v)| format!("{n}={}", v.replace(':', "%3A")))
            .collect::<Vec<_>>()
            .join("&");
        client
            .post(tokens.realm())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    let pull_with = |jwt: String| {
        registry
            .client()
            .get(registry.url("/v2/busybox/manifests/latest"))
            .header("accept", MEDIA_OCI_MANIFEST)
            .bearer_auth(jwt)
            .send()
    };

    // One minted directly, as a CRI identity_token would carry it.
    let res = exchange(tokens.refresh_token(USER)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    let jwt = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(token::claims(&jwt)["sub"], USER);
    assert_eq!(pull_with(jwt).await.unwrap().status(), StatusCode::OK);

    // One obtained with the password grant and access_type=offline.
    let res = client
        .post(tokens.realm())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "grant_type=password&access_type=offline&client_id=test&username={USER}\
             &password={PASSWORD}&service={}",
            tokens.service()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    let refresh = body["refresh_token"].as_str().unwrap().to_owned();
    let res = exchange(refresh).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    let jwt = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(pull_with(jwt).await.unwrap().status(), StatusCode::OK);

    // An unknown refresh token is refused.
    let res = exchange("not-a-refresh-token".to_owned()).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    let grants: Vec<_> = tokens
        .requests_not_from(HARNESS_USER_AGENT)
        .into_iter()
        .map(|r| (r.grant_type.unwrap(), r.user, r.status))
        .collect();
    let user = Some(USER.to_owned());
    assert_eq!(
        grants,
        [
            ("refresh_token".to_owned(), user.clone(), 200),
            ("password".to_owned(), user.clone(), 200),
            ("refresh_token".to_owned(), user, 200),
            ("refresh_token".to_owned(), None, 401),
        ]
    );
}

#[tokio::test]
async fn the_harness_pushes_and_reads_back_through_token_auth() {
    let (tokens, registry) = start().await;
    let image = busybox_image().build();

    let digest = registry.push("library/busybox", "latest", &image).await;
    assert_eq!(digest, image.manifest_digest);
    let fetched = registry.manifest("library/busybox", "latest").await;
    assert_eq!(fetched.digest, image.manifest_digest);
    assert_eq!(fetched.bytes, image.manifest);
    assert_eq!(
        registry.blob("library/busybox", &image.config_digest).await,
        image.config
    );
    for layer in &image.layers {
        let blob = registry.blob("library/busybox", &layer.digest).await;
        assert_eq!(sha256_digest(&blob), layer.digest);
    }

    // The harness fetched its tokens as the first user, for the repository it worked on, and
    // reused them: one token for the whole push and read-back.
    let served = tokens.requests();
    assert!(!served.is_empty());
    for r in &served {
        assert_eq!(r.user_agent, HARNESS_USER_AGENT);
        assert_eq!(r.user.as_deref(), Some(USER));
        assert_eq!(r.status, 200);
        assert_eq!(r.scopes, ["repository:library/busybox:pull,push,delete"]);
    }
    assert_eq!(served.len(), 1, "{served:?}");

    // Without a token the same manifest is refused.
    let res = registry
        .client()
        .get(registry.url("/v2/library/busybox/manifests/latest"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

/// The daemon's image pull (`oci-client` underneath) through the whole token flow: a wrong
/// password is refused at the token server, no credentials get a token that the registry
/// refuses, the right ones pull.
#[tokio::test]
async fn the_daemon_pulls_with_token_auth_and_fails_without_good_credentials() {
    use k8s_cri::v1::{AuthConfig, ImageSpec, ImageStatusRequest, PullImageRequest};
    use rootstock_test_e2e::daemon::Daemon;

    let (tokens, registry) = start().await;
    let image = busybox_image().build();
    registry.push("busybox", "latest", &image).await;
    let daemon = Daemon::start_with_config(&format!(
        "[images.registries.\"{}\"]\ninsecure = true\n",
        registry.host()
    ))
    .await;
    let mut images = daemon.images().await;
    let reference = registry.image_ref("busybox", "latest");
    let pull = |credentials: Option<(&str, &str)>| PullImageRequest {
        image: Some(ImageSpec {
            image: reference.clone(),
            ..Default::default()
        }),
        auth: credentials.map(|(username, password)| AuthConfig {
            username: username.to_owned(),
            password: password.to_owned(),
            ..Default::default()
        }),
        sandbox_config: None,
    };

    let err = images
        .pull_image(pull(Some((USER, "wrong"))))
        .await
        .unwrap_err();
    let served = tokens.requests_not_from(HARNESS_USER_AGENT);
    assert!(
        !served.is_empty() && served.iter().all(|r| r.status == 401),
        "{err:?}\n{served:?}\n{}",
        daemon.log()
    );

    let err = images.pull_image(pull(None)).await.unwrap_err();
    let anonymous: Vec<_> = tokens
        .requests_not_from(HARNESS_USER_AGENT)
        .into_iter()
        .skip(served.len())
        .collect();
    assert!(
        !anonymous.is_empty()
            && anonymous
                .iter()
                .all(|r| r.user.is_none() && r.status == 200 && r.granted.is_empty()),
        "{err:?}\n{anonymous:?}"
    );

    images
        .pull_image(pull(Some((USER, PASSWORD))))
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", daemon.log()));
    let served = tokens.requests_not_from(HARNESS_USER_AGENT);
    assert!(
        served.iter().any(|r| r.status == 200
            && r.user.as_deref() == Some(USER)
            && r.scopes == ["repository:busybox:pull"]),
        "{served:?}"
    );
    let status = images
        .image_status(ImageStatusRequest {
            image: Some(ImageSpec {
                image: reference.clone(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(status.image.is_some(), "{reference} is not in the store");
}

#[tokio::test]
async fn token_auth_works_on_a_tls_registry() {
    use rootstock_test_e2e::registry::TestCa;
    let ca = TestCa::new();
    let tokens = TokenServer::start(&[(USER, PASSWORD), ("other", "pw")]).await;
    let registry = Registry::start_with(
        RegistryOptions::default()
            .tls(ca.tls_files())
            .token_auth(&tokens),
    )
    .await;
    assert!(registry.url("/").starts_with("https://"));
    let image = busybox_image().build();
    registry.push("busybox", "v1", &image).await;
    assert_eq!(
        registry.manifest("busybox", "v1").await.digest,
        image.manifest_digest
    );
    // The harness authenticated as the first user.
    assert!(
        tokens
            .requests()
            .iter()
            .all(|r| r.user.as_deref() == Some(USER) && r.status == 200)
    );
}
