//! Typed identities, validated once where they enter the crate.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Checks `value` against the one id alphabet of rootstock (`rootstock_fsutil::validate_id`:
/// the id is also the CNI container id, so it must suit both runc and libcni).
fn validate(what: &'static str, value: &str) -> Result<()> {
    rootstock_fsutil::validate_id(value).map_err(|e| Error::InvalidId {
        what,
        value: value.to_owned(),
        reason: e.reason(),
    })
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates `value` as an id.
            pub fn new(value: impl Into<String>) -> Result<Self> {
                let value = value.into();
                validate($what, &value)?;
                Ok(Self(value))
            }

            /// The id as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(value: String) -> Result<Self> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

id_type!(
    /// A container id: a directory name, a cgroup leaf and the OCI runtime's container id.
    ContainerId,
    "container id"
);
id_type!(
    /// A pod sandbox id.
    SandboxId,
    "sandbox id"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_hex_and_names() {
        assert!(ContainerId::new("3f2a".repeat(16)).is_ok());
        assert!(ContainerId::new("web_1.a-b").is_ok());
    }

    /// The alphabet itself is tested in `rootstock_fsutil`; here: it is applied, and the
    /// error names what and which.
    #[test]
    fn rejects_traversal_and_names_the_id() {
        for bad in ["", "..", "a/b", "-rf", "a+b"] {
            let err = ContainerId::new(bad).unwrap_err().to_string();
            assert!(err.starts_with("invalid container id"), "{err}");
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn deserialize_validates() {
        assert!(serde_json::from_str::<SandboxId>("\"../x\"").is_err());
        let id: SandboxId = serde_json::from_str("\"abc\"").unwrap();
        assert_eq!(id.as_str(), "abc");
    }
}
