//! Attach: the container's own stdio over the same streams as Exec. Its monitor serves
//! both ends (`rootstock_runtime::attach`, `rootstock_runtime::stdin`): output is copied to
//! us from the monitor's attach socket as the container writes it (so a container without
//! a CRI log can be attached to), input goes to its stdin relay, and a terminal's resizes
//! go to the attach socket. The session ends when the client detaches (the container keeps
//! running) or the container exits (the monitor closes the socket).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rootstock_runtime::Runtime;
use rootstock_runtime::attach::{
    FRAME_HEADER, FRAME_HELLO, FRAME_STDERR, FRAME_STDOUT, MAX_PENDING, resize_message,
};
use rootstock_runtime::monitor::{ATTACH_SOCKET_FILE, STDIN_SOCKET_FILE};
use rootstock_runtime::state::ContainerState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use super::exec::{Channels, Ending, ExecSpec, Protocol, Sizes, failure, serve_channels, success};
use super::session::{Incoming, Sender, Session};

/// How long the monitor may take to take us in (it serves clients between chunks of output).
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a TTY attach waits for the client's first window size before passing input on.
const INITIAL_SIZE_WAIT: Duration = Duration::from_secs(1);

pub async fn serve(session: Session, spec: ExecSpec, rt: Arc<Runtime>, proto: Protocol) {
    let ending = Ending {
        fin_outputs: true,
        linger: Duration::from_secs(1),
    };
    serve_channels(session, &spec, proto, ending, async |ch, tx| {
        run(&spec, &rt, ch, tx).await
    })
    .await;
}

async fn run(
    spec: &ExecSpec,
    rt: &Arc<Runtime>,
    ch: &mut Channels,
    tx: &Sender,
) -> serde_json::Value {
    let info = match rt.container(&spec.container) {
        Ok(i) => i,
        Err(e) => return failure(&e.to_string()),
    };
    if !matches!(info.record.state, ContainerState::Running) {
        return failure(&format!("container {} is not running", spec.container));
    }
    let attached = match attach(&info.run_dir).await {
        Ok(c) => c,
        Err(e) => {
            return failure(&format!(
                "container {}: cannot attach to its monitor: {e}",
                spec.container
            ));
        }
    };
    let (rd, mut wr) = attached.into_split();
    // Without resizes the write half is still held to the end: dropping it would shut
    // down our side, which the monitor takes as the end of our input, not of the attach.
    let mut idle_writer = None;
    // The first window size reaches the terminal before any input (a shell that reads
    // the size at its prompt sees the client's).
    let resize_task = match ch.resize.take() {
        Some(mut s) => {
            let mut sizes = Sizes::default();
            if let Ok(Some(data)) = tokio::time::timeout(INITIAL_SIZE_WAIT, s.data.recv()).await {
                sizes.push(&data);
                if let Ok(Some((w, h))) = sizes.next_size() {
                    let _ = wr.write_all(&resize_message(w, h)).await;
                }
            }
            Some(tokio::spawn(pump_resize(s, sizes, wr)))
        }
        None => {
            idle_writer = Some(wr);
            None
        }
    };
    let stdin_task = match ch.stdin.take() {
        Some(s) => match connect(&info.run_dir, STDIN_SOCKET_FILE).await {
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
    let out = [
        ch.stdout.as_ref().map(|s| s.id),
        // A terminal has one output, which the monitor sends as stdout.
        ch.stderr.as_ref().map(|s| s.id),
    ];
    let result = tokio::select! {
        r = copy_output(rd, out, tx) => r,
        () = tx.closed() => Ok(()),
    };
    for t in [stdin_task, resize_task].into_iter().flatten() {
        t.abort();
    }
    drop(idle_writer);
    match result {
        Ok(()) => success(),
        Err(e) => failure(&e),
    }
}

/// Connects to the monitor's attach socket and waits until it has taken us in.
async fn attach(run_dir: &Path) -> std::io::Result<UnixStream> {
    let mut conn = connect(run_dir, ATTACH_SOCKET_FILE).await?;
    let mut header = [0u8; FRAME_HEADER];
    match tokio::time::timeout(HELLO_TIMEOUT, conn.read_exact(&mut header)).await {
        Ok(Ok(_)) if header == [FRAME_HELLO, 0, 0, 0, 0] => Ok(conn),
        Ok(Ok(_)) => Err(std::io::Error::other("unexpected greeting")),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::Error::other("no greeting within 5 s")),
    }
}

/// Connects to a socket in the run directory. A socket path is limited to 108 bytes and
/// the run directory nears it: the path goes through a descriptor of the directory.
async fn connect(run_dir: &Path, socket: &str) -> std::io::Result<UnixStream> {
    use std::os::fd::AsRawFd;
    let dir = std::fs::File::open(run_dir)?;
    let path = format!("/proc/self/fd/{}/{socket}", dir.as_raw_fd());
    let conn = UnixStream::connect(&path).await;
    drop(dir);
    conn
}

/// Sends the container's output on the client's streams until the monitor closes the
/// socket (the container is gone) or the client leaves.
async fn copy_output(
    mut rd: OwnedReadHalf,
    [stdout, stderr]: [Option<u32>; 2],
    tx: &Sender,
) -> Result<(), String> {
    let mut buf = Vec::new();
    loop {
        let mut header = [0u8; FRAME_HEADER];
        match rd.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(format!("reading the container's output: {e}")),
        }
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if len > MAX_PENDING {
            return Err(format!("the monitor sent a frame of {len} bytes"));
        }
        buf.resize(len, 0);
        rd.read_exact(&mut buf)
            .await
            .map_err(|e| format!("reading the container's output: {e}"))?;
        let target = match header[0] {
            FRAME_STDOUT => stdout,
            FRAME_STDERR => stderr,
            _ => None,
        };
        if let Some(id) = target
            && !tx.data(id, &buf).await
        {
            return Ok(());
        }
    }
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

/// Passes the client's window sizes to the monitor, which sets them on the terminal.
async fn pump_resize(mut s: Incoming, mut sizes: Sizes, mut wr: OwnedWriteHalf) {
    while let Some(data) = s.data.recv().await {
        sizes.push(&data);
        match sizes.next_size() {
            Ok(Some((w, h))) => {
                if wr.write_all(&resize_message(w, h)).await.is_err() {
                    return;
                }
            }
            Ok(None) => {}
            Err(()) => {
                tracing::debug!("streaming attach: bad resize message; resizes ignored");
                // Still read (and `wr` held), so neither the stream nor the attach ends.
                while s.data.recv().await.is_some() {}
                drop(wr);
                return;
            }
        }
    }
}
