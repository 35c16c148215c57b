//! Hands the heap that a burst of work freed back to the kernel once the burst is over.
//!
//! glibc returns freed memory to the kernel only from the top of an arena (above
//! `M_TRIM_THRESHOLD`); what a burst frees below a chunk still in use stays resident. A node
//! starting 100 pods at once runs 100 RunPodSandbox calls side by side, each on a blocking
//! thread building specs, reading plugin output and CNI results: the peak is freed, but
//! without a trim most of it stayed in the daemon's RSS for good. `malloc_trim(0)` releases
//! every free page inside the arenas (`madvise(MADV_DONTNEED)`), not only the top.
//!
//! Work that allocates on the blocking pool (every `crate::blocking::blocking` call, which is
//! how the runtime, CNI and store operations run) pokes the trimmer when it ends; the trim
//! runs once nothing poked for [`QUIET`], so a burst is trimmed once, after its last call and
//! after the blocking threads it started have gone ([`BLOCKING_KEEP_ALIVE`]; an exiting thread
//! hands its cached chunks back to the arena). An idle daemon never wakes up for it.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;

/// How long tokio keeps an idle blocking thread (its default is 10 s). Threads come and go
/// with bursts of RPCs; a thread costs tens of microseconds to start, and an idle one keeps
/// the stack it touched resident.
pub(crate) const BLOCKING_KEEP_ALIVE: Duration = Duration::from_secs(1);

/// Quiet time after the last poke before trimming: past [`BLOCKING_KEEP_ALIVE`], so the
/// threads of the burst have exited.
const QUIET: Duration = Duration::from_millis(1500);

static TRIMMER: OnceLock<Arc<Notify>> = OnceLock::new();

/// Starts the trimming task on the current tokio runtime; later calls do nothing.
pub(crate) fn start() {
    let notify = TRIMMER.get_or_init(|| Arc::new(Notify::new())).clone();
    tokio::spawn(async move {
        loop {
            notify.notified().await;
            // Each poke during the wait restarts it: trim once the burst is over.
            while tokio::time::timeout(QUIET, notify.notified()).await.is_ok() {}
            // Walks the arenas (well under a millisecond for a daemon's heap): off the
            // async workers all the same (STYLE rule 13).
            let _ = tokio::task::spawn_blocking(trim).await;
        }
    });
}

/// Notes that work which allocated has ended (see the module doc).
pub(crate) fn poke() {
    if let Some(notify) = TRIMMER.get() {
        notify.notify_one();
    }
}

fn trim() {
    // SAFETY: malloc_trim only walks and releases free memory of the allocator, which
    // serializes it with every other thread's malloc and free.
    unsafe { libc::malloc_trim(0) };
}
