//! A sealed in-memory copy of an OCI runtime binary, executed instead of the file on disk.
//!
//! Why: runc and crun keep a container from overwriting the host's runtime binary through
//! `/proc/self/exe` (CVE-2019-5736) by running from a copy nobody can write to. crun 1.8 does
//! it on *every* call, from a constructor: it copies its binary into a memfd, seals it and
//! re-executes (the dynamic loader runs twice). Debian's runc 1.1.5 does it in every
//! `runc init`: a read-only bind mount of itself and a second exec. Both skip the step when
//! `/proc/self/exe` already is a memfd sealed against writes, growing, shrinking and further
//! seals (`is_self_cloned` in their `cloned_binary.c`; runc's comment on it: "you cannot write
//! to a sealed memfd no matter what, so sharing it isn't a bad thing"). So, for a handler with
//! `sealed_copy` (on for the built-in crun), the daemon makes that copy once, and runs the
//! runtime from it: `/proc/self/fd/N` in the process that execs.
//! The protection is the same (the copy cannot be written, a container never holds the fd);
//! the per-call copy and re-exec are gone (measured: `crun run` of `true` 24.5 → 19.4 ms).
//!
//! The copy costs its size in shared memory (shmem, once per runtime binary: runc ≈ 8.5 MiB,
//! crun ≈ 0.5 MiB); its pages are also what every runtime process maps as its text, instead
//! of the file's page cache.
//!
//! The copy is made at first use and re-made when the file on disk changes (device, inode,
//! size, mtime or ctime, checked by one `stat` per call), so an upgraded runtime is picked up
//! at its next call as a path would be. A binary that is not ELF (a wrapper script) runs from
//! its path: a script started as `/proc/self/fd/N` hands its interpreter a path that the
//! exec closed.

use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};

/// The runtime binary at `source` and, once made, its sealed copy.
#[derive(Debug)]
pub struct SealedExe {
    source: PathBuf,
    cached: Mutex<Option<Cached>>,
}

/// The copy made from the file as it was at `stamp`; `copy` is `None` where none is used
/// (not ELF, or making it failed: said once in the log).
#[derive(Debug)]
struct Cached {
    stamp: Stamp,
    copy: Option<Arc<OwnedFd>>,
}

/// What changes when a binary is replaced or rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(m: &fs::Metadata) -> Self {
        Self {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

/// The seals runc and crun look for: exactly these four (`RUNC_MEMFD_SEALS`).
fn seals() -> SealFlag {
    SealFlag::F_SEAL_SEAL | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_WRITE
}

impl SealedExe {
    /// The binary at `source` (a path, or a bare name looked up in `PATH`); nothing is read
    /// before the first [`SealedExe::copy`].
    pub fn new(source: impl Into<PathBuf>) -> Self {
        Self {
            source: source.into(),
            cached: Mutex::new(None),
        }
    }

    /// The sealed copy of the binary as it is on disk now, made or re-made if needed; `None`
    /// means: execute the binary by its path. The caller keeps the `Arc` until its exec is
    /// done, so a copy superseded meanwhile stays open that long.
    pub fn copy(&self) -> Option<Arc<OwnedFd>> {
        let path = resolve(&self.source)?;
        let stamp = Stamp::of(&fs::metadata(&path).ok()?);
        let mut cached = self.cached.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = cached.as_ref()
            && c.stamp == stamp
        {
            return c.copy.clone();
        }
        let made = match make_copy(&path) {
            Ok((stamp, copy)) => Cached {
                stamp,
                copy: copy.map(Arc::new),
            },
            Err(e) => {
                tracing::warn!(
                    binary = %path.display(),
                    "cannot make a sealed copy of the runtime binary, running it from its \
                     path (it then copies itself on each call): {e}"
                );
                Cached { stamp, copy: None }
            }
        };
        let copy = made.copy.clone();
        *cached = Some(made);
        copy
    }
}

/// The path a process execs to run `copy`: its own fd, inherited from the daemon (the fd is
/// close-on-exec, which an ELF binary's exec allows: the kernel opens it before closing).
pub fn fd_path(copy: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", copy.as_raw_fd()))
}

/// `source` itself when it names a path, else the first executable file of that name in
/// `PATH` (what the exec would run).
fn resolve(source: &Path) -> Option<PathBuf> {
    if source.as_os_str().as_bytes().contains(&b'/') {
        return Some(source.to_owned());
    }
    let dirs = std::env::var_os("PATH")?;
    std::env::split_paths(&dirs)
        .map(|d| d.join(source))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0))
}

/// Copies `path` into a new memfd and seals it; `None` for a binary that is not ELF. The
/// stamp is the opened file's, so a replacement during the copy is seen at the next call.
fn make_copy(path: &Path) -> io::Result<(Stamp, Option<OwnedFd>)> {
    let mut file = File::open(path)?;
    let meta = file.metadata()?;
    let stamp = Stamp::of(&meta);
    let mut magic = [0u8; 4];
    if file.read_exact(&mut magic).is_err() || &magic != b"\x7fELF" {
        return Ok((stamp, None));
    }
    file.seek(SeekFrom::Start(0))?;
    // The name shows in `/proc/<pid>/exe` of every runtime process: `/memfd:runc (deleted)`.
    let name = path
        .file_name()
        .and_then(|n| CString::new(n.as_bytes()).ok())
        .unwrap_or_else(|| c"oci-runtime".to_owned());
    let flags = MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING;
    // MFD_EXEC (Linux 6.3) says "executable" outright, which `vm.memfd_noexec = 1` needs;
    // older kernels refuse the unknown flag.
    let exec = MFdFlags::from_bits_retain(libc::MFD_EXEC as _);
    let fd = match memfd_create(name.as_c_str(), flags | exec) {
        Err(nix::errno::Errno::EINVAL) => memfd_create(name.as_c_str(), flags),
        other => other,
    }?;
    let mut out = File::from(fd);
    let copied = io::copy(&mut file, &mut out)?;
    if copied != meta.len() {
        return Err(io::Error::other(format!(
            "copied {copied} bytes of {}: the file changed meanwhile",
            meta.len()
        )));
    }
    fcntl(&out, FcntlArg::F_ADD_SEALS(seals()))?;
    Ok((stamp, Some(OwnedFd::from(out))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_is_sealed_as_the_runtimes_check_and_follows_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("tool");
        fs::copy("/bin/true", &bin).unwrap();
        let exe = SealedExe::new(&bin);
        let first = exe.copy().expect("an ELF binary gets a copy");
        let got = fcntl(&*first, FcntlArg::F_GET_SEALS).unwrap();
        assert_eq!(got, seals().bits());
        // Unchanged file: the same copy.
        assert!(Arc::ptr_eq(&first, &exe.copy().unwrap()));
        // The copy runs.
        let status = std::process::Command::new(fd_path(&first))
            .status()
            .unwrap();
        assert!(status.success());
        // Replaced on disk (a new inode): a new copy of the new content.
        fs::remove_file(&bin).unwrap();
        fs::copy("/bin/false", &bin).unwrap();
        let second = exe.copy().unwrap();
        assert!(!Arc::ptr_eq(&first, &second));
        let status = std::process::Command::new(fd_path(&second))
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(1));
    }

    #[test]
    fn scripts_and_missing_binaries_run_from_their_path() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("wrapper");
        fs::write(&script, "#!/bin/sh\nexec runc \"$@\"\n").unwrap();
        assert!(SealedExe::new(&script).copy().is_none());
        assert!(SealedExe::new(dir.path().join("absent")).copy().is_none());
        assert!(SealedExe::new("no-such-runtime-binary").copy().is_none());
    }
}
