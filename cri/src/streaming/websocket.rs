//! Exec over WebSocket (`v5.channel.k8s.io`, `v4.channel.k8s.io`, binary): every message
//! is one channel's data, its first byte the channel (0 stdin, 1 stdout, 2 stderr, 3 error,
//! 4 resize); v5 adds `[255, channel]` to close a channel (stdin's end). The connection is
//! bridged to a [`Session`] whose stream ids are the channel numbers, so Exec's protocol
//! code (`exec.rs`) serves both transports.

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::exec::ExecSpec;
use super::session::{IN_QUEUE, Incoming, OUT_QUEUE, Session};
use super::spdy::Frame;

/// Exec subprotocols served, preferred first (binary only; `base64.channel.k8s.io` not yet).
pub const EXEC_SUBPROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
/// v5: `[CLOSE, channel]` closes that channel.
const CLOSE: u8 = 255;

/// Bridges an upgraded WebSocket to a [`Session`] carrying the channels `spec` implies.
pub fn session(ws: WebSocketStream<TcpStream>, spec: &ExecSpec, v5: bool) -> Session {
    let (mut sink, mut source) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Frame>(OUT_QUEUE);
    let (new_tx, new_rx) = mpsc::channel(8);
    let (gone_tx, gone_rx) = watch::channel(());

    // The channels exist from the start (WebSocket has no stream creation).
    let mut sinks: [Option<mpsc::Sender<Vec<u8>>>; 5] = Default::default();
    let wanted = [
        (ERROR, "error", true),
        (STDIN, "stdin", spec.stdin),
        (STDOUT, "stdout", spec.stdout),
        (STDERR, "stderr", spec.stderr),
        (RESIZE, "resize", spec.tty),
    ];
    for (channel, kind, on) in wanted {
        if !on {
            continue;
        }
        let (tx, rx) = mpsc::channel(IN_QUEUE);
        if channel == STDIN || channel == RESIZE {
            sinks[usize::from(channel)] = Some(tx);
        }
        let incoming = Incoming {
            id: u32::from(channel),
            headers: vec![("streamtype".to_owned(), kind.to_owned())],
            data: rx,
        };
        // The queue holds 8 and at most 5 are sent: this never waits or fails.
        let _ = new_tx.try_send(incoming);
    }
    drop(new_tx);

    let reader = tokio::spawn(async move {
        while let Some(msg) = source.next().await {
            let data = match msg {
                Ok(Message::Binary(b)) => b,
                Ok(Message::Close(_)) | Err(_) => break,
                // Text (base64 protocols, not served), ping/pong (answered by tungstenite).
                Ok(_) => continue,
            };
            let Some((&channel, payload)) = data.split_first() else {
                continue;
            };
            if channel == CLOSE && v5 {
                if let Some(&closed) = payload.first()
                    && let Some(s) = sinks.get_mut(usize::from(closed))
                {
                    *s = None;
                }
                continue;
            }
            if let Some(Some(s)) = sinks.get(usize::from(channel))
                && !payload.is_empty()
            {
                // Waits while the command is behind: the socket is not read meanwhile.
                let _ = s.send(payload.to_vec()).await;
            }
        }
        drop(gone_tx);
    });
    let writer = tokio::spawn(async move {
        while let Some(frame) = out_rx.recv().await {
            let msg = match frame {
                Frame::Data {
                    stream_id, data, ..
                } if !data.is_empty() => {
                    let mut m = Vec::with_capacity(data.len() + 1);
                    m.push(stream_id as u8);
                    m.extend_from_slice(&data);
                    Message::Binary(m.into())
                }
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
        }
    });
    Session::from_parts(out_tx, gone_rx, new_rx, reader, writer)
}
