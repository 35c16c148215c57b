#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

fn h(pairs: &[(&str, &str)]) -> Headers {
    pairs
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Two SYN_STREAM frames written by Python's zlib (C zlib, `zdict=` the SPDY/3 dictionary,
/// Z_SYNC_FLUSH after each block): an independent encoder, and the second block only
/// decodes if the zlib stream is carried across frames.
#[test]
fn decodes_header_blocks_compressed_by_c_zlib_across_frames() {
    let f1 = unhex(
        "80030001000000280000000100000000000078bbe3c6a7c202a62346703a2b294a4dcc851625aca9a08006000000ffff",
    );
    let f2 = unhex(
        "80030001000000280000000300000000000002651c0c2960624ec90797d1ec15bab9a5392599e082942109000000ffff",
    );
    let mut c = Codec::new();
    let (frame, used) = c.decode(&f1).unwrap().unwrap();
    assert_eq!(used, f1.len());
    assert_eq!(
        frame,
        Frame::SynStream {
            stream_id: 1,
            associated_id: 0,
            priority: 0,
            fin: false,
            unidirectional: false,
            headers: h(&[("streamtype", "error")]),
        }
    );
    let (frame, _) = c.decode(&f2).unwrap().unwrap();
    let Frame::SynStream { headers, .. } = frame else {
        panic!("{frame:?}")
    };
    assert_eq!(
        headers,
        h(&[("streamtype", "stdout"), ("x-multi", "a"), ("x-multi", "b")])
    );
}

#[test]
fn dictionary_is_the_spdy3_one() {
    assert_eq!(SPDY3_DICTIONARY.len(), 1423);
    // Its Adler-32, as the FDICT field of every SPDY/3 header stream carries it.
    let (mut a, mut b) = (1u32, 0u32);
    for &x in SPDY3_DICTIONARY {
        a = (a + u32::from(x)) % 65521;
        b = (b + a) % 65521;
    }
    assert_eq!((b << 16) | a, 0xe3c6_a7c2);
}

#[test]
fn every_frame_round_trips_and_header_state_carries_over() {
    let frames = vec![
        Frame::SynStream {
            stream_id: 5,
            associated_id: 0,
            priority: 2,
            fin: true,
            unidirectional: true,
            headers: h(&[("streamtype", "stdin"), ("port", "8080")]),
        },
        Frame::SynReply {
            stream_id: 5,
            fin: false,
            headers: Vec::new(),
        },
        Frame::Headers {
            stream_id: 5,
            fin: true,
            headers: h(&[("streamtype", "stdin")]),
        },
        Frame::RstStream {
            stream_id: 7,
            status: RST_REFUSED_STREAM,
        },
        Frame::Settings(vec![(1, 7, 65536), (0, 4, 100)]),
        Frame::Ping(9),
        Frame::GoAway {
            last_good_stream_id: 7,
            status: 0,
        },
        Frame::WindowUpdate {
            stream_id: 0,
            delta: 1 << 20,
        },
        Frame::Data {
            stream_id: 5,
            fin: true,
            data: vec![7; 70_000],
        },
        Frame::Data {
            stream_id: 3,
            fin: false,
            data: Vec::new(),
        },
    ];
    let (mut tx, mut rx) = (Codec::new(), Codec::new());
    let mut wire = Vec::new();
    for f in &frames {
        tx.encode(f, &mut wire).unwrap();
    }
    let mut pos = 0;
    for f in &frames {
        let (got, used) = rx.decode(&wire[pos..]).unwrap().expect("a whole frame");
        // One byte short, the decoder waits for the rest instead of failing.
        assert!(rx.decode(&wire[pos..pos + used - 1]).unwrap().is_none());
        assert_eq!(&got, f);
        pos += used;
    }
    assert_eq!(pos, wire.len());
}

#[test]
fn refuses_bad_version_oversized_frames_and_garbage_headers() {
    let mut c = Codec::new();
    let bad_version = [0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1];
    assert_eq!(c.decode(&bad_version), Err(SpdyError::Version(2)));
    let huge = [0, 0, 0, 1, 0, 0x20, 0, 0];
    assert!(matches!(c.decode(&huge), Err(SpdyError::TooLarge(_))));
    let mut garbage = vec![0x80, 3, 0, 1, 0, 0, 0, 16];
    garbage.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6]);
    assert!(matches!(c.decode(&garbage), Err(SpdyError::Compression(_))));
    let short_ping = [0x80, 3, 0, 6, 0, 0, 0, 2, 0, 0];
    assert!(matches!(
        Codec::new().decode(&short_ping),
        Err(SpdyError::Malformed(_))
    ));
}

#[test]
fn stream_table_enforces_client_ids_and_half_close() {
    let mut s = Streams::default();
    assert_eq!(s.open(2, Vec::new(), false), Err(RST_PROTOCOL_ERROR));
    assert_eq!(s.open(3, Vec::new(), false), Ok(()));
    assert_eq!(s.open(3, Vec::new(), false), Err(RST_STREAM_IN_USE));
    assert_eq!(s.open(1, Vec::new(), false), Err(RST_PROTOCOL_ERROR));
    assert_eq!(s.data(9, false), Err(RST_PROTOCOL_ERROR));
    assert_eq!(s.data(3, true), Ok(()));
    assert_eq!(s.data(3, false), Err(RST_PROTOCOL_ERROR));
    assert!(s.get(3).is_some_and(|st| st.remote_closed));
    assert_eq!(s.last_id(), 3);
    assert!(s.reset(3).is_some());
    assert!(s.get(3).is_none());
}
