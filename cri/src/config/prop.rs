//! Property tests of the daemon configuration (#19): what an operator writes into
//! config.toml. A unit-test module because the daemon is a binary crate (no library for
//! an integration test to use). Any value of any key, of the right type or not, and any
//! unknown key: the file is either accepted, and then round-trips through `config show`,
//! or refused with an error naming the key; arbitrary text never panics.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use proptest::prelude::*;
use toml::Value;

use super::Config;

const CASES: u32 = 10_000;

fn parse(text: &str) -> Result<Config, super::ConfigError> {
    Config::parse(text, Path::new("/etc/rootstock/prop.toml"))
}

/// Every key of the default configuration (tables included), plus the optional ones the
/// default leaves out, as dotted paths.
fn keys() -> Vec<Vec<String>> {
    fn walk(v: &Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        if let Value::Table(t) = v {
            for (k, v) in t {
                path.push(k.clone());
                out.push(path.clone());
                walk(v, path, out);
                path.pop();
            }
        }
    }
    let mut out = Vec::new();
    walk(
        &Value::try_from(Config::default()).unwrap(),
        &mut Vec::new(),
        &mut out,
    );
    for extra in [
        "cni.cache_dir",
        "streaming.tls_cert_file",
        "images.registries.r.test.mirrors",
        "images.registries.r.test.insecure",
        "images.registries.r.test.username",
        "images.registries.r.test.ca_files",
    ] {
        // `r.test` is one key (a registry host).
        let mut p: Vec<String> = extra.split('.').map(str::to_owned).collect();
        if p.len() == 5 {
            let host = format!("{}.{}", p[2], p[3]);
            p.splice(2..4, [host]);
        }
        out.push(p);
    }
    out
}

fn chars(alphabet: &'static str, len: std::ops::Range<usize>) -> impl Strategy<Value = String> {
    let set: Vec<char> = alphabet.chars().collect();
    proptest::collection::vec(proptest::sample::select(set), len)
        .prop_map(|v| v.into_iter().collect())
}

/// A TOML value of any type: the right one for some keys, the wrong one for others.
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(Value::Integer),
        (0i64..70_000).prop_map(Value::Integer),
        any::<bool>().prop_map(Value::Boolean),
        any::<f64>().prop_map(Value::Float),
        any::<String>().prop_map(Value::String),
        chars("abc019./:-_ ", 0..16).prop_map(Value::String),
        proptest::sample::select(vec![
            "cgroupfs", "systemd", "runc", "crun", "::1", "0.0.0.0", "/tmp", "", "debug",
        ])
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(1, 4, 3, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            proptest::collection::btree_map(chars("abinry_", 1..8), inner, 0..2)
                .prop_map(|m| Value::Table(m.into_iter().collect())),
        ]
    })
}

/// Sets `path` in `root` to `v`, making the tables on the way.
fn set(root: &mut Value, path: &[String], v: Value) {
    let mut cur = root;
    for k in &path[..path.len() - 1] {
        let Value::Table(t) = cur else { return };
        cur = t
            .entry(k.clone())
            .or_insert_with(|| Value::Table(Default::default()));
    }
    if let Value::Table(t) = cur {
        t.insert(path[path.len() - 1].clone(), v);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// One to three keys set to arbitrary values (or an unknown key added): refused naming
    /// a key that was set, or accepted and then a fixed point of `config show`.
    #[test]
    fn any_value_of_any_key_round_trips_or_is_named(
        edits in proptest::collection::vec(
            (any::<proptest::sample::Index>(), value(), proptest::option::weighted(0.1, chars("abcxyz_", 1..10))),
            1..4),
    ) {
        static KEYS: std::sync::OnceLock<(Vec<Vec<String>>, Value)> = std::sync::OnceLock::new();
        let (all, default) = KEYS.get_or_init(|| {
            (keys(), Value::try_from(Config::default()).unwrap())
        });
        let mut doc = default.clone();
        let mut named = Vec::new();
        for (pick, v, unknown) in edits {
            let mut path = all[pick.index(all.len())].clone();
            if let Some(u) = unknown {
                // An unknown key beside a known one.
                path.pop();
                path.push(u);
            }
            named.push(path.last().unwrap().clone());
            set(&mut doc, &path, v);
        }
        let text = toml::to_string(&doc).unwrap();
        match parse(&text) {
            Ok(config) => {
                let shown = config.to_toml().unwrap();
                prop_assert_eq!(parse(&shown).unwrap(), config);
            }
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(msg.contains("prop.toml"), "{}", msg);
                prop_assert!(named.iter().any(|k| msg.contains(k.as_str())),
                    "{msg}\n names none of {named:?} in:\n{text}");
            }
        }
    }

    /// Arbitrary text, and TOML-ish fragments: never a panic; an error names the file.
    #[test]
    fn any_text_never_panics(
        text in prop_oneof![
            any::<String>(),
            proptest::collection::vec(proptest::sample::select(vec![
                "[streaming]\n", "[images]\n", "[images.registries.\"a\"]\n", "[runtime.handlers.x]\n",
                "port = ", "binary = ", "enable_tls = ", "true\n", "65536\n", "-1\n", "\"x\"\n",
                "[1, 2]\n", "{ a = 1 }\n", "= \n", "\"\n", "#\n", "\n", "address = \"::\"\n",
                "tls_key_file = \"/nonexistent\"\n", "cgroup_driver = \"systemd\"\n",
            ]), 0..12).prop_map(|v| v.concat()),
        ],
    ) {
        if let Err(e) = parse(&text) {
            prop_assert!(e.to_string().contains("prop.toml"), "{}", e);
        }
    }
}
