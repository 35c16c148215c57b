//! Links `rootstock-monitor` statically against glibc when its static archives are there
//! (Debian's libc6-dev ships them). One monitor runs per container: a static binary maps no
//! ld.so and no libc.so, has no relocations to apply at start-up, and keeps only the few
//! KiB of libc it calls, so its resident set is a few hundred KiB instead of ~1.3 MiB (#18).
//!
//! Cargo cannot set `-C target-feature=+crt-static` for one package, so the link line is
//! adjusted instead: the libraries rustc's std asks for dynamically (`-lgcc_s -lutil -lrt
//! -lpthread -lm -ldl -lc`) are found as static archives first (links to them in OUT_DIR,
//! which the linker searches before the system directories; `libgcc_s` is stood in for by
//! `libgcc_eh`, its static counterpart), and `-static -no-pie` makes the executable static.
//! Without the archives (another libc, no libc6-dev) the monitor is linked as before.
//!
//! Code layout: the kernel maps a file's pages 64 KiB around every fault, so what stays
//! resident is every 64 KiB window the monitor's loop touches. `hot-symbols.txt` lists the
//! functions one turn of the loop runs (a SIGCHLD, a chunk of output: traced with gdb
//! `stepi` on a release build); lld places them first, together, so the loop touches two or
//! three windows instead of eight (`trace-hot.py` regenerates it). A name that no longer
//! exists (another glibc, rustc or dependency version changes some) is skipped silently:
//! the layout is then only less tight. The release profile's fat LTO renames the monitor's
//! and nix's functions (their hashes) and inlines others: the file lists both builds' names.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let target_ok = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu");
    if !target_ok || std::env::var_os("ROOTSTOCK_MONITOR_DYNAMIC").is_some() {
        return;
    }
    println!("cargo:rerun-if-env-changed=ROOTSTOCK_MONITOR_DYNAMIC");
    let Some(out) = std::env::var_os("OUT_DIR").map(|d| PathBuf::from(d).join("static-libs"))
    else {
        return;
    };
    let Some(libc_a) = archive("libc.a") else {
        println!("cargo:warning=libc.a not found: rootstock-monitor is linked dynamically");
        return;
    };
    let (Some(gcc_eh), Some(gcc)) = (archive("libgcc_eh.a"), archive("libgcc.a")) else {
        println!("cargo:warning=libgcc_eh.a not found: rootstock-monitor is linked dynamically");
        return;
    };
    let lib_dir = libc_a.parent().map(Path::to_path_buf).unwrap_or_default();
    if std::fs::create_dir_all(&out).is_err() {
        return;
    }
    let mut links = vec![("libgcc_s.a".to_owned(), gcc_eh.clone())];
    for l in ["c", "m", "rt", "util", "pthread", "dl"] {
        let a = lib_dir.join(format!("lib{l}.a"));
        if a.exists() {
            links.push((format!("lib{l}.a"), a));
        }
    }
    for (name, target) in links {
        let link = out.join(name);
        let _ = std::fs::remove_file(&link);
        if std::os::unix::fs::symlink(&target, &link).is_err() {
            return;
        }
    }
    println!("cargo:rustc-link-search=native={}", out.display());
    for arg in ["-static", "-no-pie", "-Wl,--start-group"] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
    for a in [&gcc, &gcc_eh, &libc_a] {
        println!("cargo:rustc-link-arg-bins={}", a.display());
    }
    println!("cargo:rustc-link-arg-bins=-Wl,--end-group");
    // rustc links with lld on this target (1.90+); GNU ld has no ordering file.
    let order = Path::new(env!("CARGO_MANIFEST_DIR")).join("hot-symbols.txt");
    println!("cargo:rerun-if-changed={}", order.display());
    if order.exists() {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}

/// Where the C compiler finds `name` (it prints the bare name when it has none).
fn archive(name: &str) -> Option<PathBuf> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let out = Command::new(cc)
        .arg(format!("-print-file-name={name}"))
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    (path.is_absolute() && path.exists()).then(|| path.canonicalize().unwrap_or(path))
}
