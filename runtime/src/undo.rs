//! [`Undo`]: the undo steps of an operation that has not been committed yet, as CRI-O's
//! `ResourceCleaner` (`internal/resourcestore/resourcecleaner.go`) keeps them. Each
//! resource an operation acquires pushes the step that releases it; on an error path the
//! guard is simply dropped and the steps run in reverse order (last acquired, first
//! released); [`Undo::commit`] disarms it once the operation succeeded.
//!
//! This replaces structs of boolean flags (`mounted`, `runtime_created`…) whose drop had
//! to know every resource and the order to release them in: here each step is written
//! next to the acquisition it undoes, so adding a resource cannot forget its clean-up.
//!
//! Steps are best-effort: a failing step is logged and the next one still runs, because
//! the caller is already returning the error that made the operation fail, and that one is
//! what the client must see.

use std::fmt;

type Step<'a> = Box<dyn FnOnce() -> Result<(), String> + Send + 'a>;

/// Undo steps run in reverse on drop unless [`committed`](Undo::commit).
#[must_use = "an Undo dropped at once runs its steps at once"]
pub struct Undo<'a> {
    /// What is being made (`container 3f2a…`), for the log.
    object: String,
    steps: Vec<(&'static str, Step<'a>)>,
}

impl<'a> Undo<'a> {
    /// An empty stack for an operation on `object` (named in the log of failed steps).
    pub fn new(object: impl fmt::Display) -> Self {
        Self {
            object: object.to_string(),
            steps: Vec::new(),
        }
    }

    /// Pushes the step that releases a resource just acquired; `what` names it in the log
    /// (`"unmount the rootfs"`).
    pub fn push<E: fmt::Display>(
        &mut self,
        what: &'static str,
        step: impl FnOnce() -> Result<(), E> + Send + 'a,
    ) {
        self.steps
            .push((what, Box::new(move || step().map_err(|e| e.to_string()))));
    }

    /// Number of steps pushed.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// Whether no step was pushed.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The operation succeeded: its resources are kept, no step runs.
    pub fn commit(mut self) {
        self.steps.clear();
    }

    /// Runs the steps now, last pushed first, and returns the failures (`what`, message);
    /// dropping the guard does the same and logs them.
    pub fn run(mut self) -> Vec<(&'static str, String)> {
        self.run_steps()
    }

    fn run_steps(&mut self) -> Vec<(&'static str, String)> {
        let mut failed = Vec::new();
        while let Some((what, step)) = self.steps.pop() {
            if let Err(e) = step() {
                failed.push((what, e));
            }
        }
        failed
    }
}

impl fmt::Debug for Undo<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let steps: Vec<&str> = self.steps.iter().map(|(w, _)| *w).collect();
        f.debug_struct("Undo")
            .field("object", &self.object)
            .field("steps", &steps)
            .finish()
    }
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        for (what, e) in self.run_steps() {
            tracing::warn!(object = %self.object, "undo after a failed operation: {what}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn recorder<'a>(
        log: &'a Mutex<Vec<&'static str>>,
        name: &'static str,
    ) -> impl FnOnce() -> Result<(), String> + Send + 'a {
        move || {
            log.lock().unwrap().push(name);
            Ok(())
        }
    }

    #[test]
    fn dropped_runs_steps_in_reverse_order() {
        let log = Mutex::new(Vec::new());
        {
            let mut undo = Undo::new("container c1");
            undo.push("first", recorder(&log, "first"));
            undo.push("second", recorder(&log, "second"));
            undo.push("third", recorder(&log, "third"));
            assert_eq!(undo.len(), 3);
        }
        assert_eq!(*log.lock().unwrap(), ["third", "second", "first"]);
    }

    #[test]
    fn committed_runs_nothing() {
        let log = Mutex::new(Vec::new());
        let mut undo = Undo::new("container c1");
        undo.push("first", recorder(&log, "first"));
        undo.commit();
        assert!(log.lock().unwrap().is_empty());
    }

    #[test]
    fn a_failing_step_does_not_stop_the_others_and_is_reported() {
        let log = Mutex::new(Vec::new());
        let mut undo = Undo::new("sandbox s1");
        undo.push("first", recorder(&log, "first"));
        undo.push("broken", || Err("device busy"));
        undo.push("third", recorder(&log, "third"));
        let failed = undo.run();
        assert_eq!(*log.lock().unwrap(), ["third", "first"]);
        assert_eq!(failed, [("broken", "device busy".to_owned())]);
    }

    #[test]
    fn an_early_return_with_question_mark_undoes() {
        fn make(log: &Mutex<Vec<&'static str>>, fail_at: usize) -> Result<(), String> {
            let mut undo = Undo::new("container c1");
            for (i, name) in ["dir", "mount", "runtime"].into_iter().enumerate() {
                if i == fail_at {
                    return Err(format!("{name} failed"));
                }
                undo.push(name, recorder(log, name));
            }
            undo.commit();
            Ok(())
        }
        let log = Mutex::new(Vec::new());
        assert!(make(&log, 2).is_err());
        assert_eq!(*log.lock().unwrap(), ["mount", "dir"]);
        log.lock().unwrap().clear();
        assert!(make(&log, 3).is_ok());
        assert!(log.lock().unwrap().is_empty());
    }
}
