//! One container in memory, shaped so that reading it never waits for the OCI runtime or the
//! disk (kubelet relists every second; a status call must not stall behind `runc start`).
//!
//! ```text
//!   readers (status, list, stats)    current.read() → clone an Arc                   (ns)
//!   operations (start, stop, kill, update, remove)
//!        op.lock() → runc … → write.lock() → persist (rename) → current.write() = next (s)
//!   exit watcher (the monitor's pidfd became readable)
//!                       write.lock() → read exit.json → persist → current.write() = next (ms)
//! ```
//! Lock order: `op` → `write` → `current`. `current` is held only to copy or swap an `Arc`;
//! `write` for one record write; `op` across runtime invocations. So a reader never waits
//! behind an operation or a record write, and the exit watcher never waits behind an
//! operation.
//! Memory changes only after the disk write (rule 6): a reader sees a state that survives a
//! crash.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};

use crate::error::{Error, Result};
use crate::events::{EventBus, EventKind};
use crate::monitor::{self, ExitRecord};
use crate::runtime::{STATE_FILE, lock};
use crate::state::{ContainerRecord, ContainerState, ExitInfo};
use crate::util;

/// A container's record and the locks around it (see the module doc).
#[derive(Debug)]
pub(crate) struct Entry {
    run_dir: PathBuf,
    /// Serializes operations that drive the OCI runtime for this container.
    op: Mutex<()>,
    /// Serializes record writes (persist, then publish). Guards `removed`.
    write: Mutex<bool>,
    /// The latest persisted record; readers copy the `Arc` out.
    current: RwLock<Arc<ContainerRecord>>,
    /// What ContainerStatus shows of the OCI spec it was created with (`config.json`): its
    /// `process.user`, so that a status call reads no file. Never changes after create.
    /// Kept as compact JSON text and parsed when asked for. Only that part: as a `Value` tree
    /// the whole spec held about 20 KiB of heap per container and as text several KiB (with
    /// 100 pods); the verbose status reads the whole spec back from the bundle.
    spec: Box<str>,
    /// Where its transitions are published; set once the runtime makes the entry visible.
    events: OnceLock<Arc<EventBus>>,
}

impl Entry {
    /// An entry for `rec`, already persisted, whose files live in `run_dir`.
    pub(crate) fn new(run_dir: PathBuf, rec: ContainerRecord, spec: serde_json::Value) -> Self {
        Self {
            run_dir,
            op: Mutex::new(()),
            write: Mutex::new(false),
            current: RwLock::new(Arc::new(rec)),
            // Serializing a `Value` cannot fail (its keys are strings).
            spec: serde_json::to_string(&status_part(spec))
                .unwrap_or_else(|_| "null".to_owned())
                .into_boxed_str(),
            events: OnceLock::new(),
        }
    }

    /// Publishes this entry's transitions on `bus` from now on.
    pub(crate) fn attach_events(&self, bus: Arc<EventBus>) {
        // Attached once, at insertion; a second call would be a bug, and is harmless.
        let _ = self.events.set(bus);
    }

    /// Publishes `kind` with the current record (Created and Deleted, which are not record
    /// changes).
    pub(crate) fn publish_event(&self, kind: EventKind) {
        if let Some(bus) = self.listened() {
            bus.publish(kind, self.snapshot(), self.spec());
        }
    }

    /// The bus, when someone listens: the spec is parsed back from its text only for them.
    fn listened(&self) -> Option<&Arc<EventBus>> {
        self.events.get().filter(|bus| bus.subscriber_count() > 0)
    }

    /// The latest record, without waiting for any operation or disk write.
    pub(crate) fn snapshot(&self) -> Arc<ContainerRecord> {
        // A panic while holding the lock cannot leave a half-written Arc: still consistent.
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The part of the OCI spec a status shows, `{"process": {"user": …}}` (`null` if it
    /// cannot be read back, which text serialized from a `Value` always can).
    pub(crate) fn spec(&self) -> Arc<serde_json::Value> {
        Arc::new(serde_json::from_str(&self.spec).unwrap_or(serde_json::Value::Null))
    }

    /// The whole OCI spec the container was created with, read from its bundle (the verbose
    /// status; not kubelet's path); what memory keeps when the file cannot be read.
    pub(crate) fn full_spec(&self) -> Arc<serde_json::Value> {
        std::fs::read(self.run_dir.join("config.json"))
            .ok()
            .and_then(|data| serde_json::from_slice(&data).ok())
            .map_or_else(|| self.spec(), Arc::new)
    }

    /// Takes the operation lock: held across runtime invocations on this container.
    pub(crate) fn lock_op(&self) -> MutexGuard<'_, ()> {
        lock(&self.op)
    }

    /// Computes the next record from the current one; when there is one, persists it and
    /// then publishes it. Returns the record now current.
    pub(crate) fn update(
        &self,
        next: impl FnOnce(&ContainerRecord) -> Option<ContainerRecord>,
    ) -> Result<Arc<ContainerRecord>> {
        let _write = lock(&self.write);
        let cur = self.snapshot();
        match next(&cur) {
            Some(next) => self.publish(next),
            None => Ok(cur),
        }
    }

    /// Moves a Created/Running record to Exited if its monitor recorded the exit, or to
    /// Exited(Unknown) if the monitor is gone without recording one. Called by the exit
    /// watcher and by operations that need the state as of now (never by readers).
    pub(crate) fn refresh(&self) -> Result<Arc<ContainerRecord>> {
        let removed = lock(&self.write);
        let cur = self.snapshot();
        // Removed (by us, or by another daemon instance's recovery, which deleted the run
        // directory): nothing to discover, and nowhere to persist.
        if *removed || cur.state.is_final() || !self.run_dir.exists() {
            return Ok(cur);
        }
        let Some(exit) = discover_exit(&self.run_dir, &cur)? else {
            return Ok(cur);
        };
        let mut next = ContainerRecord::clone(&cur);
        next.state = ContainerState::Exited(exit);
        self.publish(next)
    }

    /// Persists `next`, makes it current, then publishes the transition (if it is one).
    /// The caller holds `write`, so one container's events go out in order.
    fn publish(&self, next: ContainerRecord) -> Result<Arc<ContainerRecord>> {
        persist(&self.run_dir, &next)?;
        let next = Arc::new(next);
        let prev = std::mem::replace(
            &mut *self.current.write().unwrap_or_else(|p| p.into_inner()),
            next.clone(),
        );
        if let Some(bus) = self.listened() {
            bus.transition(&prev, &next, &self.spec());
        }
        Ok(next)
    }

    /// Marks the entry removed (`true`) before its files go, or live again (`false`) when the
    /// removal failed; waits for a record write in progress.
    pub(crate) fn set_removed(&self, removed: bool) {
        *lock(&self.write) = removed;
    }
}

/// What [`Entry`] keeps of a spec: `process.user` (ContainerStatus `user`), or `null`.
fn status_part(mut spec: serde_json::Value) -> serde_json::Value {
    match spec
        .pointer_mut("/process/user")
        .map(serde_json::Value::take)
    {
        Some(user) => serde_json::json!({ "process": { "user": user } }),
        None => serde_json::Value::Null,
    }
}

/// Writes `rec` atomically to `<run_dir>/state.json`; callers update memory only after this
/// succeeded.
pub(crate) fn persist(run_dir: &Path, rec: &ContainerRecord) -> Result<()> {
    util::write_record(&run_dir.join(STATE_FILE), rec)
}

/// How a not-yet-final container ended, if it did: the monitor's exit file, else Unknown
/// when the monitor is gone without writing one. `None` while it runs.
pub(crate) fn discover_exit(run_dir: &Path, rec: &ContainerRecord) -> Result<Option<ExitInfo>> {
    let read = || {
        ExitRecord::read(run_dir)
            .map_err(|e| Error::io("read", run_dir.join(monitor::EXIT_FILE), e))
    };
    Ok(match read()? {
        Some(x) => Some(ExitInfo::from(x)),
        None if rec.monitor.is_some_and(|m| !m.is_alive()) => {
            // The monitor writes the exit file before it exits: read once more so an exit
            // between the two checks is not mistaken for a lost monitor.
            Some(
                read()?
                    .map(ExitInfo::from)
                    .unwrap_or_else(|| ExitInfo::unknown(util::now_unix_nanos())),
            )
        }
        None => None,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::id::ContainerId;
    use crate::monitor::ProcessIdentity;
    use crate::state::{ExitReason, RECORD_VERSION};

    /// A Running record with `monitor`, for tests.
    pub(crate) fn record(id: &str, monitor: Option<ProcessIdentity>) -> ContainerRecord {
        ContainerRecord {
            version: RECORD_VERSION,
            id: ContainerId::new(id).unwrap(),
            handler: "runc".into(),
            state: ContainerState::Running,
            created_at_unix_nanos: 1,
            started_at_unix_nanos: Some(2),
            monitor,
            init_pid: 1,
            boot_id: "b".into(),
            cgroup_path: String::new(),
            kill_all_on_exit: false,
            log_path: "/dev/null".into(),
            sandbox_id: None,
            client_data: crate::ClientData::default(),
        }
    }

    /// An entry whose "monitor" is this test process: alive throughout.
    fn live(dir: &Path, id: &str) -> Entry {
        let pid = std::process::id() as i32;
        let me = ProcessIdentity {
            pid,
            start_time: util::process_start_time(pid).unwrap(),
        };
        Entry::new(
            dir.to_owned(),
            record(id, Some(me)),
            serde_json::Value::Null,
        )
    }

    #[test]
    fn refresh_persists_the_exit_file_then_publishes_it() {
        let dir = tempfile::tempdir().unwrap();
        let entry = live(dir.path(), "c1");
        // Running, monitor alive, no exit file: nothing changes, nothing is written.
        assert_eq!(entry.refresh().unwrap().state, ContainerState::Running);
        assert!(!dir.path().join(STATE_FILE).exists());
        ExitRecord {
            version: 1,
            exit_code: 3,
            signal: None,
            exited_at_unix_nanos: 7,
            oom_killed: false,
        }
        .write(dir.path())
        .unwrap();
        let rec = entry.refresh().unwrap();
        assert!(matches!(rec.state, ContainerState::Exited(e) if e.exit_code == 3));
        assert_eq!(entry.snapshot().state, rec.state);
        let on_disk: ContainerRecord =
            serde_json::from_slice(&std::fs::read(dir.path().join(STATE_FILE)).unwrap()).unwrap();
        assert_eq!(on_disk.state, rec.state);
    }

    #[test]
    fn memory_keeps_the_spec_user_and_the_verbose_spec_comes_from_the_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let spec = serde_json::json!({
            "process": {"args": ["sleep", "1"], "user": {"uid": 1000, "gid": 3, "additionalGids": [4]}},
            "linux": {"namespaces": [{"type": "pid"}]},
        });
        let entry = Entry::new(dir.path().to_owned(), record("c1", None), spec.clone());
        let kept = serde_json::json!({"process": {"user": {"uid": 1000, "gid": 3, "additionalGids": [4]}}});
        assert_eq!(*entry.spec(), kept);
        // No bundle file: the verbose spec is what memory has.
        assert_eq!(*entry.full_spec(), kept);
        std::fs::write(dir.path().join("config.json"), spec.to_string()).unwrap();
        assert_eq!(*entry.full_spec(), spec);
        let no_user = Entry::new(
            dir.path().to_owned(),
            record("c2", None),
            serde_json::json!({}),
        );
        assert_eq!(*no_user.spec(), serde_json::Value::Null);
    }

    /// An entry whose monitor is long gone (no such pid).
    fn orphan(dir: &Path, id: &str) -> Entry {
        let gone = ProcessIdentity {
            pid: i32::MAX - 1,
            start_time: 1,
        };
        Entry::new(
            dir.to_owned(),
            record(id, Some(gone)),
            serde_json::Value::Null,
        )
    }

    #[test]
    fn a_lost_monitor_means_exited_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let entry = orphan(dir.path(), "c2");
        let rec = entry.refresh().unwrap();
        assert!(matches!(rec.state, ContainerState::Exited(e) if e.reason == ExitReason::Unknown));
    }

    #[test]
    fn a_removed_entry_is_not_refreshed() {
        let dir = tempfile::tempdir().unwrap();
        let entry = orphan(dir.path(), "c3");
        entry.set_removed(true);
        assert_eq!(entry.refresh().unwrap().state, ContainerState::Running);
        assert!(!dir.path().join(STATE_FILE).exists());
    }

    #[test]
    fn a_reader_is_not_blocked_by_an_operation_or_a_write() {
        let dir = tempfile::tempdir().unwrap();
        let entry = live(dir.path(), "c4");
        let _op = entry.lock_op();
        let _write = lock(&entry.write);
        // Both writer locks held (as during `runc start` and a record write): a snapshot is
        // served.
        assert_eq!(entry.snapshot().state, ContainerState::Running);
    }
}
