//! The caller's opaque data stored with each container and sandbox record (the CRI layer keeps
//! metadata, labels, annotations and the config as given there).
//!
//! Shared, never copied: kubelet relists every second, and each list copies every record. As a
//! plain `serde_json::Value` that copy rebuilt the whole tree (every map node and string of
//! the pod's config) per record per list: 16 % of a ListContainers with 100 pods. Behind an
//! `Arc` a record's copy costs one reference count. Records are replaced whole (persist, then
//! swap), so the value is never mutated in place.
//!
//! On disk it is the same JSON value as before: the serde impls are transparent.

use std::ops::Deref;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Opaque caller data of a record, cheap to clone (see the module doc).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientData(Arc<serde_json::Value>);

impl ClientData {
    /// Wraps `value`.
    pub fn new(value: serde_json::Value) -> Self {
        Self(Arc::new(value))
    }

    /// The value, borrowed (`T::deserialize(data.value())` reads it without a copy).
    pub fn value(&self) -> &serde_json::Value {
        &self.0
    }
}

impl From<serde_json::Value> for ClientData {
    fn from(value: serde_json::Value) -> Self {
        Self::new(value)
    }
}

impl Deref for ClientData {
    type Target = serde_json::Value;

    fn deref(&self) -> &serde_json::Value {
        &self.0
    }
}

impl Serialize for ClientData {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ClientData {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        serde_json::Value::deserialize(deserializer).map(Self::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_as_the_bare_value_and_clones_share_it() {
        let data = ClientData::new(serde_json::json!({"labels": {"a": "b"}}));
        let text = serde_json::to_string(&data).unwrap();
        assert_eq!(text, r#"{"labels":{"a":"b"}}"#);
        let back: ClientData = serde_json::from_str(&text).unwrap();
        assert_eq!(back, data);
        let copy = data.clone();
        assert!(std::ptr::eq(copy.value(), data.value()));
        assert_eq!(copy["labels"]["a"], "b");
    }

    #[test]
    fn a_missing_field_reads_as_null() {
        #[derive(Deserialize)]
        struct Rec {
            #[serde(default)]
            client_data: ClientData,
        }
        let rec: Rec = serde_json::from_str("{}").unwrap();
        assert!(rec.client_data.is_null());
    }
}
