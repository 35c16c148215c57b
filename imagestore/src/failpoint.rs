//! Deterministic crash points for tests: with `ROOTSTOCK_FAILPOINT=<name>` in the environment,
//! the process SIGKILLs itself the first time it reaches [`hit`]`(<name>)`
//! (`<name>@<n>`: the n-th time). A SIGKILL gives no chance to clean up, which is the point:
//! the next start must cope with what is on disk. Without the variable a failpoint is one
//! relaxed load of a cached `None`. Compiled in only with the `failpoints` cargo feature
//! (`make test`, `.ci/run`); a release daemon ignores the variable.

#[cfg(feature = "failpoints")]
use std::sync::OnceLock;
#[cfg(feature = "failpoints")]
use std::sync::atomic::{AtomicU64, Ordering};

/// Every failpoint in the crate, in pull order (tests iterate over them).
pub const ALL: &[&str] = &[
    "unpack.begin",
    "unpack.object-written",
    "unpack.object-linked",
    "unpack.entries-done",
    "unpack.before-rename",
    "unpack.after-rename",
    "unpack.after-record",
    "render.begin",
    "render.layer-applied",
    "render.before-rename",
    "render.after-rename",
    "render.after-record",
    "gc.tree-record-deleted",
    "gc.object-sweep",
];

#[cfg(feature = "failpoints")]
static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
#[cfg(feature = "failpoints")]
static HITS: AtomicU64 = AtomicU64::new(0);

#[cfg(feature = "failpoints")]
fn target() -> &'static Option<(String, u64)> {
    TARGET.get_or_init(|| {
        let v = std::env::var("ROOTSTOCK_FAILPOINT").ok()?;
        match v.split_once('@') {
            Some((name, n)) => Some((name.to_string(), n.parse().unwrap_or(1))),
            None => Some((v, 1)),
        }
    })
}

/// Die here if the environment names this failpoint (only in builds with the `failpoints`
/// feature; otherwise this does nothing).
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &str) {}

/// Die here if the environment names this failpoint.
#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
    if let Some((want, nth)) = target()
        && want == name
        && HITS.fetch_add(1, Ordering::SeqCst) + 1 >= *nth
    {
        tracing::warn!(failpoint = name, "failpoint reached: SIGKILL");
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
}
