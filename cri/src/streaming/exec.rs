//! The exec protocol over a SPDY session (kubelet's `remotecommand` server): the client
//! opens an `error` stream and one stream per requested stdio channel; the command's
//! stdout and stderr go out on theirs, stdin comes in, and at the end the error stream
//! carries the outcome, then everything is half-closed. The versions differ only in two
//! ways ([`Protocol`]): v3 added the `resize` stream, v4 made the outcome a JSON
//! `metav1.Status` (exit code as the `ExitCode` cause of a `NonZeroExitCode` failure);
//! v5 is v4 on SPDY.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use std::os::fd::OwnedFd;

use rootstock_runtime::Runtime;
use rootstock_runtime::exec_stream::ExecChild;
use rootstock_runtime::id::ContainerId;
use rootstock_runtime::oci::ExecRequest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;

use crate::blocking::blocking;

use super::session::{DATA_CHUNK, Incoming, Sender, Session};
use super::spdy::header;

/// kubelet's `streamCreationTimeout`: how long the client has to open its streams.
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);
/// After the command exits, how long a background process that still holds its stdout or
/// stderr may keep them open before they are cut (as ExecSync does).
const DRAIN_GRACE: Duration = Duration::from_millis(500);
/// How long a TTY exec waits for the client's first window size before it starts the
/// command without one.
const INITIAL_SIZE_WAIT: Duration = Duration::from_secs(1);
/// How long the client gets to hang up after the status was sent.
const LINGER: Duration = Duration::from_secs(5);

/// What a token's Exec request asked for (CRI `ExecRequest`, validated).
#[derive(Debug, Clone)]
pub struct ExecSpec {
    pub container: ContainerId,
    pub cmd: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    /// A pty for the command (stderr is then merged into stdout).
    pub tty: bool,
}

/// What the negotiated remotecommand version offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protocol {
    /// A `resize` stream with a TTY (v3 on; over WebSocket always, as kubelet's).
    pub resize: bool,
    /// The error stream carries a JSON `metav1.Status` (v4 on); before, the error's text on
    /// a failure and nothing on a success, so the exit code is lost (as with kubelet).
    pub json_status: bool,
}

impl Protocol {
    /// v4 and v5.
    pub const CURRENT: Self = Self {
        resize: true,
        json_status: true,
    };

    /// The SPDY protocol `X-Stream-Protocol-Version` names (no header at all: v1, as kubelet
    /// falls back to).
    pub fn for_spdy(name: &str) -> Option<Self> {
        let (resize, json_status) = match name {
            "v5.channel.k8s.io" | "v4.channel.k8s.io" => (true, true),
            "v3.channel.k8s.io" => (true, false),
            "v2.channel.k8s.io" | "channel.k8s.io" | "" => (false, false),
            _ => return None,
        };
        Some(Self {
            resize,
            json_status,
        })
    }

    /// Writes the outcome on the error stream, as this version does.
    pub(super) async fn write_status(&self, tx: &Sender, id: u32, status: &serde_json::Value) {
        let text = if self.json_status {
            status.to_string()
        } else if status["status"] == "Success" {
            String::new()
        } else {
            status["message"].as_str().unwrap_or("error").to_owned()
        };
        if !text.is_empty() {
            let _ = tx.data(id, text.as_bytes()).await;
        }
        let _ = tx.fin(id).await;
    }
}

/// The client's streams, by `streamType`.
#[derive(Default)]
pub(super) struct Channels {
    pub(super) error: Option<Incoming>,
    pub(super) stdin: Option<Incoming>,
    pub(super) stdout: Option<Incoming>,
    pub(super) stderr: Option<Incoming>,
    pub(super) resize: Option<Incoming>,
}

impl Channels {
    fn complete(&self, spec: &ExecSpec, proto: Protocol) -> bool {
        self.error.is_some()
            && (!spec.stdin || self.stdin.is_some())
            && (!spec.stdout || self.stdout.is_some())
            && (!spec.stderr || self.stderr.is_some())
            && (!(spec.tty && proto.resize) || self.resize.is_some())
    }
}

pub async fn serve(session: Session, spec: ExecSpec, rt: Arc<Runtime>, proto: Protocol) {
    // `run` half-closes the outputs itself once the command's output is drained.
    let ending = Ending {
        fin_outputs: false,
        linger: LINGER,
    };
    serve_channels(session, &spec, proto, ending, async |ch, tx| {
        run(&spec, rt, ch, tx).await
    })
    .await;
}

/// How Exec and Attach differ around what they run.
pub(super) struct Ending {
    /// Half-close stdout and stderr after `run`, before the status.
    pub(super) fin_outputs: bool,
    /// How long the client gets to hang up after the status was sent.
    pub(super) linger: Duration,
}

/// What Exec and Attach share: waits for the client's streams, runs `run` on them, writes
/// the status it returns on the error stream and ends the session.
pub(super) async fn serve_channels(
    mut session: Session,
    spec: &ExecSpec,
    proto: Protocol,
    ending: Ending,
    run: impl AsyncFnOnce(&mut Channels, &Sender) -> serde_json::Value,
) {
    let Some(mut ch) = accept_streams(&mut session, spec, proto).await else {
        session.close(Duration::ZERO).await;
        return;
    };
    // Streams opened from now on are refused (RST_STREAM) rather than queued unread.
    session.incoming.close();
    let tx = session.sender();
    let status = run(&mut ch, &tx).await;
    if ending.fin_outputs {
        for s in [&ch.stdout, &ch.stderr].into_iter().flatten() {
            let _ = tx.fin(s.id).await;
        }
    }
    if let Some(error) = &ch.error {
        proto.write_status(&tx, error.id, &status).await;
    }
    drop(tx);
    session.close(ending.linger).await;
}

/// Waits until the client has opened every stream the request implies.
/// (Attach's streams are the same, its spec an [`ExecSpec`] without a command.)
async fn accept_streams(
    session: &mut Session,
    spec: &ExecSpec,
    proto: Protocol,
) -> Option<Channels> {
    let mut ch = Channels::default();
    let deadline = tokio::time::Instant::now() + STREAM_CREATION_TIMEOUT;
    while !ch.complete(spec, proto) {
        let s = match tokio::time::timeout_at(deadline, session.incoming.recv()).await {
            Ok(Some(s)) => s,
            Ok(None) => return None,
            Err(_) => {
                tracing::info!("streaming exec: the client did not open its streams in time");
                return None;
            }
        };
        let slot = match header(&s.headers, "streamtype") {
            Some("error") => &mut ch.error,
            Some("stdin") => &mut ch.stdin,
            Some("stdout") => &mut ch.stdout,
            Some("stderr") => &mut ch.stderr,
            Some("resize") if spec.tty => &mut ch.resize,
            // `resize` without a TTY, or a type we do not know: its data is dropped.
            _ => continue,
        };
        *slot = Some(s);
    }
    Some(ch)
}

/// Runs the command with its stdio wired to the streams; the status for the error stream.
async fn run(
    spec: &ExecSpec,
    rt: Arc<Runtime>,
    ch: &mut Channels,
    tx: &Sender,
) -> serde_json::Value {
    let (stdin, resize_stream) = (ch.stdin.take(), ch.resize.take());
    let id = spec.container.clone();
    let req = ExecRequest {
        args: spec.cmd.clone(),
        env: Vec::new(),
        cwd: None,
    };
    let want_stdin = stdin.is_some();
    let tty = spec.tty;
    // client-go sends the terminal's size as soon as the resize stream is open.
    let mut resize_stream = resize_stream;
    let mut sizes = Sizes::default();
    if let Some(s) = resize_stream.as_mut()
        && let Ok(Some(data)) = tokio::time::timeout(INITIAL_SIZE_WAIT, s.data.recv()).await
    {
        sizes.push(&data);
    }
    let initial = sizes.next_size().ok().flatten();
    let spawned = blocking(move || {
        if tty {
            rt.exec_spawn_tty(&id, &req, initial)
                .map(|(c, m)| (c, Some(m)))
        } else {
            rt.exec_spawn(&id, &req, want_stdin).map(|c| (c, None))
        }
    })
    .await;
    let (mut child, master) = match spawned {
        Ok(c) => c,
        Err(e) => return failure(&format!("exec in {}: {e}", spec.container)),
    };
    let (out, err, input, resize) = match master {
        // One pty: output (stdout and stderr merged, as a terminal does), input, and the
        // window size, each on its own descriptor of the master.
        Some(m) => {
            let out = m
                .try_clone()
                .ok()
                .and_then(|f| pipe::Receiver::from_owned_fd_unchecked(OwnedFd::from(f)).ok());
            let input = if want_stdin {
                m.try_clone()
                    .ok()
                    .and_then(|f| pipe::Sender::from_owned_fd_unchecked(OwnedFd::from(f)).ok())
            } else {
                None
            };
            (out, None, input, Some(m))
        }
        None => (
            child
                .take_stdout()
                .and_then(|p| pipe::Receiver::from_owned_fd(p.into()).ok()),
            child
                .take_stderr()
                .and_then(|p| pipe::Receiver::from_owned_fd(p.into()).ok()),
            child
                .take_stdin()
                .and_then(|p| pipe::Sender::from_owned_fd(p.into()).ok()),
            None,
        ),
    };
    let resize_task = match (resize, resize_stream) {
        (Some(m), Some(s)) => Some(tokio::spawn(pump_resize(
            s,
            sizes,
            initial,
            m,
            (child.pid(), child.pid_file().to_owned()),
        ))),
        _ => None,
    };
    let mut pumps = vec![
        tokio::spawn(pump_out(out, ch.stdout.as_ref().map(|s| s.id), tx.clone())),
        tokio::spawn(pump_out(err, ch.stderr.as_ref().map(|s| s.id), tx.clone())),
    ];
    let stdin_task = match (input, stdin) {
        (Some(p), Some(s)) => Some(tokio::spawn(pump_in(s, p))),
        _ => None,
    };

    // The client going away (its stdout stream's sender fails) cancels the command.
    let cancel = Arc::new(AtomicBool::new(false));
    let cancel2 = cancel.clone();
    let waiter = blocking(move || child.wait(&cancel2));
    tokio::pin!(waiter);
    let exited = loop {
        tokio::select! {
            res = &mut waiter => break res,
            () = tx.closed() => cancel.store(true, Ordering::Relaxed),
        }
    };
    // The runtime client is reaped: its pid must not be signalled for a resize any more.
    if let Some(t) = resize_task {
        t.abort();
    }
    // Output still in the pipes is sent; a background process keeping them open is cut.
    let drained = async {
        for p in &mut pumps {
            let _ = p.await;
        }
    };
    if tokio::time::timeout(DRAIN_GRACE, drained).await.is_err() {
        for p in &pumps {
            p.abort();
        }
    }
    if let Some(t) = stdin_task {
        t.abort();
    }
    // spdystream's reader needs the output streams closed to finish its copies.
    for s in [&ch.stdout, &ch.stderr].into_iter().flatten() {
        let _ = tx.fin(s.id).await;
    }
    match exited {
        Ok(Some(0)) => success(),
        Ok(Some(code)) => exit_status(code),
        Ok(None) => failure("the client went away; the command was killed"),
        Err(e) => failure(&format!("exec: {e}")),
    }
}

/// Copies a pipe to a stream (or drops it, when the client did not ask for that channel).
async fn pump_out(pipe: Option<pipe::Receiver>, stream: Option<u32>, tx: Sender) {
    let Some(mut pipe) = pipe else { return };
    loop {
        // A buffer per chunk, handed to the writer as it is (no copy).
        let mut buf = Vec::with_capacity(DATA_CHUNK);
        match pipe.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if let Some(id) = stream
                    && !tx.data_vec(id, buf).await
                {
                    return;
                }
            }
        }
    }
}

/// The resize stream's messages: JSON objects `{"Width":…,"Height":…}` (client-go's
/// `TerminalSize`, one per resize, from a JSON encoder), possibly cut across frames.
#[derive(Default)]
pub(super) struct Sizes {
    buf: Vec<u8>,
}

impl Sizes {
    pub(super) fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The latest complete size, if any; `Err` on a malformed or oversized message.
    pub(super) fn next_size(&mut self) -> Result<Option<(u16, u16)>, ()> {
        #[derive(serde::Deserialize)]
        struct Size {
            #[serde(rename = "Width")]
            width: u16,
            #[serde(rename = "Height")]
            height: u16,
        }
        let mut it = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Size>();
        let (mut latest, mut used) = (None, 0);
        loop {
            match it.next() {
                Some(Ok(size)) => {
                    used = it.byte_offset();
                    latest = Some((size.width, size.height));
                }
                // An object cut between frames: the rest comes later.
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(_)) => return Err(()),
                None => break,
            }
        }
        self.buf.drain(..used);
        if self.buf.len() > 4096 {
            return Err(());
        }
        Ok(latest)
    }
}

/// Applies the client's window sizes. runc copies our pty's size to the container's on
/// SIGWINCH, and a SIGWINCH that comes before its handler is installed is lost: the
/// initial size is signalled again until runc has written the command's pid file (its
/// handler is installed by then), however slowly it starts, for at most 10 s.
async fn pump_resize(
    mut s: Incoming,
    mut sizes: Sizes,
    initial: Option<(u16, u16)>,
    master: std::fs::File,
    (pid, pid_file): (i32, std::path::PathBuf),
) {
    if let Some((w, h)) = initial {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            // A size the client sent since wins over the initial one.
            if !(sizes.buf.is_empty() && s.data.is_empty()) {
                break;
            }
            let started = pid_file.exists();
            let _ = ExecChild::resize(pid, &master, w, h);
            if started || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    while let Some(data) = s.data.recv().await {
        sizes.push(&data);
        match sizes.next_size() {
            Ok(Some((w, h))) => {
                if let Err(e) = ExecChild::resize(pid, &master, w, h) {
                    tracing::debug!("streaming exec: resize: {e}");
                }
            }
            Ok(None) => {}
            Err(()) => {
                tracing::debug!("streaming exec: bad resize message; resizes ignored");
                return;
            }
        }
    }
}

/// Copies the client's stdin stream to the command; its FIN closes the command's stdin.
async fn pump_in(mut s: Incoming, mut pipe: pipe::Sender) {
    while let Some(data) = s.data.recv().await {
        if pipe.write_all(&data).await.is_err() {
            return;
        }
    }
}

/// `metav1.Status` for a command that exited non-zero, as kubelet writes it: client-go
/// turns the `ExitCode` cause into the exit code `kubectl exec` and `crictl exec` return.
pub fn exit_status(code: i32) -> serde_json::Value {
    serde_json::json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("command terminated with non-zero exit code: exit status {code}"),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

/// `metav1.Status` of a success.
pub(super) fn success() -> serde_json::Value {
    serde_json::json!({"metadata": {}, "status": "Success"})
}

/// `metav1.Status` for an exec that could not run or finish.
pub(super) fn failure(message: &str) -> serde_json::Value {
    serde_json::json!({
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": "InternalError",
        "code": 500,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn resize_messages_cut_across_frames_are_reassembled() {
        let mut s = Sizes::default();
        s.push(br#"{"Width":80,"Height":24}"#);
        s.push(b"\n{\"Width\":1");
        assert_eq!(s.next_size(), Ok(Some((80, 24))));
        assert_eq!(s.next_size(), Ok(None));
        s.push(b"00,\"Height\":30}\n{\"Width\":7,\"Height\":8}\n");
        assert_eq!(s.next_size(), Ok(Some((7, 8))));
        s.push(b"garbage");
        assert_eq!(s.next_size(), Err(()));
    }

    #[test]
    fn exit_status_is_the_kubelet_shape() {
        let s = exit_status(3);
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(s["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(s["details"]["causes"][0]["message"], "3");
    }
}
