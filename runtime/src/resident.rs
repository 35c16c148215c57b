//! Keeping the resident set of rootstock's per-pod processes (the container monitor, a
//! pod's init) to what they use. std + libc only: `rootstock-monitor` includes this file.

/// Unmaps the pages of this binary's read-only segments (code, constants) that start-up
/// touched: libc's and std's initialization, argument parsing, `<runtime> create`. The
/// kernel maps file pages 64 KiB around each fault ("fault-around"), so those few calls
/// leave most of the binary mapped — resident set the monitor would carry for the
/// container's whole life though its loop needs a few pages. The pages stay in the page
/// cache (shared by every monitor); what the loop touches next is mapped again on demand.
/// Writable segments (data, relocated `.data.rel.ro`) are left alone: only never-written
/// file pages are dropped, so nothing is lost. Best effort: an error changes nothing.
pub fn release_startup_text() {
    unsafe extern "C" fn each_object(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        _data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: dl_iterate_phdr passes a valid `dl_phdr_info` for the call's duration,
        // whose `dlpi_phdr` points at `dlpi_phnum` program headers.
        let info = unsafe { &*info };
        for i in 0..usize::from(info.dlpi_phnum) {
            // SAFETY: i < dlpi_phnum (see above).
            let ph = unsafe { &*info.dlpi_phdr.add(i) };
            if ph.p_type != libc::PT_LOAD || ph.p_flags & libc::PF_W != 0 {
                continue;
            }
            let page = 4096u64;
            let start = (info.dlpi_addr + ph.p_vaddr) & !(page - 1);
            let end = (info.dlpi_addr + ph.p_vaddr + ph.p_memsz).div_ceil(page) * page;
            // SAFETY: a read-only, file-backed segment of the running program: MADV_DONTNEED
            // only drops its page table entries; the next access maps the same file page
            // again (nothing in it was ever written).
            unsafe {
                libc::madvise(
                    start as usize as *mut libc::c_void,
                    (end - start) as usize,
                    libc::MADV_DONTNEED,
                );
            }
        }
        // The first object is the executable itself (statically linked: all of it).
        1
    }
    // SAFETY: the callback reads only what it is given and never unwinds.
    unsafe {
        libc::dl_iterate_phdr(Some(each_object), std::ptr::null_mut());
    }
}
