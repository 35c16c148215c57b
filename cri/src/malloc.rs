//! How the daemon sets up glibc's allocator, before anything else runs.
//!
//! Measured with `make bench`'s 100-pod family (100 pods started at once, daemon RSS read
//! after the burst and its trim):
//! - glibc gives threads that allocate arenas of their own (up to 8 per core); tokio's
//!   blocking threads come and go with the RPCs, and what they free stays scattered over
//!   those arenas: over 1,000 pod cycles the daemon's RSS grew 2.9 MiB with the default and
//!   1.6 MiB with two (`make test-reliability`'s soak). One is smaller still: the heap held
//!   6.6 MiB after the burst against 8.1 MiB in two arenas.
//! - Each thread's cache of freed small chunks (tcache, up to 7 per size) keeps them out of
//!   the arena, where `malloc_trim` could coalesce and release their pages: with it off the
//!   daemon held 14.5 MiB instead of 16.8 MiB after the burst. Every allocation then takes
//!   the arena's lock, which cost nothing measurable in pod start (the daemon's threads
//!   mostly wait on child processes).
//!
//! An operator's `MALLOC_ARENA_MAX` or `GLIBC_TUNABLES` wins over either.

use std::os::unix::process::CommandExt;

/// glibc reads its tunables only when a process starts.
const TUNABLES: &str = "glibc.malloc.tcache_count=0";
/// Set for the re-executed daemon: it re-executes once at most, even where the loader drops
/// `GLIBC_TUNABLES` (a secure-execution binary).
const REEXECUTED: &str = "ROOTSTOCK_MALLOC_TUNED";

/// Must run first in `main`: it may re-execute the daemon (same pid, same arguments) with
/// [`TUNABLES`] set, and the re-executed daemon then takes them out of its environment again,
/// so that what it starts (monitors, OCI runtimes, CNI plugins) runs with glibc's defaults.
pub fn tune() {
    if std::env::var_os(REEXECUTED).is_some() {
        // SAFETY: called at the start of `main`, before any other thread exists, so nothing
        // reads the environment concurrently.
        unsafe {
            std::env::remove_var(REEXECUTED);
            std::env::remove_var("GLIBC_TUNABLES");
        }
    } else if std::env::var_os("GLIBC_TUNABLES").is_none() {
        reexecute();
    }
    limit_arenas();
}

/// Returns only when the daemon could not be re-executed: it then runs with glibc's caches.
fn reexecute() {
    // By its path, not /proc/self/exe: the process's name (`comm`, what ps, top and pgrep
    // show) is the executed file's.
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return eprintln!("rootstock: not re-executed with {TUNABLES}: {e}"),
    };
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    let err = std::process::Command::new(&exe)
        .arg0(argv0)
        .args(args)
        .env("GLIBC_TUNABLES", TUNABLES)
        .env(REEXECUTED, "1")
        .exec();
    eprintln!(
        "rootstock: not re-executed with {TUNABLES}: {}: {err}",
        exe.display()
    );
}

fn limit_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter, and no other thread exists yet.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    }
}
