//! The basics more than one rootstock crate needs, written once: the one alphabet of object
//! ids ([`validate_id`]), crash-safe file replacement ([`write_atomic`], [`write_per_boot`],
//! [`sync_dir`]) and root-only directories ([`create_private_dir`]), and the pod's
//! [`DnsConfig`], which the runtime and CNI both take, and [`release_dead_stack`] for
//! threads that end.
//!
//! Std and libc only, no domain knowledge: every domain crate may depend on it, and it depends on
//! none of them. Errors are plain `io::Error`s (and [`IdError`]); each crate wraps them in
//! its own error type, naming the object.

mod dns;
pub mod failpoint;
mod id;
mod stack;

pub use dns::DnsConfig;
pub use id::{IdError, MAX_ID_LEN, validate_id};
pub use stack::release_dead_stack;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Replaces `path` with `data` so that a reader (or a crash) sees either the old or the new
/// content, never a torn one: temp file `.<name>.tmp` in the same directory (mode 0600),
/// fsync, rename, fsync the directory (without the last step the rename itself may be lost
/// on power failure). A leftover temp file from a crash is simply overwritten next time.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    replace(path, data, true)
}

/// [`write_atomic`] without the two fsyncs, for per-boot state (the state dir, tmpfs under
/// `/run` on a node): readers and a process crash still see the old or the new content (the
/// page cache holds both), and a power loss that could tear or lose the file ends the boot
/// it belongs to, so recovery must (and does) treat such a file as unreadable.
pub fn write_per_boot(path: &Path, data: &[u8]) -> io::Result<()> {
    replace(path, data, false)
}

fn replace(path: &Path, data: &[u8], durable: bool) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no parent"))?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(data)?;
    if durable {
        file.sync_all()?;
    }
    drop(file);
    fs::rename(&tmp, path)?;
    if durable {
        sync_dir(dir)?;
    }
    Ok(())
}

/// fsyncs a directory, so that a rename or unlink in it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and its missing parents with mode 0700: state and store directories hold
/// other pods' data, root only. An existing directory is left as it is (its mode too).
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn atomic_write_over_a_crash_leftover() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(".s.json.tmp"), b"torn").unwrap();
        let p = dir.path().join("s.json");
        write_atomic(&p, b"whole").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"whole");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn atomic_write_needs_a_file_name() {
        let err = write_atomic(Path::new("/"), b"x").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn private_dir_is_0700_and_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("a/b");
        create_private_dir(&d).unwrap();
        create_private_dir(&d).unwrap();
        for p in [dir.path().join("a"), d] {
            assert_eq!(
                fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o700
            );
        }
    }
}
