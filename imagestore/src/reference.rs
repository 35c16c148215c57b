//! Typed image identities: [`Digest`], [`ChainId`], [`ImageRef`] and [`ImageLookup`].
//!
//! Names are parsed and normalised once, at the boundary, the way Docker and containerd do
//! (`github.com/distribution/reference`, `ParseNormalizedNamed`):
//!
//! * `busybox` → `docker.io/library/busybox:latest`; `user/app` → `docker.io/user/app:latest`;
//! * the first path component is a registry host when it contains `.` or `:`, is `localhost`,
//!   or has an upper-case letter (`127.0.0.1:5000/app`, `ghcr.io/o/app`);
//! * `index.docker.io` and `registry-1.docker.io` are spelt `docker.io`;
//! * `name:tag@sha256:…` keeps both; the digest is what gets pulled and verified (as Docker: the
//!   tag is then only decoration and is not recorded as a repo tag);
//! * a 64-hex-character repository name is refused (it would shadow an image id).
//!
//! Only `sha256` digests are accepted: it is the only algorithm registries use for images and
//! the only one the store can address; a `sha512:` digest gets an error that says so.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The registry a name without a host refers to.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// The tag a name without a tag or digest refers to.
pub const DEFAULT_TAG: &str = "latest";
const OFFICIAL_REPO_PREFIX: &str = "library/";
const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// Why a reference, digest or id did not parse. Each variant's message says what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// Nothing was given.
    #[error("empty image reference")]
    Empty,
    /// The digest does not have the `algorithm:hex` shape.
    #[error("digest {0:?} is not of the form sha256:<64 lowercase hex characters>")]
    DigestFormat(String),
    /// The digest's algorithm is not sha256.
    #[error("digest algorithm {0:?} is not supported (only sha256)")]
    DigestAlgorithm(String),
    /// The repository path contains a character or sequence the grammar does not allow.
    #[error(
        "repository name {0:?} is invalid: components are lowercase letters, digits and \
         single separators (. _ __ -), joined by /"
    )]
    RepositoryFormat(String),
    /// The repository path contains upper-case letters.
    #[error("repository name {0:?} must be lowercase")]
    RepositoryUppercase(String),
    /// A 64-hex repository name would be confused with an image id.
    #[error("repository name {0:?} cannot be a 64-character hex string (that is an image id)")]
    RepositoryIsHex(String),
    /// The registry host part is not a host name or address with an optional port.
    #[error("registry host {0:?} is invalid (expected host[:port])")]
    Domain(String),
    /// The registry port is not a TCP port number.
    #[error("registry port in {0:?} is out of range (1-65535)")]
    Port(String),
    /// The tag has characters or a length the grammar does not allow.
    #[error("tag {0:?} is invalid: up to 128 of [A-Za-z0-9_.-], not starting with . or -")]
    Tag(String),
    /// The whole name is longer than 255 characters.
    #[error("repository name {0:?} is longer than 255 characters")]
    TooLong(String),
}

/// A `sha256:<64 lowercase hex>` content digest, validated at construction.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    /// Digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self::from_sha256(Sha256::digest(data).into())
    }

    /// Digest from a finished sha256 state.
    pub fn from_sha256(bytes: [u8; 32]) -> Self {
        Digest(format!("sha256:{}", hex::encode(bytes)))
    }

    /// The 64 hex characters, used as a file and key name.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// `sha256:<hex>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parse a bare 64-character hex string as a sha256 digest.
    pub fn from_hex(hex: &str) -> Result<Self, ReferenceError> {
        if is_sha256_hex(hex) {
            Ok(Digest(format!("sha256:{hex}")))
        } else {
            Err(ReferenceError::DigestFormat(hex.to_string()))
        }
    }
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl FromStr for Digest {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((algorithm, hex)) = s.split_once(':') else {
            return Err(ReferenceError::DigestFormat(s.to_string()));
        };
        let algorithm_ok = !algorithm.is_empty()
            && algorithm
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b));
        if !algorithm_ok || hex.is_empty() {
            return Err(ReferenceError::DigestFormat(s.to_string()));
        }
        if algorithm != "sha256" {
            return Err(ReferenceError::DigestAlgorithm(algorithm.to_string()));
        }
        if !is_sha256_hex(hex) {
            return Err(ReferenceError::DigestFormat(s.to_string()));
        }
        Ok(Digest(s.to_string()))
    }
}

impl TryFrom<String> for Digest {
    type Error = ReferenceError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.0)
    }
}

/// The OCI chain id of a layer stack: `chain(L0) = diff_id(L0)`,
/// `chain(Ln) = sha256(chain(Ln-1) + " " + diff_id(Ln))`. The tree cache keys flattened trees by
/// the chain id of an image's top layer.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Debug)]
#[serde(transparent)]
pub struct ChainId(pub Digest);

impl ChainId {
    /// Chain id of the stack `diff_ids` (bottom first); `None` for an empty stack.
    pub fn of(diff_ids: &[Digest]) -> Option<ChainId> {
        let (first, rest) = diff_ids.split_first()?;
        let mut chain = first.clone();
        for diff_id in rest {
            chain = Digest::of(format!("{chain} {diff_id}").as_bytes());
        }
        Some(ChainId(chain))
    }
}

impl fmt::Display for ChainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A normalised image name: `registry/repository`, plus a tag and/or a digest.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct ImageRef {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl ImageRef {
    /// Parse and normalise `input` (see the module documentation for the rules).
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        if input.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let (rest, digest) = match input.split_once('@') {
            Some((rest, digest)) => (rest, Some(digest.parse::<Digest>()?)),
            None => (input, None),
        };
        // A tag is after the last ':' that is not followed by a '/' (a ':' before a '/' is a
        // registry port).
        let (name, tag) = match rest.rfind(':') {
            Some(i) if !rest[i + 1..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
            _ => (rest, None),
        };
        if let Some(tag) = tag {
            validate_tag(tag)?;
        }
        if name.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if name.len() > MAX_NAME_LEN {
            return Err(ReferenceError::TooLong(name.to_string()));
        }
        let (registry, repository) = split_registry(name);
        validate_domain(registry)?;
        if repository.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ReferenceError::RepositoryUppercase(repository.to_string()));
        }
        validate_repository(repository)?;
        if is_sha256_hex(repository) {
            return Err(ReferenceError::RepositoryIsHex(repository.to_string()));
        }
        let registry = normalise_registry(registry);
        let repository = if registry == DEFAULT_REGISTRY && !repository.contains('/') {
            format!("{OFFICIAL_REPO_PREFIX}{repository}")
        } else {
            repository.to_string()
        };
        let tag = match (tag, &digest) {
            (Some(tag), _) => Some(tag.to_string()),
            (None, None) => Some(DEFAULT_TAG.to_string()),
            (None, Some(_)) => None,
        };
        Ok(ImageRef {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// A reference to `digest` in the same repository (no tag).
    pub fn with_digest(&self, digest: Digest) -> ImageRef {
        ImageRef {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest),
        }
    }

    /// The registry host as configured (`docker.io`, `127.0.0.1:5000`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path inside the registry (`library/busybox`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if the reference has one.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if the reference has one.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// `registry/repository`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// `registry/repository:tag` when the reference is a tag without a digest: the repo tag a
    /// pull of it records (`crictl images` shows it).
    pub fn repo_tag(&self) -> Option<String> {
        match (&self.tag, &self.digest) {
            (Some(tag), None) => Some(format!("{}:{tag}", self.name())),
            _ => None,
        }
    }

    /// `registry/repository@digest` for `digest`: a repo digest.
    pub fn repo_digest(&self, digest: &Digest) -> String {
        format!("{}@{digest}", self.name())
    }

    /// What to ask the registry for: the digest when there is one, else the tag.
    pub fn registry_reference(&self) -> &str {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.as_str(),
            (None, Some(t)) => t,
            (None, None) => DEFAULT_TAG,
        }
    }
}

impl FromStr for ImageRef {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImageRef::parse(s)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// What a caller may name an image by in `ImageStatus`/`RemoveImage`: a full id (`sha256:<hex>`
/// or the bare 64 hex characters), a name (tag or digest reference), or (tried only when no
/// name matches) a unique prefix of an id.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum ImageLookup {
    /// A full image id (the config digest).
    Id(Digest),
    /// A name; `prefix` is set when the input could also be an id prefix (hex, ≥ 4 chars).
    Name {
        /// The normalised name.
        reference: ImageRef,
        /// The id prefix the input also spells, tried when the name is unknown.
        prefix: Option<String>,
    },
    /// An id prefix that is not a valid name (e.g. `sha256:abcd`).
    Prefix(String),
}

/// The shortest id prefix [`ImageLookup`] accepts: shorter ones are too likely to be ambiguous
/// or a typo (containerd's digest set accepts any length; this is stricter on purpose).
pub const MIN_ID_PREFIX: usize = 4;

impl ImageLookup {
    /// Classify `input`. Errors only when it is neither an id, an id prefix nor a valid name.
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        if input.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if let Some(hex) = input.strip_prefix("sha256:") {
            if is_sha256_hex(hex) {
                return Ok(ImageLookup::Id(Digest(input.to_string())));
            }
            if is_hex_prefix(hex) {
                return Ok(ImageLookup::Prefix(hex.to_string()));
            }
            return Err(ReferenceError::DigestFormat(input.to_string()));
        }
        if is_sha256_hex(input) {
            return Ok(ImageLookup::Id(Digest(format!("sha256:{input}"))));
        }
        let reference = ImageRef::parse(input)?;
        let prefix = is_hex_prefix(input).then(|| input.to_string());
        Ok(ImageLookup::Name { reference, prefix })
    }
}

fn is_hex_prefix(s: &str) -> bool {
    s.len() >= MIN_ID_PREFIX
        && s.len() <= 64
        && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn split_registry(name: &str) -> (&str, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (first, rest)
        }
        _ => (DEFAULT_REGISTRY, name),
    }
}

fn normalise_registry(registry: &str) -> String {
    match registry {
        "index.docker.io" | "registry-1.docker.io" => DEFAULT_REGISTRY.to_string(),
        other => other.to_string(),
    }
}

fn validate_tag(tag: &str) -> Result<(), ReferenceError> {
    let bad = || ReferenceError::Tag(tag.to_string());
    let first = tag.bytes().next().ok_or_else(bad)?;
    if tag.len() > MAX_TAG_LEN || !(first.is_ascii_alphanumeric() || first == b'_') {
        return Err(bad());
    }
    if !tag
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    {
        return Err(bad());
    }
    Ok(())
}

/// `host[:port]` where host is dot-separated DNS labels (letters, digits, inner `-`) or a
/// bracketed IPv6 address.
fn validate_domain(domain: &str) -> Result<(), ReferenceError> {
    let bad = || ReferenceError::Domain(domain.to_string());
    let (host, port) = if let Some(rest) = domain.strip_prefix('[') {
        let (addr, after) = rest.split_once(']').ok_or_else(bad)?;
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad());
        }
        match after {
            "" => ("", None),
            p => ("", Some(p.strip_prefix(':').ok_or_else(bad)?.to_string())),
        }
    } else {
        match domain.split_once(':') {
            Some((h, p)) => (h, Some(p.to_string())),
            None => (domain, None),
        }
    };
    if !domain.starts_with('[') {
        if host.is_empty() {
            return Err(bad());
        }
        for label in host.split('.') {
            let b = label.as_bytes();
            let ok = !b.is_empty()
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
                && b.first() != Some(&b'-')
                && b.last() != Some(&b'-');
            if !ok {
                return Err(bad());
            }
        }
    }
    if let Some(port) = port {
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        if !matches!(port.parse::<u16>(), Ok(p) if p != 0) {
            return Err(ReferenceError::Port(domain.to_string()));
        }
    }
    Ok(())
}

/// Path components: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`, joined by `/`.
fn validate_repository(repository: &str) -> Result<(), ReferenceError> {
    let bad = || ReferenceError::RepositoryFormat(repository.to_string());
    for component in repository.split('/') {
        let b = component.as_bytes();
        let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        if !b.first().is_some_and(alnum) || !b.last().is_some_and(alnum) {
            return Err(bad());
        }
        let mut i = 0;
        while i < b.len() {
            if alnum(&b[i]) {
                i += 1;
                continue;
            }
            // A separator run: '.', '_', '__' or one or more '-'.
            let start = i;
            while i < b.len() && !alnum(&b[i]) {
                i += 1;
            }
            let sep = &component[start..i];
            let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|c| c == b'-');
            if !ok {
                return Err(bad());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn norm(s: &str) -> String {
        ImageRef::parse(s).unwrap().to_string()
    }

    #[test]
    fn short_names_normalise_like_docker() {
        assert_eq!(norm("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(norm("user/app"), "docker.io/user/app:latest");
        assert_eq!(
            norm("docker.io/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            norm("index.docker.io/library/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(norm("localhost/app"), "localhost/app:latest");
        assert_eq!(norm("Registry/app"), "Registry/app:latest");
    }

    #[test]
    fn host_with_port_is_a_registry_not_a_tag() {
        let r = ImageRef::parse("127.0.0.1:5000/team/app:v1.2").unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "team/app");
        assert_eq!(r.tag(), Some("v1.2"));
        let r = ImageRef::parse("127.0.0.1:5000/app").unwrap();
        assert_eq!(r.tag(), Some("latest"));
        assert_eq!(r.repo_tag().unwrap(), "127.0.0.1:5000/app:latest");
        let r = ImageRef::parse("[::1]:5000/app:x").unwrap();
        assert_eq!(r.registry(), "[::1]:5000");
    }

    #[test]
    fn tag_and_digest_pull_the_digest() {
        let s = format!("busybox:1.36@sha256:{HEX}");
        let r = ImageRef::parse(&s).unwrap();
        assert_eq!(r.tag(), Some("1.36"));
        assert_eq!(r.digest().unwrap().hex(), HEX);
        assert_eq!(r.registry_reference(), format!("sha256:{HEX}"));
        assert_eq!(r.repo_tag(), None);
        let r = ImageRef::parse(&format!("busybox@sha256:{HEX}")).unwrap();
        assert_eq!(r.tag(), None);
        assert_eq!(
            r.to_string(),
            format!("docker.io/library/busybox@sha256:{HEX}")
        );
    }

    #[test]
    fn bad_references_say_what_is_wrong() {
        assert_eq!(ImageRef::parse(""), Err(ReferenceError::Empty));
        assert!(matches!(
            ImageRef::parse("docker.io/BusyBox"),
            Err(ReferenceError::RepositoryUppercase(_))
        ));
        assert!(matches!(
            ImageRef::parse("busybox:-x"),
            Err(ReferenceError::Tag(_))
        ));
        assert!(matches!(
            ImageRef::parse("busybox:a b"),
            Err(ReferenceError::Tag(_))
        ));
        assert!(matches!(
            ImageRef::parse("busybox@sha256:abc"),
            Err(ReferenceError::DigestFormat(_))
        ));
        assert!(matches!(
            ImageRef::parse(&format!("busybox@sha512:{HEX}")),
            Err(ReferenceError::DigestAlgorithm(_))
        ));
        assert!(matches!(
            ImageRef::parse("a..b"),
            Err(ReferenceError::RepositoryFormat(_))
        ));
        assert!(matches!(
            ImageRef::parse("app_"),
            Err(ReferenceError::RepositoryFormat(_))
        ));
        assert!(matches!(
            ImageRef::parse("host:99x/app"),
            Err(ReferenceError::Domain(_))
        ));
        for port in ["0", "65536", "99999"] {
            assert!(matches!(
                ImageRef::parse(&format!("127.0.0.1:{port}/app")),
                Err(ReferenceError::Port(_))
            ));
        }
        ImageRef::parse("127.0.0.1:65535/app").unwrap();
        assert!(matches!(
            ImageRef::parse(HEX),
            Err(ReferenceError::RepositoryIsHex(_))
        ));
        assert!(matches!(
            ImageRef::parse(&"a".repeat(300)),
            Err(ReferenceError::TooLong(_))
        ));
        let msg = ImageRef::parse("docker.io/BusyBox")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("must be lowercase"), "{msg}");
    }

    #[test]
    fn separators_follow_the_grammar() {
        for ok in ["a.b", "a_b", "a__b", "a---b", "a-b/c.d"] {
            ImageRef::parse(ok).unwrap();
        }
        for bad in ["a___b", "a._b", ".a", "a/", "/a", "a//b"] {
            assert!(ImageRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lookups_classify_ids_names_and_prefixes() {
        assert!(matches!(
            ImageLookup::parse(&format!("sha256:{HEX}")).unwrap(),
            ImageLookup::Id(_)
        ));
        assert!(matches!(
            ImageLookup::parse(HEX).unwrap(),
            ImageLookup::Id(_)
        ));
        assert_eq!(
            ImageLookup::parse("sha256:0123").unwrap(),
            ImageLookup::Prefix("0123".into())
        );
        match ImageLookup::parse("abcd12").unwrap() {
            ImageLookup::Name { prefix, .. } => assert_eq!(prefix.as_deref(), Some("abcd12")),
            other => panic!("{other:?}"),
        }
        match ImageLookup::parse("busybox").unwrap() {
            ImageLookup::Name { prefix, .. } => assert_eq!(prefix, None),
            other => panic!("{other:?}"),
        }
        assert!(ImageLookup::parse("sha256:xyz").is_err());
    }

    #[test]
    fn chain_id_matches_the_oci_definition() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        assert_eq!(ChainId::of(std::slice::from_ref(&a)).unwrap().0, a);
        let expected = Digest::of(format!("{a} {b}").as_bytes());
        assert_eq!(ChainId::of(&[a, b]).unwrap().0, expected);
        assert!(ChainId::of(&[]).is_none());
    }

    #[test]
    fn digest_serde_round_trips_and_validates() {
        let d = Digest::of(b"x");
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
        assert!(serde_json::from_str::<Digest>("\"sha256:zz\"").is_err());
    }
}
