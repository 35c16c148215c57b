//! Pinned network namespaces for tests that drive CNI directly (the cni crate's tests): the
//! daemon never needs these: the runtime pins a sandbox's namespaces itself (bind mounts
//! under the sandbox's `ns/` directory, see `rootstock_runtime`'s sandbox module).

use std::io;
use std::path::Path;

use nix::sched::CloneFlags;

/// Creates a new network namespace and pins it by bind-mounting it onto `path` (created as an
/// empty file; its parent must exist). The namespace lives as long as the mount, independent
/// of any process.
///
/// `unshare(2)` changes only the calling thread, so it runs on a thread of its own that ends
/// afterwards: the caller's thread (perhaps a tokio worker) stays in the host namespace.
pub fn create_netns(path: &Path) -> io::Result<()> {
    let p = path.to_path_buf();
    std::thread::Builder::new()
        .name("test-netns".into())
        .spawn(move || create_here(&p))?
        .join()
        .map_err(|_| io::Error::other("the netns thread panicked"))?
}

fn create_here(path: &Path) -> io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    let res = (|| {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET)?;
        // `/proc/thread-self`, not `/proc/self`: only this thread is in the new namespace.
        nix::mount::mount(
            Some(Path::new("/proc/thread-self/ns/net")),
            path,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(path);
    }
    res.map_err(|e| io::Error::other(format!("pin netns at {}: {e}", path.display())))
}

/// Unpins the namespace at `path`: unmount (lazily, so a process still inside keeps it
/// alive but the path is freed) and remove the file. Absent or not mounted is fine. Blocking
/// and cheap, so usable from `Drop`.
pub fn remove_netns(path: &Path) -> io::Result<()> {
    match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
        // EINVAL: not a mount point (already unmounted); ENOENT: gone.
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(e) => return Err(e.into()),
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
