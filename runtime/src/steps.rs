//! Where a pod's start spends its time: the runtime reports how long each of its steps took
//! to an observer its owner sets (the daemon's metrics), so that a profile of pod starts is
//! one scrape away rather than an strace.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A timed step of RunPodSandbox, CreateContainer or StartContainer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// The sandbox's namespaces made and pinned.
    PinNamespaces,
    /// The image tree's lease taken (by the caller, who owns the image store; it overlaps the
    /// next three steps).
    ImageLease,
    /// The container's monitor spawned (it then readies itself beside the next steps).
    MonitorStart,
    /// The overlay mounted over the image's tree.
    RootfsMount,
    /// The OCI spec built and written.
    Spec,
    /// `<runtime> create` under the monitor, from the word to its report.
    RuntimeCreate,
    /// `<runtime> start`.
    RuntimeStart,
}

impl Step {
    /// The step's name as metrics label it.
    pub const fn name(self) -> &'static str {
        match self {
            Step::PinNamespaces => "pin_namespaces",
            Step::ImageLease => "image_lease",
            Step::MonitorStart => "monitor_start",
            Step::RootfsMount => "rootfs_mount",
            Step::Spec => "spec",
            Step::RuntimeCreate => "runtime_create",
            Step::RuntimeStart => "runtime_start",
        }
    }
}

type Observer = Box<dyn Fn(Step, Duration) + Send + Sync>;

/// The observer, set once; steps taken before it is set, and failed ones, go unreported.
#[derive(Default)]
pub(crate) struct Steps(OnceLock<Observer>);

impl std::fmt::Debug for Steps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "Steps(observed)"
        } else {
            "Steps"
        })
    }
}

impl Steps {
    /// Sets the observer; a second one is ignored (false).
    pub(crate) fn observe(&self, f: Observer) -> bool {
        self.0.set(f).is_ok()
    }

    /// Runs `f`, reporting its duration as `step`'s if it succeeded.
    pub(crate) fn time<T, E>(&self, step: Step, f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        let started = Instant::now();
        let out = f();
        if out.is_ok() {
            self.record(step, started.elapsed());
        }
        out
    }

    /// Reports that `step` took `took`.
    pub(crate) fn record(&self, step: Step, took: Duration) {
        if let Some(observe) = self.0.get() {
            observe(step, took);
        }
    }
}
