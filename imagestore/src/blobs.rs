//! The content-addressed blob store: `<root>/blobs/sha256/<hex>`, written only through
//! `<root>/tmp/`, and the single-flight locks that merge concurrent fetches of one blob.
//!
//! Crash ordering: a blob is written to a temp file in `tmp/`, fsynced, renamed to its name and
//! the directory fsynced. So a named blob is always complete and verified; a crash leaves at
//! worst a file in `tmp/` (cleared at open) or a verified blob no metadata references yet
//! (swept at open). Metadata is written only after the blob is in place, and removed before
//! the blob is unlinked, so metadata never names a missing blob.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};
use crate::reference::Digest;

/// Bytes a file occupies on disk (blocks, as `du` counts), for `ImageFsInfo`.
fn disk_bytes(meta: &fs::Metadata) -> u64 {
    meta.blocks().saturating_mul(512)
}

/// The blob directory and its usage counters.
#[derive(Debug)]
pub struct BlobStore {
    dir: PathBuf,
    tmp: PathBuf,
    bytes: AtomicU64,
    files: AtomicU64,
}

impl BlobStore {
    /// Open the store under `root` (`blobs/sha256/` and `tmp/` must exist), counting what is
    /// there once, so usage is never walked again. (Public for the unpacker's property
    /// tests, which drive a [`crate::TreeLayerSink`] directly.)
    pub fn open(root: &Path) -> Result<Self> {
        let dir = root.join("blobs").join("sha256");
        let tmp = root.join("tmp");
        crate::fsutil::create_private_dir(&dir)?;
        crate::fsutil::create_private_dir(&tmp)?;
        let store = BlobStore {
            dir,
            tmp,
            bytes: AtomicU64::new(0),
            files: AtomicU64::new(0),
        };
        for (_, meta) in store.list()? {
            store.bytes.fetch_add(disk_bytes(&meta), Ordering::Relaxed);
            store.files.fetch_add(1, Ordering::Relaxed);
        }
        Ok(store)
    }

    /// Path of a committed blob.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.hex())
    }

    /// Whether the blob is committed.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// Read a committed blob whole (manifests and configs are small).
    pub fn read(&self, digest: &Digest) -> Result<Vec<u8>> {
        let path = self.path(digest);
        fs::read(&path).map_err(|e| Error::io("read blob", path, e))
    }

    /// Every committed blob with its metadata (only at open and for the orphan sweep).
    pub(crate) fn list(&self) -> Result<Vec<(Digest, fs::Metadata)>> {
        let mut out = Vec::new();
        let entries = fs::read_dir(&self.dir).map_err(|e| Error::io("list blobs", &self.dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("list blobs", &self.dir, e))?;
            let name = entry.file_name();
            let Some(digest) = name.to_str().and_then(|n| Digest::from_hex(n).ok()) else {
                continue;
            };
            let meta = entry
                .metadata()
                .map_err(|e| Error::io("stat blob", entry.path(), e))?;
            out.push((digest, meta));
        }
        Ok(out)
    }

    /// A new temp file in `tmp/`, removed on drop unless committed.
    pub(crate) fn temp(&self) -> Result<TempBlob> {
        let file = tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(&self.tmp)
            .map_err(|e| Error::io("create temp file", &self.tmp, e))?;
        Ok(TempBlob { file, written: 0 })
    }

    /// Verify `data` against `digest` and `size`, then commit it. Blocking.
    pub(crate) fn put_verified(&self, digest: &Digest, size: u64, data: &[u8]) -> Result<()> {
        if data.len() as u64 != size {
            return Err(Error::BlobSizeMismatch {
                digest: digest.clone(),
                expected: size,
                actual: data.len() as u64,
            });
        }
        let actual = Digest::from_sha256(Sha256::digest(data).into());
        if &actual != digest {
            return Err(Error::BlobDigestMismatch {
                digest: digest.clone(),
                actual,
            });
        }
        if self.contains(digest) {
            return Ok(());
        }
        let mut temp = self.temp()?;
        temp.write_all(data)
            .map_err(|e| Error::io("write blob", temp.file.path(), e))?;
        self.commit(temp, digest)
    }

    /// Rename a fully written and *already verified* temp file to `digest`'s name. Blocking.
    pub(crate) fn commit(&self, temp: TempBlob, digest: &Digest) -> Result<()> {
        let target = self.path(digest);
        if target.is_file() {
            // Same content already committed (by another path to the same digest).
            return Ok(());
        }
        temp.file
            .as_file()
            .sync_all()
            .map_err(|e| Error::io("fsync blob", temp.file.path(), e))?;
        let file = temp
            .file
            .persist(&target)
            .map_err(|e| Error::io("rename blob into place", &target, e.error))?;
        // The rename must be durable before metadata names the blob.
        crate::fsutil::sync_dir(&self.dir)?;
        if let Ok(meta) = file.metadata() {
            self.bytes.fetch_add(disk_bytes(&meta), Ordering::Relaxed);
        }
        self.files.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Unlink blobs (metadata no longer names them). Missing ones are fine. Blocking.
    pub(crate) fn remove(&self, digests: &[Digest]) -> Result<()> {
        let mut removed = false;
        for digest in digests {
            let path = self.path(digest);
            let meta = match fs::metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("stat blob", path, e)),
            };
            match fs::remove_file(&path) {
                Ok(()) => {
                    removed = true;
                    self.bytes.fetch_sub(
                        disk_bytes(&meta).min(self.bytes.load(Ordering::Relaxed)),
                        Ordering::Relaxed,
                    );
                    self.files.fetch_sub(1, Ordering::Relaxed);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove blob", path, e)),
            }
        }
        if removed {
            crate::fsutil::sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// (bytes on disk, files) of the committed blobs, from the counters.
    pub fn usage(&self) -> (u64, u64) {
        (
            self.bytes.load(Ordering::Relaxed),
            self.files.load(Ordering::Relaxed),
        )
    }
}

/// A blob being written in `tmp/`; deleted on drop unless committed.
#[derive(Debug)]
pub(crate) struct TempBlob {
    file: tempfile::NamedTempFile,
    written: u64,
}

impl TempBlob {
    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }
}

impl Write for TempBlob {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Per-key async locks: the first pull to want a blob fetches it while the others wait, then
/// find it committed. Entries vanish when the last holder drops its lock.
#[derive(Debug, Default)]
pub(crate) struct FlightLocks {
    map: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl FlightLocks {
    pub async fn lock(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut map = match self.map.lock() {
                Ok(m) => m,
                Err(poisoned) => poisoned.into_inner(),
            };
            map.retain(|_, weak| weak.strong_count() > 0);
            match map.get(key).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    let lock = Arc::new(tokio::sync::Mutex::new(()));
                    map.insert(key.to_string(), Arc::downgrade(&lock));
                    lock
                }
            }
        };
        lock.lock_owned().await
    }
}

/// A reader over a blob's bytes that checks, as they pass, that there are no more than `size`
/// of them and, at the end, exactly `size` hashing to `digest`. End-of-stream (an empty
/// `fill_buf`, `Ok(0)`) is reported only after both checks passed; a failure comes out as an
/// `io::Error` carrying the typed [`Error`] (recover it with `Error::from_io`). A consumer
/// that commits only after reading to the end therefore never commits unverified content.
///
/// It is a `BufRead` over its inner one: the bytes are hashed where they lie, never copied.
pub struct VerifyingReader<R> {
    inner: R,
    hasher: Sha256,
    seen: Seen,
    size: u64,
    digest: Digest,
    verified: bool,
}

impl<R: BufRead> VerifyingReader<R> {
    /// Wrap `inner`, expecting `size` bytes hashing to `digest`.
    pub fn new(inner: R, digest: Digest, size: u64) -> Self {
        VerifyingReader {
            inner,
            hasher: Sha256::new(),
            seen: Seen::default(),
            size,
            digest,
            verified: false,
        }
    }

    /// The digest being verified.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    fn check_end(&mut self) -> std::io::Result<()> {
        if self.seen.total != self.size {
            return Err(Error::BlobSizeMismatch {
                digest: self.digest.clone(),
                expected: self.size,
                actual: self.seen.total,
            }
            .into_io());
        }
        let actual = Digest::from_sha256(self.hasher.clone().finalize().into());
        if actual != self.digest {
            return Err(Error::BlobDigestMismatch {
                digest: self.digest.clone(),
                actual,
            }
            .into_io());
        }
        self.verified = true;
        Ok(())
    }
}

impl<R: BufRead> BufRead for VerifyingReader<R> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        if self.verified {
            return Ok(&[]);
        }
        if self.inner.fill_buf()?.is_empty() {
            self.check_end()?;
            return Ok(&[]);
        }
        // Asked again (for the borrow's sake): a buffer that is not empty is not refilled.
        let buf = self.inner.fill_buf()?;
        let fresh = self.seen.fresh(buf);
        if self.seen.total > self.size {
            return Err(Error::BlobSizeMismatch {
                digest: self.digest.clone(),
                expected: self.size,
                actual: self.seen.total,
            }
            .into_io());
        }
        self.hasher.update(fresh);
        Ok(buf)
    }

    fn consume(&mut self, n: usize) {
        self.seen.consume(n);
        self.inner.consume(n);
    }
}

impl<R: BufRead> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        read_via_fill_buf(self, buf)
    }
}

/// How much of a `BufRead`'s current buffer an adapter has already looked at, so that each
/// byte is hashed (or copied aside) once however often `fill_buf` is called before
/// `consume`.
#[derive(Default)]
pub(crate) struct Seen {
    /// Bytes at the front of the inner buffer already seen, not yet consumed.
    ahead: usize,
    /// Bytes seen in all.
    pub(crate) total: u64,
}

impl Seen {
    /// The part of `buf` (the inner buffer) not seen before, now counted as seen.
    pub(crate) fn fresh<'b>(&mut self, buf: &'b [u8]) -> &'b [u8] {
        let fresh = &buf[self.ahead.min(buf.len())..];
        self.total += fresh.len() as u64;
        self.ahead = buf.len();
        fresh
    }

    pub(crate) fn consume(&mut self, n: usize) {
        self.ahead = self.ahead.saturating_sub(n);
    }
}

/// `Read::read` for an adapter whose work happens in `fill_buf`.
pub(crate) fn read_via_fill_buf(r: &mut impl BufRead, buf: &mut [u8]) -> std::io::Result<usize> {
    let available = r.fill_buf()?;
    let n = available.len().min(buf.len());
    buf[..n].copy_from_slice(&available[..n]);
    r.consume(n);
    Ok(n)
}

/// A blocking reader fed by an async download task through a bounded channel: the network
/// side stays on the runtime, hashing and decompression run on a blocking thread. Its
/// `fill_buf` lends out each received chunk as it is.
pub struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Result<bytes::Bytes>>,
    current: bytes::Bytes,
}

impl ChannelReader {
    /// A reader over what `rx` delivers; a closed channel is the end of the stream.
    pub fn new(rx: tokio::sync::mpsc::Receiver<Result<bytes::Bytes>>) -> Self {
        ChannelReader {
            rx,
            current: bytes::Bytes::new(),
        }
    }
}

impl BufRead for ChannelReader {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(e.into_io()),
                None => break,
            }
        }
        Ok(&self.current)
    }

    fn consume(&mut self, n: usize) {
        let n = n.min(self.current.len());
        bytes::Buf::advance(&mut self.current, n);
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        read_via_fill_buf(self, buf)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn verifying_reader_reports_end_only_when_verified() {
        let data = b"hello world";
        let mut ok = VerifyingReader::new(&data[..], Digest::of(data), data.len() as u64);
        let mut out = Vec::new();
        ok.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);

        let mut wrong = VerifyingReader::new(&data[..], Digest::of(b"x"), data.len() as u64);
        let err = wrong.read_to_end(&mut Vec::new()).unwrap_err();
        let err = Error::from_io(err, "read", Path::new("x"));
        assert!(matches!(err, Error::BlobDigestMismatch { .. }), "{err}");

        let mut long = VerifyingReader::new(&data[..], Digest::of(data), 3);
        let err = Error::from_io(
            long.read_to_end(&mut Vec::new()).unwrap_err(),
            "r",
            Path::new("x"),
        );
        assert!(matches!(err, Error::BlobSizeMismatch { .. }), "{err}");
    }

    #[test]
    fn verifying_reader_hashes_each_byte_once_however_it_is_consumed() {
        let data = b"hello world, in small and uneven pieces";
        // Looked at twice before each consume, consumed half at a time: a byte hashed
        // twice (or skipped) would end in a digest mismatch instead of end-of-stream.
        let inner = std::io::BufReader::with_capacity(5, &data[..]);
        let mut r = VerifyingReader::new(inner, Digest::of(data), data.len() as u64);
        let mut out = Vec::new();
        while !r.fill_buf().unwrap().is_empty() {
            let buf = r.fill_buf().unwrap();
            let n = buf.len().div_ceil(2);
            out.extend_from_slice(&buf[..n]);
            r.consume(n);
        }
        assert_eq!(out, data);
    }

    #[test]
    fn put_verified_refuses_bad_content_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let data = b"config";
        let err = store
            .put_verified(&Digest::of(b"other"), data.len() as u64, data)
            .unwrap_err();
        assert!(matches!(err, Error::BlobDigestMismatch { .. }));
        assert_eq!(store.list().unwrap().len(), 0);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        store
            .put_verified(&Digest::of(data), data.len() as u64, data)
            .unwrap();
        assert_eq!(store.read(&Digest::of(data)).unwrap(), data);
        assert_eq!(store.usage().1, 1);
        store.remove(&[Digest::of(data)]).unwrap();
        assert_eq!(store.usage(), (0, 0));
    }

    #[tokio::test]
    async fn flight_locks_serialise_one_key() {
        let locks = Arc::new(FlightLocks::default());
        let g = locks.lock("a").await;
        let l2 = locks.clone();
        let waiter = tokio::spawn(async move {
            let _g = l2.lock("a").await;
        });
        let _other = locks.lock("b").await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        drop(g);
        waiter.await.unwrap();
    }
}
