//! The container's root filesystem: one overlayfs mount with the image's flattened tree as
//! the only lower directory and a private upper/work pair.

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::error::{Error, Result};

/// An overlay mount this crate made. It deliberately does not unmount on drop: the mount
/// must outlive the daemon process (a restarted daemon finds it again with
/// [`OverlayRootfs::at`]); unmounting is the explicit [`OverlayRootfs::unmount`], and error
/// paths push it onto their [`crate::undo::Undo`] stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayRootfs {
    target: PathBuf,
    upper: PathBuf,
    work: PathBuf,
}

fn check_option_path(p: &Path) -> Result<&str> {
    let s = p.to_str().ok_or_else(|| {
        Error::InvalidArgument(format!("overlay path {} is not UTF-8", p.display()))
    })?;
    // overlayfs splits its options on ',' and lowerdir lists on ':'; such paths would need
    // escaping the kernel only partly supports.
    if s.contains([',', ':', '\\']) {
        return Err(Error::InvalidArgument(format!(
            "overlay path {s:?} contains ',', ':' or '\\'"
        )));
    }
    Ok(s)
}

impl OverlayRootfs {
    /// Names a (possibly) existing mount at `target` with its upper/work under `layer_dir`.
    pub fn at(target: &Path, layer_dir: &Path) -> Self {
        Self {
            target: target.to_owned(),
            upper: layer_dir.join("upper"),
            work: layer_dir.join("work"),
        }
    }

    /// Creates `target` and `<layer_dir>/{upper,work}` and mounts
    /// `overlay(lowerdir=lower, upperdir, workdir)` on `target`. With `userns` (a pod's user
    /// namespace), the lower directory is an idmapped clone of `lower` staged next to
    /// `target` ([`crate::userns`]): files owned by 0 on disk are the pod root's inside, and
    /// the upper directory, which takes the root's owner from it, is the pod root's too.
    pub fn mount(
        lower: &Path,
        target: &Path,
        layer_dir: &Path,
        userns: Option<&fs::File>,
    ) -> Result<Self> {
        let me = Self::at(target, layer_dir);
        for d in [&me.target, &me.upper, &me.work] {
            fs::create_dir_all(d).map_err(|e| Error::io("create directory", d, e))?;
        }
        let Some(ns) = userns else {
            me.mount_over(lower)?;
            return Ok(me);
        };
        // In the staging directory whose leftovers (a crash right here) are detached before
        // anything removes the run directory: a recursive removal must never reach the tree.
        let stage = target
            .with_file_name(crate::userns::STAGED_MOUNTS)
            .join("lower");
        fs::create_dir_all(&stage).map_err(|e| Error::io("create directory", &stage, e))?;
        let mounted = crate::userns::attach_clone(lower, &stage, Some(ns), false)
            .map_err(|e| Error::io("attach an idmapped clone of the image tree at", &stage, e))
            .and_then(|()| me.mount_over(&stage));
        // The overlay holds its own private clone of the lower mount: the staged one is not
        // needed once it is mounted (nor kept if it failed).
        let detached = crate::userns::detach(&stage)
            .map_err(|e| Error::io("detach", &stage, e))
            .and_then(|()| fs::remove_dir(&stage).map_err(|e| Error::io("remove", &stage, e)));
        mounted?;
        if let Err(e) = detached {
            let _ = me.unmount();
            return Err(e);
        }
        Ok(me)
    }

    fn mount_over(&self, lower: &Path) -> Result<()> {
        let me = self;
        // overlayfs shows the merged root with the upper directory's mode and owner: give it
        // the image's (the tree root carries the layer's `./` entry), so `stat /` in the
        // container shows what the image says, as with containerd's snapshots.
        let root = fs::metadata(lower).map_err(|e| Error::io("stat", lower, e))?;
        std::os::unix::fs::chown(&me.upper, Some(root.uid()), Some(root.gid()))
            .map_err(|e| Error::io("chown", &me.upper, e))?;
        fs::set_permissions(&me.upper, fs::Permissions::from_mode(root.mode() & 0o7777))
            .map_err(|e| Error::io("chmod", &me.upper, e))?;
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            check_option_path(lower)?,
            check_option_path(&me.upper)?,
            check_option_path(&me.work)?
        );
        // `volatile`: no sync of the upper layer is ever waited for, neither the container's
        // own fsync nor the unmount's, which otherwise syncs the whole upper file system, with
        // every other writer's dirty data (#18). The writable layer never outlives its
        // container (per-boot records; a restarted container gets a new one), and the upper
        // dir is never mounted twice, which `volatile` forbids. Kernels before 5.10 say EINVAL.
        let mount_with = |opts: &str| {
            mount(
                Some("overlay"),
                &me.target,
                Some("overlay"),
                MsFlags::empty(),
                Some(opts),
            )
        };
        mount_with(&format!("{opts},volatile"))
            .or_else(|e| match e {
                nix::errno::Errno::EINVAL => mount_with(&opts),
                e => Err(e),
            })
            .map_err(|source| Error::Mount {
                op: "mount overlay at",
                target: me.target.clone(),
                source,
            })
    }

    /// The mount point (the bundle's rootfs).
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// The writable layer (for disk-usage stats).
    pub fn upper(&self) -> &Path {
        &self.upper
    }

    /// Unmounts; an absent mount is success (idempotent removal after a crash or reboot).
    pub fn unmount(&self) -> Result<()> {
        loop {
            match umount2(&self.target, MntFlags::UMOUNT_NOFOLLOW) {
                // Stacked mounts (a retry after a partial failure) are peeled one by one.
                Ok(()) => continue,
                Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => return Ok(()),
                Err(source) => {
                    return Err(Error::Mount {
                        op: "unmount",
                        target: self.target.clone(),
                        source,
                    });
                }
            }
        }
    }
}

/// Marks `dir`, the parent of every container's writable layer, as the top of unrelated
/// trees, for ext4's Orlov allocator (`chattr +T`): each layer directory then starts in a
/// block group of its own choosing, and the layer's files, the overlay's work files and the
/// OCI runtime's copy-ups follow it there. Without it they all share the parent's group,
/// where ext4 without a journal skips every inode deleted in the last minutes when it
/// allocates one: with pods coming and going, each new inode cost a scan over all the
/// layers removed before it (#18). Returns whether the flag is set; file systems without
/// the flag (tmpfs, xfs, btrfs) are left alone.
pub(crate) fn spread_layers(dir: &Path) -> io::Result<bool> {
    // `FS_TOPDIR_FL` of <linux/fs.h>, which the libc crate does not name.
    const FS_TOPDIR_FL: libc::c_int = 0x0002_0000;
    let f = fs::File::open(dir)?;
    let ioctl = |request, flags: *mut libc::c_int| {
        // SAFETY: FS_IOC_GETFLAGS/SETFLAGS read or write one int at `flags` (the kernel's
        // handlers use int, whatever the request number says), which outlives the call.
        match unsafe { libc::ioctl(f.as_raw_fd(), request, flags) } {
            0 => Ok(()),
            _ => Err(io::Error::last_os_error()),
        }
    };
    let mut flags: libc::c_int = 0;
    let set = ioctl(libc::FS_IOC_GETFLAGS, &mut flags).and_then(|()| match flags {
        f if f & FS_TOPDIR_FL != 0 => Ok(()),
        f => ioctl(libc::FS_IOC_SETFLAGS, &mut (f | FS_TOPDIR_FL)),
    });
    match set {
        Ok(()) => Ok(true),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOTTY | libc::EOPNOTSUPP | libc::EINVAL)
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Whether something is mounted exactly at `path` (from `/proc/self/mountinfo`).
pub fn is_mountpoint(path: &Path) -> bool {
    mountinfo_line(path).is_some()
}

/// The `/proc/self/mountinfo` line of the mount exactly at `path`, if any.
fn mountinfo_line(path: &Path) -> Option<String> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.to_str()?;
    info.lines()
        .find(|l| {
            l.split(' ')
                .nth(4)
                .is_some_and(|mp| unescape_mountinfo(mp) == want)
        })
        .map(str::to_owned)
}

fn unescape_mountinfo(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && let Some(n) = s
                .get(i + 1..i + 4)
                .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(n);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn the_layers_parent_is_marked_top_level_on_ext4() {
        let d = tempfile::tempdir().unwrap();
        let fs_type = nix::sys::statfs::statfs(d.path())
            .unwrap()
            .filesystem_type();
        let ext4 = fs_type == nix::sys::statfs::EXT4_SUPER_MAGIC;
        assert_eq!(spread_layers(d.path()).unwrap(), ext4);
        // The second call finds the flag the first one set (and sets nothing).
        assert_eq!(spread_layers(d.path()).unwrap(), ext4);
    }

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }

    /// The container's layer is mounted `volatile`, and a file written and synced in it is
    /// there until the unmount.
    #[test]
    fn the_writable_layer_is_volatile() {
        // Fails (never skips) without root, as the CNI tests: CI runs it as root.
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "mounting an overlay needs root: run this test as root"
        );
        let dir = tempfile::tempdir().unwrap();
        let lower = dir.path().join("lower");
        fs::create_dir_all(lower.join("etc")).unwrap();
        let target = dir.path().join("rootfs");
        let rootfs =
            OverlayRootfs::mount(&lower, &target, &dir.path().join("layer"), None).unwrap();
        let line = mountinfo_line(&target).unwrap();
        assert!(line.contains("volatile"), "{line}");
        let mut f = fs::File::create(target.join("etc/written")).unwrap();
        std::io::Write::write_all(&mut f, b"x").unwrap();
        f.sync_all().unwrap();
        drop(f);
        assert_eq!(fs::read(rootfs.upper().join("etc/written")).unwrap(), b"x");
        rootfs.unmount().unwrap();
        assert!(!is_mountpoint(&target));
    }

    #[test]
    fn rejects_option_separators() {
        assert!(check_option_path(Path::new("/a,b")).is_err());
        assert!(check_option_path(Path::new("/a:b")).is_err());
    }
}
