//! The CRI container log format kubelet reads (`kubectl logs`):
//! `<RFC3339Nano timestamp> <stdout|stderr> <P|F> <content>\n`, one record per line, where
//! `P` marks a partial line continued by the next record of the same stream and `F` ends one.
//!
//! Written by hand: the format is four fields, and the monitor must stay tiny (no chrono).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest content of one record; longer lines are split into `P` records (containerd and
/// CRI-O use 16 KiB as well, so kubelet's reader sees familiar record sizes).
pub const MAX_RECORD_CONTENT: usize = 16 * 1024;

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The container's stdout.
    Stdout,
    /// The container's stderr.
    Stderr,
}

impl Stream {
    fn tag(self) -> &'static [u8] {
        match self {
            Stream::Stdout => b"stdout",
            Stream::Stderr => b"stderr",
        }
    }
}

/// Formats `t` as RFC 3339 in UTC with nine fractional digits (`2026-11-23T20:06:01.123456789Z`);
/// Go's `time.RFC3339Nano` parser, which kubelet uses, accepts any number of digits.
pub fn format_timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = (secs / 86_400) as i64;
    let sod = secs % 86_400;
    let (y, m, day) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60,
        d.subsec_nanos()
    )
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar
/// (the era-based algorithm published by Howard Hinnant).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Appends the records for one chunk read from `stream` to `out`. Complete lines become `F`
/// records; a trailing fragment without newline is written at once as `P` (as conmon does)
/// so that `kubectl logs -f` shows progress output without waiting for the newline. Lines
/// longer than [`MAX_RECORD_CONTENT`] are split into `P` records.
pub fn encode_chunk(out: &mut Vec<u8>, timestamp: &str, stream: Stream, chunk: &[u8]) {
    let mut rest = chunk;
    while !rest.is_empty() {
        let (line, complete, next) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], true, &rest[i + 1..]),
            None => (rest, false, &rest[rest.len()..]),
        };
        let mut pieces = line.chunks(MAX_RECORD_CONTENT).peekable();
        if line.is_empty() {
            // An empty line is still a line: kubelet must see the newline.
            push_record(out, timestamp, stream, complete, b"");
        }
        while let Some(piece) = pieces.next() {
            let last = pieces.peek().is_none();
            push_record(out, timestamp, stream, complete && last, piece);
        }
        rest = next;
    }
}

fn push_record(out: &mut Vec<u8>, timestamp: &str, stream: Stream, full: bool, content: &[u8]) {
    out.extend_from_slice(timestamp.as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.tag());
    out.extend_from_slice(if full { b" F " } else { b" P " });
    out.extend_from_slice(content);
    out.push(b'\n');
}

/// The log file, opened for appending; [`CriLogFile::reopen`] follows a rename by kubelet's
/// log rotation (`ReopenContainerLog`).
#[derive(Debug)]
pub struct CriLogFile {
    path: PathBuf,
    file: File,
}

impl CriLogFile {
    /// Opens (creating, mode 0640) `path` for appending.
    pub fn open(path: &Path) -> io::Result<Self> {
        Ok(Self {
            path: path.to_owned(),
            file: Self::open_file(path)?,
        })
    }

    fn open_file(path: &Path) -> io::Result<File> {
        OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .open(path)
    }

    /// Opens the path again (a new file if it was renamed away) and switches to it.
    pub fn reopen(&mut self) -> io::Result<()> {
        self.file = Self::open_file(&self.path)?;
        Ok(())
    }

    /// Writes already encoded records; one `write` per chunk keeps records whole for readers.
    pub fn write_records(&mut self, records: &[u8]) -> io::Result<()> {
        self.file.write_all(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn enc(chunk: &[u8]) -> String {
        let mut out = Vec::new();
        encode_chunk(&mut out, "T", Stream::Stdout, chunk);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(
            format_timestamp(UNIX_EPOCH),
            "1970-01-01T00:00:00.000000000Z"
        );
        let t = UNIX_EPOCH + Duration::new(951_782_400 + 3661, 5); // 2000-02-29 01:01:01
        assert_eq!(format_timestamp(t), "2000-02-29T01:01:01.000000005Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_798_761_599); // 2026-12-31T23:59:59
        assert_eq!(format_timestamp(t), "2026-12-31T23:59:59.000000000Z");
    }

    #[test]
    fn full_and_partial_lines() {
        assert_eq!(enc(b"a\nb\n"), "T stdout F a\nT stdout F b\n");
        assert_eq!(enc(b"a\nbc"), "T stdout F a\nT stdout P bc\n");
        assert_eq!(enc(b"\n"), "T stdout F \n");
    }

    #[test]
    fn long_lines_are_split() {
        let line = vec![b'x'; MAX_RECORD_CONTENT * 2 + 1];
        let mut chunk = line.clone();
        chunk.push(b'\n');
        let s = enc(&chunk);
        let tags: Vec<&str> = s.lines().map(|l| &l[9..10]).collect();
        assert_eq!(tags, ["P", "P", "F"]);
    }
}
