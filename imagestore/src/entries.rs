//! One layer's entries, as [`crate::unpack::TreeLayerSink`] writes them: each tar entry
//! placed in the layer's view below `tmp/` (contained: parents resolved without following
//! symlinks), regular files hashed into objects, the manifest that rendering replays kept in
//! memory; limits checked as entries arrive.

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use tracing::debug;

use crate::error::{Error, Result};
use crate::failpoint;
use crate::fsutil::{self, Meta};
use crate::layer::LayerInput;
use crate::layout::{ContentHasher, Kind, ManEntry, hash_zeros, normalize, object_key, object_rel};
use crate::tarstream::{EntryType, Header, TarError, TarReader};
use crate::unpack::{ObjectsLock, SinkLimits};
use crate::writers::{FileJob, Writers};

pub(crate) fn refused(layer: &LayerInput, entry: &str, reason: impl Into<String>) -> Error {
    Error::LayerRefused {
        digest: layer.digest.clone(),
        index: layer.index,
        entry: entry.to_string(),
        reason: reason.into(),
    }
}

/// Where an entry goes: the directory that holds it, its name there, its normalised path,
/// and its name as the tar spelled it (for messages).
struct Place<'r> {
    dir: Arc<OwnedFd>,
    name: String,
    path: String,
    raw: &'r str,
}

/// State of one layer's unpack.
pub(crate) struct Unpack<'a> {
    pub(crate) layer: &'a LayerInput,
    pub(crate) allow_devices: bool,
    pub(crate) view: OwnedFd,
    pub(crate) work: OwnedFd,
    pub(crate) objects: OwnedFd,
    pub(crate) entries: BTreeMap<String, ManEntry>,
    pub(crate) hardlinks: Vec<(String, String)>,
    pub(crate) whiteouts: Vec<String>,
    pub(crate) opaques: Vec<String>,
    /// The directory the last entry went into (tars list a directory's entries together):
    /// shared, so a cache hit costs no syscall.
    pub(crate) parent_cache: Option<(String, Arc<OwnedFd>)>,
    /// Paths placed in the view that `entries` does not list (hard links, whiteout
    /// markers): with `entries`, every name the view holds, so a new path needs no `stat`.
    pub(crate) placed: HashSet<String>,
    /// The view has no set-group-id directory: a new file is ours, group and all.
    pub(crate) owner_known: bool,
    pub(crate) tmp_counter: u64,
    pub(crate) buf: Vec<u8>,
    pub(crate) limits: SinkLimits,
    pub(crate) objects_lock: ObjectsLock,
    pub(crate) skipped_devices: u64,
    pub(crate) dropped_xattrs: u64,
    /// Writer threads regular files are handed to (see [`crate::writers`]); `None`: every
    /// file is written by the reading thread.
    pub(crate) writers: Option<Writers>,
}

impl<'a> Unpack<'a> {
    fn io_err(&self, op: &'static str, entry: &str) -> impl Fn(io::Error) -> Error + '_ {
        let path = PathBuf::from(entry);
        move |e| Error::io(op, path.clone(), e)
    }

    /// The directory that holds `comps`' last component, creating missing parents as
    /// implicit directories; refuses to go through a symlink or a non-directory.
    fn parent(&mut self, comps: &[String], entry: &str) -> Result<Arc<OwnedFd>> {
        let parent = comps[..comps.len().saturating_sub(1)].join("/");
        if let Some((p, fd)) = &self.parent_cache
            && *p == parent
        {
            return Ok(fd.clone());
        }
        // A parent named like a file still being written must be judged as the file it is.
        if let Some(w) = &self.writers
            && w.busy()
            && (1..comps.len()).any(|n| w.is_pending(&comps[..n].join("/")))
        {
            self.settle()?;
        }
        let mut cur = self
            .view
            .try_clone()
            .map_err(|e| Error::io("dup dir", entry, e))?;
        let mut prefix = String::new();
        for c in &comps[..comps.len().saturating_sub(1)] {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(c);
            cur = match fsutil::resolve_dir(&cur, c) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc_enoent()) => {
                    rustix::fs::mkdirat(&cur, c.as_str(), Mode::from_raw_mode(0o755))
                        .map_err(|e| Error::io("create directory", &prefix, e.into()))?;
                    self.entries.entry(prefix.clone()).or_insert(ManEntry {
                        path: prefix.clone(),
                        kind: Kind::Dir { implicit: true },
                        meta: Meta {
                            mode: 0o755,
                            ..Meta::default()
                        },
                    });
                    fsutil::resolve_dir(&cur, c)
                        .map_err(|e| Error::io("open directory", &prefix, e))?
                }
                Err(e) if is_contain_errno(&e) => {
                    return Err(refused(
                        self.layer,
                        entry,
                        format!("its parent {prefix:?} is a symlink or not a directory"),
                    ));
                }
                Err(e) => return Err(Error::io("open directory", &prefix, e)),
            };
        }
        let cur = Arc::new(cur);
        self.parent_cache = Some((parent, cur.clone()));
        Ok(cur)
    }

    /// Make room for a new entry `name` in `dir`: whatever is there goes (a directory only
    /// when the new entry is not one), and the manifest forgets it and what was below it.
    fn replace(&mut self, dir: &OwnedFd, name: &str, path: &str, new_is_dir: bool) -> Result<()> {
        // The view is this layer's alone and starts empty: a path the layer did not place
        // yet is free, no need to ask the file system (one `stat` per entry saved).
        if !self.entries.contains_key(path) && !self.placed.contains(path) {
            return Ok(());
        }
        // What goes may be a file, or hold files, a writer has not finished.
        self.settle()?;
        let Some(st) = fsutil::stat_at(dir, name).map_err(self.io_err("stat", path))? else {
            return Ok(());
        };
        let is_dir = fsutil::file_type(&st) == FileType::Directory;
        if is_dir && new_is_dir {
            return Ok(());
        }
        fsutil::remove_all_at(dir, name).map_err(self.io_err("remove", path))?;
        self.parent_cache = None;
        let mut gone = Vec::new();
        gone.extend(self.entries.remove(path));
        self.hardlinks.retain(|(p, _)| p != path);
        self.placed.remove(path);
        if is_dir {
            let prefix = format!("{path}/");
            let below: Vec<String> = self
                .entries
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
                .map(|(k, _)| k.clone())
                .collect();
            for k in below {
                gone.extend(self.entries.remove(&k));
            }
            self.hardlinks.retain(|(p, _)| !p.starts_with(&prefix));
            self.placed.retain(|p| !p.starts_with(&prefix));
        }
        self.drop_unlinked_objects(&gone);
        Ok(())
    }

    /// Objects of entries a later entry replaced (a path named twice) that nothing links
    /// any more go now rather than waiting for the next sweep. An unpack that wanted one of
    /// them concurrently creates it again (see `file`).
    fn drop_unlinked_objects(&self, gone: &[ManEntry]) {
        let _sweeping = self
            .objects_lock
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for e in gone {
            let Kind::File {
                object: Some(key), ..
            } = &e.kind
            else {
                continue;
            };
            let rel = object_rel(key);
            if let Ok(Some(st)) = fsutil::stat_at(&self.objects, &rel)
                && st.st_nlink <= 1
            {
                let _ = rustix::fs::unlinkat(&self.objects, rel.as_str(), AtFlags::empty());
            }
        }
    }

    /// Places one tar entry: its path checked and charged, its metadata taken, then the
    /// function for its kind.
    pub(crate) fn entry<R: Read>(&mut self, tar: &mut TarReader<R>, h: Header) -> Result<()> {
        let raw = String::from_utf8(h.path.clone()).map_err(|e| {
            refused(
                self.layer,
                &String::from_utf8_lossy(e.as_bytes()),
                "path is not UTF-8",
            )
        })?;
        let comps = normalize(&raw).map_err(|r| refused(self.layer, &raw, r))?;
        self.layer.budget.entry(self.layer)?;
        if comps.len() > self.limits.max_path_depth {
            return Err(Error::LayerLimit {
                digest: self.layer.digest.clone(),
                index: self.layer.index,
                limit: "images.max_path_depth",
                detail: format!(
                    "entry {raw:?} is {} levels deep, the limit is {}",
                    comps.len(),
                    self.limits.max_path_depth
                ),
            });
        }
        let meta = self.meta_of(&h, &raw)?;
        if comps.is_empty() {
            return self.root(h.etype, &raw, meta);
        }
        let path = comps.join("/");
        let name = comps[comps.len() - 1].clone();
        if let Some(target) = name.strip_prefix(".wh.") {
            return self.whiteout(&comps, &raw, &path, target);
        }
        let at = Place {
            dir: self.parent(&comps, &raw)?,
            name,
            path,
            raw: &raw,
        };
        match h.etype {
            EntryType::Dir => self.directory(at, meta),
            EntryType::File => {
                self.replace(&at.dir, &at.name, &at.path, false)?;
                let kind = if self.writers.is_some() && h.sparse.is_none() {
                    self.file_to_writer(tar, (&at.dir, &at.name, &at.path), h.size, &meta)?
                } else {
                    self.file(tar, &h, &at.dir, &at.name, &at.path, &meta)?
                };
                let path = at.path;
                self.entries
                    .insert(path.clone(), ManEntry { path, kind, meta });
                Ok(())
            }
            EntryType::HardLink => self.hard_link(at, &h.link),
            EntryType::Symlink => self.symlink(at, &h.link, meta),
            EntryType::Fifo | EntryType::Char | EntryType::Block => self.node(at, &h, meta),
            EntryType::Other(flag) => Err(refused(
                self.layer,
                &raw,
                format!("unsupported tar entry type {:?}", flag as char),
            )),
        }
    }

    /// The inode metadata of an entry, as its tree reproduces it.
    fn meta_of(&mut self, h: &Header, raw: &str) -> Result<Meta> {
        let mut meta = Meta {
            mode: h.mode & 0o7777,
            uid: u32::try_from(h.uid)
                .map_err(|_| refused(self.layer, raw, format!("uid {} out of range", h.uid)))?,
            gid: u32::try_from(h.gid)
                .map_err(|_| refused(self.layer, raw, format!("gid {} out of range", h.gid)))?,
            mtime: h.mtime,
            xattrs: Vec::new(),
        };
        for (name, value) in &h.xattrs {
            // A layer must not steer overlayfs (opaque/redirect/metacopy markers).
            if name.starts_with("trusted.overlay.") {
                self.dropped_xattrs += 1;
                continue;
            }
            meta.xattrs.push((name.clone(), value.clone()));
        }
        meta.xattrs.sort();
        meta.xattrs.dedup_by(|a, b| a.0 == b.0);
        Ok(meta)
    }

    /// The root itself ("./"): only a directory makes sense; its metadata is kept.
    fn root(&mut self, etype: EntryType, raw: &str, meta: Meta) -> Result<()> {
        if etype != EntryType::Dir {
            return Err(refused(
                self.layer,
                raw,
                "a non-directory entry for the root",
            ));
        }
        self.entries.insert(
            String::new(),
            ManEntry {
                path: String::new(),
                kind: Kind::Dir { implicit: false },
                meta,
            },
        );
        Ok(())
    }

    /// A whiteout `.wh.<target>` or an opaque marker (AUFS style, as the OCI layer spec
    /// defines them).
    fn whiteout(&mut self, comps: &[String], raw: &str, path: &str, target: &str) -> Result<()> {
        let name = &comps[comps.len() - 1];
        let parent_path = comps[..comps.len() - 1].join("/");
        if name == ".wh..wh..opq" {
            self.opaques.push(parent_path);
        } else if target.starts_with(".wh.") {
            debug!(entry = %raw, "ignoring AUFS metadata entry");
            return Ok(());
        } else if target.is_empty() || target == "." || target == ".." {
            return Err(refused(self.layer, raw, "whiteout names no file"));
        } else if parent_path.is_empty() {
            self.whiteouts.push(target.to_string());
        } else {
            self.whiteouts.push(format!("{parent_path}/{target}"));
        }
        // The marker stays in the layer's view as the empty file the tar carried.
        let dir = self.parent(comps, raw)?;
        self.replace(&dir, name, path, false)?;
        let fd = rustix::fs::openat(
            &dir,
            name.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| Error::io("create whiteout", path, e.into()))?;
        drop(fd);
        self.placed.insert(path.to_string());
        Ok(())
    }

    fn directory(&mut self, at: Place<'_>, meta: Meta) -> Result<()> {
        let Place {
            dir, name, path, ..
        } = at;
        self.replace(&dir, &name, &path, true)?;
        match rustix::fs::mkdirat(&dir, name.as_str(), Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(Error::io("create directory", &path, e.into())),
        }
        // The next entries are most likely inside it (tars list a directory before its
        // content): cache it as their parent, so a deep chain of directories costs one
        // lookup per level rather than one per level per entry.
        self.parent_cache = fsutil::resolve_dir(&dir, &name)
            .ok()
            .map(|fd| (path.clone(), Arc::new(fd)));
        self.entries.insert(
            path.clone(),
            ManEntry {
                path,
                kind: Kind::Dir { implicit: false },
                meta,
            },
        );
        Ok(())
    }

    /// A hard link: linked now when its target is in this layer (so the view is exact),
    /// by the render when the target lives in a lower layer.
    fn hard_link(&mut self, at: Place<'_>, link: &[u8]) -> Result<()> {
        let Place {
            dir,
            name,
            path,
            raw,
        } = at;
        if link.is_empty() {
            return Err(refused(self.layer, raw, "hard link without a target"));
        }
        let link = String::from_utf8_lossy(link).into_owned();
        // Hard link names are relative to the archive root; a leading `/` is contained
        // (stripped), `..` is refused.
        let tcomps = normalize(link.trim_start_matches('/'))
            .map_err(|r| refused(self.layer, raw, format!("hard link target {link:?}: {r}")))?;
        if tcomps.is_empty() {
            return Err(refused(self.layer, raw, "hard link to the root"));
        }
        let target = tcomps.join("/");
        if target == path {
            return Err(refused(self.layer, raw, "hard link to itself"));
        }
        self.replace(&dir, &name, &path, false)?;
        if self.writers.as_ref().is_some_and(|w| w.is_pending(&target)) {
            self.settle()?;
        }
        if let Some(entry) = self.entries.get(&target)
            && !matches!(entry.kind, Kind::Dir { .. })
        {
            let tparent = fsutil::resolve_dir(&self.view, &tcomps[..tcomps.len() - 1].join("/"))
                .map_err(|_| {
                    refused(
                        self.layer,
                        raw,
                        format!("hard link target {link:?} unreachable"),
                    )
                })?;
            rustix::fs::linkat(
                &tparent,
                tcomps[tcomps.len() - 1].as_str(),
                &dir,
                name.as_str(),
                AtFlags::empty(),
            )
            .map_err(|e| Error::io("hard link", &path, e.into()))?;
        } else if self.entries.contains_key(&target) {
            return Err(refused(self.layer, raw, "hard link to a directory"));
        }
        self.placed.insert(path.clone());
        self.hardlinks.push((path, target));
        Ok(())
    }

    fn symlink(&mut self, at: Place<'_>, link: &[u8], meta: Meta) -> Result<()> {
        let Place {
            dir,
            name,
            path,
            raw,
        } = at;
        if link.is_empty() {
            return Err(refused(self.layer, raw, "symlink without a target"));
        }
        let target = String::from_utf8_lossy(link).into_owned();
        self.replace(&dir, &name, &path, false)?;
        rustix::fs::symlinkat(target.as_str(), &dir, name.as_str())
            .map_err(|e| Error::io("create symlink", &path, e.into()))?;
        self.entries.insert(
            path.clone(),
            ManEntry {
                path,
                kind: Kind::Symlink { target },
                meta,
            },
        );
        Ok(())
    }

    /// A fifo, or a device node when `images.allow_device_nodes` lets it in.
    fn node(&mut self, at: Place<'_>, h: &Header, meta: Meta) -> Result<()> {
        let Place {
            dir, name, path, ..
        } = at;
        // Fifos carry no device numbers (the fields may be blank).
        let (major, minor) = (h.devmajor, h.devminor);
        let (kind, ftype) = if h.etype == EntryType::Fifo {
            (Kind::Fifo, FileType::Fifo)
        } else if !self.allow_devices {
            // Skipped, not refused: the runtime mounts its own /dev over the image's, so
            // nodes shipped in an image are never visible in a container, and refusing
            // would break old images that carry a populated /dev.
            self.skipped_devices += 1;
            return Ok(());
        } else if h.etype == EntryType::Char {
            (Kind::Char { major, minor }, FileType::CharacterDevice)
        } else {
            (Kind::Block { major, minor }, FileType::BlockDevice)
        };
        self.replace(&dir, &name, &path, false)?;
        rustix::fs::mknodat(
            &dir,
            name.as_str(),
            ftype,
            Mode::from_raw_mode(0o600),
            rustix::fs::makedev(major, minor),
        )
        .map_err(|e| Error::io("create node", &path, e.into()))?;
        self.entries
            .insert(path.clone(), ManEntry { path, kind, meta });
        Ok(())
    }

    /// Wait for the writers' files and record their objects in the manifest.
    pub(crate) fn settle(&mut self) -> Result<()> {
        if let Some(w) = self.writers.as_mut() {
            let done = w.barrier()?;
            self.apply(done);
        }
        Ok(())
    }

    fn apply(&mut self, done: Vec<(String, Kind)>) {
        for (path, kind) in done {
            if let Some(e) = self.entries.get_mut(&path) {
                e.kind = kind;
            }
        }
    }

    /// A regular file handed to a writer thread: this thread only reads its bytes from the
    /// tar. The kind returned stands until the writer reports the object ([`Self::settle`]).
    fn file_to_writer<R: Read>(
        &mut self,
        tar: &mut TarReader<R>,
        at: (&Arc<OwnedFd>, &str, &str),
        declared: u64,
        meta: &Meta,
    ) -> Result<Kind> {
        let (dir, name, path) = at;
        let Some(w) = self.writers.as_mut() else {
            return Err(Error::Interrupted {
                what: format!("unpack of layer {}", self.layer.digest),
                detail: "no file writers".into(),
            });
        };
        // Results of earlier files (never this one's: its entry is recorded after return).
        let done = w.take_ready()?;
        w.open(FileJob {
            dir: dir.clone(),
            name: name.to_string(),
            path: path.to_string(),
            meta: meta.clone(),
            size: declared,
        })?;
        let mut left = declared;
        while left > 0 {
            // Each chunk filled whole (the inflater hands out less at a time): a short chunk
            // would be zeroed again up to its length when the pool lends it out next.
            let mut chunk = w.buffer(left.min(crate::writers::CHUNK as u64) as usize);
            let mut n = 0;
            while n < chunk.len() {
                let got = tar
                    .read_data(&mut chunk[n..])
                    .map_err(|e| tar_error(self.layer, e, path))?;
                if got == 0 {
                    break;
                }
                n += got;
            }
            if n == 0 {
                break;
            }
            chunk.truncate(n);
            w.data(chunk)?;
            left -= n as u64;
        }
        if left > 0 {
            return Err(refused(
                self.layer,
                path,
                format!(
                    "declared {declared} bytes, the archive holds {}",
                    declared - left
                ),
            ));
        }
        w.close()?;
        self.apply(done);
        Ok(Kind::File {
            object: None,
            size: declared,
            private: true,
        })
    }

    /// A read error of the tar stream as the pull reports it.
    fn tar_err(&self, e: TarError, entry: &str) -> Error {
        tar_error(self.layer, e, entry)
    }

    /// A regular file: content written under its name in the view (hashed as it goes,
    /// exactly `declared` bytes), metadata applied, then linked as an object — or, when the
    /// object exists, the view's name replaced by a link to it. A sparse file's data
    /// segments are written at their offsets and the holes left as holes (the hash still
    /// covers the zeros a reader sees, as `verify` rehashes the file).
    ///
    /// Per file this is open, write, `futimens` (plus `fchown`/`fchmod` only where the
    /// creation did not already give the owner and mode), close and one link: the view is
    /// private until the layer is renamed into place, so the file needs no temp name, and
    /// an object is published with one `linkat` of a complete file.
    fn file<R: Read>(
        &mut self,
        tar: &mut TarReader<R>,
        h: &Header,
        dir: &OwnedFd,
        name: &str,
        path: &str,
        meta: &Meta,
    ) -> Result<Kind> {
        let declared = h.size;
        let fd = rustix::fs::openat(
            dir,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
            Mode::from_raw_mode(meta.mode & 0o777),
        )
        .map_err(|e| Error::io("create file", path, e.into()))?;
        let mut file = File::from(fd);
        let mut hasher = ContentHasher::new();
        let mut written = 0u64;
        let segments: Vec<(u64, u64)> = match &h.sparse {
            Some(map) => map.clone(),
            None => vec![(0, declared)],
        };
        for (offset, len) in segments {
            if offset > written {
                // A hole: zeros in the hash, nothing on disk; it counts as unpacked bytes.
                let hole = offset - written;
                self.layer.budget.bytes(self.layer, hole)?;
                hash_zeros(&mut hasher, hole);
                file.seek(io::SeekFrom::Start(offset))
                    .map_err(|e| Error::io("seek file", path, e))?;
                written = offset;
            }
            let mut left = len;
            while left > 0 {
                let want = left.min(self.buf.len() as u64) as usize;
                let n = tar
                    .read_data(&mut self.buf[..want])
                    .map_err(|e| self.tar_err(e, path))?;
                if n == 0 {
                    break;
                }
                hasher.update(&self.buf[..n]);
                file.write_all(&self.buf[..n])
                    .map_err(|e| Error::io("write file", path, e))?;
                written += n as u64;
                left -= n as u64;
            }
            if left > 0 {
                return Err(refused(
                    self.layer,
                    path,
                    format!("declared {declared} bytes, the archive holds {written}"),
                ));
            }
        }
        if h.sparse.is_some() {
            // A trailing hole (GNU maps end with a zero-length segment at the size): the
            // seek alone does not make the file that long.
            file.set_len(declared)
                .map_err(|e| Error::io("extend file", path, e))?;
        }
        if written < declared {
            let hole = declared - written;
            self.layer.budget.bytes(self.layer, hole)?;
            hash_zeros(&mut hasher, hole);
            file.set_len(declared)
                .map_err(|e| Error::io("extend file", path, e))?;
            written = declared;
        }
        if written != declared {
            return Err(refused(
                self.layer,
                path,
                format!("declared {declared} bytes, the archive holds {written}"),
            ));
        }
        fsutil::apply_meta_new_fd(&file, meta, self.owner_known)
            .map_err(|e| Error::io("set metadata", path, e))?;
        drop(file);
        if declared == 0 {
            return Ok(Kind::File {
                object: None,
                size: 0,
                private: true,
            });
        }
        failpoint::hit("unpack.object-written");
        let key = object_key(hasher.finalize().as_bytes(), meta);
        let rel = object_rel(&key);
        let mut private = false;
        // The object sweep runs concurrently with pulls but not with this step (it takes the
        // lock exclusively per fan-out directory): an object it judged unused cannot gain a
        // name between its check and its unlink. Should an object still vanish between our
        // EEXIST and our link, it is created anew.
        let objects_lock = self.objects_lock.clone();
        let _linking = objects_lock
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut attempts = 0;
        loop {
            attempts += 1;
            match rustix::fs::linkat(dir, name, &self.objects, rel.as_str(), AtFlags::empty()) {
                Ok(()) => failpoint::hit("unpack.object-linked"),
                Err(rustix::io::Errno::EXIST) => {
                    // Same content and metadata already stored: the view links the object
                    // instead (through a temp name, so the name is replaced in one rename).
                    self.tmp_counter += 1;
                    let tmp_name = format!("o{}", self.tmp_counter);
                    match rustix::fs::linkat(
                        &self.objects,
                        rel.as_str(),
                        &self.work,
                        tmp_name.as_str(),
                        AtFlags::empty(),
                    ) {
                        Ok(()) => {
                            rustix::fs::renameat(&self.work, tmp_name.as_str(), dir, name)
                                .map_err(|e| Error::io("place file", path, e.into()))?;
                        }
                        Err(rustix::io::Errno::NOENT) if attempts < 5 => continue,
                        // The object has as many names as the file system allows: this
                        // layer keeps its own copy (the one just written).
                        Err(rustix::io::Errno::MLINK) => private = true,
                        Err(e) => return Err(Error::io("link object", path, e.into())),
                    }
                }
                Err(e) => return Err(Error::io("create object", path, e.into())),
            }
            break;
        }
        Ok(Kind::File {
            object: Some(key),
            size: declared,
            private,
        })
    }
}

/// A read error of a layer's tar stream as the pull reports it: a limit names the limit, a
/// typed error of the blob stream (cut connection, digest mismatch) survives as itself,
/// anything else refuses the layer as malformed.
pub(crate) fn tar_error(layer: &LayerInput, e: TarError, entry: &str) -> Error {
    match e {
        TarError::Limit { what, size, limit } => Error::LayerLimit {
            digest: layer.digest.clone(),
            index: layer.index,
            limit: "tar record size (1 MiB, as Go's archive/tar)",
            detail: format!("{what} of {size} bytes exceeds {limit} bytes"),
        },
        TarError::Malformed(m) => refused(layer, entry, format!("bad tar stream: {m}")),
        TarError::Io(e) if e.get_ref().is_some_and(|i| i.is::<Error>()) => {
            Error::from_io(e, "read layer", Path::new("layer stream"))
        }
        TarError::Io(e) => refused(layer, entry, format!("bad tar stream: {e}")),
    }
}

pub(crate) fn libc_enoent() -> i32 {
    rustix::io::Errno::NOENT.raw_os_error()
}

/// Errors of a contained resolution that mean "the path goes through a symlink or a
/// non-directory", i.e. a containment refusal rather than an I/O failure.
pub(crate) fn is_contain_errno(e: &io::Error) -> bool {
    let code = e.raw_os_error();
    code == Some(rustix::io::Errno::LOOP.raw_os_error())
        || code == Some(rustix::io::Errno::NOTDIR.raw_os_error())
        || code == Some(rustix::io::Errno::XDEV.raw_os_error())
}
