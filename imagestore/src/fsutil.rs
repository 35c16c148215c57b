//! File-system primitives for the tree cache: every path below a tree or layer root is
//! resolved with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS |
//! RESOLVE_NO_XDEV)`, so no entry of a hostile layer can make us open, create or delete
//! anything outside the root, whatever symlinks earlier entries planted: the kernel refuses
//! the resolution (`ELOOP`) instead of us checking strings. Every other call is an `*at`
//! call on a directory fd obtained that way, with `AT_SYMLINK_NOFOLLOW` where it applies.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{
    AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps, XattrFlags,
};
use serde::{Deserialize, Serialize};

/// Resolution flags for everything below a root we do not trust.
pub(crate) fn contained() -> ResolveFlags {
    ResolveFlags::IN_ROOT
        | ResolveFlags::NO_SYMLINKS
        | ResolveFlags::NO_MAGICLINKS
        | ResolveFlags::NO_XDEV
}

/// Inode metadata of a tar entry, as a tree reproduces it and an object key includes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Meta {
    /// Permission bits including setuid/setgid/sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the epoch.
    pub mtime: i64,
    /// Extended attributes, sorted by name (`trusted.overlay.*` never appear).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// Open a directory we trust (a store directory) as an `O_PATH` fd.
pub(crate) fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    rustix::fs::open(
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from)
}

/// Open the directory `rel` below `root`, refusing any symlink on the way.
/// Paths longer than `PATH_MAX` (a deep tree) are resolved a piece at a time.
pub(crate) fn resolve_dir(root: &impl AsFd, rel: &str) -> io::Result<OwnedFd> {
    let rel = if rel.is_empty() { "." } else { rel };
    let open = |at: &dyn AsFd, piece: &str| -> io::Result<OwnedFd> {
        rustix::fs::openat2(
            at.as_fd(),
            piece,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            contained(),
        )
        .map_err(io::Error::from)
    };
    const PIECE: usize = 2048;
    if rel.len() <= PIECE {
        return open(root, rel);
    }
    // Each piece is resolved in the directory the previous one reached, with the same
    // containment (no symlinks, no `..` past it, which `normalize` refuses anyway).
    let mut cur: Option<OwnedFd> = None;
    let mut piece = String::new();
    for comp in rel.split('/').filter(|c| !c.is_empty()) {
        if !piece.is_empty() && piece.len() + comp.len() + 1 > PIECE {
            let next = match &cur {
                Some(fd) => open(fd, &piece)?,
                None => open(root, &piece)?,
            };
            cur = Some(next);
            piece.clear();
        }
        if !piece.is_empty() {
            piece.push('/');
        }
        piece.push_str(comp);
    }
    match &cur {
        Some(fd) if piece.is_empty() => fd.try_clone(),
        Some(fd) => open(fd, &piece),
        None => open(root, &piece),
    }
}

/// Open the regular file `rel` below `root` for reading, refusing symlinks.
pub(crate) fn open_file_in(root: &impl AsFd, rel: &str) -> io::Result<File> {
    if rel.len() > 2048
        && let Some((parent, name)) = rel.rsplit_once('/')
    {
        // Deeper than PATH_MAX allows in one call: the directory a piece at a time.
        let dir = resolve_dir(root, parent)?;
        return open_file_in(&dir, name);
    }
    let fd = rustix::fs::openat2(
        root,
        rel,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
        contained(),
    )?;
    Ok(File::from(fd))
}

/// `lstat` of `name` in `dir`; `None` when absent.
pub(crate) fn stat_at(dir: &impl AsFd, name: &str) -> io::Result<Option<rustix::fs::Stat>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The file type of a stat.
pub(crate) fn file_type(st: &rustix::fs::Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

/// Remove `name` in `dir`, recursively if it is a directory, never following symlinks.
/// Absent is fine.
///
/// Iterative, holding two directory fds at any time whatever the depth: a stack of names
/// (memory, not descriptors) remembers the way down, and the way up is `..` of a directory
/// opened without following symlinks, which is its real parent. A tree thousands of levels
/// deep (beyond `PATH_MAX`) or a daemon with a small `RLIMIT_NOFILE` can always remove what
/// it unpacked.
pub(crate) fn remove_all_at(dir: &impl AsFd, name: &str) -> io::Result<()> {
    let Some(st) = stat_at(dir, name)? else {
        return Ok(());
    };
    if file_type(&st) != FileType::Directory {
        return match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        };
    }
    struct Frame {
        name: String,
        subdirs: Vec<String>,
    }
    let open_sub = |parent: &OwnedFd, name: &str| -> io::Result<OwnedFd> {
        Ok(rustix::fs::openat(
            parent,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?)
    };
    let top = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    // Never into another mount (`rm --one-file-system`): a mount inside a store tree is
    // somebody's data, and the tree is then left for the caller to report or move aside.
    let mount = mount_id(&top)?;
    let mut cur = top;
    let mut stack = vec![Frame {
        name: name.to_string(),
        subdirs: unlink_files(&cur)?,
    }];
    loop {
        let Some(frame) = stack.last_mut() else {
            return Ok(());
        };
        if let Some(sub) = frame.subdirs.pop() {
            match open_sub(&cur, &sub) {
                Ok(fd) => {
                    if mount_id(&fd)? != mount {
                        return Err(io::Error::from_raw_os_error(
                            rustix::io::Errno::BUSY.raw_os_error(),
                        ));
                    }
                    cur = fd;
                    let subdirs = unlink_files(&cur)?;
                    stack.push(Frame { name: sub, subdirs });
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            continue;
        }
        let Some(done) = stack.pop() else {
            return Ok(());
        };
        if stack.is_empty() {
            drop(cur);
            return match rustix::fs::unlinkat(dir, done.name.as_str(), AtFlags::REMOVEDIR) {
                Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
                Err(e) => Err(e.into()),
            };
        }
        let parent = open_sub(&cur, "..")?;
        cur = parent;
        match rustix::fs::unlinkat(&cur, done.name.as_str(), AtFlags::REMOVEDIR) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// The id of the mount `fd` is on.
fn mount_id(fd: &OwnedFd) -> io::Result<u64> {
    let st = rustix::fs::statx(fd, "", AtFlags::EMPTY_PATH, rustix::fs::StatxFlags::MNT_ID)?;
    Ok(st.stx_mnt_id)
}

/// Unlink every non-directory in `dir`; return the names of its subdirectories.
fn unlink_files(dir: &OwnedFd) -> io::Result<Vec<String>> {
    let mut subdirs = Vec::new();
    for name in list_dir(dir)? {
        match rustix::fs::unlinkat(dir, name.as_str(), AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            Err(rustix::io::Errno::ISDIR) => subdirs.push(name),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(subdirs)
}

/// Remove everything inside the directory `dir` (an fd opened for reading).
pub(crate) fn clear_dir(dir: &OwnedFd) -> io::Result<()> {
    for name in list_dir(dir)? {
        remove_all_at(dir, &name)?;
    }
    Ok(())
}

/// Names in a directory (without `.` and `..`); non-UTF-8 names are returned lossily, which
/// only happens for content we refused to create in the first place.
pub(crate) fn list_dir(dir: &impl AsFd) -> io::Result<Vec<String>> {
    let fd = rustix::fs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut out = Vec::new();
    for entry in Dir::read_from(&fd)? {
        let entry = entry?;
        let name: &CStr = entry.file_name();
        let bytes = name.to_bytes();
        if bytes == b"." || bytes == b".." {
            continue;
        }
        out.push(String::from_utf8_lossy(bytes).into_owned());
    }
    Ok(out)
}

/// Remove a whole directory tree we own (a store directory), by path.
pub(crate) fn remove_tree(path: &Path) -> io::Result<()> {
    let Some(parent) = path.parent() else {
        return Ok(());
    };
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Ok(());
    };
    let dir = match open_dir(parent) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    remove_all_at(&dir, name)
}

fn timestamps(mtime: i64) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// Owner, mode, xattrs and mtime on an open file or directory. Order matters: `chown`
/// clears setuid/setgid and `security.capability`, so it goes first; the mtime goes last.
/// [`apply_meta_fd`] on a file this process just created with `meta.mode & 0o777` as its
/// creation mode: the owner and mode calls are skipped where creation already gave them
/// (owner = our effective ids, no special bits, nothing masked by the umask), which is
/// most files of most layers. `owner_known`: the file's directory has no set-group-id bit
/// (which would have given the file the directory's group).
pub(crate) fn apply_meta_new_fd(fd: &impl AsFd, meta: &Meta, owner_known: bool) -> io::Result<()> {
    static IDS: std::sync::OnceLock<(u32, u32, u32)> = std::sync::OnceLock::new();
    let (uid, gid, umask) = *IDS.get_or_init(|| {
        (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
            process_umask(),
        )
    });
    let owner_differs = !owner_known || meta.uid != uid || meta.gid != gid;
    if owner_differs {
        rustix::fs::fchown(
            fd,
            Some(rustix::fs::Uid::from_raw(meta.uid)),
            Some(rustix::fs::Gid::from_raw(meta.gid)),
        )?;
    }
    // fchown clears set-id bits, so fchmod comes after it either way.
    if owner_differs || meta.mode & 0o7000 != 0 || meta.mode & umask != 0 {
        rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode & 0o7777))?;
    }
    for (name, value) in &meta.xattrs {
        rustix::fs::fsetxattr(fd, name.as_str(), value, XattrFlags::empty())?;
    }
    rustix::fs::futimens(fd, &timestamps(meta.mtime))?;
    Ok(())
}

/// The process umask, read from `/proc/self/status` (the `umask` call would change it,
/// racing other threads); all bits when unknown, so callers never skip a `fchmod`.
fn process_umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o777)
}

pub(crate) fn apply_meta_fd(fd: &impl AsFd, meta: &Meta) -> io::Result<()> {
    rustix::fs::fchown(
        fd,
        Some(rustix::fs::Uid::from_raw(meta.uid)),
        Some(rustix::fs::Gid::from_raw(meta.gid)),
    )?;
    rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode & 0o7777))?;
    for (name, value) in &meta.xattrs {
        rustix::fs::fsetxattr(fd, name.as_str(), value, XattrFlags::empty())?;
    }
    rustix::fs::futimens(fd, &timestamps(meta.mtime))?;
    Ok(())
}

/// Metadata on an entry we must not open (symlink, fifo, device): by name in `dir`.
/// Symlinks get no mode (Linux has none) and no xattrs (`user.*` is refused on symlinks).
pub(crate) fn apply_meta_at(
    dir: &impl AsFd,
    name: &str,
    meta: &Meta,
    is_symlink: bool,
) -> io::Result<()> {
    rustix::fs::chownat(
        dir,
        name,
        Some(rustix::fs::Uid::from_raw(meta.uid)),
        Some(rustix::fs::Gid::from_raw(meta.gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )?;
    if !is_symlink {
        rustix::fs::chmodat(
            dir,
            name,
            Mode::from_raw_mode(meta.mode & 0o7777),
            AtFlags::empty(),
        )?;
        if !meta.xattrs.is_empty() {
            // lsetxattr through the dir fd's /proc link: the last component is not followed.
            let path = format!(
                "/proc/self/fd/{}/{name}",
                std::os::fd::AsRawFd::as_raw_fd(&dir.as_fd())
            );
            for (k, v) in &meta.xattrs {
                rustix::fs::lsetxattr(path.as_str(), k.as_str(), v, XattrFlags::empty())?;
            }
        }
    }
    rustix::fs::utimensat(
        dir,
        name,
        &timestamps(meta.mtime),
        AtFlags::SYMLINK_NOFOLLOW,
    )?;
    Ok(())
}

/// Every xattr of an open file, sorted by name.
pub(crate) fn read_xattrs(fd: &impl AsFd) -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut names = vec![0u8; 4096];
    let n = loop {
        match rustix::fs::flistxattr(fd, &mut names[..]) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) => names.resize(names.len() * 4, 0),
            Err(e) => return Err(e.into()),
        }
    };
    let mut out = Vec::new();
    for raw in names[..n].split(|b| *b == 0).filter(|s| !s.is_empty()) {
        let name = String::from_utf8_lossy(raw).into_owned();
        let mut value = vec![0u8; 256];
        let len = loop {
            match rustix::fs::fgetxattr(fd, name.as_str(), &mut value[..]) {
                Ok(len) => break len,
                Err(rustix::io::Errno::RANGE) => value.resize(value.len() * 4, 0),
                Err(e) => return Err(e.into()),
            }
        };
        value.truncate(len);
        out.push((name, value));
    }
    out.sort();
    Ok(out)
}

/// `rootstock_fsutil::create_private_dir` (mode 0700, parents too), failing with the
/// store's error naming the directory.
pub(crate) fn create_private_dir(path: &Path) -> crate::Result<()> {
    rootstock_fsutil::create_private_dir(path)
        .map_err(|e| crate::Error::io("create directory", path, e))
}

/// `rootstock_fsutil::sync_dir` (after a rename or unlink in `path`), failing with the
/// store's error naming the directory.
pub(crate) fn sync_dir(path: &Path) -> crate::Result<()> {
    rootstock_fsutil::sync_dir(path).map_err(|e| crate::Error::io("fsync directory", path, e))
}

/// Ask the file system to place each new directory created in `dir` in its own, lightly used
/// allocation group (ext4's `FS_TOPDIR_FL`, chattr `+T`, the hint `/home` gets), and with it
/// the files below that directory. `tmp/` is where every layer view and tree is built, and
/// removing an image deletes tens of thousands of inodes in the groups it was built in: on
/// ext4 without a journal a new inode is never one deleted in the last 30 s, and the
/// allocator then scans past each of them for every file it creates (`recently_deleted` in
/// `find_inode_bit`, 47 % of a 20,000-file pull's profile right after a removal). Spread
/// out, a pull allocates where nothing was just deleted. Best effort: other file systems
/// ignore or refuse the flag, which changes nothing else.
pub(crate) fn spread_children(dir: &Path) {
    let Ok(fd) = open_dir_readable(dir) else {
        return;
    };
    if let Ok(flags) = rustix::fs::ioctl_getflags(&fd)
        && !flags.contains(rustix::fs::IFlags::TOPDIR)
        && let Err(e) = rustix::fs::ioctl_setflags(&fd, flags | rustix::fs::IFlags::TOPDIR)
    {
        tracing::debug!(dir = %dir.display(), error = %e, "no FS_TOPDIR_FL on the store's tmp");
    }
}

fn open_dir_readable(dir: &Path) -> io::Result<OwnedFd> {
    rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from)
}

/// Flush the whole store's file system once (one call per layer or tree, rather than one
/// fsync per file: the unclean-start sweep covers what a power loss tears before it).
pub(crate) fn sync_fs(path: &Path) -> io::Result<()> {
    let fd = File::open(path)?;
    rustix::fs::syncfs(&fd)?;
    Ok(())
}
