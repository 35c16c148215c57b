//! `rootstock-monitor`: one per container, the container's parent for its whole life.
//!
//! It detaches from the daemon (fork + `setsid`, so a SIGKILL of the daemon or its process
//! group leaves it running), makes itself child subreaper *before* running
//! `<runtime> create` (so `runc init`, and every orphan of the container, is reparented to
//! it rather than to PID 1), prepares the container's log and sockets while the daemon
//! still mounts the rootfs, runs `create` when the daemon says so on our stdout (a socket),
//! reports "created" or the runtime's error there, then turns the container's
//! stdout/stderr pipes into the CRI log file (and copies them to attached clients,
//! `rootstock_runtime::attach`), reopens that file on SIGUSR1, and when the container's
//! init exits records exit code, time and OOM kill in the run directory and exits.
//!
//! The same binary serves the pod helpers (`pin-namespaces`, `pod-init` and the confined
//! `pause` it re-executes as; see `pod_helpers`).
//!
//! Single-threaded, std + libc/nix only, no async runtime, linked statically (build.rs):
//! one runs per container, so its resident set is the per-pod cost (#18: ≤ 512 KiB RSS).

// The shared files' unit tests run in rootstock-runtime (they need its error type and
// test fixtures); the monitor's test build (`clippy --all-targets`) is left empty.
#![cfg(not(test))]

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::signalfd::{SfdFlags, SigSet, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};

// The files shared with the daemon (rootstock-runtime's sources: one implementation of the
// protocol, the CRI log, attach, stdin, confinement and cgroup joining). They name each
// other `crate::…`, so they sit at this crate's root too. What only the daemon calls is
// compiled out, hence `dead_code` allowed.
#[allow(dead_code)]
#[path = "../../runtime/src/attach.rs"]
mod attach;
#[allow(dead_code)]
#[path = "../../runtime/src/cgroup_join.rs"]
mod cgroup_join;
#[allow(dead_code)]
#[path = "../../runtime/src/cgroup_layout.rs"]
mod cgroup_layout;
#[path = "../../runtime/src/clock.rs"]
mod clock;
#[allow(dead_code)]
#[path = "../../runtime/src/confine.rs"]
mod confine;
#[allow(dead_code)]
#[path = "../../runtime/src/crilog.rs"]
mod crilog;
#[allow(dead_code)]
#[path = "../../runtime/src/flatjson.rs"]
mod flatjson;
#[allow(dead_code)]
#[path = "../../runtime/src/monitor_proto.rs"]
mod monitor_proto;
#[allow(dead_code)]
#[path = "../../runtime/src/pod_helpers.rs"]
mod pod_helpers;
#[path = "../../runtime/src/resident.rs"]
mod resident;
#[allow(dead_code)]
#[path = "../../runtime/src/stdin.rs"]
mod stdin;
#[allow(dead_code)]
#[path = "../../runtime/src/sysctl.rs"]
mod sysctl;

/// What `crate::error` is to the shared files in the daemon, reduced to the one variant
/// they use here (a refused cgroup path or sysctl), which the monitor only prints.
mod error {
    #[derive(Debug)]
    pub enum Error {
        InvalidArgument(String),
    }

    impl std::fmt::Display for Error {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self {
                Error::InvalidArgument(m) => write!(f, "invalid argument: {m}"),
            }
        }
    }

    pub type Result<T> = std::result::Result<T, Error>;
}

use attach::{AttachFanout, FRAME_STDERR, FRAME_STDOUT};
use cgroup_join::MONITORS_CGROUP;
use cgroup_layout::CgroupLayout;
use crilog::{CriLogFile, Stream};
use monitor_proto::{
    ATTACH_SOCKET_FILE, CONSOLE_SOCKET_FILE, CREATE_NOW, EXIT_FILE, ExitRecord, INIT_PID_FILE,
    MonitorArgs, RUNTIME_FROM_STDIN, RUNTIME_LOG_FILE, STDIN_SOCKET_FILE,
};
use stdin::StdinRelay;

/// How long output is still drained after init exited. Processes that inherited the pipes
/// die with init (private PID namespace) or are killed by us (`--kill-all`); this bounds the
/// wait for anything else that kept a copy.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// Most bytes taken from the container's stdout or stderr per read.
const READ_CHUNK: usize = 32 * 1024;

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if pod_helpers::is_pause(&argv) {
        return pod_helpers::pause_main();
    }
    let rest: Vec<String> = argv
        .iter()
        .skip(2)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    match argv.get(1).and_then(|a| a.to_str()) {
        Some("pin-namespaces") => return pod_helpers::pin_namespaces_main(&rest),
        Some("pod-init") => return pod_helpers::pod_init_main(&rest),
        _ => {}
    }
    let args = match MonitorArgs::parse(std::env::args_os().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            report(&format!("error monitor: {e}"));
            return ExitCode::from(2);
        }
    };
    // Out of the daemon's cgroup before anything else: a restart that kills the daemon's
    // whole cgroup must leave the monitor, and so the container's log and exit record.
    if let Err(e) = CgroupLayout::detect().enter(MONITORS_CGROUP, 0) {
        eprintln!("rootstock-monitor {}: {e}", args.id);
    }
    // SAFETY: no thread has been started yet, so the child is a complete copy of a
    // single-threaded process and may run arbitrary code.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Parent { .. }) => return ExitCode::SUCCESS,
        Ok(ForkResult::Child) => {}
        Err(e) => {
            report(&format!("error monitor: fork: {e}"));
            return ExitCode::FAILURE;
        }
    }
    // Own session: the daemon's process group and controlling terminal are no longer ours.
    if let Err(e) = nix::unistd::setsid() {
        report(&format!("error monitor: setsid: {e}"));
        return ExitCode::FAILURE;
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rootstock-monitor {}: {e}", args.id);
            ExitCode::FAILURE
        }
    }
}

/// Writes the one-line report to the daemon (our stdout is its socket).
fn report(line: &str) {
    let mut out = io::stdout().lock();
    let _ = out.write_all(line.replace('\n', " ").as_bytes());
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

/// Points stdout at /dev/null so the daemon's socket sees EOF: the report is complete.
fn close_report_channel() -> Result<(), String> {
    let null = File::options()
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("open /dev/null: {e}"))?;
    nix::unistd::dup2_stdout(null.as_fd()).map_err(|e| format!("dup2 stdout: {e}"))
}

fn run(args: &MonitorArgs) -> Result<(), String> {
    nix::sys::prctl::set_child_subreaper(true).map_err(|e| {
        let m = format!("set child subreaper: {e}");
        report(&format!("error monitor: {m}"));
        m
    })?;
    let (mut container, sfd, mut log) = match create(args) {
        Ok(v) => v,
        Err(e) => {
            report(&format!("error {e}"));
            return Err(e);
        }
    };
    report(&format!("ok {} {}", std::process::id(), container.init_pid));
    close_report_channel()?;

    let layout = CgroupLayout::detect();
    let mut drain_deadline: Option<Instant> = None;
    let mut startup_released = false;
    loop {
        if container.exit.is_some() && container.out.is_none() && container.err.is_none() {
            break;
        }
        let timeout = match drain_deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                PollTimeout::from(u16::try_from(left.as_millis()).unwrap_or(u16::MAX))
            }
            None => PollTimeout::NONE,
        };
        let (sig_ready, out_ready, err_ready, stdin_ready, attach_ready) = {
            let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
            let attach_slots = container.attach.register(&mut fds);
            let stdin_slots = container
                .stdin
                .as_ref()
                .map(|s| s.register(&mut fds))
                .unwrap_or_default();
            let ready_mask = PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR;
            let out_idx = container.out.as_ref().map(|p| {
                fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
                fds.len() - 1
            });
            let err_idx = container.err.as_ref().map(|p| {
                fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
                fds.len() - 1
            });
            // Right before the first wait, once everything the loop sets up is done.
            if !startup_released {
                resident::release_startup_text();
                startup_released = true;
            }
            match poll(&mut fds, timeout) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(format!("poll: {e}")),
            }
            let ready = |i: Option<usize>| {
                i.and_then(|i| fds[i].revents())
                    .is_some_and(|r| r.intersects(ready_mask))
            };
            (
                ready(Some(0)),
                ready(out_idx),
                ready(err_idx),
                stdin_slots.ready(&fds),
                attach_slots.ready(&fds),
            )
        };
        // Attach before stdin: a client connects here first and sends input only once
        // taken in, so the output of its input always reaches it; its resize likewise
        // precedes its input.
        let terminal = if args.tty {
            container.out.as_ref()
        } else {
            None
        };
        container.attach.service(&attach_ready, terminal);
        if let Some(relay) = container.stdin.as_mut() {
            relay.service(stdin_ready);
        }
        if out_ready {
            let out = (Stream::Stdout, FRAME_STDOUT);
            pump(&mut container.out, out, &mut log, &mut container.attach);
        }
        if err_ready {
            let err = (Stream::Stderr, FRAME_STDERR);
            pump(&mut container.err, err, &mut log, &mut container.attach);
        }
        if sig_ready {
            while let Ok(Some(info)) = sfd.read_signal() {
                match Signal::try_from(info.ssi_signo as i32) {
                    Ok(Signal::SIGCHLD) => container.reap(),
                    Ok(Signal::SIGUSR1) => {
                        if let Err(e) = log.reopen() {
                            eprintln!("reopen {}: {e}", args.log_path.display());
                        }
                    }
                    // SIGTERM/SIGINT/SIGHUP are blocked and ignored: the monitor must outlive
                    // its container, and stopping the container is the OCI runtime's job.
                    _ => {}
                }
            }
            if container.exit.is_some() && drain_deadline.is_none() {
                if args.kill_all {
                    kill_cgroup(&layout, &args.cgroup, &mut container);
                }
                drain_deadline = Some(Instant::now() + DRAIN_AFTER_EXIT);
            }
        }
    }
    let Some((exit_code, signal, exited_at)) = container.exit else {
        return Err("init exit status lost".to_owned());
    };
    // Read before anyone runs `<runtime> delete`, which removes the cgroup: the daemon only
    // deletes after it has seen the exit file written below.
    let oom_killed = layout
        .oom_kill_count(&args.cgroup)
        .map(|n| n > 0)
        .unwrap_or(false);
    let record = ExitRecord {
        version: 1,
        exit_code,
        signal,
        exited_at_unix_nanos: exited_at,
        oom_killed,
    };
    let written = record
        .write(&args.run_dir)
        .map_err(|e| format!("write {EXIT_FILE}: {e}"));
    // Attached clients get the output still queued for them, then EOF: the container is gone.
    container.attach.finish(Duration::from_secs(1));
    written
}

struct Container {
    init_pid: i32,
    /// The container's stdout pipe, or with a terminal the pty master.
    out: Option<File>,
    err: Option<File>,
    /// (exit code, signal, time) once init has been reaped.
    exit: Option<(i32, Option<i32>, i64)>,
    /// The container's stdin, when it asked for one.
    stdin: Option<StdinRelay>,
    /// Clients attached to its output.
    attach: AttachFanout,
}

impl Container {
    /// Reaps every exited child (we are subreaper: orphans of the container land here too).
    fn reap(&mut self) {
        loop {
            match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid.as_raw() == self.init_pid => {
                    self.exit = Some((code, None, clock::now_unix_nanos()));
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid.as_raw() == self.init_pid => {
                    let n = sig as i32;
                    self.exit = Some((128 + n, Some(n), clock::now_unix_nanos()));
                }
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => {
                    eprintln!("waitpid: {e}");
                    return;
                }
            }
        }
    }
}

fn pump(
    pipe: &mut Option<File>,
    (stream, frame): (Stream, u8),
    log: &mut CriLogFile,
    attach: &mut AttachFanout,
) {
    let Some(p) = pipe.as_mut() else { return };
    // Not zero-filled: the kernel writes what it reads, so a quiet container's chunk touches
    // one stack page, not 32 KiB that would then stay resident.
    let mut buf = std::mem::MaybeUninit::<[u8; READ_CHUNK]>::uninit();
    // SAFETY: read(2) writes at most READ_CHUNK bytes into `buf`, which outlives the call.
    let r = unsafe { libc::read(p.as_raw_fd(), buf.as_mut_ptr().cast(), READ_CHUNK) };
    let read = usize::try_from(r).map_err(|_| io::Error::last_os_error());
    match read {
        Ok(0) => *pipe = None,
        Ok(n) => {
            // SAFETY: the kernel initialized the first `n` bytes (n <= READ_CHUNK).
            let chunk = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n) };
            let ts = crilog::format_timestamp(SystemTime::now());
            let mut records = Vec::with_capacity(n + 64);
            crilog::encode_chunk(&mut records, &ts, stream, chunk);
            if let Err(e) = log.write_records(&records) {
                eprintln!("write container log: {e}");
            }
            attach.broadcast(frame, chunk);
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
            ) => {}
        Err(e) => {
            eprintln!("read container {stream:?}: {e}");
            *pipe = None;
        }
    }
}

/// The runtime `create` runs: `--runtime` itself, or for [`RUNTIME_FROM_STDIN`] the daemon's
/// sealed copy of it, passed as our stdin (see the daemon's `sealed_exe.rs`). The copy moves
/// to a close-on-exec fd, so the runtime's children do not inherit it (an ELF binary still
/// runs from `/proc/self/fd/N`), and stdin goes back to /dev/null. The caller drops the fd
/// once `create` is spawned: a copy the daemon has since replaced (an upgraded runtime) must
/// not stay in memory as long as the container runs.
fn runtime_to_run(runtime: &Path) -> Result<(PathBuf, Option<OwnedFd>), String> {
    if runtime != Path::new(RUNTIME_FROM_STDIN) {
        return Ok((runtime.to_owned(), None));
    }
    // fd 0 directly: `io::stdin()` would allocate its 8 KiB buffer for nothing.
    // SAFETY: fcntl(2) on an fd number, no memory passed.
    let raw = unsafe { libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3) };
    if raw < 0 {
        return Err(format!(
            "monitor: the runtime passed as stdin: {}",
            io::Error::last_os_error()
        ));
    }
    // SAFETY: F_DUPFD_CLOEXEC just returned this new fd, which nothing else owns.
    let copy = unsafe { OwnedFd::from_raw_fd(raw) };
    let null = File::open("/dev/null").map_err(|e| format!("open /dev/null: {e}"))?;
    nix::unistd::dup2_stdin(null.as_fd()).map_err(|e| format!("dup2 stdin: {e}"))?;
    Ok((PathBuf::from(format!("/proc/self/fd/{raw}")), Some(copy)))
}

/// Runs `<runtime> create` with the container's stdio on our pipes.
fn create(args: &MonitorArgs) -> Result<(Container, SignalFd, CriLogFile), String> {
    nix::unistd::chdir(&args.run_dir)
        .map_err(|e| format!("monitor: chdir {}: {e}", args.run_dir.display()))?;
    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGUSR1,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        mask.add(s);
    }
    // Blocked before the runtime is spawned, so no SIGCHLD can be lost; std's Command
    // resets the mask in its children.
    mask.thread_block()
        .map_err(|e| format!("monitor: block signals: {e}"))?;
    let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| format!("monitor: signalfd: {e}"))?;
    let log = CriLogFile::open(&args.log_path)
        .map_err(|e| format!("open container log {}: {e}", args.log_path.display()))?;
    let (out_r, out_w) = io::pipe().map_err(|e| format!("monitor: pipe: {e}"))?;
    let (mut err_r, err_w) = io::pipe().map_err(|e| format!("monitor: pipe: {e}"))?;
    let runtime_log = args.run_dir.join(RUNTIME_LOG_FILE);
    let pid_file = args.run_dir.join(INIT_PID_FILE);
    let console = if args.tty {
        // Relative to our cwd (the run directory, inherited by the runtime): a unix socket
        // path is limited to 108 bytes, and `<state_dir>/containers/<64 hex>/…` nears it.
        let path = std::path::PathBuf::from(CONSOLE_SOCKET_FILE);
        let _ = fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .map_err(|e| format!("monitor: bind {}: {e}", path.display()))?;
        Some((listener, path))
    } else {
        None
    };
    let stdin = open_stdin(args)?;
    // Bound before the container starts, so a client can attach from its first output.
    let _ = fs::remove_file(ATTACH_SOCKET_FILE);
    let attach = UnixListener::bind(ATTACH_SOCKET_FILE)
        .and_then(AttachFanout::new)
        .map_err(|e| format!("monitor: bind {ATTACH_SOCKET_FILE}: {e}"))?;
    let (runtime, runtime_copy) = runtime_to_run(&args.runtime)?;
    let mut cmd = Command::new(&runtime);
    cmd.arg("--root")
        .arg(&args.runtime_root)
        .arg("--log")
        .arg(&runtime_log)
        .arg("--log-format")
        .arg("json")
        .arg("create")
        .arg("--bundle")
        .arg(&args.bundle)
        .arg("--pid-file")
        .arg(&pid_file);
    if let Some((_, path)) = &console {
        cmd.arg("--console-socket").arg(path);
    }
    cmd.arg(&args.id).stdout(out_w).stderr(err_w);
    let stdin_writer = match stdin {
        Some((reader, writer, listener)) => {
            cmd.stdin(reader);
            Some((writer, listener))
        }
        None => {
            cmd.stdin(Stdio::null());
            None
        }
    };
    await_create()?;
    let spawned = cmd.spawn();
    drop(runtime_copy);
    // Drop our copies of the write ends (held by the Command): from here on only the
    // container holds them, so EOF means the container's side is closed.
    drop(cmd);
    let mut child = spawned.map_err(|e| format!("run {}: {e}", runtime.display()))?;
    let status = child
        .wait()
        .map_err(|e| format!("wait for {} create: {e}", runtime.display()))?;
    if !status.success() {
        // The runtime's own stderr went to our pipe; we never copied it into the
        // container's log. Its JSON log has the clearest message.
        let mut message = last_runtime_error(&runtime_log);
        if message.is_empty() {
            message = read_available(&mut err_r);
        }
        if message.is_empty() {
            message = format!("{} create: {status}", runtime.display());
        }
        return Err(message);
    }
    let init_pid = fs::read_to_string(&pid_file)
        .map_err(|e| format!("read {}: {e}", pid_file.display()))?
        .trim()
        .parse::<i32>()
        .map_err(|e| format!("parse {}: {e}", pid_file.display()))?;
    let (out, err) = match console {
        // With a terminal the container writes to the pty; the runtime has sent us its
        // master during `create` (the connection was queued in the listen backlog).
        Some((listener, path)) => {
            let master = receive_pty_master(&listener)?;
            let _ = fs::remove_file(path);
            (Some(master), None)
        }
        None => (
            Some(File::from(std::os::fd::OwnedFd::from(out_r))),
            Some(File::from(std::os::fd::OwnedFd::from(err_r))),
        ),
    };
    let stdin = stdin_writer
        .map(|(writer, listener)| stdin_relay(args, writer, listener, out.as_ref()))
        .transpose()?;
    let mut container = Container {
        init_pid,
        out,
        err,
        exit: None,
        stdin,
        attach,
    };
    // `create` exited: its SIGCHLD is pending; nothing else of ours can have exited yet,
    // but reaping now keeps the loop's invariant simple.
    container.reap();
    Ok((container, sfd, log))
}

/// Waits for the daemon's word that the bundle is complete ([`CREATE_NOW`] on our stdout,
/// a socket): everything before this overlapped its rootfs mount and spec. EOF means it
/// gave up (or is gone), and so do we.
fn await_create() -> Result<(), String> {
    let mut word = [0u8; CREATE_NOW.len()];
    let mut got = 0;
    while got < word.len() {
        match nix::unistd::read(io::stdout().as_fd(), &mut word[got..]) {
            Ok(0) => return Err("the daemon gave up before create".into()),
            Ok(n) => got += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(format!("monitor: read the daemon's word: {e}")),
        }
    }
    if word != CREATE_NOW {
        return Err(format!(
            "monitor: unexpected word from the daemon: {:?}",
            String::from_utf8_lossy(&word)
        ));
    }
    Ok(())
}

/// With CRI `stdin`: the pipe the container reads, and the socket clients write to
/// (see `rootstock_runtime::stdin`).
fn open_stdin(
    args: &MonitorArgs,
) -> Result<Option<(io::PipeReader, io::PipeWriter, UnixListener)>, String> {
    if !args.stdin {
        return Ok(None);
    }
    let (reader, writer) = io::pipe().map_err(|e| format!("monitor: stdin pipe: {e}"))?;
    let _ = fs::remove_file(STDIN_SOCKET_FILE);
    let listener = UnixListener::bind(STDIN_SOCKET_FILE)
        .map_err(|e| format!("monitor: bind {STDIN_SOCKET_FILE}: {e}"))?;
    Ok(Some((reader, writer, listener)))
}

/// The relay that keeps the container's stdin open and feeds it: into the pipe, or with a
/// terminal into the pty master (the container's stdin is then the pty).
fn stdin_relay(
    args: &MonitorArgs,
    writer: io::PipeWriter,
    listener: UnixListener,
    pty_master: Option<&File>,
) -> Result<StdinRelay, String> {
    let sink = match pty_master {
        Some(master) if args.tty => master
            .try_clone()
            .map_err(|e| format!("monitor: stdin to the terminal: {e}"))?,
        _ => File::from(std::os::fd::OwnedFd::from(writer)),
    };
    StdinRelay::new(listener, sink, args.stdin_once).map_err(|e| format!("monitor: stdin: {e}"))
}

/// Accepts the runtime's connection on the console socket and takes the pty master it sent
/// (`SCM_RIGHTS`).
fn receive_pty_master(listener: &UnixListener) -> Result<File, String> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::os::fd::{FromRawFd, OwnedFd};
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("console socket: {e}"))?;
    let (stream, _) = listener
        .accept()
        .map_err(|e| format!("console socket: the runtime sent no terminal: {e}"))?;
    let mut buf = [0u8; 4096];
    let mut iov = [io::IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| format!("console socket: recvmsg: {e}"))?;
    let cmsgs = msg
        .cmsgs()
        .map_err(|e| format!("console socket: control message: {e}"))?;
    for c in cmsgs {
        if let ControlMessageOwned::ScmRights(fds) = c
            && let Some(&fd) = fds.first()
        {
            // SAFETY: the kernel just installed `fd` in our table for this message
            // (SCM_RIGHTS); nothing else owns it, so taking ownership is sound.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            for &extra in &fds[1..] {
                // SAFETY: as above; unexpected extra descriptors are closed at once.
                drop(unsafe { OwnedFd::from_raw_fd(extra) });
            }
            return Ok(File::from(owned));
        }
    }
    Err("console socket: no file descriptor received".to_owned())
}

/// The message of the last `"level":"error"` line of the runtime's JSON log.
fn last_runtime_error(path: &Path) -> String {
    let Ok(text) = fs::read_to_string(path) else {
        return String::new();
    };
    text.lines()
        .filter_map(flatjson::parse_object)
        .filter(|o| flatjson::get(o, "level").and_then(flatjson::Value::as_str) == Some("error"))
        .filter_map(|o| {
            flatjson::get(&o, "msg")
                .and_then(flatjson::Value::as_str)
                .map(str::to_owned)
        })
        .next_back()
        .unwrap_or_default()
}

fn read_available(pipe: &mut io::PipeReader) -> String {
    // The runtime has exited; whatever it wrote is in the pipe. Non-blocking, because a
    // leftover `runc init` might still hold the write end.
    if nix::fcntl::fcntl(
        pipe.as_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .is_err()
    {
        return String::new();
    }
    let mut buf = vec![0u8; 8192];
    let n = pipe.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).trim().to_owned()
}

/// SIGKILLs every process left in the container's cgroup (its init is gone, and without a
/// private PID namespace the kernel will not do it), reaping those that were ours.
fn kill_cgroup(layout: &CgroupLayout, cgroup: &str, container: &mut Container) {
    for _ in 0..100 {
        let pids = match layout.procs(cgroup) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("list cgroup {cgroup}: {e}");
                return;
            }
        };
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
        container.reap();
    }
    eprintln!("processes left in cgroup {cgroup} after repeated SIGKILL");
}
