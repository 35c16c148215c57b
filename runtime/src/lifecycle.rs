//! The operations on an existing container: start, stop, kill, remove, exec, update, log
//! reopen. Each takes the container's operation lock (see [`crate::entry`]) for as long as
//! it drives the OCI runtime; readers never wait for it.

use std::fs;
use std::time::{Duration, Instant};

use crate::entry::Entry;
use crate::error::{Error, Result};
use crate::events::EventKind;
use crate::id::ContainerId;
use crate::monitor;
use crate::oci::{ExecOutput, ExecRequest, OciRuntime};
use crate::runtime::{ContainerInfo, Runtime, lock};
use crate::signal::Signal;
use crate::spec;
use crate::state::{ContainerRecord, ContainerState};
use crate::steps::Step;
use crate::util;

/// Exit files are polled while waiting for a container to stop: first after 1 ms, the
/// interval doubling up to 20 ms. A killed container is usually gone within a few ms, and a
/// fixed 20 ms interval added 10 ms on average to every stop.
const EXIT_POLL_FIRST: Duration = Duration::from_millis(1);
const EXIT_POLL_MAX: Duration = Duration::from_millis(20);
/// How long to wait for the exit after SIGKILL before reporting failure.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// What an operation is about to do, and so which states allow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// `<runtime> start`: only from Created.
    Start,
    /// `<runtime> exec`: only while Running.
    Exec,
    /// `<runtime> kill`: while init (or `runc init`) is alive.
    Signal,
}

impl Action {
    fn allowed(self, state: &ContainerState) -> bool {
        match self {
            Action::Start => state.can_start(),
            Action::Exec => state.can_exec(),
            Action::Signal => state.can_kill(),
        }
    }

    /// For the error message: "container …: cannot <verb> (state …)".
    fn verb(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Exec => "exec in",
            Action::Signal => "signal",
        }
    }
}

impl Runtime {
    /// The prologue every operation on one live container shares: its entry (NotFound
    /// otherwise), its operation lock, its record as of now (the monitor's exit file read),
    /// and the state guard for `action` (BadState naming the state otherwise). `then` runs
    /// with the lock held, so nothing else drives the runtime on this container meanwhile;
    /// readers are not held up.
    pub(crate) fn running_entry<T>(
        &self,
        id: &ContainerId,
        action: Action,
        then: impl FnOnce(&Entry, &ContainerRecord, &OciRuntime) -> Result<T>,
    ) -> Result<T> {
        let entry = self.entry_or_not_found(id)?;
        let _op = entry.lock_op();
        let rec = entry.refresh()?;
        if !action.allowed(&rec.state) {
            return Err(Error::BadState {
                id: id.to_string(),
                action: action.verb(),
                state: rec.state.to_string(),
            });
        }
        let oci = self.handler(&rec.handler)?;
        then(&entry, &rec, oci)
    }

    /// StartContainer: `<runtime> start`, then Running is persisted.
    pub fn start_container(&self, id: &ContainerId) -> Result<ContainerInfo> {
        let rec = self.running_entry(id, Action::Start, |entry, _, oci| {
            // Taken before `start`: the process runs from inside that call and may have
            // exited (and the monitor recorded the exit time) before it returns.
            let started_at = util::now_unix_nanos();
            self.steps.time(Step::RuntimeStart, || oci.start(id))?;
            rootstock_fsutil::failpoint::hit("container.runc-started");
            entry.update(|cur| {
                let mut next = cur.clone();
                // The exit watcher may have recorded the exit already: keep it.
                if next.state == ContainerState::Created {
                    next.state = ContainerState::Running;
                }
                next.started_at_unix_nanos = Some(started_at);
                Some(next)
            })
        })?;
        rootstock_fsutil::failpoint::hit("container.start-persisted");
        Ok(self.info(&rec))
    }

    /// StopContainer: `signal` (the image's StopSignal or SIGTERM), then SIGKILL once
    /// `timeout` has passed (at once for a zero timeout or a never-started container).
    /// Without a private PID namespace every process of the cgroup is signalled. Stopping
    /// an unknown or already stopped container is OK (CRI: StopContainer is idempotent).
    pub fn stop_container(
        &self,
        id: &ContainerId,
        signal: Signal,
        timeout: Duration,
    ) -> Result<()> {
        let Some(entry) = self.entry(id) else {
            return Ok(());
        };
        // Under the operation lock: a start in progress finishes first, and the state read
        // is the one it left.
        let (oci, kill_all, state, init) = {
            let _op = entry.lock_op();
            let rec = entry.refresh()?;
            (
                self.handler(&rec.handler)?.clone(),
                rec.kill_all_on_exit,
                rec.state,
                rec.monitor.map(|m| (m, rec.init_pid)),
            )
        };
        if !state.can_kill() {
            return Ok(());
        }
        // `runc init` waiting for start only dies of SIGKILL (PID 1 ignores unhandled signals).
        if signal != Signal::KILL && !timeout.is_zero() && state == ContainerState::Running {
            self.signal(&oci, id, signal, kill_all)?;
            if wait_exit(&entry, timeout)? {
                return Ok(());
            }
        }
        // SIGKILL of init ends a container in a PID namespace of its own whole: sent
        // directly, it spares an exec of the OCI runtime (runc's `kill` is a Go program
        // starting up, a fifth of a pod's stop); the runtime still signals every process
        // of a container without one.
        let killed = !kill_all && init.is_some_and(|(monitor, pid)| kill_init(monitor, pid));
        if !killed {
            self.signal(&oci, id, Signal::KILL, kill_all)?;
        }
        rootstock_fsutil::failpoint::hit("container.kill-sent");
        if wait_exit(&entry, KILL_WAIT)? {
            return Ok(());
        }
        Err(Error::Runtime {
            id: id.to_string(),
            runtime: oci.handler().to_owned(),
            action: "kill",
            message: format!("still running {KILL_WAIT:?} after SIGKILL"),
        })
    }

    /// Deletes the OCI runtime's state (and the container's cgroup) of a container that has
    /// exited, ahead of RemoveContainer, which then has no runtime to run: StopPodSandbox
    /// does it while CNI DEL runs. containerd deletes a task as soon as it exits, too. The
    /// record, rootfs and logs stay; a container that has not exited is left alone.
    pub fn release_oci_state(&self, id: &ContainerId) -> Result<()> {
        let Some(entry) = self.entry(id) else {
            return Ok(());
        };
        let _op = entry.lock_op();
        let rec = entry.refresh()?;
        if !rec.state.is_final() {
            return Ok(());
        }
        self.handler(&rec.handler)?.delete(id, true)
    }

    fn signal(&self, oci: &OciRuntime, id: &ContainerId, signal: Signal, all: bool) -> Result<()> {
        match oci.kill(id, signal, all) {
            Ok(()) => Ok(()),
            // It exited between our check and the kill: the wait below sees the exit file.
            Err(e) if matches!(oci.state(id), Ok(Some(ref s)) if s.status == "stopped") => {
                tracing::debug!(container = %id, "kill raced with exit: {e}");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Sends `signal` to the container (`all`: every process of its cgroup).
    pub fn kill_container(&self, id: &ContainerId, signal: Signal, all: bool) -> Result<()> {
        self.running_entry(id, Action::Signal, |_, rec, oci| {
            self.signal(oci, id, signal, all || rec.kill_all_on_exit)
        })
    }

    /// RemoveContainer: stops it if needed (SIGKILL), deletes the OCI runtime's state,
    /// unmounts the rootfs and removes its directories and record. Removing an unknown
    /// container is OK (CRI: RemoveContainer is idempotent).
    pub fn remove_container(&self, id: &ContainerId) -> Result<()> {
        let Some(entry) = self.entry(id) else {
            return Ok(());
        };
        // Without its run directory (removed by another daemon instance's recovery) there
        // is nothing to stop or persist: only forget it, after the idempotent teardown.
        if self.run_dir(id).exists() {
            self.stop_container(id, Signal::KILL, Duration::ZERO)?;
        }
        let _op = entry.lock_op();
        let oci = self.handler(&entry.snapshot().handler)?.clone();
        // From here the exit watcher leaves the record alone: its directory is going.
        entry.set_removed(true);
        if let Err(e) = self.destroy(id, &oci) {
            entry.set_removed(false);
            return Err(e);
        }
        self.layer_usage.forget(self.rootfs(id).upper());
        lock(&self.containers).remove(id);
        entry.publish_event(EventKind::Deleted);
        Ok(())
    }

    /// Deletes everything of a container but its in-memory entry. Idempotent.
    pub(crate) fn destroy(&self, id: &ContainerId, oci: &OciRuntime) -> Result<()> {
        oci.delete(id, true)?;
        rootstock_fsutil::failpoint::hit("container.runc-deleted");
        self.remove_container_files(id)
    }

    /// Unmounts the rootfs and removes the run and writable-layer directories. Idempotent.
    pub(crate) fn remove_container_files(&self, id: &ContainerId) -> Result<()> {
        self.rootfs(id).unmount()?;
        rootstock_fsutil::failpoint::hit("container.rootfs-unmounted");
        self.remove_container_dirs(id)
    }

    /// Removes the run and writable-layer directories (the rootfs must be unmounted).
    /// Idempotent.
    pub(crate) fn remove_container_dirs(&self, id: &ContainerId) -> Result<()> {
        // Staged mounts (a crash during create) are detached first: the recursive removal
        // below must never reach into the host directories they show.
        let staged = self.run_dir(id).join(crate::userns::STAGED_MOUNTS);
        crate::userns::detach_all_in(&staged).map_err(|e| Error::io("detach", &staged, e))?;
        for d in [self.run_dir(id), self.layer_dir(id)] {
            match fs::remove_dir_all(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove", &d, e)),
            }
        }
        Ok(())
    }

    /// ExecSync: runs `req` in the running container; on timeout the exec'd process is
    /// killed and [`Error::ExecTimeout`] returned.
    pub fn exec_sync(
        &self,
        id: &ContainerId,
        req: &ExecRequest,
        timeout: Option<Duration>,
    ) -> Result<ExecOutput> {
        let oci = self.exec_handler(id)?;
        oci.exec(id, req, timeout, &self.run_dir(id))
    }

    /// The OCI runtime to exec with in container `id`, which must be running. The exec
    /// itself runs without the operation lock: it may last as long as the caller wants.
    fn exec_handler(&self, id: &ContainerId) -> Result<OciRuntime> {
        self.running_entry(id, Action::Exec, |_, _, oci| Ok(oci.clone()))
    }

    /// Streaming Exec: starts `req` in the running container with its stdio as pipes
    /// (stdin only when `stdin`); the caller pumps them and waits (see [`crate::exec_stream::ExecChild`]).
    pub fn exec_spawn(
        &self,
        id: &ContainerId,
        req: &ExecRequest,
        stdin: bool,
    ) -> Result<crate::exec_stream::ExecChild> {
        let oci = self.exec_handler(id)?;
        oci.exec_spawn(id, req, stdin, &self.run_dir(id))
    }

    /// Streaming Exec with a TTY of `size` (width, height): the command and its pty master.
    pub fn exec_spawn_tty(
        &self,
        id: &ContainerId,
        req: &ExecRequest,
        size: Option<(u16, u16)>,
    ) -> Result<(crate::exec_stream::ExecChild, std::fs::File)> {
        let oci = self.exec_handler(id)?;
        oci.exec_spawn_tty(id, req, size, &self.run_dir(id))
    }

    /// UpdateContainerResources: the new cgroup limits; on cgroup v1 through
    /// `<runtime> update`, on v2 written by rootstock ([`crate::cgroup::CgroupLayout::apply_v2`]:
    /// the cgroup2 values, and kubelet's `unified` map, are ours to compute). The
    /// `oom_score_adj` of a running process is not changed, as with containerd.
    pub fn update_container_resources(
        &self,
        id: &ContainerId,
        resources: &spec::Resources,
    ) -> Result<()> {
        let entry = self.entry_or_not_found(id)?;
        let _op = entry.lock_op();
        let rec = entry.refresh()?;
        self.check_unified(resources)?;
        // An exited container has no cgroup left to change: nothing to do, as containerd
        // answers (kubelet may resize a pod whose container just ended).
        if !rec.state.can_kill() {
            return Ok(());
        }
        if self.cgroups.is_v2() {
            return self.cgroups.apply_v2(&rec.cgroup_path, resources);
        }
        let oci = self.handler(&rec.handler)?;
        oci.update(id, &spec::linux_resources(resources), &self.run_dir(id))
    }

    /// ReopenContainerLog: the monitor reopens the log path; returns once the new file
    /// exists (kubelet renames the old one first and then expects writes to the new one).
    /// A container that is not running writes no more output: nothing to reopen, OK.
    pub fn reopen_container_log(&self, id: &ContainerId) -> Result<()> {
        let entry = self.entry_or_not_found(id)?;
        let rec = entry.refresh()?;
        if rec.state != ContainerState::Running {
            return Ok(());
        }
        let log_path = &rec.log_path;
        let Some(monitor) = rec.monitor else {
            return Err(Error::BadState {
                id: id.to_string(),
                action: "reopen the log of",
                state: "without monitor".to_owned(),
            });
        };
        monitor::request_log_reopen(&monitor)
            .map_err(|e| Error::io("signal monitor for", log_path, e))?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while !log_path.exists() {
            if Instant::now() >= deadline {
                return Err(Error::io(
                    "reopen",
                    log_path,
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "monitor did not reopen the log",
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }
}

/// Waits until the monitor recorded the exit; true when it did within `timeout`. The
/// operation lock is not held while waiting: a kill or a second stop may go ahead.
///
/// The monitor exits right after it wrote the exit file, so its pidfd wakes the wait at
/// that moment; the exit file is still checked at the doubling interval, which is all
/// there is when no pidfd can be had.
fn wait_exit(entry: &Entry, timeout: Duration) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    let mut monitor = monitor_pidfd(entry);
    let mut interval = EXIT_POLL_FIRST;
    loop {
        if entry.refresh()?.state.is_final() {
            return Ok(true);
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        let nap = interval.min(deadline - now);
        match &monitor {
            // Once it has exited its pidfd stays readable: the file decides from then on.
            Some(fd) => {
                if exited_within(fd, nap) {
                    monitor = None;
                }
            }
            None => std::thread::sleep(nap),
        }
        interval = (interval * 2).min(EXIT_POLL_MAX);
    }
}

/// SIGKILLs the container's init `pid` if it still is that process: a child of its
/// `monitor` (init is reparented to the monitor, a subreaper, once `create` exits; a pid
/// reused after the monitor reaped init has another parent). False when it could not be
/// told or signalled: the caller asks the OCI runtime then.
fn kill_init(monitor: monitor::ProcessIdentity, pid: i32) -> bool {
    let Some(raw) = rustix::process::Pid::from_raw(pid) else {
        return false;
    };
    let Ok(fd) = rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty()) else {
        return false;
    };
    // Checked after opening the pidfd: the process it names is the one read here.
    let child_of_monitor = util::parent_pid(pid).is_ok_and(|ppid| ppid == monitor.pid);
    if !child_of_monitor || !monitor.is_alive() {
        return false;
    }
    rustix::process::pidfd_send_signal(&fd, rustix::process::Signal::KILL).is_ok()
}

/// A pidfd on the container's live monitor, if it has one.
fn monitor_pidfd(entry: &Entry) -> Option<std::os::fd::OwnedFd> {
    let monitor = entry.snapshot().monitor?;
    let pid = rustix::process::Pid::from_raw(monitor.pid)?;
    let fd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()?;
    // Checked after opening: alive now means the pidfd is that very process's.
    monitor.is_alive().then_some(fd)
}

/// Sleeps until `pidfd`'s process has exited (true) or `timeout` has passed.
fn exited_within(pidfd: &std::os::fd::OwnedFd, timeout: Duration) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    let ms = u16::try_from(timeout.as_millis().max(1)).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::from(ms)) {
        Ok(n) => n > 0,
        // Cannot fail on one valid fd but for EINTR: the nap is taken anyway, never a spin.
        Err(_) => {
            std::thread::sleep(timeout);
            false
        }
    }
}
