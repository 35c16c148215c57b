//! The exec protocol over a SPDY session (kubelet's `remotecommand` server, protocols
//! `v4.channel.k8s.io` and `v5.channel.k8s.io`, which are the same on SPDY): the client
//! opens an `error` stream and one stream per requested stdio channel; the command's
//! stdout and stderr go out on theirs, stdin comes in, and at the end the error stream
//! carries a JSON `metav1.Status` (exit code as the `ExitCode` cause of a
//! `NonZeroExitCode` failure), then everything is half-closed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rootstock_runtime::Runtime;
use rootstock_runtime::id::ContainerId;
use rootstock_runtime::oci::ExecRequest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;

use super::session::{DATA_CHUNK, Incoming, Sender, Session};
use super::spdy::header;

/// kubelet's `streamCreationTimeout`: how long the client has to open its streams.
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);
/// After the command exits, how long a background process that still holds its stdout or
/// stderr may keep them open before they are cut (as ExecSync does).
const DRAIN_GRACE: Duration = Duration::from_millis(500);
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
}

/// The client's streams, by `streamType`.
#[derive(Default)]
struct Channels {
    error: Option<Incoming>,
    stdin: Option<Incoming>,
    stdout: Option<Incoming>,
    stderr: Option<Incoming>,
}

impl Channels {
    fn complete(&self, spec: &ExecSpec) -> bool {
        self.error.is_some()
            && (!spec.stdin || self.stdin.is_some())
            && (!spec.stdout || self.stdout.is_some())
            && (!spec.stderr || self.stderr.is_some())
    }
}

pub async fn serve(mut session: Session, spec: ExecSpec, rt: Arc<Runtime>) {
    let Some(mut ch) = accept_streams(&mut session, &spec).await else {
        session.close(Duration::ZERO).await;
        return;
    };
    // Streams opened from now on are refused (RST_STREAM) rather than queued unread.
    session.incoming.close();
    let tx = session.sender();
    let stdin = ch.stdin.take();
    let status = run(&spec, rt, stdin, &ch, &tx).await;
    if let Some(error) = &ch.error {
        let _ = tx.data(error.id, status.to_string().as_bytes()).await;
        let _ = tx.fin(error.id).await;
    }
    drop(tx);
    session.close(LINGER).await;
}

/// Waits until the client has opened every stream the request implies.
async fn accept_streams(session: &mut Session, spec: &ExecSpec) -> Option<Channels> {
    let mut ch = Channels::default();
    let deadline = tokio::time::Instant::now() + STREAM_CREATION_TIMEOUT;
    while !ch.complete(spec) {
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
    stdin: Option<Incoming>,
    ch: &Channels,
    tx: &Sender,
) -> serde_json::Value {
    let id = spec.container.clone();
    let req = ExecRequest {
        args: spec.cmd.clone(),
        env: Vec::new(),
        cwd: None,
    };
    let want_stdin = stdin.is_some();
    let spawned = tokio::task::spawn_blocking(move || rt.exec_spawn(&id, &req, want_stdin)).await;
    let mut child = match spawned {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return failure(&format!("exec in {}: {e}", spec.container)),
        Err(e) => return failure(&format!("exec task failed: {e}")),
    };
    let out = child
        .take_stdout()
        .and_then(|p| pipe::Receiver::from_owned_fd(p.into()).ok());
    let err = child
        .take_stderr()
        .and_then(|p| pipe::Receiver::from_owned_fd(p.into()).ok());
    let input = child
        .take_stdin()
        .and_then(|p| pipe::Sender::from_owned_fd(p.into()).ok());
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
    let mut waiter = tokio::task::spawn_blocking(move || child.wait(&cancel2));
    let exited = loop {
        tokio::select! {
            res = &mut waiter => break res,
            () = tx.closed() => cancel.store(true, Ordering::Relaxed),
        }
    };
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
        Ok(Ok(Some(0))) => serde_json::json!({"metadata": {}, "status": "Success"}),
        Ok(Ok(Some(code))) => exit_status(code),
        Ok(Ok(None)) => failure("the client went away; the command was killed"),
        Ok(Err(e)) => failure(&format!("exec: {e}")),
        Err(e) => failure(&format!("exec wait task failed: {e}")),
    }
}

/// Copies a pipe to a stream (or drops it, when the client did not ask for that channel).
async fn pump_out(pipe: Option<pipe::Receiver>, stream: Option<u32>, tx: Sender) {
    let Some(mut pipe) = pipe else { return };
    let mut buf = vec![0u8; DATA_CHUNK];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if let Some(id) = stream
                    && !tx.data(id, &buf[..n]).await
                {
                    return;
                }
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

/// `metav1.Status` for an exec that could not run or finish.
fn failure(message: &str) -> serde_json::Value {
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
    fn exit_status_is_the_kubelet_shape() {
        let s = exit_status(3);
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(s["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(s["details"]["causes"][0]["message"], "3");
    }
}
