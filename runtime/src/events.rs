//! Container lifecycle events, for CRI `GetContainerEvents` (kubelet's evented PLEG).
//!
//! Every transition is published where it happens, after it is persisted:
//! ```text
//!   Created   Runtime::create_container, once the entry is visible
//!   Started   Entry::publish, Created → Running (StartContainer)
//!   Stopped   Entry::publish, → Exited: the exit watcher (no RPC in flight), an operation's
//!             own refresh, or recovery finding the exit
//!   Deleted   Runtime::remove_container, once the entry is gone
//! ```
//! Pod sandboxes have the same four (see [`Subject::Sandbox`]): the daemon publishes them
//! around RunPodSandbox, StopPodSandbox and RemovePodSandbox, and the exit watcher when a
//! pod init ends. Recovery publishes nothing: it runs inside `Runtime::open`, before anyone
//! can subscribe; kubelet relists when it connects again.
//! Publishing never blocks the runtime: each subscriber has a bounded queue, filled with
//! `try_send`. A subscriber that falls behind (kubelet stuck, a client that never reads) is
//! dropped when its queue is full, as containerd drops a slow event subscriber: its stream
//! ends with an error naming the overflow, and kubelet then relists and subscribes again.
//! Keeping it would mean either blocking the runtime or silently losing events, and a
//! PLEG that missed a "stopped" never restarts the container.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::id::SandboxId;
use crate::runtime::lock;
use crate::sandbox::SandboxInfo;
use crate::state::{ContainerRecord, ContainerState};
use crate::util;

/// What happened to the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// CreateContainer finished: the record is Created.
    Created,
    /// StartContainer ran the process.
    Started,
    /// The process exited (by itself, killed, or found exited at start-up).
    Stopped,
    /// RemoveContainer finished: the container is gone.
    Deleted,
}

/// One transition of one container or pod sandbox.
#[derive(Debug, Clone)]
pub struct ContainerEvent {
    /// What happened.
    pub kind: EventKind,
    /// When it was published (ns since the epoch): the CRI event's `created_at`.
    pub at_unix_nanos: i64,
    /// What it happened to.
    pub subject: Subject,
}

/// What an event is about.
#[derive(Debug, Clone)]
pub enum Subject {
    /// A container.
    Container {
        /// Its record as of this transition (its last one for Deleted).
        record: Arc<ContainerRecord>,
        /// The OCI spec it was created with (ContainerStatus `user`).
        spec: Arc<serde_json::Value>,
    },
    /// A pod sandbox. containerd sends these as container events whose container id is the
    /// sandbox id (run, stop, remove, and the sandbox's own process ending), and kubelet's
    /// evented PLEG resyncs the pod on them.
    Sandbox {
        /// The sandbox.
        id: SandboxId,
        /// Its record as of the event, when the publisher had it (always for Deleted: it
        /// is gone by the time a subscriber reads); `None`: read the current one.
        info: Option<Box<SandboxInfo>>,
    },
}

/// The events of one subscriber, in publication order.
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::Receiver<Arc<ContainerEvent>>,
    overflowed: Arc<AtomicBool>,
    capacity: usize,
}

/// Why a subscription ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "event subscriber dropped: it fell {capacity} events behind (its queue was full); \
     relist and subscribe again"
)]
pub struct Overflowed {
    /// The queue's size.
    pub capacity: usize,
}

impl Subscription {
    /// The next event; `Ok(None)` once the bus is gone (the runtime is shutting down),
    /// `Err` once this subscriber was dropped for falling behind (after the events queued
    /// before the drop).
    pub async fn next(&mut self) -> Result<Option<Arc<ContainerEvent>>, Overflowed> {
        match self.rx.recv().await {
            Some(event) => Ok(Some(event)),
            None if self.overflowed.load(Ordering::Acquire) => Err(Overflowed {
                capacity: self.capacity,
            }),
            None => Ok(None),
        }
    }
}

struct Subscriber {
    tx: mpsc::Sender<Arc<ContainerEvent>>,
    overflowed: Arc<AtomicBool>,
}

/// The subscribers, and the way to publish to them. Owned by the runtime.
#[derive(Default)]
pub struct EventBus {
    subscribers: Mutex<Vec<Subscriber>>,
    /// Set by [`EventBus::close`]: later subscribers end at once.
    closed: AtomicBool,
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus")
            .field("subscribers", &self.subscriber_count())
            .finish()
    }
}

impl EventBus {
    /// A new subscriber whose queue holds `capacity` events (at least one).
    pub fn subscribe(&self, capacity: usize) -> Subscription {
        let capacity = capacity.max(1);
        let (tx, rx) = mpsc::channel(capacity);
        let overflowed = Arc::new(AtomicBool::new(false));
        let mut subscribers = lock(&self.subscribers);
        // Checked under the lock `close` takes: a subscriber is either ended by it or never
        // added.
        if !self.closed.load(Ordering::Acquire) {
            subscribers.push(Subscriber {
                tx,
                overflowed: overflowed.clone(),
            });
        }
        drop(subscribers);
        Subscription {
            rx,
            overflowed,
            capacity,
        }
    }

    /// Ends every subscription (they read what is queued, then the end) and every later
    /// one: the daemon is shutting down, and a stream that never ends would hold the
    /// graceful shutdown for its whole grace period.
    pub fn close(&self) {
        let mut subscribers = lock(&self.subscribers);
        self.closed.store(true, Ordering::Release);
        subscribers.clear();
    }

    /// How many subscribers are listening.
    pub fn subscriber_count(&self) -> usize {
        lock(&self.subscribers).len()
    }

    /// Sends `kind` for `record` to every subscriber; never blocks. Subscribers whose queue
    /// is full are dropped (see the module doc), as are those that went away.
    pub fn publish(
        &self,
        kind: EventKind,
        record: Arc<ContainerRecord>,
        spec: Arc<serde_json::Value>,
    ) {
        self.send(kind, Subject::Container { record, spec });
    }

    /// Sends `kind` for sandbox `id` (see [`Subject::Sandbox`]); never blocks.
    pub fn publish_sandbox(&self, kind: EventKind, id: SandboxId, info: Option<SandboxInfo>) {
        let info = info.map(Box::new);
        self.send(kind, Subject::Sandbox { id, info });
    }

    fn send(&self, kind: EventKind, subject: Subject) {
        let event = Arc::new(ContainerEvent {
            kind,
            at_unix_nanos: util::now_unix_nanos(),
            subject,
        });
        lock(&self.subscribers).retain(|s| match s.tx.try_send(event.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                s.overflowed.store(true, Ordering::Release);
                tracing::warn!(
                    capacity = s.tx.max_capacity(),
                    "dropping a container event subscriber: its queue is full"
                );
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    }

    /// Publishes what a record change means: Started when the process was started, Stopped
    /// when the record became final. Called after `next` was persisted, under the entry's
    /// write lock, so one container's events keep their order.
    pub(crate) fn transition(
        &self,
        prev: &ContainerRecord,
        next: &Arc<ContainerRecord>,
        spec: &Arc<serde_json::Value>,
    ) {
        let started = (prev.started_at_unix_nanos.is_none()
            && next.started_at_unix_nanos.is_some())
            || (prev.state == ContainerState::Created && next.state == ContainerState::Running);
        let stopped = !prev.state.is_final() && next.state.is_final();
        if started {
            self.publish(EventKind::Started, next.clone(), spec.clone());
            // The exit watcher recorded the exit before StartContainer recorded the start
            // (a process that ends at once): "stopped" went out first, so it is said again,
            // and the last event a subscriber sees matches the state.
            if next.state.is_final() && !stopped {
                self.publish(EventKind::Stopped, next.clone(), spec.clone());
            }
        }
        if stopped {
            self.publish(EventKind::Stopped, next.clone(), spec.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{ExitInfo, ExitReason};

    fn record(state: ContainerState, started: Option<i64>) -> Arc<ContainerRecord> {
        let mut rec = crate::entry::tests::record("e1", None);
        rec.state = state;
        rec.started_at_unix_nanos = started;
        Arc::new(rec)
    }

    fn exited() -> ContainerState {
        ContainerState::Exited(ExitInfo {
            exit_code: 0,
            exited_at_unix_nanos: 3,
            reason: ExitReason::Completed,
        })
    }

    fn kinds(sub: &mut Subscription) -> Vec<EventKind> {
        let mut out = Vec::new();
        while let Ok(e) = sub.rx.try_recv() {
            out.push(e.kind);
        }
        out
    }

    #[test]
    fn transitions_become_events_in_order_for_every_subscriber() {
        let bus = EventBus::default();
        let (mut a, mut b) = (bus.subscribe(16), bus.subscribe(16));
        let spec = Arc::new(serde_json::Value::Null);
        let created = record(ContainerState::Created, None);
        let running = record(ContainerState::Running, Some(2));
        let stopped = record(exited(), Some(2));
        bus.publish(EventKind::Created, created.clone(), spec.clone());
        bus.transition(&created, &running, &spec);
        // Not a transition (client data changed): nothing.
        bus.transition(&running, &running, &spec);
        bus.transition(&running, &stopped, &spec);
        bus.publish(EventKind::Deleted, stopped, spec);
        let want = [
            EventKind::Created,
            EventKind::Started,
            EventKind::Stopped,
            EventKind::Deleted,
        ];
        assert_eq!(kinds(&mut a), want);
        assert_eq!(kinds(&mut b), want);
    }

    #[test]
    fn a_start_recorded_after_the_exit_repeats_stopped() {
        let bus = EventBus::default();
        let mut sub = bus.subscribe(16);
        let spec = Arc::new(serde_json::Value::Null);
        let created = record(ContainerState::Created, None);
        let exited_unstarted = record(exited(), None);
        let exited_started = record(exited(), Some(2));
        bus.transition(&created, &exited_unstarted, &spec);
        bus.transition(&exited_unstarted, &exited_started, &spec);
        assert_eq!(
            kinds(&mut sub),
            [EventKind::Stopped, EventKind::Started, EventKind::Stopped]
        );
    }

    #[test]
    fn close_ends_every_subscription_after_what_is_queued() {
        let bus = EventBus::default();
        let mut before = bus.subscribe(4);
        let spec = Arc::new(serde_json::Value::Null);
        bus.publish(
            EventKind::Created,
            record(ContainerState::Created, None),
            spec,
        );
        bus.close();
        let mut after = bus.subscribe(4);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            assert!(before.next().await.unwrap().is_some());
            assert!(before.next().await.unwrap().is_none());
            assert!(after.next().await.unwrap().is_none());
        });
    }

    #[test]
    fn a_full_subscriber_is_dropped_and_told_why_and_the_others_go_on() {
        let bus = EventBus::default();
        let mut slow = bus.subscribe(2);
        let mut fast = bus.subscribe(16);
        let spec = Arc::new(serde_json::Value::Null);
        let rec = record(ContainerState::Created, None);
        for _ in 0..3 {
            bus.publish(EventKind::Created, rec.clone(), spec.clone());
        }
        assert_eq!(bus.subscriber_count(), 1);
        assert_eq!(kinds(&mut fast).len(), 3);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            // The two queued before the drop, then the reason.
            assert!(slow.next().await.unwrap().is_some());
            assert!(slow.next().await.unwrap().is_some());
            let err = slow.next().await.unwrap_err();
            assert_eq!(err, Overflowed { capacity: 2 });
            assert!(err.to_string().contains("fell 2 events behind"), "{err}");
        });
    }
}
