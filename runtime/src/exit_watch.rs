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

use std::io::{self, PipeReader, PipeWriter, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::entry::Entry;

/// How often a failed refresh is tried again.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// The watcher thread and the way to hand it containers.
#[derive(Debug)]
pub(crate) struct ExitWatcher {
    tx: Option<Sender<Arc<Entry>>>,
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
        if let Some(tx) = &self.tx
            && tx.send(entry).is_ok()
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

fn run(mut wake: PipeReader, rx: Receiver<Arc<Entry>>) {
    let mut watched: Vec<(OwnedFd, Arc<Entry>)> = Vec::new();
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
            let (_, entry) = watched.swap_remove(i - 1);
            if !refresh(&entry) {
                failed.push(entry);
            }
        }
        if woken {
            let mut buf = [0u8; 64];
            // Readable per poll: this read does not block.
            let _ = wake.read(&mut buf);
            loop {
                match rx.try_recv() {
                    Ok(entry) => add(&mut watched, &mut failed, entry),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                }
            }
        }
    }
}

/// Opens a pidfd on `entry`'s monitor, or refreshes at once when it is already gone.
fn add(watched: &mut Vec<(OwnedFd, Arc<Entry>)>, failed: &mut Vec<Arc<Entry>>, entry: Arc<Entry>) {
    let rec = entry.snapshot();
    if rec.state.is_final() {
        return;
    }
    let Some(monitor) = rec.monitor else {
        return;
    };
    let pidfd = rustix::process::Pid::from_raw(monitor.pid)
        .ok_or(rustix::io::Errno::INVAL)
        .and_then(|pid| rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()));
    match pidfd {
        // Checked after opening: if the monitor is alive now, the pidfd is the monitor's
        // (its pid cannot have been reused while it lived), not a later holder of the pid.
        Ok(fd) if monitor.is_alive() => watched.push((fd, entry)),
        _ => {
            if !refresh(&entry) {
                failed.push(entry);
            }
        }
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
    use crate::id::ContainerId;
    use crate::monitor::{ExitRecord, ProcessIdentity};
    use crate::state::{ContainerRecord, ContainerState, RECORD_VERSION};
    use std::process::Command;
    use std::time::{Duration, Instant};

    /// A "monitor" that writes an exit file and exits, as rootstock-monitor does.
    #[test]
    fn an_exiting_monitor_is_recorded_without_anyone_asking() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("sleep").arg("0.3").spawn().unwrap();
        let pid = child.id() as i32;
        let rec = ContainerRecord {
            version: RECORD_VERSION,
            id: ContainerId::new("w1").unwrap(),
            handler: "runc".into(),
            state: ContainerState::Running,
            created_at_unix_nanos: 1,
            started_at_unix_nanos: Some(2),
            monitor: Some(ProcessIdentity {
                pid,
                start_time: crate::util::process_start_time(pid).unwrap(),
            }),
            init_pid: pid,
            boot_id: "b".into(),
            cgroup_path: String::new(),
            kill_all_on_exit: false,
            log_path: "/dev/null".into(),
            sandbox_id: None,
            client_data: serde_json::Value::Null,
        };
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
}
