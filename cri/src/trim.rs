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

/// How much of the stack below the caller's frame [`release_dead_stack`] leaves mapped: the
/// thread's own exit path (tokio's teardown, TLS destructors, glibc's thread exit) runs below
/// this frame and would only fault those pages in again.
const EXIT_PATH_STACK: usize = 32 << 10;

/// Called by tokio on each of its threads as it ends (`on_thread_stop`): gives back the pages
/// of the thread's stack below the current frame, which hold nothing any more.
///
/// glibc keeps the stacks of exited threads in a cache (up to 40 MiB) to hand to the next
/// thread, with every page the thread ever touched still resident: after a burst of pod starts
/// the blocking pool's 20-odd exited threads left ~0.8 MiB of dead stack in the daemon's RSS
/// (#18). A thread that later reuses the stack gets zero pages on touch, as on a new stack.
pub(crate) fn release_dead_stack() {
    let Some((low, _high)) = own_stack() else {
        return;
    };
    let marker = 0u8;
    let frame = std::ptr::addr_of!(marker) as usize;
    let page = 4096;
    let start = low.div_ceil(page) * page;
    let end = (frame.saturating_sub(EXIT_PATH_STACK) / page) * page;
    if end <= start {
        return;
    }
    // SAFETY: [start, end) lies inside this thread's own stack (between its lowest usable
    // address and well below the current frame), which no live frame, other thread or
    // signal handler uses: only this thread runs on it, and it is past its last use of that
    // depth. MADV_DONTNEED on private anonymous memory only drops the pages (they read back
    // as zeros), so no Rust object is invalidated.
    unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
}

/// The calling thread's stack as glibc reports it: (lowest usable address, highest).
fn own_stack() -> Option<(usize, usize)> {
    let mut attr = std::mem::MaybeUninit::<libc::pthread_attr_t>::uninit();
    // SAFETY: pthread_getattr_np initializes `attr` for the calling thread when it returns 0;
    // it is only read then, and destroyed once.
    unsafe {
        if libc::pthread_getattr_np(libc::pthread_self(), attr.as_mut_ptr()) != 0 {
            return None;
        }
        let mut addr = std::ptr::null_mut();
        let mut size = 0;
        let got = libc::pthread_attr_getstack(attr.as_ptr(), &mut addr, &mut size);
        libc::pthread_attr_destroy(attr.as_mut_ptr());
        (got == 0 && !addr.is_null()).then(|| (addr as usize, addr as usize + size))
    }
}
