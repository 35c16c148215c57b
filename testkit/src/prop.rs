//! Strategies the property tests of several crates share (#19: `tests/prop_*.rs`).

use proptest::prelude::*;

/// Strings of `len` characters drawn from `alphabet`: far cheaper to generate than a regex
/// strategy in a debug build, which keeps 10,000 cases per parser within `make test`.
pub fn chars(alphabet: &'static str, len: std::ops::Range<usize>) -> impl Strategy<Value = String> {
    let set: Vec<char> = alphabet.chars().collect();
    proptest::collection::vec(proptest::sample::select(set), len)
        .prop_map(|v| v.into_iter().collect())
}

/// Arbitrary JSON up to two levels deep; objects take their keys from `keys`, so that some
/// collide with the fields of the format under test.
pub fn json(keys: &'static [&'static str]) -> impl Strategy<Value = serde_json::Value> {
    use serde_json::{Value, json};
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        chars("0123456789abcdef:./", 0..20).prop_map(Value::String),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(2, 8, 3, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            proptest::collection::vec((proptest::sample::select(keys), inner), 0..3).prop_map(
                |kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            ),
        ]
    })
}
