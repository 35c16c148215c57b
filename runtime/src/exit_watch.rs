//! Notices container exits as they happen, so that status and list calls can serve memory.
//!
//! Every monitor exits right after it wrote the container's exit file (or dies without one):
//! its process ending *is* the exit notification. One thread polls a pidfd per live
//! monitor (`pidfd_open(2)` works for processes that are not our children, which the
//! monitors are not) and, when one becomes readable, refreshes that container's record:
//! the exit is persisted here, off every request path. Operations that must know the state
//! as of now (stop's wait, start's guard) still refresh themselves; both paths serialize on
//! the entry's write lock, and the second finds the record final. A refresh that fails (the
//! record could not be written) is retried every [`RETRY_EVERY`] until it succeeds.
//!
//! Pod init processes (pods sharing one PID namespace) are followed the same way: their
//! death makes the pod NotReady, and PodSandboxStatus reads that from memory.

use std::io::{self, PipeReader, PipeWriter, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::entry::Entry;
use crate::monitor::ProcessIdentity;

/// How often a failed refresh is tried again.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// What the thread follows.
enum Watched {
    /// A container: its monitor's end is the container's exit, recorded in the entry.
    Container(Arc<Entry>),
    /// Any other process (a pod init): `on_exit` runs once when it is gone.
    Process(ProcessIdentity, Box<dyn FnOnce() + Send>),
}

/// The watcher thread and the way to hand it containers.
#[derive(Debug)]
pub(crate) struct ExitWatcher {
    tx: Option<Sender<Watched>>,
    /// One byte wakes the thread to read `tx`'s queue (or to stop, once `tx` is gone).
    wake: PipeWriter,
    thread: Option<JoinHandle<()>>,
}

impl ExitWatcher {
    /// Starts the thread.
    pub(crate) fn start() -> io::Result<Self> {
        let (wake_rx, wake) = io::pipe()?;
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("exit-watch".to_owned())
            .spawn(move || run(wake_rx, rx))?;
        Ok(Self {
            tx: Some(tx),
            wake,
            thread: Some(thread),
        })
    }

    /// Watches `entry`'s monitor until it exits, then refreshes the entry. An entry whose
    /// record is already final is ignored.
    pub(crate) fn watch(&self, entry: Arc<Entry>) {
        self.send(Watched::Container(entry));
    }

    /// Runs `on_exit` (on the watcher thread) once `process` is gone: at once if it is
    /// already.
    pub(crate) fn watch_process(
        &self,
        process: ProcessIdentity,
        on_exit: impl FnOnce() + Send + 'static,
    ) {
        self.send(Watched::Process(process, Box::new(on_exit)));
    }

    fn send(&self, what: Watched) {
        if let Some(tx) = &self.tx
            && tx.send(what).is_ok()
        {
            self.wake();
        }
    }

    fn wake(&self) {
        // A full pipe already holds a wake-up: nothing lost.
        if let Err(e) = (&self.wake).write(&[1])
            && e.kind() != io::ErrorKind::WouldBlock
        {
            tracing::warn!("waking the exit watcher: {e}");
        }
    }
}

impl Drop for ExitWatcher {
    fn drop(&mut self) {
        // Closing the channel is the stop request; the wake-up makes the thread see it.
        self.tx = None;
        self.wake();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::warn!("the exit watcher panicked");
        }
    }
}

fn run(mut wake: PipeReader, rx: Receiver<Watched>) {
    let mut watched: Vec<(OwnedFd, Watched)> = Vec::new();
    // Exited, but the exit could not be recorded yet.
    let mut failed: Vec<Arc<Entry>> = Vec::new();
    loop {
        let (woken, exited) = {
            let mut fds = Vec::with_capacity(watched.len() + 1);
            fds.push(PollFd::new(wake.as_fd(), PollFlags::POLLIN));
            for (fd, _) in &watched {
                fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
            }
            let timeout = if failed.is_empty() {
                PollTimeout::NONE
            } else {
                PollTimeout::try_from(RETRY_EVERY).unwrap_or(PollTimeout::MAX)
            };
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    // Never expected; without the watcher, exits are still found by the
                    // operations that refresh, so log and keep trying rather than spin.
                    tracing::error!("exit watcher: poll: {e}");
                    std::thread::sleep(std::time::Duration::from_secs(1));
                    continue;
                }
            }
            let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
            let exited: Vec<usize> = (1..fds.len()).filter(|&i| ready(&fds[i])).collect();
            (ready(&fds[0]), exited)
        };
        failed.retain(|entry| !refresh(entry));
        // Highest index first, so that the lower ones stay valid while removing.
        for i in exited.into_iter().rev() {
            let (_, what) = watched.swap_remove(i - 1);
            gone(what, &mut failed);
        }
        if woken {
            let mut buf = [0u8; 64];
            // Readable per poll: this read does not block.
            let _ = wake.read(&mut buf);
            loop {
                match rx.try_recv() {
                    Ok(what) => add(&mut watched, &mut failed, what),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                }
            }
        }
    }
}

/// Opens a pidfd on the process (a container's monitor, a pod init), or handles its end at
/// once when it is already gone.
fn add(watched: &mut Vec<(OwnedFd, Watched)>, failed: &mut Vec<Arc<Entry>>, what: Watched) {
    let process = match &what {
        Watched::Container(entry) => {
            let rec = entry.snapshot();
            match rec.monitor {
                Some(monitor) if !rec.state.is_final() => monitor,
                _ => return,
            }
        }
        Watched::Process(process, _) => *process,
    };
    let pidfd = rustix::process::Pid::from_raw(process.pid)
        .ok_or(rustix::io::Errno::INVAL)
        .and_then(|pid| rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()));
    match pidfd {
        // Checked after opening: if the process is alive now, the pidfd is its own (its pid
        // cannot have been reused while it lived), not a later holder of the pid.
        Ok(fd) if process.is_alive() => watched.push((fd, what)),
        _ => gone(what, failed),
    }
}

/// The followed process has ended.
fn gone(what: Watched, failed: &mut Vec<Arc<Entry>>) {
    match what {
        Watched::Container(entry) => {
            if !refresh(&entry) {
                failed.push(entry);
            }
        }
        Watched::Process(_, on_exit) => on_exit(),
    }
}

/// Records the exit; false when that failed (logged) and must be tried again.
fn refresh(entry: &Entry) -> bool {
    match entry.refresh() {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(container = %entry.snapshot().id, "recording the exit (will retry): {e}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::{ExitRecord, ProcessIdentity};
    use crate::state::ContainerState;
    use std::process::Command;
    use std::time::{Duration, Instant};

    /// A "monitor" that writes an exit file and exits, as rootstock-monitor does.
    #[test]
    fn an_exiting_monitor_is_recorded_without_anyone_asking() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("sleep").arg("0.3").spawn().unwrap();
        let pid = child.id() as i32;
        let monitor = ProcessIdentity {
            pid,
            start_time: crate::util::process_start_time(pid).unwrap(),
        };
        let rec = crate::entry::tests::record("w1", Some(monitor));
        let entry = Arc::new(Entry::new(
            dir.path().to_owned(),
            rec,
            serde_json::Value::Null,
        ));
        let watcher = ExitWatcher::start().unwrap();
        watcher.watch(entry.clone());
        ExitRecord {
            version: 1,
            exit_code: 4,
            signal: None,
            exited_at_unix_nanos: 9,
            oom_killed: false,
        }
        .write(dir.path())
        .unwrap();
        // Reaped so that it does not linger as a zombie (a zombie's pidfd is readable too).
        child.wait().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !entry.snapshot().state.is_final() {
            assert!(Instant::now() < deadline, "exit not recorded");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(matches!(entry.snapshot().state, ContainerState::Exited(e) if e.exit_code == 4));
        // Stops and joins the thread.
        drop(watcher);
    }

    /// A pod init's end runs its callback; one already gone runs it at once.
    #[test]
    fn a_process_end_runs_its_callback() {
        let watcher = ExitWatcher::start().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let mut child = Command::new("sleep").arg("0.2").spawn().unwrap();
        let pid = child.id() as i32;
        let identity = ProcessIdentity {
            pid,
            start_time: crate::util::process_start_time(pid).unwrap(),
        };
        let done = tx.clone();
        watcher.watch_process(identity, move || done.send("ended").unwrap());
        child.wait().unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok("ended"));
        // Reaped and gone: the callback runs on registration.
        watcher.watch_process(identity, move || tx.send("already gone").unwrap());
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok("already gone"));
    }
}
