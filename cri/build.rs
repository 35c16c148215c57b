//! Links the `rootstock` daemon with packed relative relocations (`-z pack-relative-relocs`,
//! DT_RELR) where the C library can load them (glibc 2.36 and later).
//!
//! A position-independent executable carries one 24-byte `R_X86_64_RELATIVE` entry per
//! pointer in its read-only-after-relocation data (vtables, string tables): about 40,000 of
//! them here, ~0.9 MiB of `.rela.dyn` that ld.so reads whole at every start, so all of it
//! stays resident for the daemon's lifetime (#18: idle RSS <= 10 MiB). RELR encodes the same
//! relocations as a bitmap of a few KiB; the executable stays position-independent (ASLR).
//!
//! A binary linked this way needs `GLIBC_ABI_DT_RELR` from ld.so, so it is done only when the
//! build host's glibc has it (the binary would not start on an older one anyway, as it links
//! against this glibc's symbol versions); elsewhere the daemon is linked as before.

use std::process::Command;

/// The first glibc whose ld.so applies DT_RELR relocations.
const RELR_GLIBC: (u32, u32) = (2, 36);

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let native = env("TARGET") == env("HOST");
    if env("CARGO_CFG_TARGET_OS") != "linux" || env("CARGO_CFG_TARGET_ENV") != "gnu" || !native {
        return;
    }
    match glibc_version() {
        Some(v) if v >= RELR_GLIBC => {
            println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
        }
        _ => println!(
            "cargo:warning=glibc older than 2.36 (or unknown): rootstock is linked without DT_RELR"
        ),
    }
    hot_text_first();
}

/// Release builds lay the functions the daemon runs at start, idle and on the pod paths out
/// together, first in `.text` (lld `--symbol-ordering-file`, as the monitor does): the kernel
/// maps 64 KiB around every code fault, so code the daemon touches spread over the whole
/// 12 MiB segment kept ~6.6 MiB of it resident at idle, of which ~2.7 MiB is code it ran.
/// `hot-text/hot-symbols.txt` is generated from a release build (`hot-text/README`); a name
/// that no longer exists (another rustc or dependency version) is skipped silently and the
/// layout is only less tight.
fn hot_text_first() {
    if std::env::var("PROFILE").as_deref() != Ok("release") {
        return;
    }
    let order = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("hot-text/hot-symbols.txt");
    println!("cargo:rerun-if-changed={}", order.display());
    if order.exists() {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}

/// The build host's glibc version from `getconf GNU_LIBC_VERSION` ("glibc 2.36").
fn glibc_version() -> Option<(u32, u32)> {
    let out = Command::new("getconf")
        .arg("GNU_LIBC_VERSION")
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let (major, minor) = text.trim().strip_prefix("glibc ")?.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}
