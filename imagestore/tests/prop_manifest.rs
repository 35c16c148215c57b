//! Property tests of manifests and indexes (#19): what a registry serves. Well-formed ones
//! of every media type parse to what they say; a descriptor missing a required field is
//! refused naming the field; damaged bytes never panic and the error names the reference.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use rootstock_imagestore::Digest;
use rootstock_imagestore::manifest::{
    DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, Descriptor, ImageConfigFile, Manifest, OCI_INDEX,
    OCI_MANIFEST, Platform, choose_platform,
};
use rootstock_testkit::prop::chars;
use serde_json::{Value, json};

const CASES: u32 = 10_000;
const REFERENCE: &str = "registry.test/app:1";

fn digest() -> impl Strategy<Value = Digest> {
    any::<[u8; 32]>().prop_map(Digest::from_sha256)
}

fn platform() -> impl Strategy<Value = Platform> {
    let arch = proptest::sample::select(vec!["amd64", "arm64", "arm", "386", "s390x", "x86_64"]);
    let os = proptest::sample::select(vec!["linux", "windows", "Linux"]);
    let variant = proptest::option::of(proptest::sample::select(vec!["v7", "v8", "", "v3"]));
    (arch, os, variant).prop_map(|(a, o, v)| Platform {
        architecture: a.to_owned(),
        os: o.to_owned(),
        variant: v.map(str::to_owned),
    })
}

fn descriptor(with_platform: bool) -> impl Strategy<Value = Descriptor> {
    let urls =
        proptest::option::weighted(0.1, proptest::collection::vec(chars("abc:/.", 1..12), 0..2));
    let platform = if with_platform {
        proptest::option::weighted(0.9, platform()).boxed()
    } else {
        Just(None).boxed()
    };
    let media_type = prop_oneof![
        proptest::sample::select(vec![
            OCI_MANIFEST,
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "",
        ])
        .prop_map(str::to_owned),
        chars("abcj/.+-", 0..12),
    ];
    (media_type, digest(), any::<u64>(), platform, urls).prop_map(
        |(media_type, digest, size, platform, urls)| Descriptor {
            media_type,
            digest,
            size,
            platform,
            urls,
        },
    )
}

/// A manifest and the JSON a registry serves for it.
fn manifest() -> impl Strategy<Value = (Manifest, Value)> {
    let image = (
        descriptor(false),
        proptest::collection::vec(descriptor(false), 0..5),
        proptest::sample::select(vec![Some(OCI_MANIFEST), Some(DOCKER_MANIFEST), None]),
    )
        .prop_map(|(config, layers, media_type)| {
            let mut v = json!({"schemaVersion": 2, "config": config, "layers": layers});
            if let Some(m) = media_type {
                v["mediaType"] = json!(m);
            }
            let m =
                Manifest::Image(rootstock_imagestore::manifest::ImageManifest { config, layers });
            (m, v)
        });
    let index = (
        proptest::collection::vec(descriptor(true), 0..5),
        proptest::sample::select(vec![Some(OCI_INDEX), Some(DOCKER_MANIFEST_LIST), None]),
    )
        .prop_map(|(entries, media_type)| {
            let mut v = json!({"schemaVersion": 2, "manifests": entries});
            if let Some(m) = media_type {
                v["mediaType"] = json!(m);
            }
            (Manifest::Index(entries), v)
        });
    prop_oneof![image, index]
}

/// Arbitrary JSON, its object keys sometimes those of a descriptor.
fn arb_json() -> impl Strategy<Value = Value> {
    rootstock_testkit::prop::json(&["digest", "size", "mediaType", "platform", "urls"])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// What a registry serves parses to what it says, whatever the media type spelling.
    #[test]
    fn manifests_parse_to_what_they_say((want, json) in manifest()) {
        let bytes = serde_json::to_vec(&json).unwrap();
        let got = Manifest::parse(REFERENCE, &Digest::of(&bytes), &bytes).unwrap();
        prop_assert_eq!(&got, &want);
        // The platform chosen from an index is one of its entries, for Linux on amd64.
        if let Manifest::Index(entries) = &got {
            let want = Platform { architecture: "amd64".into(), os: "linux".into(), variant: None };
            if let Some(d) = choose_platform(entries, &want) {
                prop_assert!(entries.contains(d));
                let p = d.platform.as_ref().unwrap();
                prop_assert_eq!(p.os.to_lowercase(), "linux");
                prop_assert!(p.architecture == "amd64" || p.architecture == "x86_64", "{}", p);
            }
        }
    }

    /// A descriptor without `digest` or `size` is refused, the error naming the field and
    /// the reference.
    #[test]
    fn a_missing_required_field_is_named(
        (_, mut json) in manifest(),
        field in proptest::sample::select(vec!["digest", "size"]),
        pick in any::<proptest::sample::Index>(),
    ) {
        let mut targets: Vec<&mut Value> = Vec::new();
        for (key, value) in json.as_object_mut().unwrap().iter_mut() {
            match (key.as_str(), value) {
                ("config", c) => targets.push(c),
                ("layers" | "manifests", Value::Array(items)) => targets.extend(items.iter_mut()),
                _ => {}
            }
        }
        if targets.is_empty() {
            // An empty index: nothing to remove.
            return Ok(());
        }
        let i = pick.index(targets.len());
        targets[i].as_object_mut().unwrap().remove(field);
        let bytes = serde_json::to_vec(&json).unwrap();
        let err = Manifest::parse(REFERENCE, &Digest::of(&bytes), &bytes).unwrap_err().to_string();
        prop_assert!(err.contains(&format!("`{field}`")), "{}", err);
        prop_assert!(err.contains(REFERENCE), "{}", err);
    }

    /// Fields replaced by arbitrary JSON, or the bytes cut or flipped: never a panic, and a
    /// refusal names the reference.
    #[test]
    fn damaged_manifests_never_panic(
        (_, mut json) in manifest(),
        junk in proptest::collection::vec(
            (proptest::sample::select(vec!["schemaVersion", "mediaType", "config", "layers",
                "manifests", "fsLayers"]), arb_json()), 0..3),
        cut in any::<proptest::sample::Index>(),
        flip in proptest::option::of((any::<proptest::sample::Index>(), any::<u8>())),
    ) {
        for (key, value) in junk {
            json[key] = value;
        }
        let mut bytes = serde_json::to_vec(&json).unwrap();
        if let Some((at, b)) = flip {
            let i = at.index(bytes.len());
            bytes[i] = b;
            bytes.truncate(cut.index(bytes.len() + 1).max(i));
        }
        let digest = Digest::of(&bytes);
        if let Err(e) = Manifest::parse(REFERENCE, &digest, &bytes) {
            prop_assert!(e.to_string().contains(REFERENCE), "{}", e);
        }
        // The same bytes as an image config.
        if let Err(e) = ImageConfigFile::parse(REFERENCE, &digest, &bytes) {
            prop_assert!(e.to_string().contains(REFERENCE), "{}", e);
        }
    }
}
