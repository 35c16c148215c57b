//! Deterministic crash points for tests, shared by every crate of the daemon: with
//! `ROOTSTOCK_FAILPOINT=<name>` in the environment, the process SIGKILLs itself the first
//! time it reaches [`hit`]`(<name>)` (`<name>@<n>`: the n-th time). A SIGKILL gives no
//! chance to clean up, which is the point: the next start must cope with what is on disk.
//! Without the variable a failpoint is one load of a cached `None`. Compiled in only with the
//! `failpoints` cargo feature (which the daemon's, the runtime's, CNI's and the store's
//! `failpoints` features enable: `make test`, `.ci/run`); a release daemon ignores the
//! variable.
//!
//! Each crate lists its own points next to the code that reaches them (e.g.
//! `rootstock_imagestore::failpoint::ALL`); the e2e crash matrix drives every one.

#[cfg(feature = "failpoints")]
use std::sync::OnceLock;
#[cfg(feature = "failpoints")]
use std::sync::atomic::{AtomicU64, Ordering};

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
        // stderr is the daemon's log; no logging crate down here (std only, but libc).
        eprintln!("failpoint {name} reached: SIGKILL");
        // SAFETY: kill(2) on our own pid; no memory is involved.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

/// Whether this build honours `ROOTSTOCK_FAILPOINT` (and the other test-only overrides
/// that go with it, e.g. `ROOTSTOCK_BOOT_ID_FILE`).
pub const ENABLED: bool = cfg!(feature = "failpoints");
