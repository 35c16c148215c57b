//! Credentials: what the CRI `AuthConfig` carries, resolved in its precedence to what is sent,
//! and the host they are for.

use std::fmt;

use base64::Engine as _;
use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

/// Credentials for one pull, as the CRI `AuthConfig` carries them. Empty strings mean "not
/// given". Precedence: `registry_token`, then `identity_token`, then `username`/`password`,
/// then `auth`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// User name for Basic auth or the token request.
    pub username: String,
    /// Password for `username`.
    pub password: String,
    /// `base64(username:password)`.
    pub auth: String,
    /// The registry the credentials are for (`AuthConfig.server_address`); empty means the
    /// image's registry. Credentials are never sent to another host (e.g. a mirror).
    pub server_address: String,
    /// An OAuth2 refresh token, exchanged for an access token at the token realm.
    pub identity_token: String,
    /// A bearer token sent as is.
    pub registry_token: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("server_address", &self.server_address)
            .field(
                "password",
                &(!self.password.is_empty()).then_some("<redacted>"),
            )
            .field("auth", &(!self.auth.is_empty()).then_some("<redacted>"))
            .field(
                "identity_token",
                &(!self.identity_token.is_empty()).then_some("<redacted>"),
            )
            .field(
                "registry_token",
                &(!self.registry_token.is_empty()).then_some("<redacted>"),
            )
            .finish()
    }
}

/// Credentials resolved to what is sent.
#[derive(Clone, PartialEq, Eq)]
pub(super) enum Auth {
    Anonymous,
    Basic(String, String),
    Bearer(String),
    IdentityToken(String),
}

impl Auth {
    pub(super) fn fingerprint(&self) -> String {
        let material = match self {
            Auth::Anonymous => return "anonymous".into(),
            Auth::Basic(u, p) => format!("basic\0{u}\0{p}"),
            Auth::Bearer(t) => format!("bearer\0{t}"),
            Auth::IdentityToken(t) => format!("identity\0{t}"),
        };
        hex::encode(Sha256::digest(material.as_bytes()))
    }
}

/// Decode Docker's `auth` field, `base64(username:password)`.
pub(crate) fn decode_basic_auth(auth: &str) -> std::result::Result<(String, String), String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .map_err(|e| format!("auth is not valid base64: {e}"))?;
    let text = String::from_utf8(bytes).map_err(|_| "auth is not UTF-8".to_string())?;
    let (user, pass) = text
        .split_once(':')
        .ok_or_else(|| "auth does not decode to username:password".to_string())?;
    Ok((user.to_string(), pass.to_string()))
}

pub(super) fn resolve_credentials(c: &Credentials) -> Result<Auth> {
    let bad = |reason: String| Error::AuthenticationFailed {
        host: c.server_address.clone(),
        repository: String::new(),
        detail: reason,
    };
    if !c.registry_token.is_empty() {
        Ok(Auth::Bearer(c.registry_token.clone()))
    } else if !c.identity_token.is_empty() {
        Ok(Auth::IdentityToken(c.identity_token.clone()))
    } else if !c.username.is_empty() {
        Ok(Auth::Basic(c.username.clone(), c.password.clone()))
    } else if !c.auth.is_empty() {
        let (u, p) = decode_basic_auth(&c.auth).map_err(bad)?;
        Ok(Auth::Basic(u, p))
    } else {
        Ok(Auth::Anonymous)
    }
}

/// Normalise a `server_address` (which Docker writes as `https://index.docker.io/v1/`) to a
/// registry host as image names spell it.
pub(super) fn server_host(address: &str) -> String {
    let s = address
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = s.split('/').next().unwrap_or(s);
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn credentials_resolve_in_cri_precedence() {
        let c = Credentials {
            auth: base64::engine::general_purpose::STANDARD.encode("u:p:x"),
            ..Default::default()
        };
        assert!(resolve_credentials(&c).unwrap() == Auth::Basic("u".into(), "p:x".into()));
        let c = Credentials {
            username: "a".into(),
            password: "b".into(),
            identity_token: "it".into(),
            ..Default::default()
        };
        assert!(resolve_credentials(&c).unwrap() == Auth::IdentityToken("it".into()));
        let c = Credentials {
            registry_token: "rt".into(),
            identity_token: "it".into(),
            ..Default::default()
        };
        assert!(resolve_credentials(&c).unwrap() == Auth::Bearer("rt".into()));
        assert!(resolve_credentials(&Credentials::default()).unwrap() == Auth::Anonymous);
        let bad = Credentials {
            auth: "!!".into(),
            ..Default::default()
        };
        assert!(resolve_credentials(&bad).is_err());
    }
}
