//! Property tests of the unpacker (#19): tar streams written header by header (ustar, PAX
//! and GNU long names) with hostile names (`..`, absolute, empty, long, whiteouts), links
//! (symlinks and hard links pointing up and out, chains of them), types (devices, FIFOs,
//! unknown flags) and sizes (lying, huge, base-256), fed to the store's real sink on disk.
//! Whatever the stream: no panic; nothing outside the store's root is created, changed or
//! linked (a canary tree around the root is compared byte for byte); a refused layer leaves
//! no layer directory and no record; an accepted one holds every plainly named file with
//! its bytes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use proptest::prelude::*;
use rootstock_imagestore::blobs::BlobStore;
use rootstock_imagestore::metadata::Metadata;
use rootstock_imagestore::{
    Digest, ImageBudget, ImageStore, ImagesConfig, LayerInput, LayerSink, SinkLimits, TreeLayerSink,
};

/// Streams per run; each has up to [`MAX_ENTRIES`] headers, about 10,000 headers in all.
const STREAMS: u32 = 1_000;
const MAX_ENTRIES: usize = 20;
/// The store's root sits this deep under the canary base, so that no `..` chain the
/// generator can build climbs out of the base (it would be seen there, not on the host).
const DEPTH: usize = 32;

#[derive(Debug, Clone)]
enum Kind {
    File(Vec<u8>),
    Dir,
    Symlink(String),
    Hardlink(String),
    Fifo,
    CharDev,
    Unknown(u8),
}

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    kind: Kind,
    mode: u32,
    /// The header's size when it lies about the data (`None`: the truth).
    size_lie: Option<u64>,
    /// The name goes in a PAX `path` record, or a GNU `L` entry (long names need one).
    long_name: LongName,
}

#[derive(Debug, Clone, Copy)]
enum LongName {
    Ustar,
    Pax,
    Gnu,
}

/// The directories of a test: `base` with canary files, the store's root deep inside.
struct Place {
    _dir: tempfile::TempDir,
    base: PathBuf,
    root: PathBuf,
    sink: TreeLayerSink,
    meta: Arc<Metadata>,
}

fn place() -> Place {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().to_owned();
    let mut root = base.clone();
    for _ in 0..DEPTH {
        root.push("d");
    }
    root.push("store");
    std::fs::create_dir_all(root.parent().unwrap()).unwrap();
    std::fs::write(base.join("canary"), "canary").unwrap();
    std::fs::create_dir(base.join("canary-dir")).unwrap();
    std::fs::write(base.join("canary-dir/file"), "inside the canary dir").unwrap();
    // Created by the store itself, then reopened piece by piece around a sink of our own.
    drop(ImageStore::open(&root, &ImagesConfig::default()).unwrap());
    let meta = Arc::new(Metadata::open(&root.join("meta.redb")).unwrap());
    let blobs = Arc::new(BlobStore::open(&root).unwrap());
    let sink = TreeLayerSink::new(
        &root,
        meta.clone(),
        blobs,
        false,
        false,
        SinkLimits::default(),
    );
    Place {
        _dir: dir,
        base,
        root,
        sink,
        meta,
    }
}

/// Everything under `base` but the store: path → (kind, size, links, mode, bytes).
fn snapshot(base: &Path, root: &Path) -> BTreeMap<PathBuf, (u32, u64, u64, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![base.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p == root {
                continue;
            }
            let m = std::fs::symlink_metadata(&p).unwrap();
            let bytes = if m.is_file() {
                std::fs::read(&p).unwrap()
            } else {
                Vec::new()
            };
            out.insert(p.clone(), (m.mode(), m.len(), m.nlink(), bytes));
            if m.is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

fn component() -> impl Strategy<Value = String> {
    prop_oneof![
        16 => proptest::sample::select(vec!["a", "b", "c", "etc"]).prop_map(str::to_owned),
        3 => proptest::sample::select(vec!["..", ".", "", ".wh.a", ".wh..wh..opq", "ü b", "a\\b"])
            .prop_map(str::to_owned),
        1 => (90..130usize).prop_map(|n| "l".repeat(n)),
    ]
}

fn name() -> impl Strategy<Value = String> {
    (
        proptest::sample::select(vec!["", "", "", "", "", "/", "./"]),
        proptest::collection::vec(component(), 1..4),
        proptest::sample::select(vec!["", "", "/"]),
    )
        .prop_map(|(lead, parts, trail)| format!("{lead}{}{trail}", parts.join("/")))
}

/// A link target: inside, up and out (at most three `..`), or absolute into the canary.
fn target(base: String) -> impl Strategy<Value = String> {
    prop_oneof![
        name(),
        (1..4usize, name()).prop_map(|(n, rest)| format!("{}{rest}", "../".repeat(n))),
        proptest::sample::select(vec!["canary", "canary-dir", "canary-dir/file", ""])
            .prop_map(move |c| format!("{base}/{c}")),
    ]
}

fn entry(base: String) -> impl Strategy<Value = Entry> {
    let kind = prop_oneof![
        30 => proptest::collection::vec(any::<u8>(), 0..600).prop_map(Kind::File),
        12 => Just(Kind::Dir),
        6 => target(base.clone()).prop_map(Kind::Symlink),
        4 => target(base).prop_map(Kind::Hardlink),
        2 => Just(Kind::Fifo),
        2 => Just(Kind::CharDev),
        1 => proptest::sample::select(vec![b'Z', b'S', b'g', b'7', 0xff]).prop_map(Kind::Unknown),
    ];
    let lie = proptest::option::weighted(
        0.01,
        prop_oneof![0..2048u64, Just(u64::MAX / 2), Just(0o77_777_777_777u64)],
    );
    let long = proptest::sample::select(vec![
        LongName::Ustar,
        LongName::Ustar,
        LongName::Pax,
        LongName::Gnu,
    ]);
    (
        name(),
        kind,
        proptest::sample::select(vec![0o644u32, 0o755, 0o4755, 0o7777, 0]),
        lie,
        long,
    )
        .prop_map(|(name, kind, mode, size_lie, long_name)| Entry {
            name,
            kind,
            mode,
            size_lie,
            long_name,
        })
}

fn octal(field: &mut [u8], v: u64) {
    let s = format!("{v:0w$o}", w = field.len() - 1);
    if s.len() < field.len() {
        field[..s.len()].copy_from_slice(s.as_bytes());
        field[s.len()] = 0;
    } else {
        // Too big for octal: base-256, as GNU tar writes it.
        field.fill(0);
        field[0] = 0x80;
        let b = v.to_be_bytes();
        let n = field.len();
        field[n - 8..].copy_from_slice(&b);
    }
}

fn header(name: &[u8], typeflag: u8, size: u64, mode: u32, link: &[u8]) -> [u8; 512] {
    let mut h = [0u8; 512];
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name[..n]);
    octal(&mut h[100..108], u64::from(mode));
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 1_700_000_000);
    h[156] = typeflag;
    let l = link.len().min(100);
    h[157..157 + l].copy_from_slice(&link[..l]);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

fn push_data(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

fn pax_record(key: &str, value: &str) -> Vec<u8> {
    let body = format!(" {key}={value}\n");
    let mut len = body.len() + 1;
    while format!("{len}{body}").len() != len {
        len += 1;
    }
    format!("{len}{body}").into_bytes()
}

/// The stream of `entries`, then the end-of-archive blocks (unless `cut`).
fn tar(entries: &[Entry], cut: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let (flag, data, link): (u8, &[u8], &str) = match &e.kind {
            Kind::File(d) => (b'0', d, ""),
            Kind::Dir => (b'5', &[], ""),
            Kind::Symlink(t) => (b'2', &[], t),
            Kind::Hardlink(t) => (b'1', &[], t),
            Kind::Fifo => (b'6', &[], ""),
            Kind::CharDev => (b'3', &[], ""),
            Kind::Unknown(f) => (*f, b"unknown", ""),
        };
        let long = e.name.len() > 100 || link.len() > 100;
        match e.long_name {
            LongName::Pax => {
                let mut recs = pax_record("path", &e.name);
                if !link.is_empty() {
                    recs.extend(pax_record("linkpath", link));
                }
                out.extend_from_slice(&header(
                    b"././@PaxHeader",
                    b'x',
                    recs.len() as u64,
                    0o644,
                    b"",
                ));
                push_data(&mut out, &recs);
            }
            LongName::Gnu if long => {
                let mut n = e.name.as_bytes().to_vec();
                n.push(0);
                out.extend_from_slice(&header(b"././@LongLink", b'L', n.len() as u64, 0, b""));
                push_data(&mut out, &n);
                if link.len() > 100 {
                    let mut l = link.as_bytes().to_vec();
                    l.push(0);
                    out.extend_from_slice(&header(b"././@LongLink", b'K', l.len() as u64, 0, b""));
                    push_data(&mut out, &l);
                }
            }
            _ => {}
        }
        let size = e.size_lie.unwrap_or(data.len() as u64);
        out.extend_from_slice(&header(
            e.name.as_bytes(),
            flag,
            size,
            e.mode,
            link.as_bytes(),
        ));
        push_data(&mut out, data);
    }
    if !cut {
        out.extend_from_slice(&[0u8; 1024]);
    }
    out
}

/// The files an accepted layer must hold with their bytes: regular files under plain names
/// that no other entry may resolve onto, in a stream that tells no lies.
fn plain_files(entries: &[Entry]) -> Vec<(String, Vec<u8>)> {
    if entries
        .iter()
        .any(|e| e.size_lie.is_some() || matches!(e.kind, Kind::Unknown(_)))
    {
        return Vec::new();
    }
    let norm = |n: &str| -> Vec<String> {
        n.split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .map(str::to_owned)
            .collect()
    };
    let plain = |c: &String| matches!(c.as_str(), "a" | "b" | "c" | "etc");
    entries
        .iter()
        .enumerate()
        .filter_map(|(i, e)| {
            let Kind::File(data) = &e.kind else {
                return None;
            };
            let path = norm(&e.name);
            if path.is_empty() || !path.iter().all(plain) || e.name.ends_with('/') {
                return None;
            }
            let clash = entries.iter().enumerate().any(|(j, o)| {
                let other = norm(&o.name);
                // Names that may resolve onto ours: `..`, whiteouts, the root itself, and
                // every name on our path (a link or directory there redirects or replaces).
                j != i
                    && (other.is_empty()
                        || other.iter().any(|c| c == ".." || c.starts_with(".wh."))
                        || path.starts_with(&other)
                        || other.starts_with(&path))
            });
            (!clash).then(|| (path.join("/"), data.clone()))
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(STREAMS))]

    #[test]
    fn hostile_streams_stay_inside_the_root(
        seed_entries in proptest::collection::vec(entry("BASE".to_owned()), 1..MAX_ENTRIES),
        cut in proptest::option::weighted(0.05, any::<proptest::sample::Index>()),
        wrong_diff_id in proptest::bool::weighted(0.03),
    ) {
        thread_local! {
            static PLACE: Place = place();
        }
        PLACE.with(|p| {
            let base = p.base.display().to_string();
            // Absolute targets were generated against a placeholder base.
            let entries: Vec<Entry> = seed_entries.iter().cloned().map(|mut e| {
                if let Kind::Symlink(t) | Kind::Hardlink(t) = &mut e.kind {
                    *t = t.replace("BASE", &base);
                }
                e
            }).collect();
            let mut stream = tar(&entries, cut.is_some());
            if let Some(at) = cut {
                stream.truncate(at.index(stream.len() + 1));
            }
            let before = snapshot(&p.base, &p.root);
            let diff_id = if wrong_diff_id { Digest::of(b"another layer") } else { Digest::of(&stream) };
            let layer = LayerInput {
                index: 0,
                digest: Digest::of(&stream),
                media_type: "application/vnd.oci.image.layer.v1.tar".to_owned(),
                size: stream.len() as u64,
                diff_id: diff_id.clone(),
                budget: ImageBudget::new(1 << 30, 1 << 20),
            };
            let result = p.sink.commit(&layer, &mut stream.as_slice());
            let after = snapshot(&p.base, &p.root);
            prop_assert!(before == after, "something outside the root changed: {:?}",
                after.keys().filter(|k| before.get(*k) != after.get(*k)).collect::<Vec<_>>());
            let layer_dir = p.root.join("layers").join(diff_id.hex());
            match result {
                Ok(record) => {
                    prop_assert!(!wrong_diff_id, "a layer with the wrong diff_id was accepted");
                    // The layer's directory; its view of the files is `root/` in it.
                    let tree = record.tree.clone().unwrap_or(layer_dir.clone()).join("root");
                    for (path, data) in plain_files(&entries) {
                        let got = std::fs::read(tree.join(&path));
                        prop_assert!(got.as_ref().ok() == Some(&data), "{path}: {got:?}");
                    }
                    // Left in place: removing is a durable commit (an fsync per case), and
                    // a later stream with the same diff_id replaces it.
                }
                Err(e) => {
                    prop_assert!(!e.to_string().is_empty());
                    prop_assert!(!layer_dir.exists(), "a refused layer left {layer_dir:?}: {e}");
                    prop_assert!(p.meta.layer(&diff_id).unwrap().is_none(), "record left: {e}");
                }
            }
            Ok(())
        })?;
    }
}
