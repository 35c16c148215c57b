//! The caller's opaque data stored with each container and sandbox record (the CRI layer keeps
//! metadata, labels, annotations and the config as given there).
//!
//! Kept as one compact JSON text, shared, never copied:
//! - kubelet relists every second, and each list copies every record. As a `serde_json::Value`
//!   that copy rebuilt the whole tree (every map node and string of the pod's config) per
//!   record per list: 16 % of a ListContainers with 100 pods. Behind an `Arc` a record's
//!   copy costs one reference count. Records are replaced whole (persist, then swap), so the
//!   data is never mutated in place.
//! - as a tree it was hundreds of small allocations per pod (a map node alone is 632 bytes),
//!   about 10 KiB a pod made during the burst of a pod start and scattered over the heap, where
//!   they kept pages from being returned after it; the text is one allocation of about a
//!   third of that.
//!
//! Readers deserialize what they need from the text ([`ClientData::parse`]); fields they do
//! not name are skipped without being built. On disk it is the same JSON value as before.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Opaque caller data of a record, cheap to clone (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientData(Arc<str>);

impl ClientData {
    /// Keeps `value` as compact text (map keys sorted, so equal values give equal text).
    pub fn new(value: &serde_json::Value) -> Self {
        // Serializing a `Value` cannot fail: its map keys are strings.
        Self(Arc::from(
            serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned()),
        ))
    }

    /// Reads `T` from the data; fields of the data that `T` does not name are skipped.
    pub fn parse<T: DeserializeOwned>(&self) -> serde_json::Result<T> {
        serde_json::from_str(&self.0)
    }

    /// The whole data as a `Value` (`null` if the text could not be read back, which text
    /// written by [`ClientData::new`] always can).
    pub fn to_value(&self) -> serde_json::Value {
        self.parse().unwrap_or(serde_json::Value::Null)
    }

    /// The compact JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for ClientData {
    fn default() -> Self {
        Self::new(&serde_json::Value::Null)
    }
}

impl From<serde_json::Value> for ClientData {
    fn from(value: serde_json::Value) -> Self {
        Self::new(&value)
    }
}

impl Serialize for ClientData {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Written as the JSON value it holds (records are written a few times per container,
        // each a file write and rename: the parse is not what they wait for).
        self.to_value().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ClientData {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        serde_json::Value::deserialize(deserializer).map(Self::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_as_the_bare_value_and_clones_share_it() {
        let data = ClientData::new(&serde_json::json!({"labels": {"a": "b"}, "n": 1}));
        let text = serde_json::to_string(&data).unwrap();
        assert_eq!(text, r#"{"labels":{"a":"b"},"n":1}"#);
        let back: ClientData = serde_json::from_str(&text).unwrap();
        assert_eq!(back, data);
        let copy = data.clone();
        assert!(std::ptr::eq(copy.as_str(), data.as_str()));
        assert_eq!(copy.to_value()["labels"]["a"], "b");
    }

    #[test]
    fn parse_reads_the_named_fields_and_skips_the_others() {
        #[derive(Deserialize)]
        struct Labels {
            labels: std::collections::HashMap<String, String>,
        }
        let data = ClientData::new(&serde_json::json!({
            "config": {"deep": [{"x": 1}, {"y": {"z": null}}]},
            "labels": {"app": "web"},
        }));
        assert_eq!(data.parse::<Labels>().unwrap().labels["app"], "web");
    }

    #[test]
    fn a_missing_field_reads_as_null() {
        #[derive(Deserialize)]
        struct Rec {
            #[serde(default)]
            client_data: ClientData,
        }
        let rec: Rec = serde_json::from_str("{}").unwrap();
        assert!(rec.client_data.to_value().is_null());
        assert_eq!(rec.client_data.as_str(), "null");
    }
}
