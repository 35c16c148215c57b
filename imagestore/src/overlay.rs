//! The overlay mount a container's root filesystem is: its image's flattened tree as the one
//! `lowerdir`, and its own `upperdir`/`workdir`. One lower, whatever the layer count, so the
//! mount options never approach the page-size limit and start time does not grow with depth.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// `lowerdir=…,upperdir=…,workdir=…` for `mount -t overlay`. Paths with `,` or `:` would
/// need escaping the kernel parser does not offer everywhere: refused.
pub fn overlay_options(lower: &Path, upper: &Path, work: &Path) -> Result<String> {
    let mut parts = Vec::new();
    for (key, p) in [("lowerdir", lower), ("upperdir", upper), ("workdir", work)] {
        let s = p.to_str().ok_or_else(|| bad(p, "not UTF-8"))?;
        if s.contains(',') || s.contains(':') {
            return Err(bad(p, "contains ',' or ':'"));
        }
        parts.push(format!("{key}={s}"));
    }
    Ok(parts.join(","))
}

fn bad(p: &Path, why: &str) -> Error {
    Error::io(
        "overlay path",
        p,
        std::io::Error::new(std::io::ErrorKind::InvalidInput, why.to_string()),
    )
}

/// A mounted container root filesystem; unmounted (lazily, `MNT_DETACH`) on drop unless
/// [`OverlayMount::unmount`] was called.
#[derive(Debug)]
pub struct OverlayMount {
    target: PathBuf,
    mounted: bool,
}

impl OverlayMount {
    /// Mount `tree` (an image's flattened tree, e.g. from [`crate::ImageStore::lease_tree`])
    /// read-only below a writable layer kept in `container_dir`: creates
    /// `container_dir/{upper,work,rootfs}` (0700 for upper's parent dirs) and mounts the
    /// overlay on `rootfs`. The upper and work dirs must be on one file system.
    pub fn mount(tree: &Path, container_dir: &Path) -> Result<OverlayMount> {
        let upper = container_dir.join("upper");
        let work = container_dir.join("work");
        let target = container_dir.join("rootfs");
        for d in [container_dir, &upper, &work, &target] {
            crate::blobs::create_private_dir(d)?;
        }
        let options = overlay_options(tree, &upper, &work)?;
        let data = std::ffi::CString::new(options).map_err(|_| bad(tree, "NUL in path"))?;
        rustix::mount::mount(
            "overlay",
            &target,
            "overlay",
            rustix::mount::MountFlags::empty(),
            Some(data.as_c_str()),
        )
        .map_err(|e| Error::io("mount overlay", &target, e.into()))?;
        Ok(OverlayMount {
            target,
            mounted: true,
        })
    }

    /// Where the root filesystem is mounted.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Unmount now.
    pub fn unmount(mut self) -> Result<()> {
        self.mounted = false;
        rustix::mount::unmount(&self.target, rustix::mount::UnmountFlags::empty())
            .map_err(|e| Error::io("unmount overlay", &self.target, e.into()))
    }
}

impl Drop for OverlayMount {
    fn drop(&mut self) {
        if self.mounted {
            let _ = rustix::mount::unmount(&self.target, rustix::mount::UnmountFlags::DETACH);
        }
    }
}
