//! Typed identities, validated once where they enter the crate.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Longest id accepted. containerd's ids are 64 hex digits; the bound keeps paths and the
/// OCI runtime's state directory names well under `NAME_MAX`.
const MAX_ID_LEN: usize = 128;

fn validate(what: &'static str, value: &str) -> Result<()> {
    let reject = |reason| {
        Err(Error::InvalidId {
            what,
            value: value.to_owned(),
            reason,
        })
    };
    if value.is_empty() {
        return reject("empty");
    }
    if value.len() > MAX_ID_LEN {
        return reject("longer than 128 bytes");
    }
    // The id becomes a directory name, a cgroup name and an argument of the OCI runtime
    // (runc accepts `[\w+.-]`): nothing that could traverse, separate or start an option.
    if value.starts_with(['-', '.']) {
        return reject("must not start with '-' or '.'");
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'+'))
    {
        return reject("only ASCII letters, digits, '_', '-', '.' and '+' are allowed");
    }
    Ok(())
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

    #[test]
    fn rejects_traversal_and_options() {
        for bad in [
            "",
            "..",
            "a/b",
            "-rf",
            ".hidden",
            "a b",
            "é",
            &"a".repeat(129),
        ] {
            assert!(ContainerId::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn deserialize_validates() {
        assert!(serde_json::from_str::<SandboxId>("\"../x\"").is_err());
        let id: SandboxId = serde_json::from_str("\"abc\"").unwrap();
        assert_eq!(id.as_str(), "abc");
    }
}
