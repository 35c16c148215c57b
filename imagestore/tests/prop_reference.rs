//! Property tests of image references (#19): what kubelet and users type into `PullImage`,
//! `ImageStatus` and `RemoveImage`. Valid names round-trip through their normal form;
//! anything else never panics and its error quotes the part at fault.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use rootstock_imagestore::{Digest, ImageLookup, ImageRef, ReferenceError};
use rootstock_testkit::prop::chars;

const CASES: u32 = 10_000;

const LOWER_DIGITS: &str = "abcdefghijklmnopqrstuvwxyz0123456789";

/// A DNS label: alphanumerics, inner dashes.
fn label() -> impl Strategy<Value = String> {
    (
        chars(LOWER_DIGITS, 1..2),
        chars("abc-09", 0..5),
        chars(LOWER_DIGITS, 0..2),
    )
        .prop_map(|(a, b, c)| {
            if c.is_empty() {
                a
            } else {
                format!("{a}{b}{c}")
            }
        })
}

/// A registry host: DNS labels with an optional port, an IPv4 address, `localhost`, or a
/// bracketed IPv6 address.
fn registry() -> impl Strategy<Value = String> {
    let port = proptest::option::of(1..=65535u16);
    let with_port = |h: String, p: Option<u16>| match p {
        Some(p) => format!("{h}:{p}"),
        None => h,
    };
    prop_oneof![
        (proptest::collection::vec(label(), 2..4), port.clone())
            .prop_map(move |(l, p)| with_port(l.join("."), p)),
        port.clone()
            .prop_map(move |p| with_port("localhost".to_owned(), p)),
        (any::<[u8; 4]>(), 1..=65535u16)
            .prop_map(|(a, p)| format!("{}.{}.{}.{}:{p}", a[0], a[1], a[2], a[3])),
        Just("[::1]:5000".to_owned()),
        Just("index.docker.io".to_owned()),
    ]
}

/// A repository path component (`[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`).
fn component() -> impl Strategy<Value = String> {
    let sep = proptest::sample::select(vec![".", "_", "__", "-", "--", "---"]);
    (
        chars(LOWER_DIGITS, 1..7),
        proptest::collection::vec((sep, chars(LOWER_DIGITS, 1..7)), 0..3),
    )
        .prop_map(|(first, rest)| {
            rest.into_iter()
                .fold(first, |acc, (sep, part)| format!("{acc}{sep}{part}"))
        })
}

fn tag() -> impl Strategy<Value = String> {
    const TAG: &str = "ABCXYZabcxyz0189_.-";
    (chars("Aa0_", 1..2), chars(TAG, 0..21)).prop_map(|(a, b)| a + &b)
}

fn digest() -> impl Strategy<Value = String> {
    any::<[u8; 32]>().prop_map(|b| format!("sha256:{}", hex(&b)))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Strings made of the characters references are made of, so that most are near misses.
fn near_miss() -> impl Strategy<Value = String> {
    prop_oneof![
        chars("abcAB019:/@._-[]", 0..60),
        (chars("az09./:", 0..20), chars("0123456789abcdefA", 0..70))
            .prop_map(|(name, hex)| format!("{name}@sha256:{hex}")),
        // Arbitrary Unicode, control characters included.
        any::<String>(),
    ]
}

/// The payload of an error: the part of the input it names.
fn quoted_part(e: &ReferenceError) -> Option<&str> {
    match e {
        ReferenceError::Empty => None,
        ReferenceError::DigestFormat(s)
        | ReferenceError::DigestAlgorithm(s)
        | ReferenceError::RepositoryFormat(s)
        | ReferenceError::RepositoryUppercase(s)
        | ReferenceError::RepositoryIsHex(s)
        | ReferenceError::Domain(s)
        | ReferenceError::Port(s)
        | ReferenceError::Tag(s)
        | ReferenceError::TooLong(s) => Some(s),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// A valid reference parses to its parts; its normal form parses to the same value.
    #[test]
    fn valid_references_round_trip(
        reg in proptest::option::of(registry()),
        path in proptest::collection::vec(component(), 1..4),
        tag in proptest::option::of(tag()),
        digest in proptest::option::of(digest()),
    ) {
        let repo = path.join("/");
        // Without a host, a first component that looks like one is one (Docker's rule).
        prop_assume!(reg.is_some() || path.len() == 1 ||
            !(path[0].contains('.') || path[0] == "localhost"));
        // A 64-hex repository is refused on purpose (it would shadow an image id).
        prop_assume!(!(repo.len() == 64 && repo.bytes().all(|b| b.is_ascii_hexdigit())));
        let mut input = match &reg {
            Some(r) => format!("{r}/{repo}"),
            None => repo.clone(),
        };
        if let Some(t) = &tag {
            input = format!("{input}:{t}");
        }
        if let Some(d) = &digest {
            input = format!("{input}@{d}");
        }
        let parsed = ImageRef::parse(&input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
        let want_registry = match reg.as_deref() {
            None | Some("index.docker.io") => "docker.io",
            Some(r) => r,
        };
        prop_assert_eq!(parsed.registry(), want_registry);
        if want_registry == "docker.io" && path.len() == 1 {
            prop_assert_eq!(parsed.repository(), format!("library/{repo}"));
        } else {
            prop_assert_eq!(parsed.repository(), repo.as_str());
        }
        prop_assert_eq!(parsed.digest().map(Digest::as_str), digest.as_deref());
        let want_tag = match (&tag, &digest) {
            (Some(t), _) => Some(t.as_str()),
            (None, None) => Some("latest"),
            (None, Some(_)) => None,
        };
        prop_assert_eq!(parsed.tag(), want_tag);
        let normal = parsed.to_string();
        prop_assert_eq!(ImageRef::parse(&normal).unwrap(), parsed.clone());
        // And as a lookup: a name (an id only if it is one).
        match ImageLookup::parse(&input).unwrap() {
            ImageLookup::Name { reference, .. } => prop_assert_eq!(reference, parsed),
            other => prop_assert!(false, "{input:?} looked up as {other:?}"),
        }
    }

    /// Anything else: no panic; an accepted input is a fixed point of its normal form, a
    /// refused one gets an error quoting the part of the input at fault.
    #[test]
    fn any_input_parses_or_names_the_bad_part(input in near_miss()) {
        match ImageRef::parse(&input) {
            Ok(r) => {
                let normal = r.to_string();
                prop_assert_eq!(ImageRef::parse(&normal).unwrap(), r);
            }
            Err(e) => {
                prop_assert!(!e.to_string().is_empty());
                if let Some(part) = quoted_part(&e) {
                    prop_assert!(input.contains(part), "{input:?}: {e} quotes {part:?}");
                } else {
                    // Empty: nothing before the tag or digest.
                    prop_assert!(input.is_empty() || input.starts_with(['@', ':']),
                        "{input:?}: {e}");
                }
            }
        }
        match ImageLookup::parse(&input) {
            Ok(ImageLookup::Id(d)) => prop_assert!(input.ends_with(d.hex())),
            Ok(ImageLookup::Prefix(p)) => prop_assert!(input.ends_with(&p)),
            Ok(ImageLookup::Name { reference, prefix }) => {
                prop_assert_eq!(Some(reference), ImageRef::parse(&input).ok());
                if let Some(p) = prefix {
                    prop_assert_eq!(p, input.clone());
                }
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
        // Digests alone: accepted ones print as given.
        if let Ok(d) = input.parse::<Digest>() {
            prop_assert_eq!(d.as_str(), input.as_str());
        }
    }
}
