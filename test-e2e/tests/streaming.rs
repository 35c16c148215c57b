//! CRI streaming Exec, driven by a client we did not write: `spdyexec`, a small Go program
//! (test-e2e/go/spdyexec) built here from Debian's golang-github-docker-spdystream-dev —
//! moby/spdystream, the SPDY/3.1 implementation client-go uses — in GOPATH mode, offline.
//! It speaks remotecommand v5/v4 as client-go's StreamExecutor does for a non-TTY exec.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use k8s_cri::v1::*;
use rootstock_test_e2e::registry::Registry;
use tonic::Code;

use common::streaming::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_over_spdy_separates_streams_returns_the_exit_code_and_tokens_are_single_use() {
    spdyexec();
    let registry = Registry::start().await;
    // Short-lived URLs, so that expiry is seen (every other URL here is used at once).
    let SleeperPod {
        daemon,
        mut rt,
        pod_id,
        id,
        ..
    } = sleeper_pod(
        &registry,
        "[streaming]\ntoken_ttl_secs = 2",
        "streaming",
        NamespaceMode::Container,
    )
    .await;

    // stdout and stderr arrive on their own streams; exit code 3 comes back as 3.
    let script = "echo out; echo err >&2; exit 3";
    let url = exec_url(&mut rt, &id, &["sh", "-c", script], false).await;
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let out = tokio::task::spawn_blocking({
        let url = url.clone();
        move || spdy_exec(&url, None)
    })
    .await
    .unwrap();
    assert_eq!(text(&out.stdout), "out\n");
    assert_eq!(text(&out.stderr), "err\n");
    assert_eq!(out.status.code(), Some(3));

    // The URL served once: a second use is refused, as is a URL without a token or with
    // one we never handed out.
    let again = tokio::task::spawn_blocking(move || spdy_exec(&url, None))
        .await
        .unwrap();
    assert_eq!(again.status.code(), Some(100), "{}", text(&again.stderr));
    assert!(
        text(&again.stderr).contains("404"),
        "{}",
        text(&again.stderr)
    );
    let fresh = exec_url(&mut rt, &id, &["true"], false).await;
    let base = &fresh[..fresh.rfind('/').unwrap() + 1];
    let (no_token, made_up) = (base.to_owned(), format!("{base}{}", "0".repeat(32)));
    let statuses =
        tokio::task::spawn_blocking(move || (http_status(&no_token), http_status(&made_up)))
            .await
            .unwrap();
    assert!(statuses.0.contains(" 404 "), "{statuses:?}");
    assert!(statuses.1.contains(" 404 "), "{statuses:?}");
    // A URL used after its TTL is refused.
    let stale = exec_url(&mut rt, &id, &["true"], false).await;
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let late = tokio::task::spawn_blocking(move || spdy_exec(&stale, None))
        .await
        .unwrap();
    assert_eq!(late.status.code(), Some(100), "{}", text(&late.stderr));
    assert!(text(&late.stderr).contains("404"), "{}", text(&late.stderr));
    // A URL within its TTL works, and exit 0 is a success.
    let fresh = exec_url(&mut rt, &id, &["true"], false).await;
    let ok = tokio::task::spawn_blocking(move || spdy_exec(&fresh, None))
        .await
        .unwrap();
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));

    // stdin reaches the command, and its end closes the command's stdin.
    let input: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let url = exec_url(&mut rt, &id, &["sh", "-c", "cat; echo done >&2"], true).await;
    let expected = input.clone();
    let out = tokio::task::spawn_blocking(move || spdy_exec(&url, Some(&input)))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        out.stdout == expected,
        "stdin came back altered ({} bytes)",
        out.stdout.len()
    );
    assert_eq!(text(&out.stderr), "done\n");

    // crictl (cri-tools, client-go's SPDY executor) when installed: the same exec, the exit
    // code as client-go reads it, separated streams.
    if Path::new(CRICTL).exists() {
        let endpoint = format!("unix://{}", daemon.socket.display());
        let id2 = id.clone();
        let out = tokio::task::spawn_blocking(move || {
            Command::new(CRICTL)
                .args(["--runtime-endpoint", &endpoint, "--timeout", "20s"])
                .args(["exec", &id2, "sh", "-c", script])
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert_eq!(text(&out.stdout), "out\n", "{}", text(&out.stderr));
        // crictl adds its own lines (a config warning, the exit message) around the
        // command's stderr.
        let stderr = text(&out.stderr);
        assert!(stderr.lines().any(|l| l == "err"), "{stderr}");
        assert!(stderr.contains("exit code 3"), "{stderr}");
        // crictl 1.32 exits 1 on any failure; the message is client-go's CodeExitError,
        // made from the exit code in our status.
        assert!(!out.status.success());
    }

    // Bulk output: every byte arrives (the rate is a figure for the report, not asserted;
    // run with ROOTSTOCK_BIN=target/release/rootstock for the release figure). dd, not
    // busybox `head -c`, which copies so slowly (about 35 MiB/s) that it would be measured.
    let url = exec_url(
        &mut rt,
        &id,
        &["dd", "if=/dev/zero", "bs=65536", "count=800"],
        false,
    )
    .await;
    let started = std::time::Instant::now();
    let out = tokio::task::spawn_blocking(move || spdy_exec(&url, None))
        .await
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(out.stdout.len(), 50 << 20);
    assert!(out.stdout.iter().all(|b| *b == 0));
    eprintln!(
        "50 MiB through exec stdout in {secs:.2} s ({:.0} MiB/s)",
        50.0 / secs
    );

    // 100 sessions in a row leave the daemon's fds and threads where they were.
    let pid = daemon.pid().as_raw();
    let count = |what: &str| {
        std::fs::read_dir(format!("/proc/{pid}/{what}"))
            .unwrap()
            .count()
    };
    let (fds, threads) = (count("fd"), count("task"));
    for i in 0..100 {
        let url = exec_url(
            &mut rt,
            &id,
            &["sh", "-c", "echo $0", &i.to_string()],
            false,
        )
        .await;
        let out = tokio::task::spawn_blocking(move || spdy_exec(&url, None))
            .await
            .unwrap();
        assert_eq!(text(&out.stdout), format!("{i}\n"), "{}", text(&out.stderr));
    }
    // Sessions end after the client hangs up, and idle blocking threads exit after 10 s.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while (count("fd") > fds || count("task") > threads) && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(count("fd") <= fds, "fds {fds} -> {}", count("fd"));
    assert!(
        count("task") <= threads,
        "threads {threads} -> {}",
        count("task")
    );

    // Requests the server cannot serve are refused up front, naming what is wrong.
    let err = rt
        .exec(exec_request("0123456789abcdef", &["true"], false))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = rt.exec(exec_request(&id, &[], false)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    stop_pod(&mut rt, &pod_id).await;
    remove_pod(&mut rt, &pod_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_with_a_tty_takes_the_window_size_and_echoes_an_interactive_shell() {
    spdyexec();
    let registry = Registry::start().await;
    let SleeperPod {
        daemon: _daemon,
        mut rt,
        pod_id,
        id,
        ..
    } = sleeper_pod(&registry, "", "streaming-tty", NamespaceMode::Container).await;
    let tty_request = |cmd: &[&str], stdin: bool| ExecRequest {
        tty: true,
        stderr: false,
        ..exec_request(&id, cmd, stdin)
    };

    // The first size from the resize stream is the terminal's before the command starts
    // (the process's `consoleSize`): `stty size` as the very first thing (busybox's shell
    // runs its applet in place) reports it, every time (a size copied over after the start, on SIGWINCH, would race it and read 0 0).
    for (w, h) in [(123, 45), (80, 24), (200, 61)] {
        let url = rt
            .exec(tty_request(&["sh", "-c", "stty size"], false))
            .await
            .unwrap()
            .into_inner()
            .url;
        let size = format!("tty={w}x{h}");
        let out = tokio::task::spawn_blocking(move || spdy_exec_with(&url, None, &[&size]))
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        // A terminal ends lines with CR LF. (Output written before runc has taken over the
        // container's pty, which clears its `onlcr`, gets a second CR: runc's race, not the
        // size's.)
        let stdout = text(&out.stdout).replace("\r\r\n", "\r\n");
        assert_eq!(stdout, format!("{h} {w}\r\n"));
    }

    // An interactive shell: the terminal echoes the input, the shell answers, and its exit
    // code comes back.
    let url = rt
        .exec(tty_request(&["sh"], true))
        .await
        .unwrap()
        .into_inner()
        .url;
    let out = tokio::task::spawn_blocking(move || {
        spdy_exec_with(&url, Some(b"echo $((6*7))\nexit 5\n"), &["tty=80x24"])
    })
    .await
    .unwrap();
    let screen = text(&out.stdout);
    assert_eq!(out.status.code(), Some(5), "{screen}{}", text(&out.stderr));
    assert!(screen.contains("echo $((6*7))"), "no echo: {screen:?}");
    assert!(screen.lines().any(|l| l.trim_end() == "42"), "{screen:?}");

    // A terminal has no separate stderr: asking for both is refused, naming the fields.
    let err = rt
        .exec(ExecRequest {
            stderr: true,
            ..tty_request(&["true"], false)
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("tty"), "{err:?}");

    stop_pod(&mut rt, &pod_id).await;
    remove_pod(&mut rt, &pod_id).await;
}

/// Forwards `bytes` each way on `conns` concurrent connections of one session to `port` of
/// `pod`, through an echo server there; retries while the server is not listening yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_overlong_sessions_are_closed_and_their_commands_killed() {
    spdyexec();
    let registry = Registry::start().await;
    let config = "[streaming]\nidle_timeout_secs = 2\nsession_timeout_secs = 5";
    let SleeperPod {
        daemon: _daemon,
        mut rt,
        pod_id,
        id,
        ..
    } = sleeper_pod(&registry, config, "streaming-idle", NamespaceMode::Pod).await;
    // Silent for longer than the idle timeout: the session ends before the command would.
    let url = exec_url(&mut rt, &id, &["sh", "-c", "sleep 20; echo late"], false).await;
    let out = tokio::task::spawn_blocking(move || spdy_exec(&url, None))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(101), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "");
    // The command went with its session (the pod shares one PID namespace, so `ps` sees
    // every process of the exec).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let ps = exec(&mut rt, &id, &["ps", "-o", "args"], 10).await.unwrap();
        let ps = text(&ps.stdout);
        if !ps.contains("sleep 20") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still running:\n{ps}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The same over WebSocket: no status, the session just ends.
    let url = exec_url(&mut rt, &id, &["sh", "-c", "sleep 20; echo late"], false).await;
    let started = std::time::Instant::now();
    let out = tokio::task::spawn_blocking(move || ws_exec(&url, "v5.channel.k8s.io", None))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(101), "{}", text(&out.stderr));
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
    // Busy, never idle, but past session_timeout_secs: cut off all the same.
    let busy = "for i in $(seq 60); do echo tick; sleep 0.25; done";
    let url = exec_url(&mut rt, &id, &["sh", "-c", busy], false).await;
    let out = tokio::task::spawn_blocking(move || spdy_exec(&url, None))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(101), "{}", text(&out.stderr));
    let ticks = text(&out.stdout).lines().count();
    assert!((4..60).contains(&ticks), "{ticks} ticks");
    stop_pod(&mut rt, &pod_id).await;
    remove_pod(&mut rt, &pod_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_over_websocket_v4_v5_and_base64() {
    let registry = Registry::start().await;
    let SleeperPod {
        daemon,
        mut rt,
        pod_id,
        id,
        ..
    } = sleeper_pod(&registry, "", "streaming-ws", NamespaceMode::Container).await;
    let script = "echo out; echo err >&2; exit 3";
    for protocol in [
        "v4.channel.k8s.io",
        "v5.channel.k8s.io",
        "v4.base64.channel.k8s.io",
    ] {
        let url = exec_url(&mut rt, &id, &["sh", "-c", script], false).await;
        let again = url.clone();
        let out = tokio::task::spawn_blocking(move || ws_exec(&url, protocol, None))
            .await
            .unwrap();
        assert_eq!(
            text(&out.stdout),
            "out\n",
            "{protocol}: {}",
            text(&out.stderr)
        );
        assert_eq!(text(&out.stderr), "err\n", "{protocol}");
        assert_eq!(out.status.code(), Some(3), "{protocol}");
        // Single use over WebSocket too.
        let out = tokio::task::spawn_blocking(move || ws_exec(&again, protocol, None))
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(100), "{}", text(&out.stderr));
    }
    // crictl --transport websocket (client-go's WebSocket executor) when installed.
    if Path::new(CRICTL).exists() {
        let endpoint = format!("unix://{}", daemon.socket.display());
        let id2 = id.clone();
        let out = tokio::task::spawn_blocking(move || {
            Command::new(CRICTL)
                .args(["--runtime-endpoint", &endpoint, "--timeout", "20s"])
                .args(["exec", "--transport", "websocket", &id2, "sh", "-c", script])
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(text(&out.stdout), "out\n", "{stderr}");
        assert!(stderr.lines().any(|l| l == "err"), "{stderr}");
        assert!(stderr.contains("exit code 3"), "{stderr}");
    }
    // A client that stops reading holds the command back (bounded queues, then TCP and the
    // pipe fill): the daemon does not buffer the endless output.
    let rss_kib = |pid: i32| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    let pid = daemon.pid().as_raw();
    let before = rss_kib(pid);
    let url = exec_url(&mut rt, &id, &["cat", "/dev/zero"], false).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/wsexec.py");
    let mut stalled = Command::new("/usr/bin/python3")
        .args([
            script.as_os_str(),
            url.as_ref(),
            "v5.channel.k8s.io".as_ref(),
        ])
        .arg("stall=60")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let during = rss_kib(pid);
    stalled.kill().unwrap();
    stalled.wait().unwrap();
    eprintln!("daemon RSS {before} KiB, {during} KiB behind a client stalled for 5 s");
    assert!(
        during < before + 64 * 1024,
        "daemon RSS grew from {before} KiB to {during} KiB behind a stalled client"
    );

    // v5 can close stdin: `cat` sees its end and the command finishes.
    let input: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_be_bytes()).collect();
    let url = exec_url(&mut rt, &id, &["sh", "-c", "cat; echo done >&2"], true).await;
    let expected = input.clone();
    let out = tokio::task::spawn_blocking(move || ws_exec(&url, "v5.channel.k8s.io", Some(&input)))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        out.stdout == expected,
        "stdin came back altered ({} bytes)",
        out.stdout.len()
    );
    assert_eq!(text(&out.stderr), "done\n");

    stop_pod(&mut rt, &pod_id).await;
    remove_pod(&mut rt, &pod_id).await;
}

async fn attach_url(rt: &mut Rt, id: &str, tty: bool) -> String {
    rt.attach(AttachRequest {
        container_id: id.to_owned(),
        stdin: true,
        tty,
        stdout: true,
        stderr: !tty,
    })
    .await
    .unwrap_or_else(|e| panic!("Attach: {e}"))
    .into_inner()
    .url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_with_and_without_a_log_and_a_terminal_echoes_input_and_detaching_leaves_it_running()
{
    spdyexec();
    let registry = Registry::start().await;
    let (daemon, image) = daemon_with_busybox(&registry, "").await;
    loopback_network(&daemon).await;
    let mut rt = daemon.runtime().await;
    let logs = tempfile::tempdir().unwrap();
    let mut pod = pod_config("streaming-attach", NamespaceMode::Container);
    pod.log_directory = logs.path().display().to_string();
    let pod_id = run_pod(&mut rt, pod.clone()).await.unwrap();
    let mut config = container_config("cat", &image, &["cat"]);
    config.stdin = true;
    config.log_path = "cat.log".to_owned();
    let id = start_container(&mut rt, &pod_id, &pod, config).await;

    for round in ["first", "second"] {
        let url = attach_url(&mut rt, &id, false).await;
        let line = format!("hello {round}\n");
        let expect = format!("expect=hello {round}");
        let out = tokio::task::spawn_blocking(move || {
            spdy_exec_with(&url, Some(line.as_bytes()), &["stdin", &expect])
        })
        .await
        .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), format!("hello {round}\n"));
        // Detached: the container runs on, and a second client attaches the same way.
        let status = container_status(&mut rt, &id).await;
        assert_eq!(status.state, ContainerState::ContainerRunning as i32);
    }
    let log = wait_file(&logs.path().join("cat.log"), |l| l.contains("hello second")).await;
    assert!(log.contains(" stdout F hello first\n"), "{log}");

    // critest's shape: no log_path (output only through the monitor), stdin_once. The
    // shell answers; hanging up closes its stdin, so it exits.
    let mut config = container_config("sh-once", &image, &["sh"]);
    config.stdin = true;
    config.stdin_once = true;
    let once = start_container(&mut rt, &pod_id, &pod, config).await;
    let url = attach_url(&mut rt, &once, false).await;
    let out = tokio::task::spawn_blocking(move || {
        spdy_exec_with(&url, Some(b"echo hel\"\"lo\n"), &["stdin", "expect=hello"])
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello\n");
    wait_exited(&mut rt, &once, std::time::Duration::from_secs(10)).await;

    // The same over WebSocket (v5): closing stdin ends the shell, and so the attach, with a
    // success status.
    let mut config = container_config("sh-ws", &image, &["sh"]);
    config.stdin = true;
    config.stdin_once = true;
    let ws = start_container(&mut rt, &pod_id, &pod, config).await;
    let url = attach_url(&mut rt, &ws, false).await;
    let out = tokio::task::spawn_blocking(move || {
        ws_exec(&url, "v5.channel.k8s.io", Some(b"echo hel\"\"lo\n"))
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello\n");
    wait_exited(&mut rt, &ws, std::time::Duration::from_secs(10)).await;

    // A terminal: the client's size reaches it before the input does; detaching leaves the
    // shell running.
    let mut config = container_config("sh-tty", &image, &["sh"]);
    config.stdin = true;
    config.tty = true;
    let tty = start_container(&mut rt, &pod_id, &pod, config).await;
    let url = attach_url(&mut rt, &tty, true).await;
    let out = tokio::task::spawn_blocking(move || {
        spdy_exec_with(
            &url,
            Some(b"stty size\n"),
            &["stdin", "tty=77x33", "expect=33 77"],
        )
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let status = container_status(&mut rt, &tty).await;
    assert_eq!(status.state, ContainerState::ContainerRunning as i32);

    stop_pod(&mut rt, &pod_id).await;
    remove_pod(&mut rt, &pod_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_over_the_older_remotecommand_versions_v1_to_v3() {
    spdyexec();
    let registry = Registry::start().await;
    let SleeperPod {
        daemon: _daemon,
        mut rt,
        pod_id,
        id,
        ..
    } = sleeper_pod(&registry, "", "streaming-old", NamespaceMode::Container).await;
    for proto in ["v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"] {
        // Before v4 the error stream carries the failure's text: no exit code, as kubelet.
        let url = exec_url(
            &mut rt,
            &id,
            &["sh", "-c", "echo out; echo err >&2; exit 3"],
            false,
        )
        .await;
        let arg = format!("proto={proto}");
        let out = tokio::task::spawn_blocking(move || spdy_exec_with(&url, None, &[&arg]))
            .await
            .unwrap();
        assert_eq!(text(&out.stdout), "out\n", "{proto}");
        assert_eq!(out.status.code(), Some(1), "{proto}");
        assert!(text(&out.stderr).starts_with("err\n"), "{proto}");
        assert!(text(&out.stderr).contains("exit status 3"), "{proto}");
        // Success: an empty error stream. With a terminal, v1 and v2 open no resize
        // stream, and the session does not wait for one.
        let url = rt
            .exec(ExecRequest {
                tty: true,
                stderr: false,
                ..exec_request(&id, &["echo", "hi"], false)
            })
            .await
            .unwrap()
            .into_inner()
            .url;
        let arg = format!("proto={proto}");
        let out =
            tokio::task::spawn_blocking(move || spdy_exec_with(&url, None, &[&arg, "tty=80x24"]))
                .await
                .unwrap();
        assert_eq!(out.status.code(), Some(0), "{proto}: {}", text(&out.stderr));
        // (A terminal's line end; runc's relay sometimes doubles the CR of the very first
        // line, which is not what this checks.)
        assert_eq!(text(&out.stdout).replace('\r', ""), "hi\n", "{proto}");
    }
    stop_pod(&mut rt, &pod_id).await;
    remove_pod(&mut rt, &pod_id).await;
}
