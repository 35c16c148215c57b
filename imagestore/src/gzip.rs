//! gzip (RFC 1952) layer streams, inflated without checking each member's CRC-32.
//!
//! A layer's uncompressed bytes are hashed for its diff_id, which the unpack compares with the
//! image config; a damaged stream fails that check (SHA-256 of the same bytes) whatever its
//! CRC says. The CRC was ~3 % of the daemon's CPU in a cold pull (#18), so it is not computed.
//! Everything else is as strict as `flate2::MultiGzDecoder` and Go's `gzip.Reader`, which
//! containerd uses: members one after another (`cat a.gz b.gz`), each with a valid header and
//! its 8-byte trailer; any byte after the last member that does not start one is an error.

use std::io::{self, BufRead, Read};

use flate2::{Decompress, FlushDecompress, Status};

/// Header flags (RFC 1952 2.3.1).
const FHCRC: u8 = 0x02;
const FEXTRA: u8 = 0x04;
const FNAME: u8 = 0x08;
const FCOMMENT: u8 = 0x10;
const RESERVED: u8 = 0xe0;

/// The inflated bytes of every gzip member of `inner`, in order.
pub struct Members<R> {
    inner: R,
    inflate: Decompress,
    state: State,
}

#[derive(Clone, Copy, PartialEq)]
enum State {
    /// Before a member's header (`first`: the stream's, which must be there).
    Header {
        first: bool,
    },
    Deflate,
    End,
}

impl<R: BufRead> Members<R> {
    pub fn new(inner: R) -> Self {
        Members {
            inner,
            inflate: Decompress::new(false),
            state: State::Header { first: true },
        }
    }

    /// Reads the next member's header; false at the end of the stream after one member at
    /// least (an empty stream is not gzip).
    fn next_member(&mut self, first: bool) -> io::Result<bool> {
        if !first && self.inner.fill_buf()?.is_empty() {
            return Ok(false);
        }
        let mut magic = [0u8; 2];
        self.inner.read_exact(&mut magic).map_err(truncated)?;
        if magic != [0x1f, 0x8b] {
            return Err(invalid("not a gzip member (bad magic bytes)"));
        }
        // Method, flags, time (4), extra flags, OS.
        let mut fixed = [0u8; 8];
        self.inner.read_exact(&mut fixed).map_err(truncated)?;
        let [method, flags, ..] = fixed;
        if method != 8 {
            return Err(invalid(
                "gzip member compressed with a method other than deflate",
            ));
        }
        if flags & RESERVED != 0 {
            return Err(invalid("gzip header sets reserved flags"));
        }
        if flags & FEXTRA != 0 {
            let mut len = [0u8; 2];
            self.inner.read_exact(&mut len).map_err(truncated)?;
            self.skip(u16::from_le_bytes(len).into())?;
        }
        for flag in [FNAME, FCOMMENT] {
            if flags & flag != 0 {
                self.skip_c_string()?;
            }
        }
        if flags & FHCRC != 0 {
            self.skip(2)?;
        }
        self.inflate.reset(false);
        Ok(true)
    }

    fn skip(&mut self, n: u64) -> io::Result<()> {
        let skipped = io::copy(&mut (&mut self.inner).take(n), &mut io::sink())?;
        if skipped < n {
            return Err(cut());
        }
        Ok(())
    }

    /// Skips a zero-terminated header field (file name, comment).
    fn skip_c_string(&mut self) -> io::Result<()> {
        loop {
            let buf = self.inner.fill_buf()?;
            if buf.is_empty() {
                return Err(cut());
            }
            match buf.iter().position(|&b| b == 0) {
                Some(end) => {
                    self.inner.consume(end + 1);
                    return Ok(());
                }
                None => {
                    let n = buf.len();
                    self.inner.consume(n);
                }
            }
        }
    }
}

impl<R: BufRead> Read for Members<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self.state {
                State::End => return Ok(0),
                State::Header { first } => {
                    self.state = if self.next_member(first)? {
                        State::Deflate
                    } else {
                        State::End
                    };
                }
                State::Deflate => {
                    let input = self.inner.fill_buf()?;
                    let at_eof = input.is_empty();
                    let (before_in, before_out) =
                        (self.inflate.total_in(), self.inflate.total_out());
                    let status = self
                        .inflate
                        .decompress(input, buf, FlushDecompress::None)
                        .map_err(|e| invalid(&format!("gzip member: {e}")))?;
                    let consumed = (self.inflate.total_in() - before_in) as usize;
                    let written = (self.inflate.total_out() - before_out) as usize;
                    self.inner.consume(consumed);
                    if status == Status::StreamEnd {
                        // The member's CRC-32 and size, not checked (see the module's doc).
                        self.skip(8)?;
                        self.state = State::Header { first: false };
                    } else if written == 0 && consumed == 0 {
                        return Err(if at_eof {
                            cut()
                        } else {
                            invalid("gzip member: inflate makes no progress")
                        });
                    }
                    if written > 0 {
                        return Ok(written);
                    }
                }
            }
        }
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// What a stream that ends inside a member reads as.
fn cut() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "gzip stream ends inside a member",
    )
}

/// `read_exact`'s early end, said as [`cut`].
fn truncated(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        cut()
    } else {
        e
    }
}

#[cfg(test)]
mod tests;
