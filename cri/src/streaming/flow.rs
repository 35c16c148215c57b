//! SPDY/3.1 flow control of what we send (section 2.6.8): each stream and the connection
//! have a window, 64 KiB at first; data we send shrinks it, the peer's WINDOW_UPDATE grows
//! it, and SETTINGS_INITIAL_WINDOW_SIZE moves every stream's. moby/spdystream (kubelet's,
//! client-go's and so crictl's SPDY) never sends either frame and reads without limit:
//! holding it to 64 KiB would stall every real client. So the windows are always counted,
//! but enforced only once the peer has shown it does flow control (sent one of those
//! frames); from then on they are exact, since counting started with the connection.

use std::collections::HashMap;

/// SPDY/3.1's initial window, per stream and for the connection.
pub const INITIAL_WINDOW: i64 = 64 * 1024;
/// SETTINGS id of the initial stream window.
pub const SETTINGS_INITIAL_WINDOW_SIZE: u32 = 7;

/// What the reader learns from the peer that changes our send windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowEvent {
    /// SETTINGS_INITIAL_WINDOW_SIZE.
    InitialWindow(u32),
    /// WINDOW_UPDATE (stream 0: the connection).
    Update { stream_id: u32, delta: u32 },
    /// The peer reset the stream: its window is forgotten.
    Reset(u32),
}

/// Our send windows on one connection.
#[derive(Debug)]
pub struct Flow {
    engaged: bool,
    initial: i64,
    connection: i64,
    streams: HashMap<u32, i64>,
}

impl Default for Flow {
    fn default() -> Self {
        Self {
            engaged: false,
            initial: INITIAL_WINDOW,
            connection: INITIAL_WINDOW,
            streams: HashMap::new(),
        }
    }
}

impl Flow {
    pub fn apply(&mut self, event: FlowEvent) {
        match event {
            FlowEvent::InitialWindow(size) => {
                self.engaged = true;
                let delta = i64::from(size) - self.initial;
                for w in self.streams.values_mut() {
                    *w += delta;
                }
                self.initial = i64::from(size);
            }
            FlowEvent::Update { stream_id, delta } => {
                self.engaged = true;
                let initial = self.initial;
                let w = match stream_id {
                    0 => &mut self.connection,
                    id => self.streams.entry(id).or_insert(initial),
                };
                *w = w.saturating_add(i64::from(delta));
            }
            FlowEvent::Reset(id) => {
                self.streams.remove(&id);
            }
        }
    }

    /// How many of `len` bytes of data on `stream_id` may be sent now.
    pub fn allowed(&self, stream_id: u32, len: usize) -> usize {
        if !self.engaged {
            return len;
        }
        let stream = self
            .streams
            .get(&stream_id)
            .copied()
            .unwrap_or(self.initial);
        let room = stream.min(self.connection).max(0);
        len.min(usize::try_from(room).unwrap_or(usize::MAX))
    }

    /// `n` bytes of data went out on `stream_id`.
    pub fn sent(&mut self, stream_id: u32, n: usize) {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        self.connection -= n;
        let initial = self.initial;
        *self.streams.entry(stream_id).or_insert(initial) -= n;
    }

    /// We closed `stream_id` (FIN): nothing more is sent on it.
    pub fn finished(&mut self, stream_id: u32) {
        self.streams.remove(&stream_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_counted_from_the_start_but_enforced_only_once_the_peer_takes_part() {
        let mut f = Flow::default();
        // spdystream: no updates ever; nothing is held back.
        f.sent(1, 200_000);
        assert_eq!(f.allowed(1, 32_768), 32_768);
        // A peer that does flow control: the counts are exact from the first byte.
        let mut f = Flow::default();
        f.sent(1, 60 * 1024);
        f.apply(FlowEvent::Update {
            stream_id: 0,
            delta: 1024,
        });
        assert_eq!(f.allowed(1, 32_768), 4 * 1024);
        f.sent(1, 4 * 1024);
        assert_eq!(f.allowed(1, 10), 0);
        assert_eq!(
            f.allowed(3, 100_000),
            1024,
            "the connection window also binds"
        );
        f.apply(FlowEvent::Update {
            stream_id: 1,
            delta: 64 * 1024,
        });
        f.apply(FlowEvent::Update {
            stream_id: 0,
            delta: 64 * 1024,
        });
        assert_eq!(f.allowed(1, 100_000), 64 * 1024);
        // A new initial window moves every stream's, even below zero.
        f.apply(FlowEvent::InitialWindow(1024));
        assert_eq!(f.allowed(1, 100_000), 1024);
        assert_eq!(f.allowed(5, 100_000), 1024);
        f.finished(1);
        f.apply(FlowEvent::Reset(5));
        assert!(f.streams.is_empty());
    }
}
