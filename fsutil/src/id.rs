//! The one alphabet of object ids (sandbox and container ids). An id becomes a directory
//! name, a cgroup name, an argument of the OCI runtime, `CNI_CONTAINERID`, a CNI cache file
//! name and part of iptables chain names, so it must be safe in all of them: the
//! intersection of what runc (`[\w+.-]`) and libcni (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`) accept,
//! nothing that could traverse, separate or start an option. rootstock's own ids are 64 hex
//! digits (as containerd's).

/// Longest id accepted. The bound keeps paths and the OCI runtime's state directory names
/// well under `NAME_MAX`.
pub const MAX_ID_LEN: usize = 128;

/// Why a string is not an id. The messages are written to follow "invalid <what> <value>: ".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdError {
    /// The empty string.
    Empty,
    /// More than [`MAX_ID_LEN`] bytes.
    TooLong,
    /// Starts with `-` (an option) or `.` (hidden, `.`/`..`).
    BadStart,
    /// A byte outside the alphabet.
    BadChar,
}

impl IdError {
    /// The message, for error types that carry a `&'static str` reason.
    pub fn reason(self) -> &'static str {
        match self {
            IdError::Empty => "empty",
            IdError::TooLong => "longer than 128 bytes",
            IdError::BadStart => "must not start with '-' or '.'",
            IdError::BadChar => "only ASCII letters, digits, '_', '-' and '.' are allowed",
        }
    }
}

impl std::fmt::Display for IdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for IdError {}

/// Checks `value` against the id alphabet: 1 to [`MAX_ID_LEN`] bytes of ASCII letters,
/// digits, `_`, `-` and `.`, not starting with `-` or `.`.
pub fn validate_id(value: &str) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty);
    }
    if value.len() > MAX_ID_LEN {
        return Err(IdError::TooLong);
    }
    if value.starts_with(['-', '.']) {
        return Err(IdError::BadStart);
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err(IdError::BadChar);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_hex_and_names() {
        for good in [
            "3f2a".repeat(16).as_str(),
            "web_1.a-b",
            "_x",
            &"a".repeat(128),
        ] {
            assert_eq!(validate_id(good), Ok(()), "{good:?}");
        }
    }

    #[test]
    fn rejects_traversal_options_and_foreign_bytes() {
        for (bad, why) in [
            ("", IdError::Empty),
            (&"a".repeat(129), IdError::TooLong),
            ("..", IdError::BadStart),
            (".hidden", IdError::BadStart),
            ("-rf", IdError::BadStart),
            ("a/b", IdError::BadChar),
            ("a b", IdError::BadChar),
            ("a+b", IdError::BadChar),
            ("a:b", IdError::BadChar),
            ("é", IdError::BadChar),
        ] {
            assert_eq!(validate_id(bad), Err(why), "{bad:?}");
            assert_eq!(why.to_string(), why.reason());
        }
    }
}
