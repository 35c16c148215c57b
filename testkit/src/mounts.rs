//! What a test left mounted: listed (to assert nothing is) and detached (clean-up).

use std::path::Path;

/// Every mount point at or under `dir`, from this process's mount table. Fails if the table
/// cannot be read: an empty list would make "no mounts left" vacuous.
pub fn mounts_under(dir: &Path) -> std::io::Result<Vec<String>> {
    let table = std::fs::read_to_string("/proc/self/mountinfo")?;
    let dir = dir.display().to_string();
    let below = format!("{}/", dir.trim_end_matches('/'));
    Ok(table
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| *m == dir || m.starts_with(&below))
        .map(str::to_owned)
        .collect())
}

/// Detaches every mount at or under `dir`, deepest first (rootfs overlays, shm, pinned
/// namespaces), so a busy mount cannot keep a temp dir alive. Best effort: this is clean-up
/// after a test; returns what it tried to detach.
pub fn unmount_under(dir: &Path) -> Vec<String> {
    let mut mounts = mounts_under(dir).unwrap_or_default();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in &mounts {
        let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
    mounts
}

/// Mounts a fresh tmpfs on `dir` (created if missing), searchable by all: the per-boot
/// state dir a node keeps under `/run`, which is a tmpfs there and plain disk on the dev VM.
/// [`unmount_under`] of a parent removes it.
pub fn mount_tmpfs(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
        Some("mode=0711,size=2g"),
    )
    .map_err(std::io::Error::from)
}
