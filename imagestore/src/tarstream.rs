//! A streaming tar reader for layer blobs: ustar, GNU and PAX headers, GNU long names and
//! link names, GNU (`S`) and PAX (0.0, 0.1, 1.0) sparse files.
//!
//! Ours rather than the `tar` crate's because a layer is hostile input: every record that is
//! read into memory (PAX headers, GNU long names, sparse maps) is refused past
//! [`MAX_RECORD`] *before* it is read — Go's `archive/tar` caps them the same way, and
//! containerd inherits that — and sparse files come out as their data segments plus a map,
//! so the unpacker can leave holes as holes instead of writing zeros.
//!
//! The format references: POSIX `pax` (ustar and extended headers), GNU tar's manual
//! ("Basic Tar Format", "Sparse Formats"), and Go's `archive/tar/reader.go`, whose choices
//! (which PAX keys override the header, how empty values delete keys) we follow so a layer
//! reads here as it reads in containerd.

use std::io::{self, Read};

/// The largest PAX extended header, GNU long name/link or sparse map read into memory.
pub(crate) const MAX_RECORD: u64 = 1 << 20;
const BLOCK: usize = 512;
/// Sparse map entries of one file; each costs 16 bytes of memory.
const MAX_SPARSE_ENTRIES: usize = 1 << 16;

/// Why reading the archive stopped.
#[derive(Debug)]
pub(crate) enum TarError {
    /// A record exceeded a limit: what it was, its declared size, the limit.
    Limit {
        what: &'static str,
        size: u64,
        limit: u64,
    },
    /// The archive is not well-formed.
    Malformed(String),
    /// Reading the underlying stream failed.
    Io(io::Error),
}

impl From<io::Error> for TarError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            return TarError::Malformed("the archive ends in the middle of an entry".into());
        }
        TarError::Io(e)
    }
}

fn bad(msg: impl Into<String>) -> TarError {
    TarError::Malformed(msg.into())
}

/// An entry's type, after extension headers were folded into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EntryType {
    File,
    HardLink,
    Symlink,
    Char,
    Block,
    Dir,
    Fifo,
    /// Anything else, by its type flag.
    Other(u8),
}

/// One entry's header with its extensions applied.
#[derive(Debug, Clone)]
pub(crate) struct Header {
    pub path: Vec<u8>,
    pub link: Vec<u8>,
    pub etype: EntryType,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: i64,
    pub devmajor: u32,
    pub devminor: u32,
    /// The file's logical size (a sparse file's real size).
    pub size: u64,
    /// `SCHILY.xattr.*` records, in archive order (an empty value deletes, as in Go).
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// For a sparse file: `(offset, length)` of each data segment, in order; the entry's data
    /// is the segments concatenated.
    pub sparse: Option<Vec<(u64, u64)>>,
}

/// Reads entries one after the other; the data of the current entry is read with
/// [`TarReader::read_data`], and whatever is left of it is skipped by the next
/// [`TarReader::next_entry`].
pub(crate) struct TarReader<R> {
    inner: R,
    /// Data bytes of the current entry not read yet.
    data_left: u64,
    /// Padding after the current entry's data.
    pad_left: u64,
    done: bool,
    consumed: u64,
}

fn parse_num(field: &[u8]) -> Result<u64, TarError> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        // Base-256 (GNU): big-endian, the first byte's high bit is the marker.
        if field[0] == 0xff {
            return Err(bad("negative number in a header field"));
        }
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for b in &field[1..] {
            v = v
                .checked_mul(256)
                .and_then(|v| v.checked_add(u64::from(*b)))
                .ok_or_else(|| bad("number overflows 64 bits"))?;
        }
        return Ok(v);
    }
    let s: Vec<u8> = field
        .iter()
        .copied()
        .take_while(|b| *b != 0)
        .filter(|b| *b != b' ')
        .collect();
    if s.is_empty() {
        return Ok(0);
    }
    let s = std::str::from_utf8(&s).map_err(|_| bad("non-ASCII number field"))?;
    u64::from_str_radix(s, 8).map_err(|_| bad(format!("bad octal number {s:?}")))
}

fn cstr(field: &[u8]) -> Vec<u8> {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    field[..end].to_vec()
}

fn parse_dec(v: &[u8], key: &str) -> Result<u64, TarError> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("PAX {key}: not a number")))
}

/// `mtime` may carry a fraction ("1700000000.123"); the seconds are what a tree keeps.
fn parse_pax_time(v: &[u8]) -> Result<i64, TarError> {
    let s = std::str::from_utf8(v).map_err(|_| bad("PAX mtime: not ASCII"))?;
    let secs = s.split('.').next().unwrap_or("");
    secs.parse()
        .map_err(|_| bad(format!("PAX mtime {s:?}: not a number")))
}

/// Records of a PAX extended header: `"<len> <key>=<value>\n"`, in order.
fn parse_pax(data: &[u8]) -> Result<Vec<(String, Vec<u8>)>, TarError> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        if rest.iter().all(|b| *b == 0) {
            break;
        }
        let sp = rest
            .iter()
            .position(|b| *b == b' ')
            .ok_or_else(|| bad("PAX record without a length"))?;
        let len: usize = std::str::from_utf8(&rest[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("PAX record length is not a number"))?;
        if len <= sp + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err(bad("PAX record length does not match its content"));
        }
        let rec = &rest[sp + 1..len - 1];
        let eq = rec
            .iter()
            .position(|b| *b == b'=')
            .ok_or_else(|| bad("PAX record without '='"))?;
        let key = String::from_utf8(rec[..eq].to_vec()).map_err(|_| bad("PAX key not UTF-8"))?;
        out.push((key, rec[eq + 1..].to_vec()));
        rest = &rest[len..];
    }
    Ok(out)
}

fn header_checksum_ok(h: &[u8; BLOCK]) -> Result<bool, TarError> {
    let want = parse_num(&h[148..156])?;
    let unsigned: u64 = h
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u64::from(*b)
            }
        })
        .sum();
    // Some old tars summed signed bytes.
    let signed: i64 = h
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                i64::from(*b as i8)
            }
        })
        .sum();
    Ok(want == unsigned || i64::try_from(want).ok() == Some(signed))
}

/// Sparse map entries from a GNU header's (offset, numbytes) slots of 24 bytes each.
fn gnu_sparse_slots(slots: &[u8], map: &mut Vec<(u64, u64)>) -> Result<(), TarError> {
    for slot in slots.chunks_exact(24) {
        if slot[0] == 0 {
            continue;
        }
        map.push((parse_num(&slot[..12])?, parse_num(&slot[12..])?));
        if map.len() > MAX_SPARSE_ENTRIES {
            return Err(TarError::Limit {
                what: "sparse map entries",
                size: map.len() as u64,
                limit: MAX_SPARSE_ENTRIES as u64,
            });
        }
    }
    Ok(())
}

impl<R: Read> TarReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        TarReader {
            inner,
            data_left: 0,
            pad_left: 0,
            done: false,
            consumed: 0,
        }
    }

    /// Stored data bytes of the current entry not read yet (right after `next_entry`: all of
    /// them, so a budget can be charged before the data is written anywhere).
    pub(crate) fn data_left(&self) -> u64 {
        self.data_left
    }

    /// Bytes read from the stream so far.
    pub(crate) fn consumed(&self) -> u64 {
        self.consumed
    }

    fn read_some(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.inner.read(buf) {
                Ok(n) => {
                    self.consumed += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn read_full(&mut self, buf: &mut [u8]) -> Result<(), TarError> {
        let mut got = 0;
        while got < buf.len() {
            match self.read_some(&mut buf[got..])? {
                0 => return Err(bad("the archive ends in the middle of an entry")),
                n => got += n,
            }
        }
        Ok(())
    }

    fn skip(&mut self, mut n: u64) -> Result<(), TarError> {
        let mut buf = [0u8; 8192];
        while n > 0 {
            let want = n.min(buf.len() as u64) as usize;
            let got = self.read_some(&mut buf[..want])?;
            if got == 0 {
                return Err(bad("the archive ends in the middle of an entry"));
            }
            n -= got as u64;
        }
        Ok(())
    }

    fn block(&mut self) -> Result<Option<[u8; BLOCK]>, TarError> {
        let mut b = [0u8; BLOCK];
        let mut got = 0;
        while got < BLOCK {
            match self.read_some(&mut b[got..])? {
                0 if got == 0 => return Ok(None),
                0 => return Err(bad("the archive ends in the middle of a header")),
                n => got += n,
            }
        }
        Ok(Some(b))
    }

    /// The data of an extension entry (`size` bytes plus padding), refused past the cap
    /// before a byte of it is read.
    fn record(&mut self, what: &'static str, size: u64) -> Result<Vec<u8>, TarError> {
        if size > MAX_RECORD {
            return Err(TarError::Limit {
                what,
                size,
                limit: MAX_RECORD,
            });
        }
        let mut v = vec![0u8; size as usize];
        self.read_full(&mut v)?;
        self.skip(pad(size))?;
        Ok(v)
    }

    /// Read a decimal number terminated by `\n` from the data of a PAX 1.0 sparse file.
    fn sparse_line(&mut self, used: &mut u64) -> Result<u64, TarError> {
        let mut digits = Vec::new();
        loop {
            let mut b = [0u8; 1];
            self.read_full(&mut b)?;
            *used += 1;
            if *used > MAX_RECORD {
                return Err(TarError::Limit {
                    what: "sparse map",
                    size: *used,
                    limit: MAX_RECORD,
                });
            }
            if b[0] == b'\n' {
                break;
            }
            digits.push(b[0]);
        }
        parse_dec(&digits, "GNU.sparse map")
    }

    /// The next entry, `None` at the end of the archive.
    pub(crate) fn next_entry(&mut self) -> Result<Option<Header>, TarError> {
        if self.done {
            return Ok(None);
        }
        self.skip(self.data_left + self.pad_left)?;
        self.data_left = 0;
        self.pad_left = 0;
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        loop {
            let Some(h) = self.block()? else {
                // No end-of-archive blocks: accepted, as GNU tar and Go do.
                self.done = true;
                if long_name.is_some() || long_link.is_some() || !pax.is_empty() {
                    return Err(bad("extension headers with no entry after them"));
                }
                return Ok(None);
            };
            if h.iter().all(|b| *b == 0) {
                self.done = true;
                return Ok(None);
            }
            if !header_checksum_ok(&h)? {
                return Err(bad("header checksum mismatch"));
            }
            let flag = h[156];
            let size = parse_num(&h[124..136])?;
            match flag {
                b'L' => {
                    long_name = Some(cstr(&self.record("GNU long name", size)?));
                    continue;
                }
                b'K' => {
                    long_link = Some(cstr(&self.record("GNU long link name", size)?));
                    continue;
                }
                b'x' | b'X' => {
                    let data = self.record("PAX extended header", size)?;
                    pax.extend(parse_pax(&data)?);
                    continue;
                }
                b'g' => {
                    // Global headers are read (capped) and not applied, as Go's reader does.
                    self.record("PAX global header", size)?;
                    continue;
                }
                b'V' => {
                    self.skip(size + pad(size))?;
                    continue;
                }
                _ => {}
            }
            return self
                .entry(&h, flag, size, long_name, long_link, pax)
                .map(Some);
        }
    }

    fn entry(
        &mut self,
        h: &[u8; BLOCK],
        flag: u8,
        mut data_size: u64,
        long_name: Option<Vec<u8>>,
        long_link: Option<Vec<u8>>,
        pax: Vec<(String, Vec<u8>)>,
    ) -> Result<Header, TarError> {
        let ustar = &h[257..263] == b"ustar\0";
        let gnu = &h[257..263] == b"ustar ";
        let mut path = cstr(&h[..100]);
        if ustar {
            let prefix = cstr(&h[345..500]);
            if !prefix.is_empty() {
                let mut p = prefix;
                p.push(b'/');
                p.extend_from_slice(&path);
                path = p;
            }
        }
        let (devmajor, devminor) = if ustar || gnu {
            (parse_num(&h[329..337])?, parse_num(&h[337..345])?)
        } else {
            (0, 0)
        };
        let mut hd = Header {
            path,
            link: cstr(&h[157..257]),
            etype: match flag {
                b'0' | 0 | b'7' | b'S' => EntryType::File,
                b'1' => EntryType::HardLink,
                b'2' => EntryType::Symlink,
                b'3' => EntryType::Char,
                b'4' => EntryType::Block,
                b'5' | b'D' => EntryType::Dir,
                b'6' => EntryType::Fifo,
                other => EntryType::Other(other),
            },
            mode: (parse_num(&h[100..108])? & 0o7777) as u32,
            uid: parse_num(&h[108..116])?,
            gid: parse_num(&h[116..124])?,
            mtime: i64::try_from(parse_num(&h[136..148])?).unwrap_or(i64::MAX),
            devmajor: u32::try_from(devmajor).map_err(|_| bad("devmajor out of range"))?,
            devminor: u32::try_from(devminor).map_err(|_| bad("devminor out of range"))?,
            size: data_size,
            xattrs: Vec::new(),
            sparse: None,
        };
        // A pre-POSIX tar marks directories with a trailing slash on a regular file.
        if flag == 0 && hd.path.ends_with(b"/") {
            hd.etype = EntryType::Dir;
        }
        if let Some(n) = long_name {
            hd.path = n;
        }
        if let Some(l) = long_link {
            hd.link = l;
        }
        if flag == b'S' {
            if !gnu {
                return Err(bad("GNU sparse entry without a GNU header"));
            }
            let mut map = Vec::new();
            gnu_sparse_slots(&h[386..482], &mut map)?;
            let mut extended = h[482] != 0;
            while extended {
                let ext = self
                    .block()?
                    .ok_or_else(|| bad("the archive ends in a sparse header"))?;
                gnu_sparse_slots(&ext[..504], &mut map)?;
                extended = ext[504] != 0;
            }
            hd.size = parse_num(&h[483..495])?;
            hd.sparse = Some(map);
        }

        // PAX records override the header; for repeated keys the last one wins.
        let mut sparse_major: Option<u64> = None;
        let mut sparse_real: Option<u64> = None;
        let mut sparse_name: Option<Vec<u8>> = None;
        let mut pax_map: Vec<(u64, u64)> = Vec::new();
        let mut pending_offset: Option<u64> = None;
        for (key, value) in pax {
            match key.as_str() {
                "path" => hd.path = value,
                "linkpath" => hd.link = value,
                "size" => data_size = parse_dec(&value, "size")?,
                "uid" => hd.uid = parse_dec(&value, "uid")?,
                "gid" => hd.gid = parse_dec(&value, "gid")?,
                "mtime" => hd.mtime = parse_pax_time(&value)?,
                "GNU.sparse.major" => sparse_major = Some(parse_dec(&value, &key)?),
                "GNU.sparse.size" | "GNU.sparse.realsize" => {
                    sparse_real = Some(parse_dec(&value, &key)?)
                }
                "GNU.sparse.name" => sparse_name = Some(value),
                "GNU.sparse.offset" => pending_offset = Some(parse_dec(&value, &key)?),
                "GNU.sparse.numbytes" => {
                    let off = pending_offset
                        .take()
                        .ok_or_else(|| bad("GNU.sparse.numbytes without an offset"))?;
                    pax_map.push((off, parse_dec(&value, &key)?));
                }
                "GNU.sparse.map" => {
                    let nums: Vec<u64> = std::str::from_utf8(&value)
                        .map_err(|_| bad("GNU.sparse.map not ASCII"))?
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(|s| s.parse().map_err(|_| bad("GNU.sparse.map: not a number")))
                        .collect::<Result<_, _>>()?;
                    if !nums.len().is_multiple_of(2) {
                        return Err(bad("GNU.sparse.map has an odd number of values"));
                    }
                    pax_map = nums.chunks(2).map(|c| (c[0], c[1])).collect();
                }
                k => {
                    if let Some(name) = k.strip_prefix("SCHILY.xattr.") {
                        hd.xattrs.retain(|(n, _)| n != name);
                        if !value.is_empty() {
                            hd.xattrs.push((name.to_string(), value));
                        }
                    }
                }
            }
        }
        if pax_map.len() > MAX_SPARSE_ENTRIES {
            return Err(TarError::Limit {
                what: "sparse map entries",
                size: pax_map.len() as u64,
                limit: MAX_SPARSE_ENTRIES as u64,
            });
        }
        if hd.sparse.is_none() {
            hd.size = data_size;
        }
        if let Some(real) = sparse_real {
            if let Some(name) = sparse_name {
                hd.path = name;
            }
            let map = if sparse_major == Some(1) {
                // PAX 1.0: the map is at the start of the data, padded to a block.
                let mut used = 0u64;
                let n = self.sparse_line(&mut used)? as usize;
                if n > MAX_SPARSE_ENTRIES {
                    return Err(TarError::Limit {
                        what: "sparse map entries",
                        size: n as u64,
                        limit: MAX_SPARSE_ENTRIES as u64,
                    });
                }
                let mut map = Vec::with_capacity(n);
                for _ in 0..n {
                    let off = self.sparse_line(&mut used)?;
                    let len = self.sparse_line(&mut used)?;
                    map.push((off, len));
                }
                let padded = used + pad(used);
                self.skip(pad(used))?;
                data_size = data_size
                    .checked_sub(padded)
                    .ok_or_else(|| bad("sparse map larger than the entry"))?;
                map
            } else {
                pax_map
            };
            hd.size = real;
            hd.sparse = Some(map);
        }
        if let Some(map) = &hd.sparse {
            let mut end = 0u64;
            let mut total = 0u64;
            for (off, len) in map {
                if *off < end {
                    return Err(bad("sparse segments overlap or are out of order"));
                }
                end = off
                    .checked_add(*len)
                    .ok_or_else(|| bad("sparse segment overflows"))?;
                total += len;
            }
            if end > hd.size || total != data_size {
                return Err(bad("sparse map does not match the entry's sizes"));
            }
        }
        // Only files carry data; links and directories may declare a size (hard links in
        // some old tars) that is skipped.
        self.data_left = data_size;
        self.pad_left = pad(data_size);
        if !matches!(hd.etype, EntryType::File) {
            hd.size = 0;
        }
        Ok(hd)
    }

    /// Read the current entry's (stored) data; `Ok(0)` at its end.
    pub(crate) fn read_data(&mut self, buf: &mut [u8]) -> Result<usize, TarError> {
        if self.data_left == 0 {
            return Ok(0);
        }
        let want = self.data_left.min(buf.len() as u64) as usize;
        let n = self.read_some(&mut buf[..want])?;
        if n == 0 {
            return Err(bad("the archive ends in the middle of an entry"));
        }
        self.data_left -= n as u64;
        Ok(n)
    }
}

/// Padding after `size` bytes, to the next block.
fn pad(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn header(name: &str, flag: u8, size: u64) -> [u8; BLOCK] {
        let mut h = [0u8; BLOCK];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(b"0000644");
        h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
        h[156] = flag;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|b| u64::from(*b)).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        h
    }

    #[test]
    fn oversized_pax_header_is_refused_before_reading() {
        let mut tar = header("././@PaxHeader", b'x', MAX_RECORD + 1).to_vec();
        tar.extend_from_slice(&[0u8; 1024]);
        let mut r = TarReader::new(&tar[..]);
        match r.next_entry() {
            Err(TarError::Limit { what, .. }) => assert_eq!(what, "PAX extended header"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pax_path_and_xattrs_override_header() {
        let rec = |k: &str, v: &str| {
            let body = format!(" {k}={v}\n");
            let mut n = body.len() + 1;
            if format!("{n}{body}").len() != n {
                n += 1;
            }
            format!("{n}{body}")
        };
        let pax = format!(
            "{}{}",
            rec("path", "a/long"),
            rec("SCHILY.xattr.user.x", "1")
        );
        let mut tar = header("PaxHeader", b'x', pax.len() as u64).to_vec();
        tar.extend_from_slice(pax.as_bytes());
        tar.resize(tar.len() + pad(pax.len() as u64) as usize, 0);
        tar.extend_from_slice(&header("short", b'0', 3));
        tar.extend_from_slice(b"abc");
        tar.resize(tar.len() + 509 + 1024, 0);
        let mut r = TarReader::new(&tar[..]);
        let h = r.next_entry().unwrap().unwrap();
        assert_eq!(h.path, b"a/long");
        assert_eq!(h.xattrs, vec![("user.x".to_string(), b"1".to_vec())]);
        let mut buf = [0u8; 10];
        assert_eq!(r.read_data(&mut buf).unwrap(), 3);
        assert!(r.next_entry().unwrap().is_none());
    }

    #[test]
    fn base256_numbers_parse() {
        let mut f = [0u8; 12];
        f[0] = 0x80;
        f[11] = 5;
        assert_eq!(parse_num(&f).unwrap(), 5);
        assert_eq!(parse_num(b"0000644 \0").unwrap(), 0o644);
    }
}
