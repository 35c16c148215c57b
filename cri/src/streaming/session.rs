//! One upgraded SPDY connection: a reader task that decodes frames, answers what the
//! protocol itself needs (SYN_REPLY, PING, WINDOW_UPDATE, RST_STREAM) and hands each new
//! stream with its inbound data to the handler; a writer task that encodes the frames the
//! handler sends. Both channels are bounded, so a slow peer or a slow command stops the
//! other side instead of growing memory (backpressure through TCP and pipes).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::conn::Conn;
use super::flow::{Flow, FlowEvent, SETTINGS_INITIAL_WINDOW_SIZE};
use super::spdy::{Codec, Frame, Headers, RST_PROTOCOL_ERROR, RST_REFUSED_STREAM, Streams};

/// Frames queued for the writer; with 32 KiB data frames about 2 MiB per connection.
pub const OUT_QUEUE: usize = 64;
/// Inbound data chunks queued per stream before the reader stops reading the socket.
pub const IN_QUEUE: usize = 16;
/// Data frames we send carry at most this much (client-go reads in 32 KiB too).
pub const DATA_CHUNK: usize = 32 * 1024;
/// Queued frames are written together up to about this many bytes.
const WRITE_BATCH: usize = 256 * 1024;

/// A stream the client opened: its headers and the data it sends (the channel closes on
/// the client's FIN or RST_STREAM, or when the connection ends).
pub struct Incoming {
    pub id: u32,
    pub headers: Headers,
    pub data: mpsc::Receiver<Vec<u8>>,
}

/// The handler's side of a connection.
pub struct Session {
    out: mpsc::Sender<Frame>,
    gone: watch::Receiver<()>,
    pub incoming: mpsc::Receiver<Incoming>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

/// Sends frames on one connection; cheap to clone into pump tasks.
#[derive(Clone)]
pub struct Sender {
    out: mpsc::Sender<Frame>,
    /// Never written: the reader drops its end when the client's side of the connection ends.
    gone: watch::Receiver<()>,
}

impl Sender {
    /// Resolves once the client is gone (its side ended, or writing to it failed).
    pub async fn closed(&self) {
        let mut gone = self.gone.clone();
        tokio::select! {
            () = self.out.closed() => {}
            _ = gone.changed() => {}
        }
    }

    /// Sends `data` on `stream_id` in chunks; `false` once the connection is gone.
    pub async fn data(&self, stream_id: u32, data: &[u8]) -> bool {
        if data.len() <= DATA_CHUNK {
            return self.data_vec(stream_id, data.to_vec()).await;
        }
        for chunk in data.chunks(DATA_CHUNK) {
            let frame = Frame::Data {
                stream_id,
                fin: false,
                data: chunk.to_vec(),
            };
            if self.out.send(frame).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Sends `data` (at most [`DATA_CHUNK`] bytes, else it is cut) as one frame, without
    /// copying it; `false` once the connection is gone.
    pub async fn data_vec(&self, stream_id: u32, data: Vec<u8>) -> bool {
        if data.len() > DATA_CHUNK {
            return Box::pin(self.data(stream_id, &data)).await;
        }
        let frame = Frame::Data {
            stream_id,
            fin: false,
            data,
        };
        self.out.send(frame).await.is_ok()
    }

    /// Half-closes `stream_id` (an empty data frame with FIN), as spdystream's Close does.
    pub async fn fin(&self, stream_id: u32) -> bool {
        let frame = Frame::Data {
            stream_id,
            fin: true,
            data: Vec::new(),
        };
        self.out.send(frame).await.is_ok()
    }
}

impl Session {
    /// Takes over an upgraded connection; `early` holds bytes the client sent right after
    /// its HTTP request (read along with the request's headers).
    /// A session that outlives `timeouts` is ended, which cancels what it serves.
    pub fn start(conn: Conn, early: Vec<u8>, timeouts: Timeouts) -> Self {
        conn.set_nodelay();
        match conn {
            Conn::Plain(tcp) => {
                let (rd, wr) = tcp.into_split();
                Self::start_on(rd, wr, early, timeouts)
            }
            // One TLS state serves both directions: the halves share it behind a lock.
            tls @ Conn::Tls(_) => {
                let (rd, wr) = tokio::io::split(tls);
                Self::start_on(rd, wr, early, timeouts)
            }
        }
    }

    /// The same over any byte stream (SPDY tunnelled in WebSocket messages).
    pub fn start_on(
        rd: impl AsyncRead + Unpin + Send + 'static,
        wr: impl AsyncWrite + Unpin + Send + 'static,
        early: Vec<u8>,
        timeouts: Timeouts,
    ) -> Self {
        let (out_tx, out_rx) = mpsc::channel(OUT_QUEUE);
        let out_tx2 = out_tx.clone();
        let activity = timeouts.activity();
        let activity2 = activity.clone();
        let (new_tx, new_rx) = mpsc::channel(8);
        let (gone_tx, gone_rx) = watch::channel(());
        // The peer's window updates, from the reader to the writer.
        let (flow_tx, flow_rx) = mpsc::channel(OUT_QUEUE);
        let reader = tokio::spawn(async move {
            read_loop(rd, early, (out_tx2, flow_tx), new_tx, activity2).await;
            drop(gone_tx);
        });
        let writer = tokio::spawn(write_loop(wr, out_rx, flow_rx, activity));
        Self {
            out: out_tx,
            gone: gone_rx,
            incoming: new_rx,
            reader,
            writer,
        }
    }

    /// A session over another transport (WebSocket): `out` receives what the handler
    /// sends, `incoming` yields the streams, and dropping `gone`'s sender means the client
    /// is gone. `reader`/`writer` are that transport's tasks.
    pub fn from_parts(
        out: mpsc::Sender<Frame>,
        gone: watch::Receiver<()>,
        incoming: mpsc::Receiver<Incoming>,
        reader: JoinHandle<()>,
        writer: JoinHandle<()>,
    ) -> Self {
        Self {
            out,
            gone,
            incoming,
            reader,
            writer,
        }
    }

    pub fn sender(&self) -> Sender {
        Sender {
            out: self.out.clone(),
            gone: self.gone.clone(),
        }
    }

    /// Ends the session: GOAWAY, then the writer flushes and half-closes the socket; the
    /// reader keeps draining until the client hangs up (closing with unread input would
    /// reset the connection and could cost the client data still in flight to it), at most
    /// `linger`.
    pub async fn close(self, linger: Duration) {
        let Session {
            out,
            gone: _,
            incoming,
            mut reader,
            writer,
        } = self;
        let _ = out
            .send(Frame::GoAway {
                last_good_stream_id: 0,
                status: 0,
            })
            .await;
        drop(out);
        drop(incoming);
        if tokio::time::timeout(linger, &mut reader).await.is_err() {
            reader.abort();
        }
        // The reader's sender is gone now, so the writer drains its queue and ends.
        if tokio::time::timeout(linger, writer).await.is_err() {
            tracing::debug!("streaming: writer did not finish in time");
        }
    }
}

/// How long a session may last.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// With no data either way for this long it ends (kubelet's
    /// `streamingConnectionIdleTimeout`).
    pub idle: Duration,
    /// It ends this long after it started, busy or not (`None`: no limit).
    pub overall: Option<Duration>,
}

impl Timeouts {
    /// The clock of a session starting now.
    pub(super) fn activity(&self) -> Arc<Activity> {
        let start = Instant::now();
        Arc::new(Activity {
            start,
            last: AtomicU64::new(0),
            idle: self.idle,
            deadline: self.overall.map(|d| start + d),
        })
    }
}

/// When the connection last carried data (either way), for the timeouts.
pub(super) struct Activity {
    start: Instant,
    /// Milliseconds since `start`.
    last: AtomicU64,
    idle: Duration,
    deadline: Option<Instant>,
}

impl Activity {
    pub(super) fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }

    /// How long to wait for the peer before looking again; `None` once the session has
    /// been idle too long or has reached its end.
    pub(super) fn wait(&self) -> Option<Duration> {
        let idle_left = self.idle.saturating_sub(self.idle_for());
        let left = match self.deadline {
            Some(d) => idle_left.min(d.saturating_duration_since(Instant::now())),
            None => idle_left,
        };
        (!left.is_zero()).then_some(left)
    }
}

async fn read_loop(
    mut rd: impl AsyncRead + Unpin,
    mut buf: Vec<u8>,
    (out, flow): (mpsc::Sender<Frame>, mpsc::Sender<FlowEvent>),
    new: mpsc::Sender<Incoming>,
    activity: Arc<Activity>,
) {
    let mut codec = Codec::new();
    let mut streams = Streams::default();
    let mut sinks: HashMap<u32, mpsc::Sender<Vec<u8>>> = HashMap::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        loop {
            let (frame, used) = match codec.decode(&buf) {
                Ok(Some(x)) => x,
                Ok(None) => break,
                Err(e) => {
                    // A framing error desynchronises the connection: it cannot continue.
                    tracing::debug!("streaming: SPDY error: {e}");
                    let _ = out
                        .send(Frame::GoAway {
                            last_good_stream_id: streams.last_id(),
                            status: RST_PROTOCOL_ERROR,
                        })
                        .await;
                    return;
                }
            };
            buf.drain(..used);
            if let Some(event) = flow_event(&frame)
                && flow.send(event).await.is_err()
            {
                return;
            }
            if !handle(frame, &mut streams, &mut sinks, &out, &new).await {
                return;
            }
        }
        let Some(wait) = activity.wait() else {
            tracing::info!("streaming: connection idle or past its time limit; closed");
            let goaway = Frame::GoAway {
                last_good_stream_id: streams.last_id(),
                status: 0,
            };
            let _ = out.send(goaway).await;
            return;
        };
        match tokio::time::timeout(wait, rd.read(&mut chunk)).await {
            Ok(Ok(0) | Err(_)) => return,
            Ok(Ok(n)) => {
                activity.touch();
                buf.extend_from_slice(&chunk[..n]);
            }
            // Looked at again above (something may have been written meanwhile).
            Err(_) => {}
        }
    }
}

/// What a frame from the client changes in our send windows.
fn flow_event(frame: &Frame) -> Option<FlowEvent> {
    match frame {
        Frame::Settings(entries) => entries
            .iter()
            .rev()
            .find(|(_, id, _)| *id == SETTINGS_INITIAL_WINDOW_SIZE)
            .map(|&(_, _, value)| FlowEvent::InitialWindow(value)),
        &Frame::WindowUpdate { stream_id, delta } => Some(FlowEvent::Update { stream_id, delta }),
        &Frame::RstStream { stream_id, .. } => Some(FlowEvent::Reset(stream_id)),
        _ => None,
    }
}

/// One frame from the client; `false` ends the connection.
async fn handle(
    frame: Frame,
    streams: &mut Streams,
    sinks: &mut HashMap<u32, mpsc::Sender<Vec<u8>>>,
    out: &mpsc::Sender<Frame>,
    new: &mpsc::Sender<Incoming>,
) -> bool {
    match frame {
        Frame::SynStream {
            stream_id,
            fin,
            headers,
            ..
        } => {
            if let Err(status) = streams.open(stream_id, headers.clone(), fin) {
                return out
                    .send(Frame::RstStream { stream_id, status })
                    .await
                    .is_ok();
            }
            // client-go waits for the reply before it uses a stream.
            let reply = Frame::SynReply {
                stream_id,
                fin: false,
                headers: Vec::new(),
            };
            if out.send(reply).await.is_err() {
                return false;
            }
            let (tx, rx) = mpsc::channel(IN_QUEUE);
            if !fin {
                sinks.insert(stream_id, tx);
            }
            let incoming = Incoming {
                id: stream_id,
                headers,
                data: rx,
            };
            if new.send(incoming).await.is_err() {
                // The handler has all the streams it wants.
                sinks.remove(&stream_id);
                let status = RST_REFUSED_STREAM;
                return out
                    .send(Frame::RstStream { stream_id, status })
                    .await
                    .is_ok();
            }
        }
        Frame::Data {
            stream_id,
            fin,
            data,
        } => {
            if let Err(status) = streams.data(stream_id, fin) {
                return out
                    .send(Frame::RstStream { stream_id, status })
                    .await
                    .is_ok();
            }
            let len = data.len() as u32;
            if let Some(sink) = sinks.get(&stream_id)
                && !data.is_empty()
            {
                // Waits while the consumer is behind: the socket is not read meanwhile.
                let _ = sink.send(data).await;
            }
            if fin {
                sinks.remove(&stream_id);
            }
            // Give the window back (SPDY/3.1 flow control, per stream and per connection)
            // once the data is handed on; spdystream ignores these, other peers need them.
            if len > 0 {
                for id in [stream_id, 0] {
                    let update = Frame::WindowUpdate {
                        stream_id: id,
                        delta: len,
                    };
                    if out.send(update).await.is_err() {
                        return false;
                    }
                }
            }
        }
        Frame::RstStream { stream_id, .. } => {
            streams.reset(stream_id);
            sinks.remove(&stream_id);
        }
        Frame::Ping(id) => return out.send(Frame::Ping(id)).await.is_ok(),
        Frame::GoAway { .. } => return false,
        // SETTINGS and WINDOW_UPDATE (seen by the writer, see `flow_event`), HEADERS,
        // replies to streams we never open, unknown types: nothing to do.
        _ => {}
    }
    true
}

async fn write_loop(
    mut wr: impl AsyncWrite + Unpin,
    mut rx: mpsc::Receiver<Frame>,
    mut flow_rx: mpsc::Receiver<FlowEvent>,
    activity: Arc<Activity>,
) {
    let mut codec = Codec::new();
    let mut flow = Flow::default();
    let mut buf = Vec::with_capacity(WRITE_BATCH + DATA_CHUNK + 64);
    // Data the peer's window does not take yet. Everything after it waits too (frames of
    // one stream must keep their order; a peer that does flow control keeps granting).
    let mut held: Option<Frame> = None;
    loop {
        let mut next = match held.take() {
            Some(f) => Some(f),
            None => rx.recv().await,
        };
        if next.is_none() {
            break;
        }
        buf.clear();
        // Frames already queued go out in the same write: one syscall for many chunks
        // when the command outputs faster than the socket drains.
        while let Some(frame) = next.take() {
            while let Ok(event) = flow_rx.try_recv() {
                flow.apply(event);
            }
            let (now, later) = within_window(frame, &mut flow);
            if let Some(f) = now
                && let Err(e) = codec.encode(&f, &mut buf)
            {
                tracing::warn!("streaming: cannot encode a SPDY frame: {e}");
                return;
            }
            if later.is_some() {
                held = later;
                break;
            }
            if buf.len() < WRITE_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !buf.is_empty() {
            if wr.write_all(&buf).await.is_err() {
                break;
            }
            activity.touch();
        }
        if held.is_some() {
            match flow_rx.recv().await {
                Some(event) => flow.apply(event),
                None => break,
            }
        }
    }
    let _ = wr.shutdown().await;
}

/// Splits `frame` into what the send windows take now and what must wait.
fn within_window(frame: Frame, flow: &mut Flow) -> (Option<Frame>, Option<Frame>) {
    let Frame::Data {
        stream_id,
        fin,
        mut data,
    } = frame
    else {
        return (Some(frame), None);
    };
    let n = flow.allowed(stream_id, data.len());
    if n == 0 && !data.is_empty() {
        return (
            None,
            Some(Frame::Data {
                stream_id,
                fin,
                data,
            }),
        );
    }
    let rest = (n < data.len()).then(|| data.split_off(n));
    flow.sent(stream_id, n);
    let done = rest.is_none() && fin;
    if done {
        flow.finished(stream_id);
    }
    let now = Frame::Data {
        stream_id,
        fin: done,
        data,
    };
    let later = rest.map(|data| Frame::Data {
        stream_id,
        fin,
        data,
    });
    (Some(now), later)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::streaming::flow::FlowEvent;

    /// Reads one frame the writer produced.
    async fn next_frame(rd: &mut (impl AsyncRead + Unpin), codec: &mut Codec) -> Frame {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            if let Some((frame, _)) = codec.decode(&buf).unwrap() {
                return frame;
            }
            let n = rd.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the writer ended");
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    #[tokio::test]
    async fn data_waits_for_the_window_of_a_peer_that_does_flow_control() {
        let (ours, mut theirs) = tokio::io::duplex(1 << 20);
        let (frames, rx) = mpsc::channel(8);
        let (flow, flow_rx) = mpsc::channel(8);
        let timeouts = Timeouts {
            idle: Duration::from_secs(60),
            overall: None,
        };
        let writer = tokio::spawn(write_loop(ours, rx, flow_rx, timeouts.activity()));
        flow.send(FlowEvent::InitialWindow(1024)).await.unwrap();
        let data = vec![7u8; 4096];
        let frame = Frame::Data {
            stream_id: 1,
            fin: true,
            data: data.clone(),
        };
        frames.send(frame).await.unwrap();
        let mut codec = Codec::new();
        let first = next_frame(&mut theirs, &mut codec).await;
        assert_eq!(
            first,
            Frame::Data {
                stream_id: 1,
                fin: false,
                data: data[..1024].to_vec()
            }
        );
        // Nothing more until the peer grants more.
        let mut probe = [0u8; 1];
        let early = tokio::time::timeout(Duration::from_millis(200), theirs.read(&mut probe));
        assert!(early.await.is_err(), "data beyond the window was sent");
        let update = FlowEvent::Update {
            stream_id: 1,
            delta: 3072,
        };
        flow.send(update).await.unwrap();
        let rest = next_frame(&mut theirs, &mut codec).await;
        assert_eq!(
            rest,
            Frame::Data {
                stream_id: 1,
                fin: true,
                data: data[1024..].to_vec()
            }
        );
        drop(frames);
        writer.await.unwrap();
    }
}
