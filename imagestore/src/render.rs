//! Rendering: one flattened tree per image top chain id, `trees/<chainid-hex>/`, built in
//! `tmp/` from the layer manifests and views, bottom layer first, then synced and renamed.
//!
//! Per layer: opaque directories and whiteouts first (they delete from the layers below, and
//! the tar may list them after the layer's own entries in that directory), then entries in
//! path order (parents first), then hard links in tar order (their target may live in any
//! layer below). Directories get their mtimes last, since creating children changes them.
//! Every path is resolved inside the tree without following symlinks, so a symlink planted by
//! a lower layer is replaced by an upper layer's directory (as overlayfs shows it), never
//! written through.
//!
//! Regular files are hard links to the layer view's inode (the object). Within one tree an
//! inode is used once unless the image itself hard-links: a second path with identical
//! content and metadata gets a private copy, as do empty files and `EMLINK`.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use crate::entries::is_contain_errno;
use crate::error::{Error, Result};
use crate::failpoint;
use crate::fsutil::{self, Meta};
use crate::layout::{Kind, LayerManifest, StorePaths, TmpDir};
use crate::reference::{ChainId, Digest};

/// What a render produced.
#[derive(Debug, Clone)]
pub(crate) struct Rendered {
    pub path: PathBuf,
    pub entries: u64,
}

struct Render<'a> {
    chain: &'a ChainId,
    tree: OwnedFd,
    used: HashSet<(u64, u64)>,
    dir_meta: BTreeMap<String, Meta>,
    /// The tree directory last used (entries come sorted, parents first): shared, so a hit
    /// costs no syscall.
    cache: Option<(String, Arc<OwnedFd>)>,
    /// The same for the layer view files are linked from.
    view_cache: Option<(String, Arc<OwnedFd>)>,
}

fn split(path: &str) -> (&str, &str) {
    match path.rsplit_once('/') {
        Some((p, n)) => (p, n),
        None => ("", path),
    }
}

impl Render<'_> {
    fn err(&self, diff_id: &Digest, reason: String) -> Error {
        Error::Render {
            chain_id: self.chain.to_string(),
            diff_id: diff_id.clone(),
            reason,
        }
    }

    /// The directory `rel` in the tree; `None` when it is absent or reached only through a
    /// symlink or a non-directory (contained: nothing below it is touched).
    fn dir(&mut self, rel: &str) -> Result<Option<Arc<OwnedFd>>> {
        if let Some((p, fd)) = &self.cache
            && p == rel
        {
            return Ok(Some(fd.clone()));
        }
        match fsutil::resolve_dir(&self.tree, rel) {
            Ok(fd) => {
                let fd = Arc::new(fd);
                self.cache = Some((rel.to_string(), fd.clone()));
                Ok(Some(fd))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound || is_contain_errno(&e) => Ok(None),
            Err(e) => Err(Error::io("open tree directory", rel, e)),
        }
    }

    /// The directory `rel` of the layer view (contained, as [`Self::dir`]).
    fn view_dir(&mut self, view: &OwnedFd, rel: &str) -> io::Result<Arc<OwnedFd>> {
        if let Some((p, fd)) = &self.view_cache
            && p == rel
        {
            return Ok(fd.clone());
        }
        let fd = Arc::new(fsutil::resolve_dir(view, rel)?);
        self.view_cache = Some((rel.to_string(), fd.clone()));
        Ok(fd)
    }

    fn remove(&mut self, rel: &str) -> Result<()> {
        let (parent, name) = split(rel);
        if let Some(dir) = self.dir(parent)? {
            fsutil::remove_all_at(&dir, name).map_err(|e| Error::io("remove", rel, e))?;
        }
        self.cache = None;
        Ok(())
    }

    /// Apply one layer; `fresh` when it is the bottom one (the tree is empty).
    fn layer(
        &mut self,
        diff_id: &Digest,
        manifest: &LayerManifest,
        view: &OwnedFd,
        fresh: bool,
    ) -> Result<u64> {
        for dir in &manifest.opaques {
            if let Some(fd) = self.dir(dir)? {
                let rd = rustix::fs::openat(
                    &fd,
                    ".",
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| Error::io("open", dir, e.into()))?;
                fsutil::clear_dir(&rd).map_err(|e| Error::io("clear opaque dir", dir, e))?;
                self.cache = None;
            }
        }
        for w in &manifest.whiteouts {
            self.remove(w)?;
        }
        let mut count = 0;
        for e in &manifest.entries {
            count += 1;
            if e.path.is_empty() {
                self.dir_meta.insert(String::new(), e.meta.clone());
                continue;
            }
            let (parent, name) = split(&e.path);
            let Some(dir) = self.dir(parent)? else {
                return Err(self.err(diff_id, format!("{}: parent directory missing", e.path)));
            };
            // Over the bottom layer the tree starts empty and a manifest lists each path
            // once: nothing can be there yet (one `stat` per entry saved).
            let existing = if fresh {
                None
            } else {
                fsutil::stat_at(&dir, name).map_err(|x| Error::io("stat", &e.path, x))?
            };
            if let Kind::Dir { implicit } = e.kind {
                match existing {
                    Some(st) if fsutil::file_type(&st) == FileType::Directory => {
                        if implicit {
                            continue;
                        }
                    }
                    other => {
                        if other.is_some() {
                            fsutil::remove_all_at(&dir, name)
                                .map_err(|x| Error::io("remove", &e.path, x))?;
                        }
                        rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o700))
                            .map_err(|x| Error::io("create directory", &e.path, x.into()))?;
                    }
                }
                self.cache = None;
                let fd = rustix::fs::openat(
                    &dir,
                    name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|x| Error::io("open directory", &e.path, x.into()))?;
                // Entries sort parents first: the next ones likely live in this directory.
                let fd = Arc::new(fd);
                self.cache = Some((e.path.clone(), fd.clone()));
                let meta = if implicit {
                    Meta {
                        mode: 0o755,
                        ..Meta::default()
                    }
                } else {
                    e.meta.clone()
                };
                fsutil::apply_meta_fd(&fd, &meta)
                    .map_err(|x| Error::io("set metadata", &e.path, x))?;
                self.dir_meta.insert(e.path.clone(), meta);
                continue;
            }
            if existing.is_some() {
                fsutil::remove_all_at(&dir, name).map_err(|x| Error::io("remove", &e.path, x))?;
                self.cache = None;
            }
            match &e.kind {
                Kind::Dir { .. } => {}
                Kind::File { object: None, .. } => {
                    let fd = rustix::fs::openat(
                        &dir,
                        name,
                        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o600),
                    )
                    .map_err(|x| Error::io("create file", &e.path, x.into()))?;
                    fsutil::apply_meta_fd(&fd, &e.meta)
                        .map_err(|x| Error::io("set metadata", &e.path, x))?;
                }
                Kind::File { .. } => {
                    // By name in the view's directory (resolved contained, cached): a stat
                    // and a link per file, no descriptor of its own.
                    let vdir = self
                        .view_dir(view, parent)
                        .map_err(|x| Error::io("open layer directory", &e.path, x))?;
                    let st = match fsutil::stat_at(&*vdir, name) {
                        Ok(Some(st)) if fsutil::file_type(&st) == FileType::RegularFile => st,
                        Ok(_) => {
                            return Err(self.err(
                                diff_id,
                                format!("{}: not a regular file in the layer", e.path),
                            ));
                        }
                        Err(x) => return Err(Error::io("stat layer file", &e.path, x)),
                    };
                    let ino = (st.st_dev, st.st_ino);
                    let linked = if self.used.insert(ino) {
                        match rustix::fs::linkat(&*vdir, name, &*dir, name, AtFlags::empty()) {
                            Ok(()) => true,
                            Err(rustix::io::Errno::MLINK) => false,
                            Err(x) => return Err(Error::io("link object", &e.path, x.into())),
                        }
                    } else {
                        false
                    };
                    if !linked {
                        let src = fsutil::open_file_in(&*vdir, name)
                            .map_err(|x| Error::io("open layer file", &e.path, x))?;
                        copy_file(src, &dir, name, &e.meta)
                            .map_err(|x| Error::io("copy file", &e.path, x))?;
                    }
                }
                Kind::Symlink { target } => {
                    rustix::fs::symlinkat(target.as_str(), &dir, name)
                        .map_err(|x| Error::io("create symlink", &e.path, x.into()))?;
                    fsutil::apply_meta_at(&dir, name, &e.meta, true)
                        .map_err(|x| Error::io("set metadata", &e.path, x))?;
                }
                Kind::Fifo | Kind::Char { .. } | Kind::Block { .. } => {
                    let (ft, dev) = match e.kind {
                        Kind::Char { major, minor } => {
                            (FileType::CharacterDevice, rustix::fs::makedev(major, minor))
                        }
                        Kind::Block { major, minor } => {
                            (FileType::BlockDevice, rustix::fs::makedev(major, minor))
                        }
                        _ => (FileType::Fifo, 0),
                    };
                    rustix::fs::mknodat(&dir, name, ft, Mode::from_raw_mode(0o600), dev)
                        .map_err(|x| Error::io("create node", &e.path, x.into()))?;
                    fsutil::apply_meta_at(&dir, name, &e.meta, false)
                        .map_err(|x| Error::io("set metadata", &e.path, x))?;
                }
            }
        }
        for (path, target) in &manifest.hardlinks {
            count += 1;
            let (tparent, tname) = split(target);
            let tdir = self.dir(tparent)?;
            let tst = match &tdir {
                Some(d) => fsutil::stat_at(d, tname).map_err(|x| Error::io("stat", target, x))?,
                None => None,
            };
            let (Some(tdir), Some(tst)) = (tdir, tst) else {
                return Err(self.err(
                    diff_id,
                    format!("{path}: hard link target {target:?} does not exist"),
                ));
            };
            if fsutil::file_type(&tst) == FileType::Directory {
                return Err(self.err(
                    diff_id,
                    format!("{path}: hard link target {target:?} is a directory"),
                ));
            }
            self.remove(path)?;
            let (parent, name) = split(path);
            let Some(dir) = self.dir(parent)? else {
                return Err(self.err(diff_id, format!("{path}: parent directory missing")));
            };
            self.used.insert((tst.st_dev, tst.st_ino));
            rustix::fs::linkat(&tdir, tname, &dir, name, AtFlags::empty())
                .map_err(|x| Error::io("hard link", path, x.into()))?;
        }
        Ok(count)
    }

    /// Directory mtimes, last (children changed them while rendering).
    fn finish_dirs(&mut self) -> Result<()> {
        let metas = std::mem::take(&mut self.dir_meta);
        for (path, meta) in metas.iter().rev() {
            let (parent, name) = if path.is_empty() {
                ("", ".")
            } else {
                split(path)
            };
            let Some(dir) = self.dir(parent)? else {
                continue;
            };
            let ts = rustix::fs::Timestamps {
                last_access: rustix::fs::Timespec {
                    tv_sec: meta.mtime,
                    tv_nsec: 0,
                },
                last_modification: rustix::fs::Timespec {
                    tv_sec: meta.mtime,
                    tv_nsec: 0,
                },
            };
            if path.is_empty() {
                // `dir` is an O_PATH descriptor, which fchown/fchmod/fsetxattr refuse (EBADF):
                // the root gets its metadata through a descriptor opened for reading.
                let root = rustix::fs::openat(
                    &dir,
                    ".",
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|x| Error::io("open", "/", x.into()))?;
                fsutil::apply_meta_fd(&root, meta)
                    .map_err(|x| Error::io("set metadata", "/", x))?;
                continue;
            }
            match rustix::fs::utimensat(&dir, name, &ts, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                Err(x) => return Err(Error::io("set mtime", path, x.into())),
            }
        }
        Ok(())
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A private copy of `src` (content via `copy_file_range`) with `meta`.
fn copy_file(mut src: File, dir: &OwnedFd, name: &str, meta: &Meta) -> io::Result<()> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    let mut dst = File::from(fd);
    io::copy(&mut src, &mut dst)?;
    fsutil::apply_meta_fd(&dst, meta)
}

/// Render the tree of `chain` from the committed layers `diff_ids` (bottom first) and move
/// it to `trees/<hex>`. Blocking.
pub(crate) fn render(paths: &StorePaths, chain: &ChainId, diff_ids: &[Digest]) -> Result<Rendered> {
    let mut work = TmpDir::create(paths.tmp_name(&format!("tree-{}", &chain.0.hex()[..12])))?;
    failpoint::hit("render.begin");
    let tree = fsutil::open_dir(&work.path).map_err(|e| Error::io("open", &work.path, e))?;
    let mut r = Render {
        chain,
        tree,
        used: HashSet::new(),
        dir_meta: BTreeMap::new(),
        cache: None,
        view_cache: None,
    };
    // Without a root entry in any layer the root is what `tar -x` into a fresh directory
    // and containerd's snapshots give: 0755, owned by root. The runtime gives the
    // container's upper directory the same mode and owner (overlayfs shows the upper's).
    r.dir_meta.insert(
        String::new(),
        Meta {
            mode: 0o755,
            mtime: now_secs(),
            ..Meta::default()
        },
    );
    let mut entries = 0;
    for (i, diff_id) in diff_ids.iter().enumerate() {
        let dir = paths.layer_dir(diff_id);
        let manifest = LayerManifest::load(&dir)?;
        let view_path = paths.layer_root(diff_id);
        let view =
            fsutil::open_dir(&view_path).map_err(|e| Error::io("open layer", &view_path, e))?;
        r.view_cache = None;
        entries += r.layer(diff_id, &manifest, &view, i == 0)?;
        failpoint::hit("render.layer-applied");
    }
    r.finish_dirs()?;
    drop(r);
    fsutil::sync_fs(&paths.root).map_err(|e| Error::io("sync", &paths.root, e))?;
    failpoint::hit("render.before-rename");
    let dest = paths.trees.join(chain.0.hex());
    fsutil::remove_tree(&dest).map_err(|e| Error::io("remove stale tree", &dest, e))?;
    std::fs::rename(&work.path, &dest).map_err(|e| Error::io("rename tree", &dest, e))?;
    work.disarm();
    fsutil::sync_dir(&paths.trees)?;
    failpoint::hit("render.after-rename");
    Ok(Rendered {
        path: dest,
        entries,
    })
}
