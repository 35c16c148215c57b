//! [`AsyncUndo`]: the undo steps of an RPC that has not completed, for resources whose
//! release is async (a CNI DEL, an image-tree lease in the store, a runtime call through
//! `spawn_blocking`). The model is CRI-O's `ResourceCleaner`: each acquired resource
//! pushes the step that releases it, the steps run last-first, and a successful call
//! disarms the stack with [`AsyncUndo::commit`]. The runtime crate's `Undo` is the
//! synchronous twin.
//!
//! The error path calls [`AsyncUndo::run`], so the release has happened when the client
//! sees the error. A stack dropped while still armed (an early `?`, a panic) cannot await
//! in `drop`: it hands its steps to a task on the current tokio runtime instead, so a
//! forgotten path delays a release but never leaks the resource.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

type Step = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// Async undo steps, run in reverse unless committed.
#[must_use = "an AsyncUndo dropped at once releases its resources at once"]
pub(super) struct AsyncUndo {
    /// What is being made (`sandbox 3f2a…`), for the log.
    object: String,
    steps: Vec<(&'static str, Step)>,
}

impl AsyncUndo {
    pub fn new(object: impl fmt::Display) -> Self {
        Self {
            object: object.to_string(),
            steps: Vec::new(),
        }
    }

    /// Pushes the step that releases a resource just acquired. `step` is a future that
    /// does nothing until it is run (an `async move` block owning what it needs).
    pub fn push<E: fmt::Display>(
        &mut self,
        what: &'static str,
        step: impl Future<Output = Result<(), E>> + Send + 'static,
    ) {
        self.steps.push((
            what,
            Box::pin(async move { step.await.map_err(|e| e.to_string()) }),
        ));
    }

    /// The call succeeded: its resources are kept.
    pub fn commit(mut self) {
        self.steps.clear();
    }

    /// Runs the steps now, last pushed first; failures are logged (the caller returns the
    /// error that made the call fail, which is what the client must see).
    pub async fn run(mut self) {
        let steps = std::mem::take(&mut self.steps);
        run_steps(&self.object, steps).await;
    }
}

async fn run_steps(object: &str, mut steps: Vec<(&'static str, Step)>) {
    while let Some((what, step)) = steps.pop() {
        if let Err(e) = step.await {
            tracing::warn!(object, "undo after a failed call: {what}: {e}");
        }
    }
}

impl Drop for AsyncUndo {
    fn drop(&mut self) {
        if self.steps.is_empty() {
            return;
        }
        let steps = std::mem::take(&mut self.steps);
        let object = std::mem::take(&mut self.object);
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move { run_steps(&object, steps).await });
            }
            Err(_) => {
                let what: Vec<&str> = steps.iter().map(|(w, _)| *w).collect();
                tracing::error!(
                    object,
                    "undo dropped outside the runtime, not run: {what:?}"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use std::sync::{Arc, Mutex};

    type Log = Arc<Mutex<Vec<&'static str>>>;

    fn step(log: &Log, name: &'static str) -> impl Future<Output = Result<(), String>> + use<> {
        let log = log.clone();
        async move {
            log.lock().unwrap().push(name);
            Ok(())
        }
    }

    #[tokio::test]
    async fn run_goes_in_reverse_and_past_failures() {
        let log = Log::default();
        let mut undo = AsyncUndo::new("sandbox s1");
        undo.push("network", step(&log, "network"));
        undo.push("broken", async { Err::<(), _>("busy") });
        undo.push("lease", step(&log, "lease"));
        undo.run().await;
        assert_eq!(*log.lock().unwrap(), ["lease", "network"]);
    }

    #[tokio::test]
    async fn committed_steps_never_run() {
        let log = Log::default();
        let mut undo = AsyncUndo::new("container c1");
        undo.push("lease", step(&log, "lease"));
        undo.commit();
        tokio::task::yield_now().await;
        assert!(log.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn dropped_armed_runs_on_a_task() {
        let log = Log::default();
        let (done, wait) = tokio::sync::oneshot::channel::<()>();
        {
            let mut undo = AsyncUndo::new("container c1");
            undo.push("signal", async move { done.send(()).map_err(|_| "closed") });
            undo.push("lease", step(&log, "lease"));
        }
        tokio::time::timeout(std::time::Duration::from_secs(5), wait)
            .await
            .expect("the dropped stack ran")
            .unwrap();
        assert_eq!(*log.lock().unwrap(), ["lease"]);
    }
}
