//! SPDY/3.1 framing, as spoken by kubelet's and client-go's streaming (moby/spdystream):
//! frame encoding and decoding, the zlib-compressed header blocks with the SPDY/3
//! dictionary, and the per-connection stream table. No I/O here: [`Codec`] turns bytes
//! into [`Frame`]s and back, [`Streams`] checks what the peer may do; `session.rs` drives
//! them over a socket.
//!
//! Wire format (SPDY/3 draft, section 2.2): a control frame starts with the bit C=1, the
//! version (3) and a 16-bit type; a data frame with C=0 and the 31-bit stream id. Both
//! continue with 8 bits of flags and a 24-bit length.

use std::collections::HashMap;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};

use super::dictionary::SPDY3_DICTIONARY;

/// Header pairs, names lowercase. A name with several values appears several times.
pub type Headers = Vec<(String, String)>;

pub const FLAG_FIN: u8 = 0x01;
const FLAG_UNIDIRECTIONAL: u8 = 0x02;

const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_SETTINGS: u16 = 4;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const TYPE_HEADERS: u16 = 8;
const TYPE_WINDOW_UPDATE: u16 = 9;

/// RST_STREAM status codes used here.
pub const RST_PROTOCOL_ERROR: u32 = 1;
pub const RST_REFUSED_STREAM: u32 = 3;
pub const RST_STREAM_IN_USE: u32 = 8;

/// The largest frame payload accepted (the 24-bit length allows 16 MiB): clients send
/// stdin in 32 KiB writes, so 1 MiB bounds memory per frame without refusing real peers.
pub const MAX_FRAME_PAYLOAD: usize = 1 << 20;

/// A decompressed header block larger than this is refused (a zlib bomb costs 1000:1).
const MAX_HEADER_BLOCK: usize = 256 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        associated_id: u32,
        priority: u8,
        fin: bool,
        unidirectional: bool,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        fin: bool,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    /// (flags, id, value) entries; nothing here needs their meaning.
    Settings(Vec<(u8, u32, u32)>),
    Ping(u32),
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        fin: bool,
        headers: Headers,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    Data {
        stream_id: u32,
        fin: bool,
        data: Vec<u8>,
    },
    /// A control frame of a type SPDY/3 does not define: the spec says ignore it.
    Unknown(u16),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpdyError {
    #[error("SPDY version {0} is not supported (only 3)")]
    Version(u16),
    #[error("SPDY frame of {0} bytes exceeds the {MAX_FRAME_PAYLOAD}-byte limit")]
    TooLarge(usize),
    #[error("malformed SPDY frame: {0}")]
    Malformed(&'static str),
    #[error("SPDY header block: {0}")]
    Compression(String),
}

/// One connection's framing state: the two zlib streams (one per direction) that carry
/// every header block of the connection, each primed with the SPDY/3 dictionary.
pub struct Codec {
    inflate: Decompress,
    deflate: Compress,
}

impl Default for Codec {
    fn default() -> Self {
        Self::new()
    }
}

impl Codec {
    pub fn new() -> Self {
        Self {
            inflate: Decompress::new(true),
            deflate: new_deflate(),
        }
    }

    /// Decodes the first frame in `buf`: `Ok(None)` when more bytes are needed, else the
    /// frame and how many bytes it took.
    pub fn decode(&mut self, buf: &[u8]) -> Result<Option<(Frame, usize)>, SpdyError> {
        if buf.len() < 8 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([0, buf[5], buf[6], buf[7]]) as usize;
        if len > MAX_FRAME_PAYLOAD {
            return Err(SpdyError::TooLarge(len));
        }
        if buf.len() < 8 + len {
            return Ok(None);
        }
        let flags = buf[4];
        let p = &buf[8..8 + len];
        let fin = flags & FLAG_FIN != 0;
        let frame = if buf[0] & 0x80 == 0 {
            Frame::Data {
                stream_id: be32(buf) & 0x7fff_ffff,
                fin,
                data: p.to_vec(),
            }
        } else {
            let version = u16::from_be_bytes([buf[0], buf[1]]) & 0x7fff;
            if version != 3 {
                return Err(SpdyError::Version(version));
            }
            self.control(u16::from_be_bytes([buf[2], buf[3]]), flags, p)?
        };
        Ok(Some((frame, 8 + len)))
    }

    fn control(&mut self, kind: u16, flags: u8, p: &[u8]) -> Result<Frame, SpdyError> {
        let fin = flags & FLAG_FIN != 0;
        let need = |n: usize| {
            if p.len() < n {
                Err(SpdyError::Malformed("control frame too short"))
            } else {
                Ok(())
            }
        };
        Ok(match kind {
            TYPE_SYN_STREAM => {
                need(10)?;
                Frame::SynStream {
                    stream_id: be32(p) & 0x7fff_ffff,
                    associated_id: be32(&p[4..]) & 0x7fff_ffff,
                    priority: p[8] >> 5,
                    fin,
                    unidirectional: flags & FLAG_UNIDIRECTIONAL != 0,
                    headers: self.inflate_headers(&p[10..])?,
                }
            }
            TYPE_SYN_REPLY | TYPE_HEADERS => {
                need(4)?;
                let stream_id = be32(p) & 0x7fff_ffff;
                let headers = self.inflate_headers(&p[4..])?;
                if kind == TYPE_SYN_REPLY {
                    Frame::SynReply {
                        stream_id,
                        fin,
                        headers,
                    }
                } else {
                    Frame::Headers {
                        stream_id,
                        fin,
                        headers,
                    }
                }
            }
            TYPE_RST_STREAM => {
                need(8)?;
                Frame::RstStream {
                    stream_id: be32(p) & 0x7fff_ffff,
                    status: be32(&p[4..]),
                }
            }
            TYPE_SETTINGS => {
                need(4)?;
                let n = be32(p) as usize;
                if p.len() != 4 + n.saturating_mul(8) {
                    return Err(SpdyError::Malformed("SETTINGS length"));
                }
                let entries = p[4..]
                    .chunks_exact(8)
                    .map(|e| (e[0], be32(e) & 0xff_ffff, be32(&e[4..])))
                    .collect();
                Frame::Settings(entries)
            }
            TYPE_PING => {
                need(4)?;
                Frame::Ping(be32(p))
            }
            TYPE_GOAWAY => {
                need(8)?;
                Frame::GoAway {
                    last_good_stream_id: be32(p) & 0x7fff_ffff,
                    status: be32(&p[4..]),
                }
            }
            TYPE_WINDOW_UPDATE => {
                need(8)?;
                Frame::WindowUpdate {
                    stream_id: be32(p) & 0x7fff_ffff,
                    delta: be32(&p[4..]) & 0x7fff_ffff,
                }
            }
            other => Frame::Unknown(other),
        })
    }

    /// Appends `frame`'s encoding to `out`.
    pub fn encode(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Result<(), SpdyError> {
        let (kind, flags, payload) = match frame {
            Frame::Data {
                stream_id,
                fin,
                data,
            } => {
                if data.len() > MAX_FRAME_PAYLOAD {
                    return Err(SpdyError::TooLarge(data.len()));
                }
                out.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
                out.push(if *fin { FLAG_FIN } else { 0 });
                out.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
                out.extend_from_slice(data);
                return Ok(());
            }
            Frame::SynStream {
                stream_id,
                associated_id,
                priority,
                fin,
                unidirectional,
                headers,
            } => {
                let mut p = Vec::new();
                p.extend_from_slice(&stream_id.to_be_bytes());
                p.extend_from_slice(&associated_id.to_be_bytes());
                p.extend_from_slice(&[priority << 5, 0]);
                p.extend_from_slice(&self.deflate_headers(headers)?);
                let mut flags = if *fin { FLAG_FIN } else { 0 };
                if *unidirectional {
                    flags |= FLAG_UNIDIRECTIONAL;
                }
                (TYPE_SYN_STREAM, flags, p)
            }
            Frame::SynReply {
                stream_id,
                fin,
                headers,
            }
            | Frame::Headers {
                stream_id,
                fin,
                headers,
            } => {
                let mut p = stream_id.to_be_bytes().to_vec();
                p.extend_from_slice(&self.deflate_headers(headers)?);
                let kind = if matches!(frame, Frame::SynReply { .. }) {
                    TYPE_SYN_REPLY
                } else {
                    TYPE_HEADERS
                };
                (kind, if *fin { FLAG_FIN } else { 0 }, p)
            }
            Frame::RstStream { stream_id, status } => {
                (TYPE_RST_STREAM, 0, pair(*stream_id, *status))
            }
            Frame::Settings(entries) => {
                let mut p = (entries.len() as u32).to_be_bytes().to_vec();
                for (flags, id, value) in entries {
                    p.extend_from_slice(
                        &((u32::from(*flags) << 24) | (id & 0xff_ffff)).to_be_bytes(),
                    );
                    p.extend_from_slice(&value.to_be_bytes());
                }
                (TYPE_SETTINGS, 0, p)
            }
            Frame::Ping(id) => (TYPE_PING, 0, id.to_be_bytes().to_vec()),
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => (TYPE_GOAWAY, 0, pair(*last_good_stream_id, *status)),
            Frame::WindowUpdate { stream_id, delta } => {
                (TYPE_WINDOW_UPDATE, 0, pair(*stream_id, *delta))
            }
            Frame::Unknown(_) => return Err(SpdyError::Malformed("cannot encode unknown frame")),
        };
        out.extend_from_slice(&(0x8003u16).to_be_bytes());
        out.extend_from_slice(&kind.to_be_bytes());
        out.push(flags);
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        out.extend_from_slice(&payload);
        Ok(())
    }

    /// Compresses a header block onto the connection's zlib stream, ending with a sync
    /// flush so the peer can decode it without the following frames.
    fn deflate_headers(&mut self, headers: &Headers) -> Result<Vec<u8>, SpdyError> {
        let raw = encode_header_block(headers);
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut pos = 0;
        loop {
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(&raw[pos..], &mut out, FlushCompress::Sync)
                .map_err(|e| SpdyError::Compression(e.to_string()))?;
            pos += (self.deflate.total_in() - before) as usize;
            // The flush is complete once all input is in and it left room in the buffer.
            if pos == raw.len() && out.len() < out.capacity() {
                return Ok(out);
            }
            out.reserve(out.capacity().max(64));
        }
    }

    fn inflate_headers(&mut self, block: &[u8]) -> Result<Headers, SpdyError> {
        let mut out = Vec::with_capacity(block.len() * 4 + 64);
        let mut pos = 0;
        loop {
            let (in_before, out_before) = (self.inflate.total_in(), out.len());
            let mut primed = false;
            match self
                .inflate
                .decompress_vec(&block[pos..], &mut out, FlushDecompress::Sync)
            {
                Ok(_) => {}
                // The first block's zlib header asks for the dictionary (FDICT).
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(SPDY3_DICTIONARY)
                        .map_err(|e| SpdyError::Compression(e.to_string()))?;
                    primed = true;
                }
                Err(e) => return Err(SpdyError::Compression(e.to_string())),
            }
            pos += (self.inflate.total_in() - in_before) as usize;
            if pos == block.len() && out.len() < out.capacity() {
                break;
            }
            if out.len() >= MAX_HEADER_BLOCK {
                return Err(SpdyError::Compression("header block too large".to_owned()));
            }
            if !primed && pos < block.len() && out.len() == out_before && out.len() < out.capacity()
            {
                return Err(SpdyError::Compression("no progress".to_owned()));
            }
            if out.len() == out.capacity() {
                out.reserve(out.capacity());
            }
        }
        decode_header_block(&out)
    }
}

fn new_deflate() -> Compress {
    let mut c = Compress::new(Compression::default(), true);
    // Only fails on a stream already started; this one is new.
    let _ = c.set_dictionary(SPDY3_DICTIONARY);
    c
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn pair(a: u32, b: u32) -> Vec<u8> {
    let mut p = (a & 0x7fff_ffff).to_be_bytes().to_vec();
    p.extend_from_slice(&b.to_be_bytes());
    p
}

/// SPDY/3 header block: a 32-bit count, then 32-bit-length-prefixed names and values; a
/// name's several values are joined with NUL.
fn encode_header_block(headers: &Headers) -> Vec<u8> {
    let mut merged: Vec<(String, Vec<&str>)> = Vec::new();
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        match merged.iter_mut().find(|(n, _)| *n == name) {
            Some((_, values)) => values.push(value),
            None => merged.push((name, vec![value])),
        }
    }
    let mut out = (merged.len() as u32).to_be_bytes().to_vec();
    for (name, values) in merged {
        let value = values.join("\0");
        out.extend_from_slice(&(name.len() as u32).to_be_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

fn decode_header_block(mut b: &[u8]) -> Result<Headers, SpdyError> {
    let bad = SpdyError::Malformed("header block");
    let take = |b: &mut &[u8]| -> Result<String, SpdyError> {
        if b.len() < 4 {
            return Err(SpdyError::Malformed("header block"));
        }
        let n = be32(b) as usize;
        let rest = &b[4..];
        if rest.len() < n {
            return Err(SpdyError::Malformed("header block"));
        }
        let s = String::from_utf8(rest[..n].to_vec())
            .map_err(|_| SpdyError::Malformed("header not UTF-8"))?;
        *b = &rest[n..];
        Ok(s)
    };
    if b.len() < 4 {
        return Err(bad);
    }
    let count = be32(b);
    b = &b[4..];
    let mut headers = Vec::new();
    for _ in 0..count {
        let name = take(&mut b)?.to_ascii_lowercase();
        let value = take(&mut b)?;
        for v in value.split('\0') {
            headers.push((name.clone(), v.to_owned()));
        }
    }
    Ok(headers)
}

/// The first value of header `name` (lowercase).
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// What the peer has done with one stream it opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamState {
    pub headers: Headers,
    /// The peer sent FIN: no more data comes from it.
    pub remote_closed: bool,
}

/// The streams of one connection, as the server side sees them: the client opens them with
/// odd, increasing ids (SPDY/3 section 2.3.2).
#[derive(Debug, Default)]
pub struct Streams {
    streams: HashMap<u32, StreamState>,
    last_id: u32,
}

impl Streams {
    /// A SYN_STREAM from the client: `Err` is the RST_STREAM status to answer with.
    pub fn open(&mut self, stream_id: u32, headers: Headers, fin: bool) -> Result<(), u32> {
        if stream_id == 0 || stream_id.is_multiple_of(2) {
            return Err(RST_PROTOCOL_ERROR);
        }
        if self.streams.contains_key(&stream_id) {
            return Err(RST_STREAM_IN_USE);
        }
        if stream_id <= self.last_id {
            return Err(RST_PROTOCOL_ERROR);
        }
        self.last_id = stream_id;
        self.streams.insert(
            stream_id,
            StreamState {
                headers,
                remote_closed: fin,
            },
        );
        Ok(())
    }

    /// Data from the client: `Err` is the RST_STREAM status (unknown or half-closed stream).
    pub fn data(&mut self, stream_id: u32, fin: bool) -> Result<(), u32> {
        let s = self.streams.get_mut(&stream_id).ok_or(RST_PROTOCOL_ERROR)?;
        if s.remote_closed {
            return Err(RST_PROTOCOL_ERROR);
        }
        s.remote_closed = fin;
        Ok(())
    }

    /// RST_STREAM from the client: the stream is gone both ways.
    pub fn reset(&mut self, stream_id: u32) -> Option<StreamState> {
        self.streams.remove(&stream_id)
    }

    #[cfg(test)]
    pub fn get(&self, stream_id: u32) -> Option<&StreamState> {
        self.streams.get(&stream_id)
    }

    /// The highest id the client opened (GOAWAY's last-good-stream-id).
    pub fn last_id(&self) -> u32 {
        self.last_id
    }
}

#[cfg(test)]
#[path = "spdy_tests.rs"]
mod tests;
