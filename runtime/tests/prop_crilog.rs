//! Property tests of CRI log lines (#19): whatever bytes a container writes, the records
//! we append are lines kubelet's reader (`parseCRILog`: timestamp, stream, P|F tag, content)
//! takes apart, and joining their contents gives back exactly what each stream wrote.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proptest::prelude::*;
use rootstock_runtime::crilog::{MAX_RECORD_CONTENT, Stream, encode_chunk, format_timestamp};

const CASES: u32 = 10_000;

/// A chunk as a pipe read returns it: short ones with newlines, binary and CRs; now and
/// then a line longer than a record.
fn chunk() -> impl Strategy<Value = Vec<u8>> {
    let bytes = proptest::sample::select(vec![b'a', b'z', b'\n', b'\r', b' ', 0, 0xff, 0xc3]);
    prop_oneof![
        20 => proptest::collection::vec(bytes, 0..64),
        1 => (1..3 * MAX_RECORD_CONTENT, any::<bool>()).prop_map(|(n, nl)| {
            let mut v = vec![b'x'; n];
            if nl {
                v.push(b'\n');
            }
            v
        }),
    ]
}

/// kubelet's reading of one record: (stream, partial, content).
fn parse_record(line: &[u8]) -> (String, bool, Vec<u8>) {
    let mut parts = line.splitn(4, |&b| b == b' ');
    let ts = std::str::from_utf8(parts.next().unwrap()).unwrap();
    assert!(is_rfc3339_nano(ts), "timestamp {ts:?}");
    let stream = std::str::from_utf8(parts.next().unwrap())
        .unwrap()
        .to_owned();
    let tag = parts.next().expect("no tag");
    let content = parts.next().expect("no content field").to_vec();
    assert!(tag == b"P" || tag == b"F", "tag {tag:?}");
    (stream, tag == b"P", content)
}

/// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`.
fn is_rfc3339_nano(ts: &str) -> bool {
    let b = ts.as_bytes();
    b.len() == 30
        && b.iter().enumerate().all(|(i, &c)| match i {
            4 | 7 => c == b'-',
            10 => c == b'T',
            13 | 16 => c == b':',
            19 => c == b'.',
            29 => c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

/// Days since the epoch of a civil date, counted the slow way (a reference).
fn days_of(y: i64, m: u32, d: u32) -> i64 {
    let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let mut days: i64 = (1970..y).map(|y| if leap(y) { 366 } else { 365 }).sum();
    let month_days = [
        31,
        if leap(y) { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    days += month_days[..(m - 1) as usize].iter().sum::<i64>();
    days + i64::from(d) - 1
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Interleaved chunks of both streams: every record is one well-formed line of at most
    /// one record's content, and each stream's contents joined (F adding the newline) are
    /// its bytes.
    #[test]
    fn records_reassemble_to_each_streams_bytes(
        chunks in proptest::collection::vec((any::<bool>(), chunk()), 0..12),
        secs in 0u64..16_000_000_000,
        nanos in 0u32..1_000_000_000,
    ) {
        let ts = format_timestamp(UNIX_EPOCH + Duration::new(secs, nanos));
        let mut out = Vec::new();
        let (mut wrote_out, mut wrote_err) = (Vec::new(), Vec::new());
        for (is_err, c) in &chunks {
            let stream = if *is_err { Stream::Stderr } else { Stream::Stdout };
            encode_chunk(&mut out, &ts, stream, c);
            if *is_err { wrote_err.extend_from_slice(c) } else { wrote_out.extend_from_slice(c) }
        }
        prop_assert!(out.is_empty() || out.ends_with(b"\n"));
        let (mut got_out, mut got_err) = (Vec::new(), Vec::new());
        let records = out.strip_suffix(b"\n").map(|o| o.split(|&b| b == b'\n'));
        for line in records.into_iter().flatten() {
            let (stream, partial, content) = parse_record(line);
            prop_assert!(content.len() <= MAX_RECORD_CONTENT);
            let got = match stream.as_str() {
                "stdout" => &mut got_out,
                "stderr" => &mut got_err,
                other => return Err(TestCaseError::fail(format!("stream {other:?}"))),
            };
            got.extend_from_slice(&content);
            if !partial {
                got.push(b'\n');
            }
        }
        prop_assert_eq!(got_out, wrote_out);
        prop_assert_eq!(got_err, wrote_err);
    }

    /// Timestamps are RFC 3339 in UTC with nine digits, and name the right day and time.
    #[test]
    fn timestamps_are_the_instant_in_rfc3339(secs in 0u64..16_000_000_000, nanos in 0u32..1_000_000_000) {
        let ts = format_timestamp(UNIX_EPOCH + Duration::new(secs, nanos));
        prop_assert!(is_rfc3339_nano(&ts), "{ts}");
        let n = |r: std::ops::Range<usize>| ts[r].parse::<i64>().unwrap();
        let days = days_of(n(0..4), n(5..7) as u32, n(8..10) as u32);
        prop_assert!((1..=12).contains(&n(5..7)) && (1..=31).contains(&n(8..10)), "{ts}");
        let back = days * 86_400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19);
        prop_assert_eq!(back, secs as i64, "{}", ts);
        prop_assert_eq!(n(20..29), i64::from(nanos));
        // Before the epoch is clamped, never a panic.
        let _ = format_timestamp(SystemTime::UNIX_EPOCH - Duration::from_secs(secs));
    }
}
