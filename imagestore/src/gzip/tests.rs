//! [`Members`] against what gzip tools write, and against damaged streams.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufReader, ErrorKind, Read, Write};
use std::process::{Command, Stdio};

use super::Members;

/// Text-like and incompressible bytes, so that members hold both kinds of deflate block.
fn sample(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if i % 4096 < 2048 {
                b"abcdefgh\n"[(x % 9) as usize]
            } else {
                x as u8
            }
        })
        .collect()
}

/// `data` through `cmd` (a compressor reading stdin, writing stdout).
fn run(cmd: &mut Command, data: &[u8]) -> Vec<u8> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = data.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", out.status);
    out.stdout
}

/// GNU gzip of a file: its member records the file's name and time.
fn gnu_gzip_of_a_file(data: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("layer.tar");
    std::fs::write(&path, data).unwrap();
    let gz = run(Command::new("gzip").arg("-c").arg(&path), b"");
    assert_ne!(gz[3] & super::FNAME, 0, "gzip names the member");
    gz
}

/// Every byte of `stream` through [`Members`], reading `chunk` bytes at a time over an
/// inner buffer of `capacity` bytes.
fn inflate(stream: &[u8], capacity: usize, chunk: usize) -> std::io::Result<Vec<u8>> {
    let mut members = Members::new(BufReader::with_capacity(capacity, stream));
    let (mut out, mut buf) = (Vec::new(), vec![0u8; chunk]);
    loop {
        match members.read(&mut buf)? {
            0 => return Ok(out),
            n => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// A member with every optional header field (extra, name, comment, header CRC): flate2's
/// builder writes all but the header CRC, which is computed and spliced in here.
fn member_with_every_field(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::GzBuilder::new()
        .extra(vec![7u8; 300])
        .filename("layer.tar")
        .comment("made by hand")
        .write(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    let mut gz = enc.finish().unwrap();
    let header_end = 10 + 2 + 300 + "layer.tar\0".len() + "made by hand\0".len();
    gz[3] |= super::FHCRC;
    let mut crc = flate2::Crc::new();
    crc.update(&gz[..header_end]);
    let crc16 = (crc.sum() as u16).to_le_bytes();
    gz.splice(header_end..header_end, crc16);
    gz
}

#[test]
fn inflates_what_gzip_tools_write_member_after_member() {
    let parts: Vec<Vec<u8>> = (0..5)
        .map(|i| sample(150_000 + i * 7_919, i as u64))
        .collect();
    // Python's GzipFile names the member, as `tarfile.open(name, "w:gz")` does.
    let python = "import gzip, sys\n\
        with gzip.GzipFile('layer.tar', 'wb', fileobj=sys.stdout.buffer, mtime=1) as f:\n\
        \x20   f.write(sys.stdin.buffer.read())";
    let members = [
        gnu_gzip_of_a_file(&parts[0]),
        run(Command::new("busybox").args(["gzip", "-c"]), &parts[1]),
        run(Command::new("python3").args(["-c", python]), &parts[2]),
        member_with_every_field(&parts[3]),
        // An empty member, as `gzip < /dev/null` writes.
        run(Command::new("gzip").args(["-n", "-c"]), b""),
        run(Command::new("gzip").args(["-9", "-c"]), &parts[4]),
    ];
    for m in &members {
        assert_eq!(&m[..2], [0x1f, 0x8b]);
    }
    let stream = members.concat();
    let expected = parts.concat();
    // Boundaries anywhere: in headers, in deflate blocks, in trailers, between members.
    for (capacity, chunk) in [(64 << 10, 64 << 10), (3, 1), (7, 4096), (8192, 5)] {
        let out = inflate(&stream, capacity, chunk).unwrap();
        assert!(
            out == expected,
            "capacity {capacity}, chunk {chunk}: output differs"
        );
    }
    // What flate2's own multi-member decoder (with CRC checks) makes of the same stream.
    let mut theirs = Vec::new();
    flate2::read::MultiGzDecoder::new(&stream[..])
        .read_to_end(&mut theirs)
        .unwrap();
    assert!(theirs == expected);
}

#[test]
fn the_member_crc_is_left_to_the_diff_id() {
    let data = sample(10_000, 9);
    let mut gz = run(Command::new("gzip").args(["-n", "-c"]), &data);
    let crc_at = gz.len() - 8;
    gz[crc_at] ^= 0xff;
    assert_eq!(inflate(&gz, 4096, 4096).unwrap(), data);
}

#[test]
fn damaged_streams_are_errors_naming_what_is_wrong() {
    let good = run(Command::new("gzip").args(["-n", "-c"]), &sample(50_000, 3));
    let with_name = gnu_gzip_of_a_file(&sample(1_000, 4));
    let mut bad_method = good.clone();
    bad_method[2] = 7;
    let mut reserved = good.clone();
    reserved[3] |= 0x20;
    let mut corrupt = good.clone();
    corrupt[10] = 0xff; // a reserved deflate block type
    let half = good[..good.len() / 2].to_vec();
    let no_trailer = good[..good.len() - 3].to_vec();
    let name_cut = with_name[..12].to_vec();
    let garbage_after = [&good[..], b"\0\0\0\0"].concat();
    let header_cut = [&good[..], &good[..5]].concat();
    let (cut, bad) = (ErrorKind::UnexpectedEof, ErrorKind::InvalidData);
    let cases: Vec<(&str, Vec<u8>, ErrorKind, &str)> = vec![
        ("empty", vec![], cut, "ends inside"),
        ("a tar, not gzip", vec![0u8; 1024], bad, "magic"),
        ("method", bad_method, bad, "method"),
        ("reserved flags", reserved, bad, "reserved"),
        ("corrupt deflate", corrupt, bad, "gzip member"),
        ("cut in the data", half, cut, "ends inside"),
        ("cut in the trailer", no_trailer, cut, "ends inside"),
        ("cut in the name", name_cut, cut, "ends inside"),
        ("garbage after", garbage_after, bad, "magic"),
        ("a second header cut", header_cut, cut, "ends inside"),
    ];
    for (what, stream, kind, says) in cases {
        // No stricter than the decoder this one replaced: flate2's refuses each of them too.
        let mut sink = Vec::new();
        let theirs = flate2::bufread::MultiGzDecoder::new(&stream[..]).read_to_end(&mut sink);
        assert!(theirs.is_err(), "{what}: flate2 takes it");
        for capacity in [3, 64 << 10] {
            let e = inflate(&stream, capacity, 4096).expect_err(what);
            assert_eq!(e.kind(), kind, "{what}: {e}");
            assert!(e.to_string().contains(says), "{what}: {e}");
        }
    }
}
