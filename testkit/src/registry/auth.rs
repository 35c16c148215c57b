//! The harness's credentials on its own requests: Basic, or Bearer tokens fetched from the
//! token server when the registry challenges (what a Distribution client does, for the
//! harness's pushes and reads).

use reqwest::header::{AUTHORIZATION, HeaderValue, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};

use super::{Registry, TokenAuth};

impl Registry {
    /// A request to `path` with the harness's credentials: Basic if the registry has Basic
    /// auth; with token auth, the Bearer token the harness already holds for the path's
    /// repository, if any (send it with [`Registry::send`] to get one on a challenge).
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.authorize(self.client.request(method, self.url(path)), path)
    }

    /// Adds the harness's credentials for `path` (see [`Registry::request`]).
    pub(super) fn authorize(
        &self,
        req: reqwest::RequestBuilder,
        path: &str,
    ) -> reqwest::RequestBuilder {
        if let Some((user, password)) = &self.options.basic_auth {
            return req.basic_auth(user, Some(password));
        }
        if self.options.token_auth.is_some() {
            let repo = repository_of(path).unwrap_or_default();
            if let Some(token) = self.tokens.lock().unwrap().get(repo) {
                return req.bearer_auth(token);
            }
        }
        req
    }

    /// Sends `req` (built by [`Registry::request`] or on [`Registry::client`]). With token
    /// auth, a 401 carrying a Bearer challenge makes the harness fetch a token from the
    /// challenge's realm with its credentials — asking for `pull,push,delete` on each
    /// challenged repository — and send the request once more with it. Any other response,
    /// or a failed token fetch, is returned as is. Panics if the request fails at the HTTP
    /// level (or, with token auth, has a streaming body that cannot be resent).
    pub async fn send(&self, req: reqwest::RequestBuilder) -> reqwest::Response {
        let (client, request) = req.build_split();
        let request = request.expect("building the request");
        let Some(token_auth) = &self.options.token_auth else {
            return client.execute(request).await.expect("sending the request");
        };
        let mut retry = request
            .try_clone()
            .expect("with token auth, request bodies must be resendable (not streams)");
        let res = client.execute(request).await.expect("sending the request");
        if res.status() != StatusCode::UNAUTHORIZED {
            return res;
        }
        let Some(challenge) = res
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_bearer_challenge)
        else {
            return res;
        };
        let Some(token) = self.fetch_token(token_auth, &challenge).await else {
            return res;
        };
        {
            let mut tokens = self.tokens.lock().unwrap();
            if challenge.repositories.is_empty() {
                tokens.insert(String::new(), token.clone());
            }
            for repo in &challenge.repositories {
                tokens.insert(repo.clone(), token.clone());
            }
        }
        retry.headers_mut().insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).expect("a JWT is a header value"),
        );
        client.execute(retry).await.expect("resending the request")
    }

    /// Fetches a token for `challenge` as the harness; `None` if the realm refuses.
    async fn fetch_token(&self, auth: &TokenAuth, challenge: &BearerChallenge) -> Option<String> {
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(service) = &challenge.service {
            query.push(("service", service.clone()));
        }
        for scope in &challenge.scopes {
            // The harness is the registry's administrator: ask for everything on a repository
            // so one token serves HEAD, upload and PUT alike.
            let scope = match crate::token::Access::parse_scope(scope) {
                Some(a) if a.resource_type == "repository" => {
                    format!("repository:{}:pull,push,delete", a.name)
                }
                _ => scope.clone(),
            };
            query.push(("scope", scope));
        }
        let realm = challenge.realm.as_deref().unwrap_or(&auth.realm);
        let query: Vec<String> = query
            .iter()
            .map(|(name, value)| format!("{name}={}", url_encode(value)))
            .collect();
        let separator = if realm.contains('?') { '&' } else { '?' };
        let url = format!("{realm}{separator}{}", query.join("&"));
        let mut req = self.client.get(url);
        if let Some((user, password)) = &auth.credentials {
            req = req.basic_auth(user, Some(password));
        }
        let res = req.send().await.expect("fetching a token from the realm");
        if res.status() != StatusCode::OK {
            return None;
        }
        let body: serde_json::Value = res.json().await.expect("the token response is JSON");
        body.get("token")
            .or_else(|| body.get("access_token"))
            .and_then(|t| t.as_str())
            .map(str::to_owned)
    }
}

/// The repository a Distribution API path names: `/v2/<name>/{manifests,blobs,tags}/…`.
fn repository_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v2/")?;
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    ["/manifests/", "/blobs/", "/tags/"]
        .iter()
        .filter_map(|marker| rest.rfind(marker).map(|i| &rest[..i]))
        .max_by_key(|name| name.len())
        .filter(|name| !name.is_empty())
}

/// Percent-encodes a query value (everything but RFC 3986 unreserved characters).
fn url_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The parameters of a `WWW-Authenticate: Bearer …` challenge.
#[derive(Debug, Default, PartialEq, Eq)]
struct BearerChallenge {
    realm: Option<String>,
    service: Option<String>,
    /// The `scope` parameter split at spaces (`repository:foo:pull,push`).
    scopes: Vec<String>,
    /// The repositories the scopes name.
    repositories: Vec<String>,
}

/// Parses `Bearer realm="…",service="…",scope="…"[,error="…"]`; `None` for other schemes.
fn parse_bearer_challenge(header: &str) -> Option<BearerChallenge> {
    let (scheme, mut rest) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut challenge = BearerChallenge::default();
    loop {
        rest = rest.trim_start_matches([' ', ',']);
        let Some((name, after)) = rest.split_once('=') else {
            break;
        };
        let (value, after) = if let Some(quoted) = after.strip_prefix('"') {
            // A quoted string; `\x` escapes `x`.
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, e)) = chars.next() {
                            value.push(e);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].to_owned(), &after[end..])
        };
        match name.trim().to_ascii_lowercase().as_str() {
            "realm" => challenge.realm = Some(value),
            "service" => challenge.service = Some(value),
            "scope" => challenge.scopes.extend(
                value
                    .split(' ')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
            ),
            _ => {}
        }
        rest = after;
    }
    challenge.repositories = challenge
        .scopes
        .iter()
        .filter_map(|s| crate::token::Access::parse_scope(s))
        .filter(|a| a.resource_type == "repository")
        .map(|a| a.name)
        .collect();
    Some(challenge)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_parse() {
        let c = parse_bearer_challenge(
            r#"Bearer realm="http://127.0.0.1:9/token",service="reg",scope="repository:a/b:push,pull repository:c:pull",error="insufficient_scope""#,
        )
        .unwrap();
        assert_eq!(c.realm.as_deref(), Some("http://127.0.0.1:9/token"));
        assert_eq!(c.service.as_deref(), Some("reg"));
        assert_eq!(c.scopes, ["repository:a/b:push,pull", "repository:c:pull"]);
        assert_eq!(c.repositories, ["a/b", "c"]);
        assert_eq!(parse_bearer_challenge(r#"Basic realm="x""#), None);
        let bare = parse_bearer_challenge(r#"Bearer realm="r",service="s""#).unwrap();
        assert!(bare.scopes.is_empty() && bare.repositories.is_empty());
    }

    #[test]
    fn repositories_of_api_paths() {
        assert_eq!(
            repository_of("/v2/busybox/manifests/latest"),
            Some("busybox")
        );
        assert_eq!(repository_of("/v2/a/b/blobs/sha256:00"), Some("a/b"));
        assert_eq!(repository_of("/v2/a/blobs/uploads/"), Some("a"));
        assert_eq!(repository_of("/v2/a/tags/list?n=1"), Some("a"));
        assert_eq!(repository_of("/v2/"), None);
    }
}
