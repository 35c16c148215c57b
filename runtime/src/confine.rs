//! Confinement of the helper processes that live inside a pod's namespaces (pod-init, the
//! namespace-pinning child): the same box a pause container gets from containerd, built by
//! hand because these are not containers.
//!
//! - [`pivot_to_empty_root`]: a private mount namespace whose root is an empty, read-only
//!   tmpfs. `/proc/<pid>/root` of the helper then shows nothing of the host (issue 15: a
//!   container with `CAP_SYS_PTRACE` wrote the host's `/tmp` through `/proc/1/root/`).
//! - [`drop_privileges`]: uid/gid 65535 (containerd's pause user), no supplementary groups,
//!   every capability set empty (bounding and ambient included), `no_new_privs`.
//! - [`install_seccomp`]: a classic-BPF allow-list; anything else fails with `EPERM`
//!   (not a kill: a helper that makes an unexpected call must not take the pod down).
//!
//! Written against `libc` directly: the monitor binary that runs this must stay small, and
//! a seccomp library (libseccomp, seccompiler) would dwarf the dozen instructions needed.

use std::ffi::CStr;
use std::io;

/// The user and group the helpers run as (containerd's pause image uses 65535).
pub const NOBODY: u32 = 65535;

fn check(rc: libc::c_int, what: &str) -> Result<(), String> {
    if rc == -1 {
        Err(format!("{what}: {}", io::Error::last_os_error()))
    } else {
        Ok(())
    }
}

/// Makes the current mount namespace's root an empty read-only tmpfs. The caller must
/// already be in a mount namespace of its own (`unshare(CLONE_NEWNS)`): every mount here
/// is private to it. `/tmp` is only the mount point the tmpfs is staged on before it
/// becomes `/`; the host's `/tmp` is not touched (propagation is made private first).
pub fn pivot_to_empty_root() -> Result<(), String> {
    let root: &CStr = c"/";
    let stage: &CStr = c"/tmp";
    let tmpfs: &CStr = c"tmpfs";
    // SAFETY: every pointer is a valid NUL-terminated string or null, as mount(2) expects.
    unsafe {
        check(
            libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ),
            "make / private",
        )?;
        check(
            libc::mount(
                tmpfs.as_ptr(),
                stage.as_ptr(),
                tmpfs.as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                c"mode=0555,size=4k".as_ptr().cast(),
            ),
            "mount an empty tmpfs",
        )?;
        check(libc::chdir(stage.as_ptr()), "chdir to the new root")?;
        // pivot_root(".", "."): the old root is stacked under the new one and detached
        // below, so no directory for it is needed (runc does the same).
        let dot: &CStr = c".";
        check(
            libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) as libc::c_int,
            "pivot_root",
        )?;
        check(
            libc::umount2(dot.as_ptr(), libc::MNT_DETACH),
            "detach the old root",
        )?;
        check(libc::chdir(root.as_ptr()), "chdir /")?;
        check(
            libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REMOUNT
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV
                    | libc::MS_NOEXEC,
                std::ptr::null(),
            ),
            "remount the new root read-only",
        )?;
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Becomes uid/gid [`NOBODY`] with no supplementary groups, empty capability sets
/// (bounding, ambient, inheritable, permitted, effective) and `no_new_privs`. Needs
/// `CAP_SETPCAP`, `CAP_SETUID` and `CAP_SETGID` on entry (the daemon's children have them).
pub fn drop_privileges() -> Result<(), String> {
    // SAFETY: plain syscalls on the calling (single-threaded) process with valid arguments.
    unsafe {
        // The bounding set first: dropping from it needs CAP_SETPCAP, gone after setuid.
        // Capabilities above the kernel's last one fail with EINVAL: harmless.
        for cap in 0..64 {
            libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
        }
        check(
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            ),
            "clear ambient capabilities",
        )?;
        check(libc::setgroups(0, std::ptr::null()), "setgroups")?;
        check(libc::setresgid(NOBODY, NOBODY, NOBODY), "setresgid")?;
        // Leaving uid 0 for a non-zero uid everywhere clears permitted and effective.
        check(libc::setresuid(NOBODY, NOBODY, NOBODY), "setresuid")?;
        let mut header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let data = [CapData::default(); 2];
        check(
            libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) as libc::c_int,
            "clear capabilities",
        )?;
        check(
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
            "set no_new_privs",
        )?;
    }
    Ok(())
}

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

/// Syscalls a helper sleeping in a loop needs: reading its signalfd or pipe, reaping,
/// the signal-mask and return plumbing, and exiting.
pub fn base_syscalls() -> Vec<libc::c_long> {
    vec![
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_close,
        libc::SYS_wait4,
        libc::SYS_waitid,
        libc::SYS_rt_sigprocmask,
        libc::SYS_rt_sigreturn,
        libc::SYS_rt_sigaction,
        libc::SYS_restart_syscall,
        libc::SYS_sigaltstack,
        libc::SYS_munmap,
        libc::SYS_futex,
        libc::SYS_getpid,
        libc::SYS_exit,
        libc::SYS_exit_group,
    ]
}

/// Installs a seccomp filter that allows `allowed` and fails everything else with `EPERM`
/// (and every call of a foreign architecture, e.g. x32 or i386 entry points). Sets
/// `no_new_privs` itself, as the kernel requires of an unprivileged filter.
pub fn install_seccomp(allowed: &[libc::c_long]) -> Result<(), String> {
    const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let stmt = |code: u16, k: u32| libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let deny = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
    // struct seccomp_data: nr at offset 0, arch at offset 4.
    let mut prog = vec![
        stmt(LD_W_ABS, 4),
        libc::sock_filter {
            code: JEQ_K,
            jt: 1,
            jf: 0,
            k: AUDIT_ARCH,
        },
        stmt(RET_K, deny),
        stmt(LD_W_ABS, 0),
    ];
    for &nr in allowed {
        // Equal: fall through to the allow; otherwise skip it.
        prog.push(libc::sock_filter {
            code: JEQ_K,
            jt: 0,
            jf: 1,
            k: nr as u32,
        });
        prog.push(stmt(RET_K, libc::SECCOMP_RET_ALLOW));
    }
    prog.push(stmt(RET_K, deny));
    let fprog = libc::sock_fprog {
        len: u16::try_from(prog.len()).map_err(|_| "seccomp filter too long".to_owned())?,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: `fprog` points at `prog`, alive for the call; the kernel copies the filter.
    unsafe {
        check(
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
            "set no_new_privs",
        )?;
        check(
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &fprog as *const libc::sock_fprog,
            ),
            "install the seccomp filter",
        )?;
    }
    Ok(())
}

/// Closes every descriptor except those in `keep` (the helper must hold nothing of the
/// host's: a container that can ptrace it would reach them through `/proc/<pid>/fd`).
/// `close_range(2)` over the gaps: no `/proc` is needed (it is gone after the pivot).
pub fn close_fds_except(keep: &[libc::c_int]) {
    let mut keep: Vec<libc::c_uint> = keep.iter().map(|&k| k as libc::c_uint).collect();
    keep.sort_unstable();
    let mut first: libc::c_uint = 0;
    for k in keep.into_iter().chain([libc::c_uint::MAX]) {
        if k > first {
            // SAFETY: closes descriptor numbers only; unopened ones are skipped by the kernel.
            unsafe {
                libc::syscall(libc::SYS_close_range, first, k - 1, 0);
            }
        }
        first = k.saturating_add(1);
    }
}
