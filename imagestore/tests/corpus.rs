//! The layer corpus: layers written by the tools people use — GNU tar (gnu, posix/PAX,
//! ustar), bsdtar, Python's `tarfile`, umoci — from one source tree with root entries, `./`
//! prefixes, hard links, setuid bits, xattrs (`user.*`, `security.capability`), long names
//! and link names, sparse files; plus tars whose directories come after their children, that
//! name a path twice, and a second layer of `./`-prefixed whiteouts. Each is pulled from a
//! real registry and the rendered tree compared with what the reference unpacker makes of
//! the same layers (`tar -x` for one layer, `umoci unpack` for umoci's image and for
//! whiteouts): paths, types, modes, owners, mtimes, sizes, contents, link targets, xattrs and
//! hard-link groups. A failing case prints its first difference.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on failure

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::tree::{node, snapshot};
use common::*;
use rootstock_imagestore::ImageStore;
use rootstock_testkit::fixtures::{Compression, ImageBuilder, Layer, noise, write_oci_layout};
use rootstock_testkit::process::run;
use rootstock_testkit::registry::Registry;

const MTIME: i64 = 1_600_000_000;

/// The first difference between two trees, if any. `root_mtime`: compare the root's mtime
/// (bsdtar -x does not restore the mtime of `.`, GNU tar and umoci do).
fn first_difference(ours: &Path, reference: &Path, root_mtime: bool) -> Option<String> {
    let (mut a, al) = snapshot(ours);
    let (mut b, bl) = snapshot(reference);
    // The root too: its mode, owner and mtime come from the layers' `./` entries.
    a.insert(String::new(), node(ours));
    b.insert(String::new(), node(reference));
    if !root_mtime && let (Some(ra), Some(rb)) = (a.get_mut(""), b.get("")) {
        ra.mtime = rb.mtime;
    }
    for (path, nb) in &b {
        match a.get(path) {
            None => return Some(format!("{path:?}: missing from ours (reference {nb:?})")),
            Some(na) if na != nb => {
                return Some(format!("{path:?}:\n  ours      {na:?}\n  reference {nb:?}"));
            }
            _ => {}
        }
    }
    if let Some(extra) = a.keys().find(|k| !b.contains_key(*k)) {
        return Some(format!("{extra:?}: only in ours ({:?})", a[extra]));
    }
    (al != bl).then(|| format!("hard-link groups differ:\n  ours      {al:?}\n  reference {bl:?}"))
}

fn set_mtime(path: &Path, secs: i64) {
    let t = rustix::fs::Timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

/// Directories' mtimes last, children first, so creating entries does not change them.
fn fix_mtimes(root: &Path) {
    let mut all = vec![];
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        all.push(d.clone());
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p);
            } else {
                set_mtime(&p, MTIME + 7);
            }
        }
    }
    for d in all.iter().rev() {
        set_mtime(d, MTIME);
    }
}

fn write_file(path: &Path, data: &[u8], mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, data).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
}

/// `security.capability` v2: cap_net_bind_service in permitted and effective.
fn capability() -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&0x0200_0001u32.to_le_bytes());
    v.extend_from_slice(&(1u32 << 10).to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v
}

/// The source tree every producer packs. `long` adds names and link targets past ustar's.
fn source_tree(root: &Path, long: bool, sparse: bool) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(root).unwrap();
    for d in ["bin", "etc", "tmp", "var/lib/empty"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    write_file(&root.join("bin/tool"), &noise(1, 5000), 0o755);
    write_file(&root.join("bin/suid"), b"setuid", 0o4755);
    write_file(&root.join("bin/sgid"), b"setgid", 0o2711);
    chown(&root.join("bin/sgid"), 0, 50);
    std::fs::set_permissions(
        root.join("bin/sgid"),
        std::fs::Permissions::from_mode(0o2711),
    )
    .unwrap();
    std::os::unix::fs::symlink("tool", root.join("bin/link")).unwrap();
    write_file(
        &root.join("etc/passwd"),
        b"root:x:0:0::/root:/bin/sh\n",
        0o644,
    );
    std::fs::hard_link(root.join("etc/passwd"), root.join("etc/passwd-hl")).unwrap();
    write_file(&root.join("etc/odd"), b"odd", 0o612);
    chown(&root.join("etc/odd"), 1000, 1001);
    write_file(&root.join("etc/xattr"), b"xattr", 0o644);
    rustix::fs::setxattr(
        root.join("etc/xattr"),
        "user.color",
        b"blue",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    write_file(&root.join("bin/ping"), b"ping", 0o755);
    rustix::fs::setxattr(
        root.join("bin/ping"),
        "security.capability",
        &capability(),
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    write_file(&root.join("etc/empty"), b"", 0o600);
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::set_permissions(root.join("var/lib"), std::fs::Permissions::from_mode(0o711)).unwrap();
    chown(&root.join("var/lib"), 33, 33);
    if long {
        let dir = root.join("long").join("d".repeat(120));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("f".repeat(150));
        write_file(&file, b"long name", 0o644);
        std::fs::hard_link(&file, root.join("long/hl")).unwrap();
        std::os::unix::fs::symlink(format!("/{}", "t".repeat(200)), root.join("long/link"))
            .unwrap();
    }
    if sparse {
        let f = std::fs::File::create(root.join("var/sparse")).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(&noise(2, 4096), 0).unwrap();
        f.write_all_at(&noise(3, 4096), 4 << 20).unwrap();
        f.set_len(16 << 20).unwrap();
    }
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o750)).unwrap();
    fix_mtimes(root);
}

/// `tar -x` as root keeps owners, modes and every xattr: the single-layer reference. bsdtar's
/// layers are extracted by bsdtar (GNU tar leaves some directory mtimes at "now" for them).
fn tar_extract(tar: &[u8], dest: &Path, bsdtar: bool) {
    std::fs::create_dir_all(dest).unwrap();
    let mut cmd = if bsdtar {
        let mut c = Command::new("bsdtar");
        c.args(["--xattrs", "--numeric-owner", "-p", "-xf", "-", "-C"]);
        c
    } else {
        let mut c = Command::new("tar");
        c.args([
            "--xattrs",
            "--xattrs-include=*",
            "--same-owner",
            "--numeric-owner",
            "-p",
            "-xf",
            "-",
            "-C",
        ]);
        c
    };
    let mut child = cmd
        .arg(dest)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(tar).unwrap();
    assert!(child.wait().unwrap().success(), "tar -x");
}

/// `umoci unpack` of `image`: the multi-layer reference (whiteouts and opaque markers).
fn umoci_extract(image: &rootstock_testkit::fixtures::Image, work: &Path) -> PathBuf {
    let layout = work.join("layout");
    write_oci_layout(&layout, image, "ref");
    let bundle = work.join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:ref", layout.display()))
        .arg(&bundle));
    bundle.join("rootfs")
}

const PYTHON_TAR: &str = r#"
import os, sys, tarfile
src, fmt = sys.argv[1], sys.argv[2]
form = {"pax": tarfile.PAX_FORMAT, "gnu": tarfile.GNU_FORMAT}[fmt]
with tarfile.open(fileobj=sys.stdout.buffer, mode="w|", format=form) as tar:
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        for name in [None] + sorted(dirnames + filenames):
            path = dirpath if name is None else os.path.join(dirpath, name)
            if name is not None and os.path.isdir(path) and not os.path.islink(path):
                continue  # listed when walked
            arc = "./" + os.path.relpath(path, src) if path != src else "."
            ti = tar.gettarinfo(path, arc)
            if fmt == "pax" and not os.path.islink(path):
                for x in os.listxattr(path, follow_symlinks=False):
                    try:
                        v = os.getxattr(path, x, follow_symlinks=False).decode("utf-8")
                    except UnicodeDecodeError:
                        continue
                    ti.pax_headers["SCHILY.xattr." + x] = v
            if ti.isreg():
                with open(path, "rb") as f:
                    tar.addfile(ti, f)
            else:
                tar.addfile(ti)
"#;

/// One producer's layers and the reference tree.
struct Case {
    name: String,
    layers: Vec<Vec<u8>>,
    reference: PathBuf,
    /// Paths whose files must stay sparse in our tree.
    sparse: Vec<&'static str>,
}

fn gnu_tar(src: &Path, args: &[&str]) -> Vec<u8> {
    run(Command::new("tar")
        .arg("-C")
        .arg(src)
        .args(args)
        .args(["-cf", "-", "."]))
}

/// A layer tar whose directory entries follow their children and which names `x` twice
/// (the second copy wins), written by GNU tar from an explicit list and `-r`.
fn reordered_tar(work: &Path) -> Vec<u8> {
    let src = work.join("reordered-src");
    std::fs::create_dir_all(src.join("d/e")).unwrap();
    write_file(&src.join("d/e/f"), b"deep", 0o640);
    write_file(&src.join("x"), b"first", 0o644);
    fix_mtimes(&src);
    let tar = work.join("reordered.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&src)
        .args(["--no-recursion", "-cf"])
        .arg(&tar)
        .args(["./d/e/f", "./d/e", "./d", "./x", "."]));
    write_file(&src.join("x"), b"second, longer", 0o600);
    set_mtime(&src.join("x"), MTIME + 99);
    run(Command::new("tar")
        .arg("-C")
        .arg(&src)
        .args(["--no-recursion", "-rf"])
        .arg(&tar)
        .arg("./x"));
    std::fs::read(&tar).unwrap()
}

/// umoci's own layer of the source tree: `umoci new`, copy the tree into the bundle,
/// `umoci repack`; returns the layer tar and the reference (umoci unpack of that image).
fn umoci_case(src: &Path, work: &Path) -> (Vec<u8>, PathBuf) {
    let layout = work.join("umoci-layout");
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    run(Command::new("umoci")
        .args(["new", "--image"])
        .arg(format!("{}:t", layout.display())));
    let bundle = work.join("umoci-bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:t", layout.display()))
        .arg(&bundle));
    run(Command::new("cp")
        .args(["-a", "--sparse=always"])
        .arg(format!("{}/.", src.display()))
        .arg(bundle.join("rootfs")));
    run(Command::new("umoci")
        .args(["repack", "--image"])
        .arg(format!("{}:t", layout.display()))
        .arg(&bundle));
    let read_json = |p: PathBuf| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    let blob = |d: &str| {
        layout
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let index = read_json(layout.join("index.json"));
    let manifest = read_json(blob(index["manifests"][0]["digest"].as_str().unwrap()));
    let layer = blob(manifest["layers"][0]["digest"].as_str().unwrap());
    // Go's gzip, through the store's own decoder.
    let mut tar = Vec::new();
    let blob = std::io::BufReader::new(std::fs::File::open(layer).unwrap());
    rootstock_imagestore::gzip::Members::new(blob)
        .read_to_end(&mut tar)
        .unwrap();
    let reference = work.join("umoci-ref");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:t", layout.display()))
        .arg(&reference));
    (tar, reference.join("rootfs"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_producers_layers_render_as_the_reference_unpacker_does() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let full = work.join("src-full");
    source_tree(&full, true, true);
    let short = work.join("src-short");
    source_tree(&short, false, false);

    let mut cases: Vec<Case> = Vec::new();
    let mut single = |name: &str, tar: Vec<u8>, sparse: Vec<&'static str>| {
        let reference = work.join(format!("ref-{name}"));
        tar_extract(&tar, &reference, name.starts_with("bsdtar"));
        cases.push(Case {
            name: name.to_owned(),
            layers: vec![tar],
            reference,
            sparse,
        });
    };
    let x = ["--xattrs", "--xattrs-include=*"];
    single(
        "gnu-tar-gnu",
        gnu_tar(&full, &["--format=gnu", "--sparse"]),
        vec!["var/sparse"],
    );
    single(
        "gnu-tar-posix-sparse-1.0",
        gnu_tar(
            &full,
            &[
                x[0],
                x[1],
                "--format=posix",
                "--sparse",
                "--sparse-version=1.0",
            ],
        ),
        vec!["var/sparse"],
    );
    single(
        "gnu-tar-posix-sparse-0.1",
        gnu_tar(
            &full,
            &[
                x[0],
                x[1],
                "--format=posix",
                "--sparse",
                "--sparse-version=0.1",
            ],
        ),
        vec!["var/sparse"],
    );
    single(
        "gnu-tar-posix-sparse-0.0",
        gnu_tar(
            &full,
            &[
                x[0],
                x[1],
                "--format=posix",
                "--sparse",
                "--sparse-version=0.0",
            ],
        ),
        vec!["var/sparse"],
    );
    single(
        "gnu-tar-ustar",
        gnu_tar(&short, &["--format=ustar"]),
        vec![],
    );
    single(
        "bsdtar-pax",
        run(Command::new("bsdtar").arg("-C").arg(&full).args([
            "--format=pax",
            "--xattrs",
            "-cf",
            "-",
            ".",
        ])),
        vec![],
    );
    single(
        "bsdtar-gnutar",
        run(Command::new("bsdtar")
            .arg("-C")
            .arg(&full)
            .args(["--format=gnutar", "-cf", "-", "."])),
        vec![],
    );
    for fmt in ["pax", "gnu"] {
        single(
            &format!("python-tarfile-{fmt}"),
            run(Command::new("python3")
                .args(["-c", PYTHON_TAR])
                .arg(&full)
                .arg(fmt)),
            vec![],
        );
    }
    single("gnu-tar-reordered", reordered_tar(work), vec![]);

    let (umoci_tar, umoci_ref) = umoci_case(&full, work);
    cases.push(Case {
        name: "umoci-repack".into(),
        layers: vec![umoci_tar],
        reference: umoci_ref,
        sparse: vec![],
    });

    // Whiteouts and an opaque marker with `./` prefixes over the GNU tar layer.
    let upper = work.join("upper");
    std::fs::create_dir_all(upper.join("etc")).unwrap();
    std::fs::create_dir_all(upper.join("var/lib")).unwrap();
    write_file(&upper.join("etc/.wh.odd"), b"", 0o600);
    write_file(&upper.join("var/lib/.wh..wh..opq"), b"", 0o600);
    write_file(&upper.join("var/lib/new"), b"new", 0o644);
    write_file(
        &upper.join("etc/passwd"),
        b"root:x:0:0::/root:/bin/ash\n",
        0o644,
    );
    fix_mtimes(&upper);
    let lower_tar = gnu_tar(&full, &[x[0], x[1], "--format=posix"]);
    let upper_tar = gnu_tar(&upper, &["--format=gnu"]);
    let image = ImageBuilder::new()
        .layer(Layer::from_tar(lower_tar.clone(), Compression::Gzip))
        .layer(Layer::from_tar(upper_tar.clone(), Compression::Gzip))
        .build();
    cases.push(Case {
        name: "gnu-tar-whiteouts".into(),
        layers: vec![lower_tar, upper_tar],
        reference: umoci_extract(&image, &work.join("wh")),
        sparse: vec![],
    });

    let registry = Registry::start().await;
    let store = ImageStore::open(&work.join("store"), &insecure(&registry.host())).unwrap();
    let mut failures = Vec::new();
    for case in &cases {
        let mut builder = ImageBuilder::new();
        for tar in &case.layers {
            builder = builder.layer(Layer::from_tar(tar.clone(), Compression::Gzip));
        }
        registry.push(&case.name, "v1", &builder.build()).await;
        let image = match store
            .pull(&registry.image_ref(&case.name, "v1"), None)
            .await
        {
            Ok(i) => i,
            Err(e) => {
                failures.push(format!("{}: pull failed: {e}", case.name));
                continue;
            }
        };
        let tree = image.tree_path().unwrap();
        let root_mtime = !case.name.starts_with("bsdtar");
        if let Some(diff) = first_difference(tree, &case.reference, root_mtime) {
            failures.push(format!("{}: {diff}", case.name));
            continue;
        }
        for path in &case.sparse {
            let m = std::fs::metadata(tree.join(path)).unwrap();
            if m.blocks() * 512 >= m.len() {
                failures.push(format!(
                    "{}: {path} was expanded: {} bytes allocated for {}",
                    case.name,
                    m.blocks() * 512,
                    m.len()
                ));
            }
        }
        println!("{}: renders as the reference", case.name);
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    let report = store.verify().await.unwrap();
    assert!(report.is_clean(), "{report}");
}
