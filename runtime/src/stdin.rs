//! A container's stdin (CRI `stdin`), held by its monitor: the container reads a pipe (or,
//! with a terminal, the pty) whose write end only the monitor has, so it stays open and
//! empty — never EOF at start — until a client writes to it. Clients reach it through the
//! unix socket [`crate::monitor::STDIN_SOCKET_FILE`] in the container's run directory (the
//! streaming server's Attach will connect there): bytes read from the one connected client
//! are written to the container's stdin. With `stdin_once`, the first client's hang-up
//! closes the container's stdin (it reads EOF), as CRI and Docker define it; without, stdin
//! stays open for the next client. Used by `rootstock-monitor`: std and nix only, never
//! blocking its loop (a container that does not read its stdin must not stall its logs).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};

use nix::poll::{PollFd, PollFlags};

/// Most bytes held for a container that does not read its stdin; the client is not read
/// meanwhile, so it is the one that waits.
const MAX_PENDING: usize = 64 * 1024;

/// The monitor's side of a container's stdin.
pub struct StdinRelay {
    listener: Option<UnixListener>,
    client: Option<UnixStream>,
    /// The write end of the container's stdin; `None` once closed (`stdin_once`).
    sink: Option<File>,
    pending: Vec<u8>,
    once: bool,
}

/// Indices of the relay's descriptors in a poll set.
#[derive(Debug, Default, Clone, Copy)]
pub struct Slots([Option<usize>; 3]);

/// Which of the relay's descriptors `poll` reported: listener, client, sink.
#[derive(Debug, Default, Clone, Copy)]
pub struct Ready([bool; 3]);

impl Slots {
    /// What `poll` reported for the relay's descriptors.
    pub fn ready(&self, fds: &[PollFd<'_>]) -> Ready {
        Ready(self.0.map(|i| {
            i.and_then(|i| fds.get(i)?.revents())
                .is_some_and(|r| !r.is_empty())
        }))
    }
}

impl StdinRelay {
    /// A relay writing to `sink` (made non-blocking) for clients of `listener`.
    pub fn new(listener: UnixListener, sink: File, once: bool) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        nix::fcntl::fcntl(
            sink.as_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )?;
        Ok(Self {
            listener: Some(listener),
            client: None,
            sink: Some(sink),
            pending: Vec::new(),
            once,
        })
    }

    /// Adds what the relay waits for to `fds`.
    pub fn register<'a>(&'a self, fds: &mut Vec<PollFd<'a>>) -> Slots {
        let mut add = |fd: std::os::fd::BorrowedFd<'a>, flags| {
            fds.push(PollFd::new(fd, flags));
            Some(fds.len() - 1)
        };
        let mut s = Slots::default();
        if let Some(l) = &self.listener {
            s.0[0] = add(l.as_fd(), PollFlags::POLLIN);
        }
        if let Some(c) = &self.client
            && self.pending.len() < MAX_PENDING
        {
            s.0[1] = add(c.as_fd(), PollFlags::POLLIN);
        }
        if let Some(sink) = &self.sink
            && !self.pending.is_empty()
        {
            s.0[2] = add(sink.as_fd(), PollFlags::POLLOUT);
        }
        s
    }

    /// Serves what `poll` reported ready.
    pub fn service(&mut self, ready: Ready) {
        let [accept, read, write] = ready.0;
        if accept {
            self.accept();
        }
        if read {
            self.read_client();
        }
        if write || !self.pending.is_empty() {
            self.flush();
        }
    }

    fn accept(&mut self) {
        let Some(listener) = &self.listener else {
            return;
        };
        match listener.accept() {
            // One client at a time: another is turned away (its connection closes).
            Ok((stream, _)) if self.client.is_none() => {
                if stream.set_nonblocking(true).is_ok() {
                    self.client = Some(stream);
                }
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => eprintln!("stdin socket: accept: {e}"),
        }
    }

    fn read_client(&mut self) {
        let Some(client) = self.client.as_mut() else {
            return;
        };
        let mut buf = [0u8; 16 * 1024];
        match client.read(&mut buf) {
            Ok(0) => self.hang_up(),
            Ok(n) => self.pending.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => self.hang_up(),
        }
    }

    /// The client left: with `stdin_once` the container's stdin closes once what it sent
    /// is delivered, and no one else may attach.
    fn hang_up(&mut self) {
        self.client = None;
        if self.once {
            self.listener = None;
            if self.pending.is_empty() {
                self.sink = None;
            }
        }
    }

    fn flush(&mut self) {
        let Some(sink) = self.sink.as_mut() else {
            self.pending.clear();
            return;
        };
        match sink.write(&self.pending) {
            Ok(n) => {
                self.pending.drain(..n);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            // The container closed its stdin: nothing more can be delivered.
            Err(_) => {
                self.pending.clear();
                self.sink = None;
            }
        }
        if self.pending.is_empty() && self.once && self.listener.is_none() && self.client.is_none()
        {
            self.sink = None;
        }
    }
}
