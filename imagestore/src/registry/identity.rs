//! The identity-token flow `oci-client` lacks: exchange a CRI `identity_token` (an OAuth2
//! refresh token) for an access token at the realm of the registry's Bearer challenge.

use super::Session;
use super::errors::classify_reqwest;
use crate::error::{Error, Result};

impl Session {
    pub(super) async fn exchange_identity(&self, token: &str) -> Result<String> {
        let http = self.http_client(false)?;
        let host = &self.endpoint.host;
        let repository = self.image.repository();
        let auth_failed = |detail: String| Error::AuthenticationFailed {
            host: host.clone(),
            repository: repository.to_string(),
            detail,
        };
        let probe = http
            .get(format!("{}/v2/", self.endpoint.base_url()))
            .send()
            .await
            .map_err(|e| classify_reqwest(&e, host))?;
        let header = probe
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| {
                auth_failed(
                    "an identity token was given but the registry asks for no token auth".into(),
                )
            })?;
        let challenge = parse_bearer_challenge(&header).ok_or_else(|| {
            auth_failed(format!(
                "an identity token needs a Bearer challenge, the registry sent {header:?}"
            ))
        })?;
        let scope = format!("repository:{repository}:pull");
        let mut form = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", token),
            ("client_id", "rootstock"),
            ("scope", scope.as_str()),
        ];
        if let Some(service) = &challenge.service {
            form.push(("service", service.as_str()));
        }
        let resp = http
            .post(&challenge.realm)
            .form(&form)
            .send()
            .await
            .map_err(|e| classify_reqwest(&e, host))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| classify_reqwest(&e, host))?;
        if status.is_server_error() {
            return Err(Error::Registry {
                host: host.clone(),
                status: status.as_u16(),
                url: challenge.realm.clone(),
                message: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        if !status.is_success() {
            return Err(auth_failed(format!(
                "token server {} refused the identity token ({status}): {}",
                challenge.realm,
                String::from_utf8_lossy(&body)
            )));
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            access_token: Option<String>,
            token: Option<String>,
        }
        let parsed: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| auth_failed(format!("token server answer is not JSON: {e}")))?;
        parsed
            .access_token
            .or(parsed.token)
            .ok_or_else(|| auth_failed("token server answer has no access_token".into()))
    }
}

/// `realm` and `service` of a Bearer challenge.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BearerChallenge {
    pub realm: String,
    pub service: Option<String>,
}

/// Parse the first Bearer challenge of a `WWW-Authenticate` header.
pub(crate) fn parse_bearer_challenge(header: &str) -> Option<BearerChallenge> {
    let challenges = http_auth::parse_challenges(header).ok()?;
    let bearer = challenges
        .iter()
        .find(|c| c.scheme.eq_ignore_ascii_case("bearer"))?;
    let mut realm = None;
    let mut service = None;
    for (k, v) in &bearer.params {
        if k.eq_ignore_ascii_case("realm") {
            realm = Some(v.to_unescaped());
        } else if k.eq_ignore_ascii_case("service") {
            service = Some(v.to_unescaped());
        }
    }
    Some(BearerChallenge {
        realm: realm?,
        service,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_parse() {
        let c = parse_bearer_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a:pull""#,
        )
        .unwrap();
        assert_eq!(c.realm, "https://auth.example/token");
        assert_eq!(c.service.as_deref(), Some("registry.example"));
        let c = parse_bearer_challenge(r#"Basic realm="x", Bearer realm="https://t/""#).unwrap();
        assert_eq!(c.realm, "https://t/");
        assert_eq!(c.service, None);
        assert!(parse_bearer_challenge(r#"Basic realm="Registry Realm""#).is_none());
        assert!(parse_bearer_challenge("Bearer service=\"x\"").is_none());
    }
}
