//! Small `/proc` and kernel helpers shared by the library and the monitor binary (the
//! file-system basics, such as `write_atomic`, are in `rootstock_fsutil`).

use std::fs;
use std::io;
use std::path::Path;

pub use crate::clock::now_unix_nanos;
use crate::error::{Error, Result};

/// Writes a record (container or sandbox) as JSON, atomically, under the per-boot state dir
/// (`rootstock_fsutil::write_per_boot`: temp, rename, no fsync; recovery removes a container
/// or sandbox whose record a power loss tore, and the durable CNI cache still names the
/// sandbox's network for its DEL): callers change memory only after this succeeded.
pub(crate) fn write_record<T: serde::Serialize>(path: &Path, rec: &T) -> Result<()> {
    let data = serde_json::to_vec_pretty(rec).map_err(|e| Error::WriteState {
        path: path.to_owned(),
        source: std::io::Error::other(e),
    })?;
    rootstock_fsutil::write_per_boot(path, &data).map_err(|source| Error::WriteState {
        path: path.to_owned(),
        source,
    })
}

/// A process's start time in clock ticks since boot (`/proc/<pid>/stat` field 22). Together
/// with the pid it identifies a process across pid reuse.
pub fn process_start_time(pid: i32) -> io::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_start_time(&stat)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed /proc/<pid>/stat"))
}

/// The parent of `pid` (`/proc/<pid>/stat` field 4).
pub fn parent_pid(pid: i32) -> io::Result<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    stat.rfind(')')
        .and_then(|close| stat[close + 1..].split_whitespace().nth(1))
        .and_then(|ppid| ppid.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed /proc/<pid>/stat"))
}

fn parse_start_time(stat: &str) -> Option<u64> {
    // The command name (field 2) may contain spaces and ')'; it ends at the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    // `rest` starts at field 3 (state), so field 22 is the 20th item.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `pid` is alive and still the process that started at `start_time`. A zombie
/// counts as dead: it has exited, only its parent has not reaped it yet.
pub fn process_matches(pid: i32, start_time: u64) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(close) = stat.rfind(')') else {
        return false;
    };
    let rest = &stat[close + 1..];
    let state = rest.split_whitespace().next();
    if matches!(state, Some("Z" | "X")) {
        return false;
    }
    parse_start_time(&stat) == Some(start_time)
}

/// The kernel's boot id: changes on every boot, so state from a previous boot is recognised
/// even where `/run` survives a reboot (it does on this machine).
///
/// Test builds (the `failpoints` feature) read `$ROOTSTOCK_BOOT_ID_FILE` instead when it is
/// set: the reboot simulation starts the daemon "after a reboot" without one.
pub fn boot_id() -> io::Result<String> {
    let mut path = std::path::PathBuf::from("/proc/sys/kernel/random/boot_id");
    if rootstock_fsutil::failpoint::ENABLED
        && let Some(file) = std::env::var_os("ROOTSTOCK_BOOT_ID_FILE")
    {
        path = file.into();
    }
    Ok(fs::read_to_string(path)?.trim().to_owned())
}

/// Closes a per-pod or per-container directory to everyone but root (0700); with `group`
/// (the pod's root group of a user-namespaced pod), that group may search it too (0710):
/// the OCI runtime resolves the rootfs and mount sources from inside the pod's user
/// namespace. The directories above are 0711, so nothing is listed either way.
pub fn restrict_dir(dir: &std::path::Path, group: Option<u32>) -> crate::error::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = match group {
        Some(gid) => {
            std::os::unix::fs::chown(dir, Some(0), Some(gid))
                .map_err(|e| crate::error::Error::io("chown", dir, e))?;
            0o710
        }
        None => 0o700,
    };
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .map_err(|e| crate::error::Error::io("chmod", dir, e))
}

/// Whether the kernel has `mount_setattr(2)` (5.12+), which recursive read-only mounts
/// (`rro`) need. Probed with an invalid call: `ENOSYS` means absent, any other error
/// (`EBADF`/`EINVAL`) that the call exists.
pub fn mount_setattr_supported() -> bool {
    // SAFETY: an invalid fd and null pointers: the kernel rejects the call without
    // touching memory.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            -1,
            std::ptr::null::<libc::c_char>(),
            0,
            std::ptr::null::<libc::c_void>(),
            0,
        )
    };
    rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_survives_odd_comm() {
        let stat = "42 (a) b) c) S 1 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 987654 1000 1";
        assert_eq!(parse_start_time(stat), Some(987654));
    }

    #[test]
    fn own_process_matches() {
        let pid = std::process::id() as i32;
        let t = process_start_time(pid).unwrap();
        assert!(process_matches(pid, t));
        assert!(!process_matches(pid, t + 1));
        assert_eq!(
            parent_pid(pid).unwrap(),
            nix::unistd::getppid().as_raw(),
            "the parent, as the kill of a container's init checks it"
        );
    }
}
