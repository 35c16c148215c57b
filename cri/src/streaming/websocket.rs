//! Exec, Attach and PortForward over WebSocket (kubelet's `wsstream`): every message is one
//! channel's data, its first byte the channel. With a binary subprotocol the message is
//! binary; with a `base64.` one it is text, the channel as an ASCII digit and the data
//! base64-encoded (for clients that cannot send binary messages, e.g. browsers' old
//! consoles). The connection is bridged to a [`Session`] whose stream ids are the channel
//! numbers, so the protocol code (`exec.rs`, `attach.rs`, `portforward.rs`) serves both
//! transports.
//!
//! - Exec/Attach: 0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize; v5 adds `[255, channel]`
//!   to close a channel (stdin's end).
//! - PortForward: for the i-th port of the URL's `port` query, channel 2i is its data and
//!   2i+1 its error; the server first writes the port (u16, little endian) on both.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::conn::Conn;
use super::exec::{ExecSpec, Protocol};
use super::session::{IN_QUEUE, Incoming, OUT_QUEUE, Session, Timeouts};
use super::spdy::{Frame, Headers};

/// Exec and Attach subprotocols served, preferred first (kubelet's set).
pub const EXEC_SUBPROTOCOLS: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
];
/// SPDY tunnelled through WebSocket (client-go's tunnelling dialer, used by
/// `crictl port-forward --transport websocket` and newer API servers): every binary message
/// carries the next bytes of a SPDY connection speaking `portforward.k8s.io`.
pub const SPDY_TUNNEL_PORT_FORWARD: &str = "SPDY/3.1+portforward.k8s.io";
/// PortForward subprotocols served: kubelet's set, and the SPDY tunnel.
pub const PORT_FORWARD_SUBPROTOCOLS: &[&str] = &[
    SPDY_TUNNEL_PORT_FORWARD,
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
];

/// The tunnel's buffer each way (one message carries at most this much).
const TUNNEL_BUFFER: usize = 256 * 1024;

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
/// v5: `[CLOSE, channel]` closes that channel.
const CLOSE: u8 = 255;

/// How a negotiated subprotocol frames its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    /// Text messages with base64 data.
    pub base64: bool,
    /// v5's close-channel message.
    pub close_channel: bool,
}

impl Framing {
    /// The framing of subprotocol `name` ("" when the client named none: binary).
    pub fn of(name: &str) -> Self {
        Self {
            base64: name.contains("base64."),
            close_channel: name == "v5.channel.k8s.io",
        }
    }
}

/// The exec status format of subprotocol `name`: JSON from v4 on; resizes always (kubelet
/// opens the resize channel for a TTY whatever the version).
pub fn exec_protocol(name: &str) -> Protocol {
    Protocol {
        resize: true,
        json_status: name.starts_with("v4.") || name.starts_with("v5."),
    }
}

/// One channel of the connection, as the handler sees it.
struct Channel {
    number: u8,
    headers: Headers,
    /// The client writes to it (its data is passed on).
    readable: bool,
    /// Written first by the server (port forwarding's port).
    greeting: Option<Vec<u8>>,
}

fn kind(k: &str) -> Headers {
    vec![("streamtype".to_owned(), k.to_owned())]
}

/// The channels an Exec or Attach of `spec` uses.
fn exec_channels(spec: &ExecSpec) -> Vec<Channel> {
    let wanted = [
        (ERROR, "error", true, false),
        (STDIN, "stdin", spec.stdin, true),
        (STDOUT, "stdout", spec.stdout, false),
        (STDERR, "stderr", spec.stderr, false),
        (RESIZE, "resize", spec.tty, true),
    ];
    wanted
        .into_iter()
        .filter(|w| w.2)
        .map(|(number, k, _, readable)| Channel {
            number,
            headers: kind(k),
            readable,
            greeting: None,
        })
        .collect()
}

/// The channels forwarding `ports` uses: per port a data and an error channel, named as
/// the SPDY streams of one connection would be (`requestid` pairs them).
fn port_forward_channels(ports: &[u16]) -> Vec<Channel> {
    let mut channels = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        for (offset, k) in [(0u8, "data"), (1, "error")] {
            let mut headers = kind(k);
            headers.push(("port".to_owned(), port.to_string()));
            headers.push(("requestid".to_owned(), i.to_string()));
            channels.push(Channel {
                // At most 127 ports (checked by the caller): the channel fits a byte.
                number: (i as u8) * 2 + offset,
                headers,
                readable: offset == 0,
                greeting: Some(port.to_le_bytes().to_vec()),
            });
        }
    }
    channels
}

/// Bridges an upgraded WebSocket to a [`Session`] carrying an exec's or attach's channels.
pub fn exec_session(
    ws: WebSocketStream<Conn>,
    spec: &ExecSpec,
    framing: Framing,
    timeouts: Timeouts,
) -> Session {
    session(ws, exec_channels(spec), framing, timeouts)
}

/// Bridges an upgraded WebSocket to a [`Session`] forwarding `ports`.
pub fn port_forward_session(
    ws: WebSocketStream<Conn>,
    ports: &[u16],
    framing: Framing,
    timeouts: Timeouts,
) -> Session {
    session(ws, port_forward_channels(ports), framing, timeouts)
}

/// A SPDY [`Session`] over the byte stream the WebSocket's binary messages carry.
pub fn spdy_tunnel_session(ws: WebSocketStream<Conn>, timeouts: Timeouts) -> Session {
    let (ours, theirs) = tokio::io::duplex(TUNNEL_BUFFER);
    let (mut sink, mut source) = ws.split();
    let (mut from_session, mut to_session) = tokio::io::split(theirs);
    // Both bridges end with their side: the client's close ends the session's input, the
    // session's end (its writer shuts down) closes the WebSocket.
    tokio::spawn(async move {
        while let Some(Ok(msg)) = source.next().await {
            match msg {
                Message::Binary(b) if to_session.write_all(&b).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = to_session.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; TUNNEL_BUFFER];
        loop {
            match from_session.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink
                        .send(Message::Binary(buf[..n].to_vec().into()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        let close = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        let _ = sink.send(Message::Close(Some(close))).await;
        let _ = sink.close().await;
    });
    let (rd, wr) = tokio::io::split(ours);
    Session::start_on(rd, wr, Vec::new(), timeouts)
}

fn session(
    ws: WebSocketStream<Conn>,
    channels: Vec<Channel>,
    framing: Framing,
    timeouts: Timeouts,
) -> Session {
    let (mut sink, mut source) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Frame>(OUT_QUEUE);
    let (new_tx, new_rx) = mpsc::channel(channels.len().max(1));
    let (gone_tx, gone_rx) = watch::channel(());
    let activity = timeouts.activity();
    let activity2 = activity.clone();

    // The channels exist from the start (WebSocket has no stream creation).
    let mut sinks: Vec<Option<mpsc::Sender<Vec<u8>>>> = vec![None; 256];
    let mut greetings = Vec::new();
    for ch in channels {
        let (tx, rx) = mpsc::channel(IN_QUEUE);
        if ch.readable {
            sinks[usize::from(ch.number)] = Some(tx);
        }
        if let Some(g) = ch.greeting {
            greetings.push(encode(framing, ch.number, &g));
        }
        let incoming = Incoming {
            id: u32::from(ch.number),
            headers: ch.headers,
            data: rx,
        };
        // The queue holds every channel: this never waits or fails.
        let _ = new_tx.try_send(incoming);
    }

    let reader = tokio::spawn(async move {
        // Held until the client is gone: the handler's incoming queue then ends.
        let _new_tx = new_tx;
        loop {
            let Some(wait) = activity2.wait() else {
                tracing::info!("streaming: WebSocket session timed out; closed");
                break;
            };
            let msg = match tokio::time::timeout(wait, source.next()).await {
                Ok(Some(Ok(m))) => m,
                Ok(None | Some(Err(_))) => break,
                Err(_) => continue,
            };
            activity2.touch();
            let data = match msg {
                Message::Binary(b) if !framing.base64 => b.to_vec(),
                Message::Text(t) if framing.base64 => match decode(t.as_str()) {
                    Some(d) => d,
                    None => {
                        tracing::debug!("streaming: malformed base64 message; closed");
                        break;
                    }
                },
                Message::Close(_) => break,
                // Ping/pong (answered by tungstenite), messages of the other kind.
                _ => continue,
            };
            let Some((&channel, payload)) = data.split_first() else {
                continue;
            };
            if channel == CLOSE && framing.close_channel {
                if let Some(&closed) = payload.first() {
                    sinks[usize::from(closed)] = None;
                }
                continue;
            }
            if let Some(s) = &sinks[usize::from(channel)]
                && !payload.is_empty()
            {
                // Waits while the consumer is behind: the socket is not read meanwhile.
                let _ = s.send(payload.to_vec()).await;
            }
        }
        drop(gone_tx);
    });
    let writer = tokio::spawn(async move {
        for g in greetings {
            if sink.send(g).await.is_err() {
                return;
            }
        }
        while let Some(frame) = out_rx.recv().await {
            let msg = match frame {
                Frame::Data {
                    stream_id, data, ..
                } if !data.is_empty() => encode(framing, stream_id as u8, &data),
                // The end of the session: a normal close (1000), which clients take as the
                // end of the output rather than an error.
                Frame::GoAway { .. } => {
                    let close = CloseFrame {
                        code: CloseCode::Normal,
                        reason: "".into(),
                    };
                    let _ = sink.send(Message::Close(Some(close))).await;
                    let _ = sink.close().await;
                    break;
                }
                // FIN (channels end with the connection), SPDY control frames.
                _ => continue,
            };
            if sink.send(msg).await.is_err() {
                break;
            }
            activity.touch();
        }
    });
    Session::from_parts(out_tx, gone_rx, new_rx, reader, writer)
}

fn encode(framing: Framing, channel: u8, data: &[u8]) -> Message {
    if framing.base64 {
        let mut text = String::with_capacity(1 + data.len().div_ceil(3) * 4);
        text.push(char::from(b'0' + channel));
        BASE64.encode_string(data, &mut text);
        Message::Text(text.into())
    } else {
        let mut m = Vec::with_capacity(data.len() + 1);
        m.push(channel);
        m.extend_from_slice(data);
        Message::Binary(m.into())
    }
}

/// A base64 message: the channel as a digit (`'0' + n`), then the data.
fn decode(text: &str) -> Option<Vec<u8>> {
    let (&first, rest) = text.as_bytes().split_first()?;
    let channel = first.checked_sub(b'0')?;
    let mut out = vec![channel];
    BASE64.decode_vec(rest, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn base64_messages_round_trip_with_their_channel() {
        let f = Framing::of("v4.base64.channel.k8s.io");
        assert!(f.base64 && !f.close_channel);
        let Message::Text(t) = encode(f, 1, b"hello") else {
            panic!("not text")
        };
        assert_eq!(t.as_str(), "1aGVsbG8=");
        assert_eq!(decode("0aGk="), Some(b"\x00hi".to_vec()));
        assert_eq!(decode("0!!"), None);
        assert!(Framing::of("v5.channel.k8s.io").close_channel);
    }

    #[test]
    fn port_forward_channels_pair_data_and_error_per_port() {
        let ch = port_forward_channels(&[80, 8080]);
        let numbers: Vec<u8> = ch.iter().map(|c| c.number).collect();
        assert_eq!(numbers, [0, 1, 2, 3]);
        assert_eq!(ch[2].greeting.as_deref(), Some(&8080u16.to_le_bytes()[..]));
        assert!(ch[2].readable && !ch[3].readable);
        assert!(
            ch[3]
                .headers
                .contains(&("requestid".to_owned(), "1".to_owned()))
        );
    }
}
