//! Attach to a container's own output, served by its monitor (as conmon does): the monitor
//! listens on the unix socket [`crate::monitor::ATTACH_SOCKET_FILE`] in the container's run
//! directory and copies every chunk it reads from the container's stdout and stderr (or its
//! terminal) to each connected client, besides writing it to the CRI log. So attach works
//! for a container without a log file, sees output at once, and a log rotation does not
//! concern it. Input goes the other way through [`crate::stdin`].
//!
//! Monitor → client: frames `[kind: u8][length: u32 big-endian][bytes]`; the first frame a
//! client gets is [`FRAME_HELLO`] (empty), sent once the monitor has taken the client in: from
//! then on no output is missed, so a client sends input only after it. Client → monitor:
//! [`RESIZE_LEN`]-byte messages `['w', width: u16 BE, height: u16 BE]` that set the window size
//! of a container's terminal (the kernel signals its foreground process group).
//!
//! A client that falls more than [`MAX_PENDING`] behind is disconnected: the container and
//! its log never wait for an attached client, and the monitor's memory stays bounded.
//! Used by `rootstock-monitor`: std and nix only, never blocking its loop.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags};

/// Sent first: the client is attached.
pub const FRAME_HELLO: u8 = 0;
/// A chunk of the container's stdout (or its terminal's output).
pub const FRAME_STDOUT: u8 = 1;
/// A chunk of the container's stderr.
pub const FRAME_STDERR: u8 = 2;
/// Frame header: kind and length.
pub const FRAME_HEADER: usize = 5;
/// A resize message from a client: `'w'`, width, height.
pub const RESIZE_LEN: usize = 5;
/// Most bytes queued for one client before it is cut off.
pub const MAX_PENDING: usize = 1 << 20;
/// Most clients at once; more are turned away (each costs a descriptor and a buffer).
const MAX_CLIENTS: usize = 16;

/// A resize message for [`AttachFanout`]'s clients to send.
pub fn resize_message(width: u16, height: u16) -> [u8; RESIZE_LEN] {
    let [w0, w1] = width.to_be_bytes();
    let [h0, h1] = height.to_be_bytes();
    [b'w', w0, w1, h0, h1]
}

struct Client {
    stream: UnixStream,
    /// Frames not yet written (the socket was full).
    pending: Vec<u8>,
    /// A partial resize message.
    input: Vec<u8>,
    /// The client shut down its sending side: it still gets output until it hangs up.
    input_closed: bool,
}

/// The monitor's side of attach: the listener and the attached clients.
pub struct AttachFanout {
    listener: UnixListener,
    clients: Vec<Client>,
}

/// Which of the fan-out's descriptors `poll` reported (listener first, then each client's).
#[derive(Debug, Default, Clone)]
pub struct Ready {
    first: Option<usize>,
    flags: Vec<PollFlags>,
}

impl Ready {
    /// What `poll` reported for the fan-out's descriptors, registered from `first` on.
    fn collect(first: Option<usize>, count: usize, fds: &[PollFd<'_>]) -> Self {
        let flags = first
            .map(|f| {
                (f..f + count)
                    .map(|i| {
                        fds.get(i)
                            .and_then(PollFd::revents)
                            .unwrap_or(PollFlags::empty())
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self { first, flags }
    }
}

/// Where the fan-out's descriptors sit in a poll set.
#[derive(Debug, Default, Clone, Copy)]
pub struct Slots {
    first: Option<usize>,
    count: usize,
}

impl Slots {
    pub fn ready(&self, fds: &[PollFd<'_>]) -> Ready {
        Ready::collect(self.first, self.count, fds)
    }
}

impl AttachFanout {
    pub fn new(listener: UnixListener) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        Ok(Self {
            listener,
            clients: Vec::new(),
        })
    }

    /// Adds the listener and every client to `fds` (a client with queued output also for
    /// writing).
    pub fn register<'a>(&'a self, fds: &mut Vec<PollFd<'a>>) -> Slots {
        let first = fds.len();
        fds.push(PollFd::new(self.listener.as_fd(), PollFlags::POLLIN));
        for c in &self.clients {
            // (POLLHUP, the client gone both ways, is reported whatever is asked for.)
            let mut flags = PollFlags::empty();
            if !c.input_closed {
                flags |= PollFlags::POLLIN;
            }
            if !c.pending.is_empty() {
                flags |= PollFlags::POLLOUT;
            }
            fds.push(PollFd::new(c.stream.as_fd(), flags));
        }
        Slots {
            first: Some(first),
            count: 1 + self.clients.len(),
        }
    }

    /// Serves what `poll` reported: new clients, resize messages (applied to `terminal`, the
    /// container's pty master, if it has one), hang-ups, queued output.
    pub fn service(&mut self, ready: &Ready, terminal: Option<&File>) {
        if ready.first.is_none() {
            return;
        }
        // Clients first, by their index at registration; new ones are appended after.
        let mut gone = Vec::new();
        for (i, flags) in ready.flags.iter().enumerate().skip(1) {
            let Some(c) = self.clients.get_mut(i - 1) else {
                continue;
            };
            let mut alive = !flags.intersects(PollFlags::POLLHUP | PollFlags::POLLERR);
            if alive && flags.contains(PollFlags::POLLIN) {
                alive = read_client(c, terminal);
            }
            if alive && flags.contains(PollFlags::POLLOUT) {
                alive = flush(c);
            }
            if !alive {
                gone.push(i - 1);
            }
        }
        for i in gone.into_iter().rev() {
            self.clients.remove(i);
        }
        if ready.flags.first().is_some_and(|f| !f.is_empty()) {
            self.accept();
        }
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.clients.len() >= MAX_CLIENTS || stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let mut c = Client {
                        stream,
                        pending: Vec::new(),
                        input: Vec::new(),
                        input_closed: false,
                    };
                    push_frame(&mut c.pending, FRAME_HELLO, &[]);
                    if flush(&mut c) {
                        self.clients.push(c);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    eprintln!("attach socket: accept: {e}");
                    return;
                }
            }
        }
    }

    /// Copies a chunk of output to every client; a client too far behind is dropped.
    pub fn broadcast(&mut self, kind: u8, data: &[u8]) {
        self.clients.retain_mut(|c| {
            if c.pending.len() + data.len() > MAX_PENDING {
                eprintln!("attach: a client fell {MAX_PENDING} bytes behind; disconnected");
                return false;
            }
            push_frame(&mut c.pending, kind, data);
            flush(c)
        });
    }

    /// At the monitor's end: gives each client up to `wait` to take what is queued for it,
    /// then closes them all (they read EOF: the container is gone).
    pub fn finish(mut self, wait: Duration) {
        for c in &mut self.clients {
            if c.pending.is_empty() {
                continue;
            }
            let _ = c.stream.set_nonblocking(false);
            let _ = c.stream.set_write_timeout(Some(wait));
            let _ = c.stream.write_all(&c.pending);
        }
        self.clients.clear();
    }
}

fn push_frame(out: &mut Vec<u8>, kind: u8, data: &[u8]) {
    out.push(kind);
    // Chunks are what one read of a pipe returns (far below 4 GiB).
    out.extend_from_slice(&u32::try_from(data.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(data);
}

/// Writes what is queued, as far as the socket takes it; `false` when the client is gone.
fn flush(c: &mut Client) -> bool {
    while !c.pending.is_empty() {
        match c.stream.write(&c.pending) {
            Ok(0) => return false,
            Ok(n) => {
                c.pending.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

/// Reads resize messages; `false` when the client is gone or speaks another protocol.
fn read_client(c: &mut Client, terminal: Option<&File>) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match c.stream.read(&mut buf) {
            Ok(0) => {
                c.input_closed = true;
                break;
            }
            Ok(n) => c.input.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    let whole = c.input.len() - c.input.len() % RESIZE_LEN;
    for m in c.input[..whole].chunks_exact(RESIZE_LEN) {
        if m[0] != b'w' {
            // Not our protocol: nothing it says can be trusted.
            return false;
        }
        let (w, h) = (
            u16::from_be_bytes([m[1], m[2]]),
            u16::from_be_bytes([m[3], m[4]]),
        );
        if let Some(t) = terminal
            && let Err(e) = set_window_size(t, w, h)
        {
            eprintln!("attach: resize: {e}");
        }
    }
    c.input.drain(..whole);
    true
}

/// Sets a terminal's window size (the pty master's: the command sees it on its side, with
/// SIGWINCH).
pub fn set_window_size(
    master: &impl std::os::fd::AsRawFd,
    width: u16,
    height: u16,
) -> std::io::Result<()> {
    let ws = libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which is valid for the call;
    // a non-terminal fd fails with ENOTTY, nothing else is touched.
    let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn poll_once(f: &mut AttachFanout) {
        let mut fds = Vec::new();
        let slots = f.register(&mut fds);
        nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(1000u16)).unwrap();
        let ready = slots.ready(&fds);
        drop(fds);
        f.service(&ready, None);
    }

    fn read_frame(s: &mut UnixStream) -> (u8, Vec<u8>) {
        let mut h = [0u8; FRAME_HEADER];
        s.read_exact(&mut h).unwrap();
        let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
        let mut data = vec![0u8; len];
        s.read_exact(&mut data).unwrap();
        (h[0], data)
    }

    #[test]
    fn clients_get_a_hello_then_every_chunk_and_a_laggard_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("attach.sock");
        let mut f = AttachFanout::new(UnixListener::bind(&path).unwrap()).unwrap();
        let mut a = UnixStream::connect(&path).unwrap();
        poll_once(&mut f);
        assert_eq!(read_frame(&mut a), (FRAME_HELLO, Vec::new()));
        f.broadcast(FRAME_STDOUT, b"out");
        f.broadcast(FRAME_STDERR, b"err");
        assert_eq!(read_frame(&mut a), (FRAME_STDOUT, b"out".to_vec()));
        assert_eq!(read_frame(&mut a), (FRAME_STDERR, b"err".to_vec()));
        // A client that never reads is cut off once MAX_PENDING is queued for it.
        let chunk = vec![7u8; 64 * 1024];
        for _ in 0..(MAX_PENDING / chunk.len() + 64) {
            f.broadcast(FRAME_STDOUT, &chunk);
        }
        assert!(f.clients.is_empty());
        // A resize message from a client without a terminal is accepted and ignored; a
        // malformed one drops the client.
        let mut b = UnixStream::connect(&path).unwrap();
        poll_once(&mut f);
        assert_eq!(read_frame(&mut b).0, FRAME_HELLO);
        b.write_all(&resize_message(80, 24)).unwrap();
        poll_once(&mut f);
        assert_eq!(f.clients.len(), 1);
        b.write_all(b"xxxxx").unwrap();
        poll_once(&mut f);
        assert!(f.clients.is_empty());
        // A client that shut down its sending side still gets the output.
        let mut c = UnixStream::connect(&path).unwrap();
        poll_once(&mut f);
        assert_eq!(read_frame(&mut c).0, FRAME_HELLO);
        c.shutdown(std::net::Shutdown::Write).unwrap();
        poll_once(&mut f);
        f.broadcast(FRAME_STDOUT, b"still");
        assert_eq!(read_frame(&mut c), (FRAME_STDOUT, b"still".to_vec()));
    }
}
