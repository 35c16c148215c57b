//! Thread stacks: what an ending thread leaves resident (#18).

/// How much of the stack below the caller's frame [`release_dead_stack`] leaves mapped: the
/// thread's own exit path (tokio's teardown, TLS destructors, glibc's thread exit) runs below
/// this frame and would only fault those pages in again.
const EXIT_PATH_STACK: usize = 32 << 10;

/// Gives back the pages of the calling thread's stack below the current frame, which hold
/// nothing any more: for a thread that is about to end (tokio's `on_thread_stop`, the last
/// statement of a one-shot thread such as the namespace pinner's).
///
/// glibc keeps the stacks of exited threads in a cache (up to 40 MiB) to hand to the next
/// thread, with every page the thread ever touched still resident: after a burst of pod starts
/// the blocking pool's and the per-pod one-shot threads' stacks left ~0.9 MiB of dead stack
/// in the daemon's RSS (#18, 100 pods). A thread that later reuses the stack gets zero pages
/// on touch, as on a new stack.
pub fn release_dead_stack() {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// Resident pages of this thread's stack more than `EXIT_PATH_STACK` below `frame`.
    fn resident_below(frame: usize) -> usize {
        let (low, _) = own_stack().unwrap();
        let start = low.div_ceil(4096) * 4096;
        let end = (frame - EXIT_PATH_STACK) / 4096 * 4096;
        let mut vec = vec![0u8; (end - start) / 4096];
        // SAFETY: [start, end) is mapped (this thread's stack); `vec` has one byte per page.
        let got =
            unsafe { libc::mincore(start as *mut libc::c_void, end - start, vec.as_mut_ptr()) };
        assert_eq!(got, 0);
        vec.iter().filter(|b| *b & 1 == 1).count()
    }

    #[inline(never)]
    fn deep(n: usize) -> u8 {
        let buf = std::hint::black_box([n as u8; 256 << 10]);
        buf[n % buf.len()]
    }

    #[test]
    fn an_ending_threads_deep_stack_pages_go_back() {
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(|| {
                let marker = 0u8;
                let frame = std::ptr::addr_of!(marker) as usize;
                std::hint::black_box(deep(7));
                let before = resident_below(frame);
                release_dead_stack();
                let after = resident_below(frame);
                assert!(before >= 32, "the deep call touched {before} pages");
                assert!(after < before / 4, "{before} -> {after} resident pages");
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
