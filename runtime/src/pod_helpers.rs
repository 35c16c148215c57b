//! The monitor binary's pod modes: `pin-namespaces` (short-lived: creates a pod's network,
//! IPC and UTS namespaces for the daemon to pin) and `pod-init` (PID 1 of a pod's shared
//! PID namespace). Both end up confined as a pause container is ([`crate::confine`]): an
//! empty read-only root in a mount namespace of their own, uid 65535, no capabilities,
//! `no_new_privs`, a seccomp allow-list.
//!
//! pod-init, seen from the daemon:
//! ```text
//! daemon ─spawn─▶ `pod-init --cgroup C`: setsid, join C, unshare(PID|MNT), fork ─▶ exits
//!   ▲                 │ "pid <host pid>"                 │
//!   │                 ▼                                   ▼ execve(self, ["pause"], no env)
//!   └────────── stdout pipe ◀──── "ok" ───── PID 1: pivot to an empty root, drop, seccomp,
//!                                                   then reap orphans until SIGTERM/SIGKILL
//! ```
//! The exec gives PID 1 an argv without host paths (rewriting it in place needs
//! `CAP_SYS_RESOURCE`); confinement happens after the exec because the dynamic loader
//! needs the host's root to start the binary. "ok" is sent only once PID 1 is confined, and
//! the daemon lets no container join before it has read it.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::signalfd::{SigSet, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};

use crate::cgroup_join::clean_cgroup_parent;
use crate::cgroup_layout::CgroupLayout;
use crate::confine;
use crate::sysctl;

/// argv\[0\] (and the whole argv) of the confined pod-init after its exec.
pub const PAUSE_ARGV0: &str = "pause";

/// Writes one report line on stdout (the daemon's pipe) with a single `writev(2)`, which
/// a pipe takes whole; no allocation for a line without newlines, so that it also works
/// under the seccomp filter (which allows no `brk`/`mmap` in pod-init).
fn report(line: &str) {
    let owned;
    let line = if line.contains('\n') {
        owned = line.replace('\n', " ");
        owned.as_str()
    } else {
        line
    };
    let iov = [
        libc::iovec {
            iov_base: line.as_ptr() as *mut libc::c_void,
            iov_len: line.len(),
        },
        libc::iovec {
            iov_base: b"\n".as_ptr() as *mut libc::c_void,
            iov_len: 1,
        },
    ];
    // SAFETY: both iovecs point at live, readable buffers of the given lengths.
    unsafe {
        libc::writev(1, iov.as_ptr(), 2);
    }
}

fn signal_mask() -> SigSet {
    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        mask.add(s);
    }
    mask
}

/// `rootstock-monitor pin-namespaces [--userns] [--net] [--ipc] [--uts] [--hostname H] [--sysctl K=V]…`:
/// (with `--userns`, first a user namespace: see [`crate::userns`]) unshares the namespaces (and a mount namespace for its own confinement), sets the
/// hostname, applies the sysctls from inside them (a `/proc/sys` file acts on the opener's
/// namespaces), confines itself, reports `ok <pid>` and waits for EOF on stdin while the
/// daemon bind-mounts `/proc/<pid>/ns/*`; then it exits and the pod has no process.
pub fn pin_namespaces_main(args: &[String]) -> ExitCode {
    match pin_namespaces(args) {
        Ok(()) => {
            // EOF on stdin: done. Nothing to flush; exit without running destructors.
            // SAFETY: _exit ends the process at once; nothing is left in a bad state.
            unsafe { libc::_exit(0) }
        }
        Err(e) => {
            report(&format!("error {e}"));
            ExitCode::FAILURE
        }
    }
}

fn pin_namespaces(args: &[String]) -> Result<(), String> {
    use nix::sched::{CloneFlags, unshare};
    let mut flags = CloneFlags::CLONE_NEWNS;
    let mut hostname = None;
    let mut sysctls = Vec::new();
    let mut userns = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--userns" => userns = true,
            "--net" => flags |= CloneFlags::CLONE_NEWNET,
            "--ipc" => flags |= CloneFlags::CLONE_NEWIPC,
            "--uts" => flags |= CloneFlags::CLONE_NEWUTS,
            "--hostname" => hostname = Some(it.next().ok_or("--hostname needs a value")?),
            "--sysctl" => sysctls.push(it.next().ok_or("--sysctl needs a value")?),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if userns {
        // The user namespace first, mapped by the daemon before the others are made: they
        // are then owned by it (`crate::userns`). This process keeps its host ids (unmapped
        // inside, so it shows as the overflow id) with every capability in the new namespace:
        // enough for the unshare, the hostname, the sysctls and the confinement below.
        unshare(CloneFlags::CLONE_NEWUSER).map_err(|e| format!("unshare user namespace: {e}"))?;
        report(&format!("userns {}", std::process::id()));
        wait_for_line()?;
    }
    unshare(flags).map_err(|e| format!("unshare: {e}"))?;
    if let Some(h) = hostname {
        nix::unistd::sethostname(h).map_err(|e| format!("sethostname {h:?}: {e}"))?;
    }
    let own = sysctl::OwnNamespaces {
        net: flags.contains(CloneFlags::CLONE_NEWNET),
        ipc: flags.contains(CloneFlags::CLONE_NEWIPC),
        uts: flags.contains(CloneFlags::CLONE_NEWUTS),
    };
    // IPC sysctls last: in a user namespace only its root may write them, and becoming it
    // (the host's root is not mapped inside) is one way.
    sysctls.sort_by_key(|kv| kv.split_once('=').is_some_and(|(k, _)| sysctl::is_ipc(k)));
    let mut ns_root = false;
    for kv in sysctls {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("sysctl {kv:?}: no '='"))?;
        if userns && !ns_root && sysctl::is_ipc(k) {
            become_ns_root()?;
            ns_root = true;
        }
        // The daemon checked already; checked again here, where the write happens.
        sysctl::check(k, v, own).map_err(|e| e.to_string())?;
        fs::write(sysctl::proc_path(k), v).map_err(|e| format!("sysctl {k}={v}: {e}"))?;
    }
    confine::pivot_to_empty_root()?;
    confine::drop_privileges()?;
    confine::close_fds_except(&[0, 1, 2]);
    let ok = format!("ok {}", std::process::id());
    let mut allowed = confine::base_syscalls();
    allowed.extend([libc::SYS_brk, libc::SYS_mmap, libc::SYS_madvise]);
    confine::install_seccomp(&allowed)?;
    report(&ok);
    let mut buf = [0u8; 64];
    loop {
        // SAFETY: reads into a live stack buffer of the given length.
        let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
        if n == 0 || (n < 0 && Errno::last() != Errno::EINTR) {
            return Ok(());
        }
    }
}

/// Blocks until the daemon writes a line on stdin (EOF: it gave up).
fn wait_for_line() -> Result<(), String> {
    let mut byte = [0u8; 1];
    loop {
        // SAFETY: reads into a live one-byte stack buffer.
        let n = unsafe { libc::read(0, byte.as_mut_ptr().cast(), 1) };
        match n {
            1 if byte[0] == b'\n' => return Ok(()),
            1 => {}
            0 => return Err("the daemon closed the pipe before mapping the user namespace".into()),
            _ if Errno::last() == Errno::EINTR => {}
            _ => return Err(format!("read stdin: {}", Errno::last())),
        }
    }
}

/// `rootstock-monitor pod-init [--cgroup <path>]`, the stage the daemon starts: leaves the
/// daemon's session and cgroup, unshares the PID and mount namespaces and forks; the child
/// (PID 1 of the new namespace) re-executes the binary as `pause`, this process reports
/// `pid <host pid of the child>` and exits.
pub fn pod_init_main(args: &[String]) -> ExitCode {
    match pod_init(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(&format!("error {e}"));
            ExitCode::FAILURE
        }
    }
}

fn pod_init(args: &[String]) -> Result<(), String> {
    let mut cgroup = None;
    let mut userns = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--cgroup" => cgroup = Some(it.next().ok_or("--cgroup needs a value")?),
            "--userns" => userns = Some(it.next().ok_or("--userns needs a value")?),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
    if let Some(cg) = cgroup {
        let cg = clean_cgroup_parent(cg).map_err(|e| e.to_string())?;
        CgroupLayout::detect().enter(&cg, 0)?;
    }
    // Joined after the cgroup (the host's cgroupfs is written with host credentials) and
    // before the PID namespace is made, so that the pod's user namespace owns it.
    if let Some(path) = userns {
        join_userns(path)?;
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID | nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(|e| format!("unshare pid and mount namespaces: {e}"))?;
    let exe = std::env::current_exe().map_err(|e| format!("own binary: {e}"))?;
    let exe = CString::new(exe.as_os_str().as_bytes()).map_err(|e| format!("own binary: {e}"))?;
    let argv0 = CString::new(PAUSE_ARGV0).map_err(|e| e.to_string())?;
    // Blocked across the exec (the mask is inherited): PID 1 handles them via signalfd.
    signal_mask()
        .thread_block()
        .map_err(|e| format!("block signals: {e}"))?;
    // SAFETY: single-threaded process; the child only calls execve or exits.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Parent { child }) => {
            report(&format!("pid {child}"));
            Ok(())
        }
        Ok(ForkResult::Child) => {
            let env: [CString; 0] = [];
            let e = nix::unistd::execve(&exe, &[argv0], &env);
            report(&format!("error exec pause: {e:?}"));
            // SAFETY: leave the forked child at once.
            unsafe { libc::_exit(1) }
        }
        Err(e) => Err(format!("fork: {e}")),
    }
}

/// Enters the pinned user namespace at `path` as its root (uid and gid 0 inside). Root it
/// must be: exec keeps the capabilities only of a process that is the namespace's root.
fn join_userns(path: &str) -> Result<(), String> {
    let ns = fs::File::open(path).map_err(|e| format!("open user namespace {path}: {e}"))?;
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWUSER)
        .map_err(|e| format!("join user namespace {path}: {e}"))?;
    become_ns_root()
}

/// Becomes uid and gid 0 of the user namespace this process is in (needs its
/// `CAP_SETUID`/`CAP_SETGID`, which a process that made or joined it has).
fn become_ns_root() -> Result<(), String> {
    let root_gid = nix::unistd::Gid::from_raw(0);
    let root_uid = nix::unistd::Uid::from_raw(0);
    nix::unistd::setgroups(&[]).map_err(|e| format!("setgroups in the user namespace: {e}"))?;
    nix::unistd::setresgid(root_gid, root_gid, root_gid)
        .map_err(|e| format!("become gid 0 in the user namespace: {e}"))?;
    nix::unistd::setresuid(root_uid, root_uid, root_uid)
        .map_err(|e| format!("become uid 0 in the user namespace: {e}"))
}

/// Whether this process was started as the confined pod-init (argv is exactly `pause`).
pub fn is_pause(args: &[std::ffi::OsString]) -> bool {
    args.len() == 1 && args[0] == PAUSE_ARGV0
}

/// PID 1 of the pod: confines itself, reports `ok`, then reaps every orphan of the pod
/// until a SIGTERM/SIGINT/SIGHUP (a PID 1 ignores signals it has no handler for; the
/// daemon stops it with SIGKILL from the parent namespace).
pub fn pause_main() -> ExitCode {
    let confined = confine::pivot_to_empty_root().and_then(|()| confine::drop_privileges());
    let sfd = confined.and_then(|()| {
        let mask = signal_mask();
        mask.thread_block()
            .map_err(|e| format!("block signals: {e}"))?;
        SignalFd::new(&mask).map_err(|e| format!("signalfd: {e}"))
    });
    let sfd = match sfd {
        Ok(s) => s,
        Err(e) => {
            report(&format!("error pod init: {e}"));
            return ExitCode::FAILURE;
        }
    };
    use std::os::fd::AsRawFd;
    let keep = sfd.as_raw_fd();
    let mut allowed = confine::base_syscalls();
    allowed.push(libc::SYS_close_range);
    allowed.push(libc::SYS_madvise);
    if let Err(e) = confine::install_seccomp(&allowed) {
        report(&format!("error pod init: {e}"));
        return ExitCode::FAILURE;
    }
    // Every privilege is gone: report, then hold no descriptor of the host's (the
    // daemon's pipe included).
    report("ok");
    confine::close_fds_except(&[keep]);
    crate::resident::release_startup_text();
    loop {
        loop {
            match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(_) | Err(Errno::EINTR) => {}
                Err(_) => break,
            }
        }
        match sfd.read_signal() {
            Ok(Some(info)) if info.ssi_signo != Signal::SIGCHLD as u32 => {
                // SAFETY: exit at once, without destructors that might call outside the filter.
                unsafe { libc::_exit(0) }
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => {
                // SAFETY: as above.
                unsafe { libc::_exit(1) }
            }
        }
    }
}
