//! Fixture images built from busybox-static.
//!
//! Everything here is built in memory and is deterministic: the same calls give the same bytes
//! (fixed mtimes, fixed gzip header, sorted JSON keys), so digests are stable across runs and
//! machines with the same `/bin/busybox` and the same build. One caveat: gzip and zstd output
//! depends on the compressor linked, and flate2's backend is chosen by cargo's feature
//! unification (miniz_oxide for `cargo test -p rootstock-test-e2e`, zlib-rs when the build
//! also has `rootstock-imagestore`), so a gzip layer's digest differs between the two.
//! [`gzip_stored`] ([`LayerBuilder::build_gzip_stored`]) gives the same bytes in every build.
//!
//! - [`LayerBuilder`] writes a tar stream entry by entry (any file type, owner, mode, mtime,
//!   xattrs; whiteouts; raw headers for hostile entries) and compresses it ([`Layer`]).
//! - [`ImageBuilder`] makes the config and manifest (OCI or Docker schema 2) over layers
//!   ([`Image`]); [`IndexBuilder`] makes an OCI index or a Docker manifest list ([`Index`]).
//! - [`busybox_image`] is the standard two-layer test image; [`write_oci_layout`] writes an
//!   image as an OCI image layout on disk (for `umoci` and friends).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::OnceLock;

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

/// The mtime given to entries that do not set one (2023-11-14T22:13:20Z): fixed so layer
/// digests are stable, and not 0 so a bug that drops mtimes is visible.
pub const DEFAULT_MTIME: u64 = 1_700_000_000;

/// The `created` time written into image configs.
pub const CREATED: &str = "2023-11-14T22:13:20Z";

/// `"sha256:<hex>"` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The bytes of Debian's static busybox (`/bin/busybox`, package `busybox-static`).
pub fn busybox_bytes() -> Vec<u8> {
    std::fs::read("/bin/busybox").unwrap_or_else(|e| {
        panic!(
            "reading /bin/busybox: {e}; the fixture images need Debian's static busybox: \
             `apt-get install -y busybox-static`"
        )
    })
}

// ---------------------------------------------------------------------------------------------
// Layers
// ---------------------------------------------------------------------------------------------

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (the common case; the only one Docker schema 2 names).
    Gzip,
    /// zstd (OCI only).
    Zstd,
}

impl Compression {
    /// The OCI layer media type for this compression.
    pub fn oci_media_type(self) -> &'static str {
        match self {
            Compression::None => MEDIA_OCI_LAYER,
            Compression::Gzip => MEDIA_OCI_LAYER_GZIP,
            Compression::Zstd => MEDIA_OCI_LAYER_ZSTD,
        }
    }
}

/// OCI image manifest.
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config.
pub const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI uncompressed layer.
pub const MEDIA_OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI gzip layer.
pub const MEDIA_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI zstd layer.
pub const MEDIA_OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Docker schema 2 manifest.
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image config.
pub const MEDIA_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker gzip layer (schema 2 has no name for other compressions).
pub const MEDIA_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// What an [`Entry`] is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file with these contents.
    File(Vec<u8>),
    /// A symbolic link to this target (written verbatim, may be absolute or dangle).
    Symlink(String),
    /// A hard link to this earlier path in the same layer (or a lower one, for hostile tests).
    HardLink(String),
    /// A named pipe.
    Fifo,
    /// A character device.
    CharDevice {
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
    /// A block device.
    BlockDevice {
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
}

/// One well-formed tar entry. Build with the constructors, refine with the chained setters:
/// `Entry::file("bin/tool", bytes).mode(0o4755).owner(0, 0).xattr("user.k", b"v")`.
///
/// Paths are relative to the layer root; a leading `/` is dropped (as image builders do) and
/// directories get the conventional trailing `/` in the archive. For names that must reach the
/// archive unchanged (`../x`, `/abs`), use [`RawEntry`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Path inside the layer.
    pub path: String,
    /// Type and payload.
    pub kind: EntryKind,
    /// Permission bits including setuid/setgid/sticky (e.g. `0o1777`).
    pub mode: u32,
    /// Owner uid.
    pub uid: u64,
    /// Owner gid.
    pub gid: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: u64,
    /// Extended attributes, written as PAX `SCHILY.xattr.<name>` records, in this order.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl Entry {
    fn new(path: &str, kind: EntryKind, mode: u32) -> Self {
        Entry {
            path: path.trim_start_matches('/').to_owned(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: DEFAULT_MTIME,
            xattrs: Vec::new(),
        }
    }
    /// A directory, mode 0755.
    pub fn dir(path: &str) -> Self {
        Self::new(path, EntryKind::Dir, 0o755)
    }
    /// A regular file, mode 0644.
    pub fn file(path: &str, contents: impl Into<Vec<u8>>) -> Self {
        Self::new(path, EntryKind::File(contents.into()), 0o644)
    }
    /// A symlink `path -> target`, mode 0777.
    pub fn symlink(path: &str, target: &str) -> Self {
        Self::new(path, EntryKind::Symlink(target.to_owned()), 0o777)
    }
    /// A hard link `path` to `target` (a path in the layer, as written in the archive).
    pub fn hardlink(path: &str, target: &str) -> Self {
        let target = target.trim_start_matches('/').to_owned();
        Self::new(path, EntryKind::HardLink(target), 0o644)
    }
    /// A fifo, mode 0644.
    pub fn fifo(path: &str) -> Self {
        Self::new(path, EntryKind::Fifo, 0o644)
    }
    /// A character device, mode 0666.
    pub fn char_device(path: &str, major: u32, minor: u32) -> Self {
        Self::new(path, EntryKind::CharDevice { major, minor }, 0o666)
    }
    /// A block device, mode 0660.
    pub fn block_device(path: &str, major: u32, minor: u32) -> Self {
        Self::new(path, EntryKind::BlockDevice { major, minor }, 0o660)
    }
    /// Sets the permission bits (with setuid/setgid/sticky).
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }
    /// Sets the owner.
    pub fn owner(mut self, uid: u64, gid: u64) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }
    /// Sets the mtime (seconds since the epoch).
    pub fn mtime(mut self, mtime: u64) -> Self {
        self.mtime = mtime;
        self
    }
    /// Adds an extended attribute (`security.capability`, `user.foo`, `trusted.overlay.opaque`…).
    pub fn xattr(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.xattrs.push((name.to_owned(), value.into()));
        self
    }
}

/// A tar header written with its bytes chosen by the caller, for hostile archives the `tar`
/// crate's safe API refuses to write: names like `../../etc/x` or `/abs`, a size field that
/// lies about the data that follows, odd type flags. Fields left at their defaults give a
/// plain regular file owned by root, mode 0644.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawEntry {
    /// The name field, verbatim (at most 100 bytes; longer names go in `pax`, `path=…`).
    pub name: Vec<u8>,
    /// The type flag: b'0' file, b'1' hard link, b'2' symlink, b'3' char, b'4' block,
    /// b'5' dir, b'6' fifo… (0 means b'0').
    pub entry_type: u8,
    /// The link-name field, verbatim (at most 100 bytes).
    pub link_name: Vec<u8>,
    /// Permission bits.
    pub mode: u32,
    /// Owner uid.
    pub uid: u64,
    /// Owner gid.
    pub gid: u64,
    /// The size field; `None` means `data.len()`.
    pub size: Option<u64>,
    /// The bytes that follow the header (padded with zeros to a 512-byte block).
    pub data: Vec<u8>,
    /// PAX records written in an `x` header just before this one (`path`, `linkpath`,
    /// `SCHILY.xattr.…`, or anything else), in order.
    pub pax: Vec<(String, Vec<u8>)>,
}

/// One step of a [`LayerBuilder`].
#[derive(Clone, Debug)]
enum Item {
    Entry(Entry),
    Raw(RawEntry),
    Bytes(Vec<u8>),
}

/// Builds a layer: entries in the order added, then the end-of-archive blocks.
///
/// ```ignore
/// let layer = LayerBuilder::new()
///     .dir("etc")
///     .add(Entry::file("etc/motd", "hi\n").owner(1000, 1000))
///     .whiteout("etc/old")
///     .build(Compression::Gzip);
/// ```
#[derive(Clone, Debug, Default)]
pub struct LayerBuilder {
    items: Vec<Item>,
    no_trailer: bool,
}

impl LayerBuilder {
    /// An empty layer.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds an entry.
    // Not arithmetic: a builder step, named like the tar crate's `Builder::append` family.
    #[allow(clippy::should_implement_trait)]
    pub fn add(mut self, entry: Entry) -> Self {
        self.items.push(Item::Entry(entry));
        self
    }
    /// Adds a directory, mode 0755 (use [`Entry::dir`] with [`LayerBuilder::add`] for more).
    pub fn dir(self, path: &str) -> Self {
        self.add(Entry::dir(path))
    }
    /// Adds a regular file (mode 0644; use [`Entry::file`] with [`LayerBuilder::add`] for more).
    pub fn file(self, path: &str, contents: impl Into<Vec<u8>>) -> Self {
        self.add(Entry::file(path, contents))
    }
    /// Adds a symlink `path -> target`.
    pub fn symlink(self, path: &str, target: &str) -> Self {
        self.add(Entry::symlink(path, target))
    }
    /// Adds a hard link `path` to `target`.
    pub fn hardlink(self, path: &str, target: &str) -> Self {
        self.add(Entry::hardlink(path, target))
    }
    /// Adds the whiteout that deletes `path` from the layers below: an empty file
    /// `<dir>/.wh.<name>`.
    pub fn whiteout(self, path: &str) -> Self {
        let path = path.trim_start_matches('/').trim_end_matches('/');
        let (dir, name) = match path.rsplit_once('/') {
            Some((dir, name)) => (format!("{dir}/"), name),
            None => (String::new(), path),
        };
        self.add(Entry::file(&format!("{dir}.wh.{name}"), Vec::new()))
    }
    /// Adds the opaque marker `<dir>/.wh..wh..opq`: `dir` hides everything below it in lower
    /// layers (the directory itself stays).
    pub fn opaque(self, dir: &str) -> Self {
        let dir = dir.trim_start_matches('/').trim_end_matches('/');
        let path = if dir.is_empty() {
            ".wh..wh..opq".to_owned()
        } else {
            format!("{dir}/.wh..wh..opq")
        };
        self.add(Entry::file(&path, Vec::new()))
    }
    /// Appends the entries of `other` after these: one layer of two builders' entries (for
    /// example both of [`busybox_layers`]). A directory both list is written twice, which
    /// every tar reader takes as one.
    pub fn merge(mut self, other: LayerBuilder) -> Self {
        self.items.extend(other.items);
        self
    }
    /// Adds a header written verbatim (see [`RawEntry`]).
    pub fn raw(mut self, raw: RawEntry) -> Self {
        self.items.push(Item::Raw(raw));
        self
    }
    /// Appends bytes to the tar stream as they are (no header, no padding): for truncated or
    /// garbage archives.
    pub fn raw_bytes(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.items.push(Item::Bytes(bytes.into()));
        self
    }
    /// Leaves out the two zero blocks that end an archive.
    pub fn without_end_of_archive(mut self) -> Self {
        self.no_trailer = true;
        self
    }
    /// The uncompressed tar stream.
    pub fn tar(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for item in &self.items {
            match item {
                Item::Entry(entry) => write_entry(&mut out, entry),
                Item::Raw(raw) => write_raw(&mut out, raw),
                Item::Bytes(bytes) => out.extend_from_slice(bytes),
            }
        }
        if !self.no_trailer {
            out.extend_from_slice(&[0u8; 1024]);
        }
        out
    }
    /// Writes the tar stream and compresses it.
    pub fn build(&self, compression: Compression) -> Layer {
        Layer::from_tar(self.tar(), compression)
    }
    /// Writes the tar stream as a gzip blob of stored blocks ([`gzip_stored`]): the same
    /// digest whatever the build, for fixtures cached across runs (the benchmark's).
    pub fn build_gzip_stored(&self) -> Layer {
        let tar = self.tar();
        let blob = gzip_stored(&tar);
        Layer::from_parts(tar, blob, Compression::Gzip)
    }
}

/// A built layer: the tar, the blob as pushed, and both digests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    /// The uncompressed tar stream.
    pub tar: Vec<u8>,
    /// The blob (the tar, compressed).
    pub blob: Vec<u8>,
    /// `sha256:` of the uncompressed tar (what the config's `rootfs.diff_ids` lists).
    pub diff_id: String,
    /// `sha256:` of the blob (what the manifest lists).
    pub digest: String,
    /// The OCI media type for the compression; an [`ImageBuilder`] in Docker format writes the
    /// Docker name instead. Overwrite it to make a manifest lie about the layer.
    pub media_type: String,
    /// How `blob` was compressed.
    pub compression: Compression,
}

impl Layer {
    /// Compresses an existing tar stream (for example one written by another tool).
    pub fn from_tar(tar: Vec<u8>, compression: Compression) -> Self {
        let blob = compress(&tar, compression);
        Self::from_parts(tar, blob, compression)
    }

    /// A layer whose blob is given as is (it need not decompress to `tar`: hostile tests).
    pub fn from_parts(tar: Vec<u8>, blob: Vec<u8>, compression: Compression) -> Self {
        Layer {
            diff_id: sha256_digest(&tar),
            digest: sha256_digest(&blob),
            media_type: compression.oci_media_type().to_owned(),
            tar,
            blob,
            compression,
        }
    }
}

/// Compresses deterministically: gzip with mtime 0 and no file name, zstd level 3.
pub fn compress(tar: &[u8], compression: Compression) -> Vec<u8> {
    match compression {
        Compression::None => tar.to_vec(),
        Compression::Gzip => {
            let mut enc = flate2::GzBuilder::new()
                .mtime(0)
                .write(Vec::new(), flate2::Compression::default());
            enc.write_all(tar).expect("gzip into memory");
            enc.finish().expect("gzip into memory")
        }
        Compression::Zstd => zstd::encode_all(tar, 3).expect("zstd into memory"),
    }
}

/// gzip whose deflate stream is only stored blocks (no compression at all): byte-identical
/// whichever deflate backend the build links (`compress` is deterministic within one build,
/// but miniz_oxide and zlib-rs, which cargo picks by feature unification, write different
/// bytes), and as fast as a copy. For incompressible data it is what any gzip writes anyway:
/// zlib and miniz emit stored blocks when coding would not make a block smaller, so a
/// runtime decompresses the same kind of stream as from `gzip -6`. Header as [`compress`]
/// writes it: no mtime, no name, OS "unknown".
pub fn gzip_stored(data: &[u8]) -> Vec<u8> {
    const MAX_STORED: usize = 65_535;
    let blocks = data.len().div_ceil(MAX_STORED).max(1);
    let mut out = Vec::with_capacity(10 + data.len() + 5 * blocks + 8);
    out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
    let mut chunks = data.chunks(MAX_STORED).peekable();
    if chunks.peek().is_none() {
        // An empty input is one empty final block.
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(chunk) = chunks.next() {
        // BFINAL in bit 0, BTYPE 00 (stored); the rest of the byte pads to a byte boundary.
        out.push(u8::from(chunks.peek().is_none()));
        let len = chunk.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    let mut crc = flate2::Crc::new();
    crc.update(data);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// `len` incompressible bytes from `seed` (xorshift64): deterministic noise for layers whose
/// blob must be as large as their content.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    // A zero state would stay zero; any other seed gives a full-period sequence.
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = vec![0u8; len.next_multiple_of(8)];
    for word in out.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        word.copy_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The chain id of the top of `diff_ids` (bottom first), `sha256:…`: the first diff_id, then
/// `sha256(parent chain id + " " + diff_id)` upwards, as the OCI image spec defines it.
pub fn chain_id(diff_ids: &[String]) -> String {
    let mut ids = diff_ids.iter();
    let first = ids.next().expect("chain_id of no layers").clone();
    ids.fold(first, |parent, diff_id| {
        sha256_digest(format!("{parent} {diff_id}").as_bytes())
    })
}

/// The largest value an octal ustar numeric field of `width` bytes holds (with its NUL).
fn octal_max(width: u32) -> u64 {
    (1u64 << (3 * (width - 1))) - 1
}

fn pad_to_block(out: &mut Vec<u8>) {
    let rem = out.len() % 512;
    if rem != 0 {
        out.resize(out.len() + 512 - rem, 0);
    }
}

/// One PAX record: `"<len> <key>=<value>\n"`, where `<len>` counts the whole record, itself
/// included (so its own digit count matters).
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut rec = format!("{len} {key}=").into_bytes();
    rec.extend_from_slice(value);
    rec.push(b'\n');
    rec
}

/// Writes a PAX extended header (`x`) carrying `records` for the entry that follows.
fn write_pax(out: &mut Vec<u8>, records: &[(String, Vec<u8>)]) {
    if records.is_empty() {
        return;
    }
    let data: Vec<u8> = records.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
    let mut h = tar::Header::new_ustar();
    set_name_bytes(&mut h, b"././@PaxHeader");
    h.set_entry_type(tar::EntryType::XHeader);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(data.len() as u64);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(&data);
    pad_to_block(out);
}

fn set_name_bytes(h: &mut tar::Header, name: &[u8]) {
    let field = &mut h.as_old_mut().name;
    field.fill(0);
    let n = name.len().min(field.len());
    field[..n].copy_from_slice(&name[..n]);
}

fn set_link_bytes(h: &mut tar::Header, name: &[u8]) {
    let field = &mut h.as_old_mut().linkname;
    field.fill(0);
    let n = name.len().min(field.len());
    field[..n].copy_from_slice(&name[..n]);
}

fn write_entry(out: &mut Vec<u8>, e: &Entry) {
    let mut name = e.path.clone();
    if e.kind == EntryKind::Dir && !name.ends_with('/') {
        name.push('/');
    }
    let (etype, link, data): (tar::EntryType, &str, &[u8]) = match &e.kind {
        EntryKind::Dir => (tar::EntryType::Directory, "", &[]),
        EntryKind::File(bytes) => (tar::EntryType::Regular, "", bytes),
        EntryKind::Symlink(target) => (tar::EntryType::Symlink, target, &[]),
        EntryKind::HardLink(target) => (tar::EntryType::Link, target, &[]),
        EntryKind::Fifo => (tar::EntryType::Fifo, "", &[]),
        EntryKind::CharDevice { .. } => (tar::EntryType::Char, "", &[]),
        EntryKind::BlockDevice { .. } => (tar::EntryType::Block, "", &[]),
    };

    // Whatever does not fit the ustar fields goes in PAX records, which every reader we care
    // about (Go's archive/tar, the tar crate, GNU tar) prefers over the header fields.
    let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
    if name.len() > 100 {
        pax.push(("path".into(), name.clone().into_bytes()));
    }
    if link.len() > 100 {
        pax.push(("linkpath".into(), link.as_bytes().to_vec()));
    }
    if e.uid > octal_max(8) {
        pax.push(("uid".into(), e.uid.to_string().into_bytes()));
    }
    if e.gid > octal_max(8) {
        pax.push(("gid".into(), e.gid.to_string().into_bytes()));
    }
    if e.mtime > octal_max(12) {
        pax.push(("mtime".into(), e.mtime.to_string().into_bytes()));
    }
    if data.len() as u64 > octal_max(12) {
        pax.push(("size".into(), data.len().to_string().into_bytes()));
    }
    for (k, v) in &e.xattrs {
        pax.push((format!("SCHILY.xattr.{k}"), v.clone()));
    }
    write_pax(out, &pax);

    let mut h = tar::Header::new_ustar();
    set_name_bytes(&mut h, name.as_bytes());
    set_link_bytes(&mut h, link.as_bytes());
    h.set_entry_type(etype);
    h.set_mode(e.mode);
    h.set_uid(e.uid.min(octal_max(8)));
    h.set_gid(e.gid.min(octal_max(8)));
    h.set_mtime(e.mtime.min(octal_max(12)));
    h.set_size((data.len() as u64).min(octal_max(12)));
    if let EntryKind::CharDevice { major, minor } | EntryKind::BlockDevice { major, minor } = e.kind
    {
        h.set_device_major(major).expect("ustar device major");
        h.set_device_minor(minor).expect("ustar device minor");
    }
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    pad_to_block(out);
}

fn write_raw(out: &mut Vec<u8>, raw: &RawEntry) {
    write_pax(out, &raw.pax);
    let mut h = tar::Header::new_ustar();
    set_name_bytes(&mut h, &raw.name);
    set_link_bytes(&mut h, &raw.link_name);
    h.set_entry_type(tar::EntryType::new(if raw.entry_type == 0 {
        b'0'
    } else {
        raw.entry_type
    }));
    h.set_mode(if raw.mode == 0 { 0o644 } else { raw.mode });
    h.set_uid(raw.uid);
    h.set_gid(raw.gid);
    h.set_mtime(DEFAULT_MTIME);
    h.set_size(raw.size.unwrap_or(raw.data.len() as u64));
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(&raw.data);
    pad_to_block(out);
}

// ---------------------------------------------------------------------------------------------
// Images
// ---------------------------------------------------------------------------------------------

/// Which family of media types an image or index uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// OCI image spec (the default).
    #[default]
    Oci,
    /// Docker image manifest schema 2.
    Docker,
}

/// The platform an image is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// `amd64`, `arm64`, `arm`…
    pub architecture: String,
    /// `v7`, `v8`…, if any.
    pub variant: Option<String>,
}

impl Platform {
    /// `os/arch` or `os/arch/variant` (`"linux/arm/v7"`).
    pub fn parse(s: &str) -> Self {
        let mut parts = s.split('/');
        let os = parts.next().unwrap_or_default().to_owned();
        let architecture = parts
            .next()
            .unwrap_or_else(|| panic!("platform {s:?}: want os/arch[/variant]"))
            .to_owned();
        Platform {
            os,
            architecture,
            variant: parts.next().map(str::to_owned),
        }
    }
    /// The platform of this machine, in OCI's names (`linux/amd64`, `linux/arm64`).
    pub fn host() -> Self {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            other => other,
        };
        Platform {
            os: "linux".into(),
            architecture: arch.into(),
            variant: None,
        }
    }
    fn to_json(&self) -> Value {
        let mut p = json!({ "os": self.os, "architecture": self.architecture });
        if let Some(v) = &self.variant {
            p["variant"] = json!(v);
        }
        p
    }
}

/// Builds an image: config and manifest over [`Layer`]s.
#[derive(Clone, Debug)]
pub struct ImageBuilder {
    layers: Vec<Layer>,
    format: Format,
    platform: Platform,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    env: Vec<String>,
    user: Option<String>,
    working_dir: Option<String>,
    stop_signal: Option<String>,
    labels: BTreeMap<String, String>,
    diff_id_overrides: BTreeMap<usize, String>,
    config_extra: BTreeMap<String, Value>,
    annotations: BTreeMap<String, String>,
}

impl Default for ImageBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ImageBuilder {
    /// An image with no layers for this machine's platform, in OCI format.
    pub fn new() -> Self {
        ImageBuilder {
            layers: Vec::new(),
            format: Format::Oci,
            platform: Platform::host(),
            entrypoint: None,
            cmd: None,
            env: Vec::new(),
            user: None,
            working_dir: None,
            stop_signal: None,
            labels: BTreeMap::new(),
            diff_id_overrides: BTreeMap::new(),
            config_extra: BTreeMap::new(),
            annotations: BTreeMap::new(),
        }
    }
    /// Appends a layer (the first added is the bottom one).
    pub fn layer(mut self, layer: Layer) -> Self {
        self.layers.push(layer);
        self
    }
    /// OCI (default) or Docker schema 2 media types. Docker format requires gzip layers
    /// (schema 2 has no other layer type), except layers whose `media_type` was overwritten.
    pub fn format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }
    /// The platform (`"linux/arm64"`, `"linux/arm/v7"`) written into the config.
    pub fn platform(mut self, platform: &str) -> Self {
        self.platform = Platform::parse(platform);
        self
    }
    /// `config.Entrypoint`.
    pub fn entrypoint(mut self, args: &[&str]) -> Self {
        self.entrypoint = Some(args.iter().map(|s| s.to_string()).collect());
        self
    }
    /// `config.Cmd`.
    pub fn cmd(mut self, args: &[&str]) -> Self {
        self.cmd = Some(args.iter().map(|s| s.to_string()).collect());
        self
    }
    /// Adds `KEY=value` to `config.Env`.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push(format!("{key}={value}"));
        self
    }
    /// `config.User` (`"1000"`, `"alice"`, `"1000:50"`, `"www:www"`).
    pub fn user(mut self, user: &str) -> Self {
        self.user = Some(user.to_owned());
        self
    }
    /// `config.WorkingDir`.
    pub fn working_dir(mut self, dir: &str) -> Self {
        self.working_dir = Some(dir.to_owned());
        self
    }
    /// `config.StopSignal` (`"SIGUSR1"`).
    pub fn stop_signal(mut self, signal: &str) -> Self {
        self.stop_signal = Some(signal.to_owned());
        self
    }
    /// Adds a `config.Labels` entry.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }
    /// Adds a manifest annotation (OCI format only).
    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.annotations.insert(key.to_owned(), value.to_owned());
        self
    }
    /// Writes `diff_id` at `index` of the config's `rootfs.diff_ids` instead of the layer's
    /// real one (for images whose config does not match their layers).
    pub fn diff_id_override(mut self, index: usize, diff_id: &str) -> Self {
        self.diff_id_overrides.insert(index, diff_id.to_owned());
        self
    }
    /// Sets any key of the inner `config` object (`"ExposedPorts"`, `"Volumes"`…), or replaces
    /// one set by the other methods.
    pub fn config_field(mut self, key: &str, value: Value) -> Self {
        self.config_extra.insert(key.to_owned(), value);
        self
    }

    /// The config JSON, as [`ImageBuilder::build`] writes it.
    fn config_json(&self) -> Value {
        let mut inner = serde_json::Map::new();
        if !self.env.is_empty() {
            inner.insert("Env".into(), json!(self.env));
        }
        if let Some(v) = &self.entrypoint {
            inner.insert("Entrypoint".into(), json!(v));
        }
        if let Some(v) = &self.cmd {
            inner.insert("Cmd".into(), json!(v));
        }
        if let Some(v) = &self.user {
            inner.insert("User".into(), json!(v));
        }
        if let Some(v) = &self.working_dir {
            inner.insert("WorkingDir".into(), json!(v));
        }
        if let Some(v) = &self.stop_signal {
            inner.insert("StopSignal".into(), json!(v));
        }
        if !self.labels.is_empty() {
            inner.insert("Labels".into(), json!(self.labels));
        }
        for (k, v) in &self.config_extra {
            inner.insert(k.clone(), v.clone());
        }
        let diff_ids: Vec<String> = self
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                self.diff_id_overrides
                    .get(&i)
                    .cloned()
                    .unwrap_or_else(|| l.diff_id.clone())
            })
            .collect();
        let history: Vec<Value> = self
            .layers
            .iter()
            .enumerate()
            .map(|(i, _)| json!({ "created": CREATED, "created_by": format!("rootstock fixture layer {i}") }))
            .collect();
        let mut config = json!({
            "created": CREATED,
            "os": self.platform.os,
            "architecture": self.platform.architecture,
            "config": Value::Object(inner),
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
            "history": history,
        });
        if let Some(v) = &self.platform.variant {
            config["variant"] = json!(v);
        }
        config
    }

    /// Writes the config and the manifest.
    pub fn build(self) -> Image {
        let config = serde_json::to_vec(&self.config_json()).expect("config JSON");
        let config_digest = sha256_digest(&config);
        let (media_type, config_type) = match self.format {
            Format::Oci => (MEDIA_OCI_MANIFEST, MEDIA_OCI_CONFIG),
            Format::Docker => (MEDIA_DOCKER_MANIFEST, MEDIA_DOCKER_CONFIG),
        };
        let layers: Vec<Value> = self
            .layers
            .iter()
            .map(|l| {
                let media_type = match self.format {
                    Format::Docker if l.media_type == MEDIA_OCI_LAYER_GZIP => {
                        MEDIA_DOCKER_LAYER_GZIP
                    }
                    _ => l.media_type.as_str(),
                };
                json!({ "mediaType": media_type, "digest": l.digest, "size": l.blob.len() })
            })
            .collect();
        let mut manifest = json!({
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": { "mediaType": config_type, "digest": config_digest, "size": config.len() },
            "layers": layers,
        });
        if !self.annotations.is_empty() {
            manifest["annotations"] = json!(self.annotations);
        }
        let manifest = serde_json::to_vec(&manifest).expect("manifest JSON");
        Image {
            manifest_digest: sha256_digest(&manifest),
            manifest,
            config_digest,
            config,
            media_type: media_type.to_owned(),
            layers: self.layers,
            platform: self.platform,
        }
    }
}

/// A built image: everything a registry needs to serve it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// The config JSON blob.
    pub config: Vec<u8>,
    /// `sha256:` of `config` (the image id).
    pub config_digest: String,
    /// The manifest JSON.
    pub manifest: Vec<u8>,
    /// `sha256:` of `manifest`.
    pub manifest_digest: String,
    /// The manifest's media type.
    pub media_type: String,
    /// The layers, bottom first.
    pub layers: Vec<Layer>,
    /// The platform written into the config (and into an index entry by default).
    pub platform: Platform,
}

impl Image {
    /// Every blob the manifest references, `(digest, bytes)`: the config, then the layers.
    pub fn blobs(&self) -> Vec<(&str, &[u8])> {
        let mut blobs = vec![(self.config_digest.as_str(), self.config.as_slice())];
        blobs.extend(
            self.layers
                .iter()
                .map(|l| (l.digest.as_str(), l.blob.as_slice())),
        );
        blobs
    }
    /// The image id as `crictl images` shows it: the config digest.
    pub fn id(&self) -> &str {
        &self.config_digest
    }
    /// The sum of the config and layer blob sizes (the manifest excluded).
    pub fn size(&self) -> u64 {
        self.blobs().iter().map(|(_, b)| b.len() as u64).sum()
    }
}

/// Builds a multi-platform index (OCI) or manifest list (Docker) over images.
#[derive(Clone, Debug, Default)]
pub struct IndexBuilder {
    format: Format,
    entries: Vec<(Platform, Image)>,
}

impl IndexBuilder {
    /// An empty OCI index.
    pub fn new() -> Self {
        Self::default()
    }
    /// OCI index (default) or Docker manifest list.
    pub fn format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }
    /// Adds an image under the platform written in its config.
    pub fn image(mut self, image: Image) -> Self {
        self.entries.push((image.platform.clone(), image));
        self
    }
    /// Adds an image under `platform` (`"linux/arm/v7"`), whatever its config says.
    pub fn entry(mut self, platform: &str, image: Image) -> Self {
        self.entries.push((Platform::parse(platform), image));
        self
    }
    /// Writes the index.
    pub fn build(self) -> Index {
        let media_type = match self.format {
            Format::Oci => MEDIA_OCI_INDEX,
            Format::Docker => MEDIA_DOCKER_LIST,
        };
        let manifests: Vec<Value> = self
            .entries
            .iter()
            .map(|(platform, image)| {
                json!({
                    "mediaType": image.media_type,
                    "digest": image.manifest_digest,
                    "size": image.manifest.len(),
                    "platform": platform.to_json(),
                })
            })
            .collect();
        let index = json!({ "schemaVersion": 2, "mediaType": media_type, "manifests": manifests });
        let manifest = serde_json::to_vec(&index).expect("index JSON");
        Index {
            digest: sha256_digest(&manifest),
            manifest,
            media_type: media_type.to_owned(),
            images: self.entries.into_iter().map(|(_, image)| image).collect(),
        }
    }
}

/// A built index and the images it lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Index {
    /// The index JSON.
    pub manifest: Vec<u8>,
    /// `sha256:` of `manifest`.
    pub digest: String,
    /// The index's media type.
    pub media_type: String,
    /// The images, in index order.
    pub images: Vec<Image>,
}

// ---------------------------------------------------------------------------------------------
// The busybox image
// ---------------------------------------------------------------------------------------------

/// The applets [`busybox_image`] links into `/bin`.
pub const BUSYBOX_APPLETS: &[&str] = &[
    "[",
    "awk",
    "basename",
    "cat",
    "chmod",
    "chown",
    "cp",
    "cut",
    "date",
    "dd",
    "df",
    "dirname",
    "du",
    "echo",
    "env",
    "expr",
    "false",
    "find",
    "free",
    "grep",
    "groups",
    "head",
    "hostname",
    "httpd",
    "id",
    "ip",
    "kill",
    "ln",
    "ls",
    "md5sum",
    "mkdir",
    "mkfifo",
    "mknod",
    "mount",
    "mv",
    "nc",
    "nproc",
    "nslookup",
    "ping",
    "printf",
    "ps",
    "pwd",
    "readlink",
    "realpath",
    "rm",
    "rmdir",
    "sed",
    "seq",
    "sh",
    "sha256sum",
    "sleep",
    "sort",
    "stat",
    "sync",
    "tail",
    "tar",
    "tee",
    "test",
    "timeout",
    "top",
    "touch",
    "tr",
    "true",
    "umount",
    "uname",
    "uniq",
    "wc",
    "wget",
    "which",
    "whoami",
    "xargs",
    "yes",
];

/// `/etc/passwd` of [`busybox_image`].
pub const BUSYBOX_PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
www:x:33:33:www-data:/var/www:/bin/false
alice:x:1000:1000:Alice:/home/alice:/bin/sh
bob:x:1001:1001:Bob:/home/bob:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
";

/// `/etc/group` of [`busybox_image`]: alice is also in `staff` (50) and `video` (44); bob is
/// in `staff`.
pub const BUSYBOX_GROUP: &str = "\
root:x:0:
video:x:44:alice
staff:x:50:alice,bob
www:x:33:
alice:x:1000:
bob:x:1001:
nogroup:x:65534:
";

/// The two layers of [`busybox_image`], uncompressed-tar builders, for tests that want to
/// compress them differently or add entries.
pub fn busybox_layers() -> (LayerBuilder, LayerBuilder) {
    let mut base = LayerBuilder::new()
        .dir("bin")
        .add(Entry::file("bin/busybox", busybox_bytes()).mode(0o755));
    for applet in BUSYBOX_APPLETS {
        base = base.symlink(&format!("bin/{applet}"), "busybox");
    }
    let base = base
        .dir("dev")
        .dir("etc")
        .dir("proc")
        .dir("sys")
        .add(Entry::dir("root").mode(0o700))
        .add(Entry::dir("tmp").mode(0o1777))
        .dir("var")
        .dir("home")
        .add(Entry::dir("home/alice").owner(1000, 1000))
        .add(Entry::dir("home/bob").owner(1001, 1001));
    let users = LayerBuilder::new()
        .dir("etc")
        .file("etc/passwd", BUSYBOX_PASSWD)
        .file("etc/group", BUSYBOX_GROUP);
    (base, users)
}

/// The standard test image: layer 1 is `/bin/busybox` with applet symlinks
/// ([`BUSYBOX_APPLETS`]) and the usual top-level dirs (`/tmp` 1777, `/root` 0700, homes of the
/// test users); layer 2 is `/etc/passwd` and `/etc/group` ([`BUSYBOX_PASSWD`],
/// [`BUSYBOX_GROUP`]). Gzip layers, `PATH` set, `Cmd ["sh"]`, OCI format; refine further with the
/// builder. The gzip layers are built once per test process and cloned (compressing busybox
/// in a debug build takes a noticeable fraction of a second).
pub fn busybox_image() -> ImageBuilder {
    static LAYERS: OnceLock<(Layer, Layer)> = OnceLock::new();
    let (base, users) = LAYERS.get_or_init(|| {
        let (base, users) = busybox_layers();
        (
            base.build(Compression::Gzip),
            users.build(Compression::Gzip),
        )
    });
    ImageBuilder::new()
        .layer(base.clone())
        .layer(users.clone())
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .cmd(&["sh"])
}

// ---------------------------------------------------------------------------------------------
// OCI image layout
// ---------------------------------------------------------------------------------------------

/// Writes `image` as an OCI image layout in `dir` (created if missing): `oci-layout`,
/// `blobs/sha256/*`, and `index.json` naming the manifest `ref_name`
/// (`org.opencontainers.image.ref.name`), so `umoci unpack --image DIR:REF` finds it. Writing a
/// second image into the same dir adds it to `index.json`.
pub fn write_oci_layout(dir: &Path, image: &Image, ref_name: &str) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap_or_else(|e| panic!("creating {}: {e}", blobs.display()));
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
        .expect("writing oci-layout");
    let mut all: Vec<(&str, &[u8])> = image.blobs();
    all.push((&image.manifest_digest, &image.manifest));
    for (digest, bytes) in all {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        let path = blobs.join(hex);
        std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }
    let index_path = dir.join("index.json");
    let mut index: Value = match std::fs::read(&index_path) {
        Ok(bytes) => serde_json::from_slice(&bytes).expect("parsing existing index.json"),
        Err(_) => json!({ "schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX, "manifests": [] }),
    };
    let manifests = index["manifests"]
        .as_array_mut()
        .expect("index.json has a manifests array");
    manifests.push(json!({
        "mediaType": image.media_type,
        "digest": image.manifest_digest,
        "size": image.manifest.len(),
        "annotations": { "org.opencontainers.image.ref.name": ref_name },
    }));
    std::fs::write(
        &index_path,
        serde_json::to_vec(&index).expect("index.json JSON"),
    )
    .expect("writing index.json");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_length_counts_itself() {
        for value_len in [0, 1, 5, 90, 95, 96, 97, 98, 990, 995, 1000] {
            let rec = pax_record("path", &vec![b'a'; value_len]);
            let (len, _) = std::str::from_utf8(&rec).unwrap().split_once(' ').unwrap();
            assert_eq!(
                len.parse::<usize>().unwrap(),
                rec.len(),
                "value len {value_len}"
            );
        }
    }

    #[test]
    fn raw_entries_keep_hostile_names_and_lying_sizes() {
        let tar = LayerBuilder::new()
            .raw(RawEntry {
                name: b"../../etc/evil".to_vec(),
                size: Some(4096),
                data: b"abc".to_vec(),
                ..Default::default()
            })
            .tar();
        assert_eq!(&tar[..15], b"../../etc/evil\0");
        let header = tar::Header::from_byte_slice(&tar[..512]);
        assert_eq!(header.size().unwrap(), 4096);
        assert!(header.entry_type().is_file());
        assert_eq!(&tar[512..515], b"abc");
        assert_eq!(
            tar.len(),
            512 + 512 + 1024,
            "header, one data block, end of archive"
        );
    }

    #[test]
    fn stored_gzip_decodes_to_its_input_at_block_boundaries() {
        use std::io::Read;
        for len in [0, 1, 65_535, 65_536, 3 * 65_535 + 7] {
            let data = noise(len as u64, len);
            let blob = gzip_stored(&data);
            let mut back = Vec::new();
            flate2::read::GzDecoder::new(blob.as_slice())
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, data, "len {len}");
            assert_eq!(blob, gzip_stored(&data), "len {len}: not deterministic");
        }
        assert_ne!(noise(1, 64), noise(2, 64));
    }

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let a = sha256_digest(b"a");
        let b = sha256_digest(b"b");
        assert_eq!(chain_id(std::slice::from_ref(&a)), a);
        assert_eq!(
            chain_id(&[a.clone(), b.clone()]),
            sha256_digest(format!("{a} {b}").as_bytes())
        );
    }

    #[test]
    fn layers_are_deterministic_and_readable_by_the_tar_crate() {
        let build = || {
            LayerBuilder::new()
                .dir("/etc")
                .add(Entry::file("etc/x", "hello").owner(1000, 50).mode(0o4755))
                .add(Entry::file(&format!("d/{}", "n".repeat(150)), "long").xattr("user.k", "v"))
                .hardlink("etc/y", "etc/x")
                .symlink("etc/z", "/etc/x")
                .add(Entry::char_device("dev/null", 1, 3))
                .whiteout("etc/old")
                .opaque("var")
                .build(Compression::Gzip)
        };
        let a = build();
        assert_eq!(a, build());
        let mut archive = tar::Archive::new(a.tar.as_slice());
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            if path.starts_with("d/n") {
                let xattrs: Vec<_> = entry
                    .pax_extensions()
                    .unwrap()
                    .unwrap()
                    .map(|e| e.unwrap().key().unwrap().to_owned())
                    .collect();
                assert_eq!(xattrs, ["path", "SCHILY.xattr.user.k"]);
            }
            if path == "etc/x" {
                assert_eq!(entry.header().mode().unwrap(), 0o4755);
                assert_eq!(entry.header().uid().unwrap(), 1000);
            }
            seen.push(path);
        }
        assert_eq!(
            seen,
            [
                "etc/",
                "etc/x",
                &format!("d/{}", "n".repeat(150)),
                "etc/y",
                "etc/z",
                "dev/null",
                "etc/.wh.old",
                "var/.wh..wh..opq"
            ]
        );
    }
}
