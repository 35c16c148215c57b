//! Attach: the container's own stdio over the same streams as Exec. Input goes to the
//! container's stdin through its monitor's relay socket (`<run_dir>/stdin.sock`, see
//! `rootstock_runtime::stdin`); output is followed from the CRI log the monitor writes, so
//! attaching needs no change to the monitor and the log keeps everything (the cost: output
//! arrives at the log's pace, polled every 50 ms). The session ends when the client
//! detaches (the container keeps running) or the container exits.

use std::io::SeekFrom;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rootstock_runtime::Runtime;
use rootstock_runtime::state::ContainerState;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::exec::{ExecSpec, accept_streams, failure, success};
use super::session::{Incoming, Sender, Session};

/// How often the log is read for new output and the container's state checked.
const POLL: Duration = Duration::from_millis(50);
/// How many polls between container state checks.
const STATE_EVERY: u32 = 10;

pub async fn serve(mut session: Session, spec: ExecSpec, rt: Arc<Runtime>) {
    let Some(mut ch) = accept_streams(&mut session, &spec).await else {
        session.close(Duration::ZERO).await;
        return;
    };
    session.incoming.close();
    // The container's terminal size is not ours to change yet: resizes are read and
    // dropped, so they never fill the stream's queue and stall the session.
    let drain = ch
        .resize
        .take()
        .map(|mut r| tokio::spawn(async move { while r.data.recv().await.is_some() {} }));
    let tx = session.sender();
    let status = run(&spec, &rt, ch.stdin.take(), &ch, &tx).await;
    for s in [&ch.stdout, &ch.stderr].into_iter().flatten() {
        let _ = tx.fin(s.id).await;
    }
    if let Some(error) = &ch.error {
        let _ = tx.data(error.id, status.to_string().as_bytes()).await;
        let _ = tx.fin(error.id).await;
    }
    drop(tx);
    if let Some(d) = drain {
        d.abort();
    }
    session.close(Duration::from_secs(1)).await;
}

async fn run(
    spec: &ExecSpec,
    rt: &Arc<Runtime>,
    stdin: Option<Incoming>,
    ch: &super::exec::Channels,
    tx: &Sender,
) -> serde_json::Value {
    let info = match rt.container(&spec.container) {
        Ok(i) => i,
        Err(e) => return failure(&e.to_string()),
    };
    // The log is opened at its end before any input is passed on, so the output of that
    // input is never missed.
    let path = &info.record.log_path;
    let log = match open_at_end(path).await {
        Ok(f) => f,
        Err(e) => return failure(&format!("{}: {e}", path.display())),
    };
    let stdin_task = match stdin {
        Some(s) => match connect_stdin(&info.run_dir).await {
            Ok(conn) => Some(tokio::spawn(pump_stdin(s, conn))),
            Err(e) => {
                return failure(&format!(
                    "container {}: its stdin is not open (created without stdin?): {e}",
                    spec.container
                ));
            }
        },
        None => None,
    };
    let out = Outputs {
        stdout: ch.stdout.as_ref().map(|s| s.id),
        // A terminal has one output, logged as stdout.
        stderr: ch.stderr.as_ref().map(|s| s.id),
    };
    let result = follow_log(log, path, out, tx, rt, spec).await;
    if let Some(t) = stdin_task {
        t.abort();
    }
    match result {
        Ok(()) => success(),
        Err(e) => failure(&e),
    }
}

/// Connects to the monitor's stdin relay. A socket path is limited to 108 bytes and the
/// run directory nears it: the path goes through a descriptor of the directory.
async fn connect_stdin(run_dir: &Path) -> std::io::Result<UnixStream> {
    use std::os::fd::AsRawFd;
    let dir = std::fs::File::open(run_dir)?;
    let path = format!(
        "/proc/self/fd/{}/{}",
        dir.as_raw_fd(),
        rootstock_runtime::monitor::STDIN_SOCKET_FILE
    );
    let conn = UnixStream::connect(&path).await;
    drop(dir);
    conn
}

/// Forwards the client's input; its FIN hangs up the relay (with `stdin_once`, the
/// container then reads EOF).
async fn pump_stdin(mut s: Incoming, mut conn: UnixStream) {
    while let Some(data) = s.data.recv().await {
        if conn.write_all(&data).await.is_err() {
            return;
        }
    }
    let _ = conn.shutdown().await;
}

#[derive(Clone, Copy)]
struct Outputs {
    stdout: Option<u32>,
    stderr: Option<u32>,
}

async fn open_at_end(path: &Path) -> std::io::Result<tokio::fs::File> {
    let mut file = tokio::fs::File::open(path).await?;
    file.seek(SeekFrom::End(0)).await?;
    Ok(file)
}

/// Sends what the log gains from now on, until the client leaves or the container stops.
async fn follow_log(
    mut file: tokio::fs::File,
    path: &Path,
    out: Outputs,
    tx: &Sender,
    rt: &Arc<Runtime>,
    spec: &ExecSpec,
) -> Result<(), String> {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut polls = 0u32;
    loop {
        let n = file
            .read(&mut buf)
            .await
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if n > 0 {
            pending.extend_from_slice(&buf[..n]);
            if !send_lines(&mut pending, out, tx, spec.tty).await {
                return Ok(());
            }
            continue;
        }
        polls += 1;
        if polls.is_multiple_of(STATE_EVERY) {
            let running = rt
                .container(&spec.container)
                .is_ok_and(|i| matches!(i.record.state, ContainerState::Running));
            if !running {
                return Ok(());
            }
        }
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            () = tx.closed() => return Ok(()),
        }
    }
}

/// Sends the complete CRI log lines in `pending` (`<time> <stream> <P|F> <content>`), keeps
/// a partial last line; `false` once the client is gone.
async fn send_lines(pending: &mut Vec<u8>, out: Outputs, tx: &Sender, tty: bool) -> bool {
    let Some(end) = pending.iter().rposition(|b| *b == b'\n') else {
        return true;
    };
    let lines: Vec<u8> = pending.drain(..=end).collect();
    for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let mut parts = line.splitn(4, |b| *b == b' ');
        let (_, Some(stream), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let mut content = parts.next().unwrap_or_default().to_vec();
        if tag == b"F" {
            content.push(b'\n');
        }
        let target = if stream == b"stderr" && !tty {
            out.stderr
        } else {
            out.stdout
        };
        if let Some(id) = target
            && !tx.data(id, &content).await
        {
            return false;
        }
    }
    true
}
