//! Network namespaces of stopped pods, let go together.
//!
//! The kernel destroys a network namespace in a work item that waits for two RCU barriers
//! (about 15 ms each on the bench VM), and every namespace let go before that item runs
//! shares them. `rcu_barrier` is serialized kernel-wide, and CNI DEL's veth deletion waits
//! for one too: let go at its pod's stop, each namespace's teardown made the next pod's DEL
//! queue behind it (profiled: the bridge plugin's DEL took 34 ms at the median with crun
//! pods started and removed back to back, against 20 ms with runc pods, whose slower start
//! gave the teardown time to end). So the last reference to a stopped pod's namespace, an
//! fd, is held for up to [`WINDOW`] or until [`BATCH`] are held, and then all are closed
//! together: one teardown per batch rather than one per pod. By then the namespace is
//! empty: DEL removed its interface and the pod's processes are gone.

use std::os::fd::OwnedFd;
use std::sync::mpsc::{self, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the first namespace of a batch is held.
const WINDOW: Duration = Duration::from_millis(500);
/// A batch this big is let go at once: a burst of stops tears down as it goes, not all in
/// one pass that then lands on whatever the node does next (measured: a pass of 20 right
/// in the next burst of 20 pod starts slowed it by a quarter).
const BATCH: usize = 4;

/// The thread that holds namespaces and closes them; dropping this closes what it holds and
/// joins it.
#[derive(Debug)]
pub(crate) struct NetnsReaper {
    tx: Option<Sender<OwnedFd>>,
    thread: Option<JoinHandle<()>>,
}

impl NetnsReaper {
    pub(crate) fn start() -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<OwnedFd>();
        let thread = std::thread::Builder::new()
            .name("netns-reaper".to_owned())
            .spawn(move || {
                // Ends once the sender is dropped; a closed channel also ends the window.
                while let Ok(first) = rx.recv() {
                    let deadline = Instant::now() + WINDOW;
                    let mut batch = vec![first];
                    while batch.len() < BATCH
                        && let Ok(ns) =
                            rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
                    {
                        batch.push(ns);
                    }
                    drop(batch);
                }
            })?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Closes `ns` with the others of its batch (at once if the thread is gone: the failed
    /// send drops it).
    pub(crate) fn let_go(&self, ns: OwnedFd) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(ns);
        }
    }
}

impl Drop for NetnsReaper {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::warn!("the network namespace reaper panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::io::{PipeReader, Read};

    use super::*;

    /// When the pipe's write end is closed (its read end sees end-of-file). A pipe rather
    /// than a namespace: an fd number can be reused by the next open, a pipe's end-of-file
    /// cannot be faked.
    fn closed_at(mut r: PipeReader) -> JoinHandle<Instant> {
        std::thread::spawn(move || {
            assert_eq!(r.read(&mut [0u8; 1]).unwrap(), 0);
            Instant::now()
        })
    }

    #[test]
    fn what_is_let_go_is_closed_together_after_the_window_when_a_batch_is_full_or_at_drop() {
        let reaper = NetnsReaper::start().unwrap();
        let ((ra, wa), (rb, wb)) = (std::io::pipe().unwrap(), std::io::pipe().unwrap());
        let (a, b) = (closed_at(ra), closed_at(rb));
        let started = Instant::now();
        reaper.let_go(wa.into());
        std::thread::sleep(WINDOW / 2);
        reaper.let_go(wb.into());
        let (a, b) = (a.join().unwrap(), b.join().unwrap());
        assert!(a - started >= WINDOW, "closed before the window ended");
        assert!(a - started < 4 * WINDOW, "held long after the window");
        assert!(b.max(a) - b.min(a) < WINDOW / 4, "not closed together");

        let started = Instant::now();
        let full: Vec<_> = (0..BATCH)
            .map(|_| {
                let (r, w) = std::io::pipe().unwrap();
                let closed = closed_at(r);
                reaper.let_go(w.into());
                closed
            })
            .collect();
        for closed in full {
            assert!(
                closed.join().unwrap() - started < WINDOW / 2,
                "a full batch was held"
            );
        }

        let (rc, wc) = std::io::pipe().unwrap();
        let c = closed_at(rc);
        reaper.let_go(wc.into());
        let dropped = Instant::now();
        drop(reaper);
        assert!(
            c.join().unwrap() - dropped < WINDOW / 2,
            "held past the drop"
        );
    }
}
