//! Containers on the real OCI runtimes (runc, crun), overlayfs and cgroups. Needs root and
//! `cargo build -p rootstock-runtime --bins` first (the monitor binary).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Env, exit_code};
use rootstock_runtime::oci::ExecRequest;
use rootstock_runtime::{ContainerState, Error, ErrorKind, ExitReason, Runtime};

fn log_records(log: &str) -> Vec<(String, String, String)> {
    log.lines()
        .map(|l| {
            let mut it = l.splitn(4, ' ');
            let ts = it.next().unwrap();
            assert!(ts.ends_with('Z') && ts.contains('T'), "timestamp {ts:?}");
            (
                it.next().unwrap().to_owned(),
                it.next().unwrap().to_owned(),
                it.next().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

fn logs_streams_and_partial_lines(handler: &str) {
    let env = Env::new();
    let info = env.run(
        "echo",
        handler,
        &[
            "sh",
            "-c",
            "echo out; echo err >&2; printf partial; sleep 0.3; echo ' rest'; echo $HOSTNAME",
        ],
    );
    let done = env.wait_exited(&info.record.id, Duration::from_secs(10));
    assert_eq!(exit_code(&done), 0);
    assert!(
        matches!(done.record.state, ContainerState::Exited(e) if e.reason == ExitReason::Completed)
    );
    let records = log_records(&env.log("echo"));
    let want = [
        ("stdout", "F", "out"),
        ("stdout", "P", "partial"),
        ("stdout", "F", " rest"),
        ("stdout", "F", "testpod"),
    ];
    let stdout: Vec<_> = records.iter().filter(|r| r.0 == "stdout").collect();
    assert_eq!(stdout.len(), want.len(), "{records:?}");
    for (got, want) in stdout.iter().zip(want) {
        assert_eq!((got.0.as_str(), got.1.as_str(), got.2.as_str()), want);
    }
    assert!(
        records.contains(&("stderr".into(), "F".into(), "err".into())),
        "{records:?}"
    );
    // The runtime's own messages never reach the container's log.
    assert!(!env.log("echo").contains("level"));
}

#[test]
fn runc_container_logs_stream_tags_and_partial_lines() {
    logs_streams_and_partial_lines("runc");
}

#[test]
fn crun_container_logs_stream_tags_and_partial_lines() {
    logs_streams_and_partial_lines("crun");
}

#[test]
fn exit_codes_are_recorded_including_sigkill() {
    let env = Env::new();
    let failing = env.run("fail", "", &["sh", "-c", "exit 3"]);
    let done = env.wait_exited(&failing.record.id, Duration::from_secs(10));
    assert_eq!(exit_code(&done), 3);
    assert!(
        matches!(done.record.state, ContainerState::Exited(e) if e.reason == ExitReason::Error)
    );

    // Ignores SIGTERM: killed after the stop timeout.
    let stubborn = env.run(
        "stubborn",
        "",
        &["sh", "-c", "trap '' TERM; sleep 1000 & wait"],
    );
    // The trap is set once the shell ignores SIGTERM (bit 15 of SigIgn): only then is a
    // SIGTERM sure to be ignored rather than fatal.
    let status = format!("/proc/{}/status", stubborn.record.init_pid);
    let ignores_term = || {
        std::fs::read_to_string(&status)
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("SigIgn:"))
            .is_some_and(|m| u64::from_str_radix(m.trim(), 16).unwrap() & (1 << 14) != 0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !ignores_term() {
        assert!(
            std::time::Instant::now() < deadline,
            "the trap was never set"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let t = std::time::Instant::now();
    env.rt
        .stop_container(
            &stubborn.record.id,
            rootstock_runtime::Signal::TERM,
            Duration::from_secs(1),
        )
        .unwrap();
    assert!(t.elapsed() >= Duration::from_secs(1));
    assert_eq!(
        exit_code(&env.rt.container(&stubborn.record.id).unwrap()),
        137
    );
    // Stop again, and stop of an unknown id: OK.
    env.rt
        .stop_container(
            &stubborn.record.id,
            rootstock_runtime::Signal::TERM,
            Duration::from_secs(1),
        )
        .unwrap();
    let unknown = rootstock_runtime::ContainerId::new("never-created").unwrap();
    env.rt
        .stop_container(
            &unknown,
            rootstock_runtime::Signal::TERM,
            Duration::from_secs(1),
        )
        .unwrap();
    env.rt.remove_container(&unknown).unwrap();
}

/// StopPodSandbox's early release: once a container has exited, the OCI runtime forgets it
/// (its state and cgroup go), the container stays as kubelet sees it, and the removal after
/// needs no runtime. A running container is left alone.
fn oci_state_is_released_after_exit_and_the_container_stays(handler: &str) {
    let env = Env::new();
    let c = env.run(&format!("early-{handler}"), handler, &["sleep", "1000"]);
    let id = c.record.id.clone();
    let oci = env.rt.handler(handler).unwrap().clone();
    let cgroup_dir = format!("/sys/fs/cgroup/pids{}", c.record.cgroup_path);
    assert!(std::path::Path::new(&cgroup_dir).exists(), "{cgroup_dir}");
    env.rt.release_oci_state(&id).unwrap();
    assert!(oci.state(&id).unwrap().is_some(), "running: left alone");
    env.rt
        .stop_container(&id, rootstock_runtime::Signal::KILL, Duration::ZERO)
        .unwrap();
    env.rt.release_oci_state(&id).unwrap();
    assert_eq!(oci.state(&id).unwrap(), None, "the runtime still knows it");
    assert!(!oci.root().join(id.as_str()).exists());
    assert!(
        !std::path::Path::new(&cgroup_dir).exists(),
        "its cgroup {cgroup_dir} is left"
    );
    let info = env.rt.container(&id).unwrap();
    assert_eq!(exit_code(&info), 137);
    // Twice is fine, and so is the removal that follows.
    env.rt.release_oci_state(&id).unwrap();
    env.rt.remove_container(&id).unwrap();
    assert!(env.rt.container(&id).is_err());
    assert_eq!(common::mounts_under(env.dir.path()), Vec::<String>::new());
}

#[test]
fn runc_oci_state_is_released_after_exit_and_the_container_stays() {
    oci_state_is_released_after_exit_and_the_container_stays("runc");
}

#[test]
fn crun_oci_state_is_released_after_exit_and_the_container_stays() {
    oci_state_is_released_after_exit_and_the_container_stays("crun");
}

#[test]
fn exec_returns_output_and_exit_code_and_timeout_kills_the_process() {
    for handler in ["runc", "crun"] {
        let env = Env::new();
        let c = env.run(&format!("exec-{handler}"), handler, &["sleep", "1000"]);
        let id = &c.record.id;
        let req = ExecRequest {
            args: vec![
                "sh".into(),
                "-c".into(),
                "echo hi; echo oops >&2; exit 4".into(),
            ],
            ..Default::default()
        };
        let out = env
            .rt
            .exec_sync(id, &req, Some(Duration::from_secs(10)))
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n", "{handler}");
        assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n", "{handler}");
        assert_eq!(out.exit_code, 4);

        let slow = ExecRequest {
            args: vec!["sleep".into(), "101".into()],
            ..Default::default()
        };
        let err = env
            .rt
            .exec_sync(id, &slow, Some(Duration::from_millis(500)))
            .unwrap_err();
        assert!(matches!(err, Error::ExecTimeout { .. }), "{err}");
        assert_eq!(err.kind(), ErrorKind::DeadlineExceeded);
        // Killed processes vanish once reaped: polled (under load that takes a while).
        let listing_without = |gone: &[&str], what: &str| {
            let ps = ExecRequest {
                args: vec!["ps".into()],
                ..Default::default()
            };
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                let out = env
                    .rt
                    .exec_sync(id, &ps, Some(Duration::from_secs(10)))
                    .unwrap();
                let listing = String::from_utf8_lossy(&out.stdout).into_owned();
                if !gone.iter().any(|g| listing.contains(g)) {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{handler}, {what}: left running:\n{listing}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        };
        listing_without(&["sleep 101"], "timed-out exec");
        // Everything the command started goes too, also when the timeout fires before the
        // runtime could write its pid file (milliseconds after the start).
        for timeout in [Duration::from_millis(30), Duration::from_millis(800)] {
            let tree = ExecRequest {
                args: vec![
                    "sh".into(),
                    "-c".into(),
                    "sleep 102 & sleep 102 & wait".into(),
                ],
                ..Default::default()
            };
            let err = env.rt.exec_sync(id, &tree, Some(timeout)).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::DeadlineExceeded, "{err}");
            // A zombie shows as `[sleep]`: the container's init (`sleep`) does not reap.
            listing_without(&["sleep 102", "sh -c"], &format!("timeout {timeout:?}"));
        }
        env.rt
            .stop_container(id, rootstock_runtime::Signal::KILL, Duration::ZERO)
            .unwrap();
        assert_eq!(exit_code(&env.rt.container(id).unwrap()), 137);
    }
}

#[test]
fn spec_error_surfaces_at_create_and_leaves_nothing() {
    for handler in ["runc", "crun"] {
        let env = Env::new();
        let req = env.request(
            &format!("missing-{handler}"),
            handler,
            env.spec(&["/no/such/binary"]),
        );
        let id = req.id.clone();
        let err = env.rt.create_container(req).unwrap_err();
        assert!(
            matches!(err, Error::CreateFailed { .. }),
            "{handler}: {err}"
        );
        assert!(
            err.to_string().contains("/no/such/binary"),
            "{handler}: {err}"
        );
        assert!(env.rt.container(&id).is_err());
        assert!(
            !env.dir
                .path()
                .join("state/containers")
                .join(id.as_str())
                .exists()
        );
        assert!(!env.dir.path().join("layers").join(id.as_str()).exists());
    }
}

/// The monitor starts before the rootfs is mounted (it waits for the bundle): a create
/// that fails in between (the image's tree is gone, or the caller's `ready` refuses after
/// the mount, as a failed image lease does) must end that monitor before the run directory
/// goes, and leave neither it nor the mount behind.
#[test]
fn a_create_failing_after_its_monitor_started_ends_the_monitor() {
    let env = Env::new();
    let mut no_tree = env.request("no-tree", "crun", env.spec(&["true"]));
    no_tree.rootfs_lower = env.dir.path().join("no-such-tree");
    let refused = env.request("refused", "runc", env.spec(&["true"]));
    for (req, ready, says) in [
        (no_tree, Ok(()), "no-such-tree"),
        (refused, Err("no lease here".to_owned()), "no lease here"),
    ] {
        let id = req.id.clone();
        let err = env.rt.create_container_when(req, || ready).unwrap_err();
        assert!(err.to_string().contains(says), "{err}");
        // The create awaited the monitor's end: it is gone now, not a moment later.
        assert_eq!(common::processes_mentioning(id.as_str()), Vec::<i32>::new());
        assert!(env.rt.container(&id).is_err());
        let run_dir = env.dir.path().join("state/containers").join(id.as_str());
        assert!(!run_dir.exists(), "{id}");
        assert!(!env.dir.path().join("layers").join(id.as_str()).exists());
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(id.as_str()), "{id} still mounted");
    }
}

#[test]
fn unknown_handler_is_a_clear_error() {
    let env = Env::new();
    let err = env
        .rt
        .create_container(env.request("h", "kata", env.spec(&["true"])))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.to_string().contains("kata"), "{err}");
}

#[test]
fn reload_sees_running_and_exited_containers() {
    let mut env = Env::new();
    let running = env.run("running", "runc", &["sleep", "1000"]);
    let exited = env.run("exited", "crun", &["sh", "-c", "exit 5"]);
    env.wait_exited(&exited.record.id, Duration::from_secs(10));
    let late = env.run("late", "runc", &["sh", "-c", "sleep 0.5; exit 6"]);

    // A "restarted daemon": a new Runtime over the same directories.
    let report = env.restart();
    let rt2 = &env.rt;
    assert_eq!(report.loaded.len(), 3, "{report:?}");
    assert!(report.cleaned_up.is_empty());
    let r = rt2.container(&running.record.id).unwrap();
    assert_eq!(r.record.state, ContainerState::Running);
    assert_eq!(r.record.client_data.to_value()["name"], "running");
    assert_eq!(exit_code(&rt2.container(&exited.record.id).unwrap()), 5);
    // Exits while "the daemon was down" are picked up from the monitor's exit file.
    let l = common::wait_exited(rt2, &late.record.id, Duration::from_secs(10));
    assert_eq!(exit_code(&l), 6);
    // `sleep` as PID 1 has no SIGTERM handler, so the kernel ignores SIGTERM: SIGKILL follows.
    rt2.stop_container(
        &running.record.id,
        rootstock_runtime::Signal::TERM,
        Duration::from_secs(1),
    )
    .unwrap();
    assert_eq!(exit_code(&rt2.container(&running.record.id).unwrap()), 137);
    for c in rt2.list_containers() {
        rt2.remove_container(&c.record.id).unwrap();
    }
}

#[test]
fn half_created_container_is_cleaned_up_on_reload() {
    let env = Env::new();
    let c = env
        .rt
        .create_container(env.request("half", "runc", env.spec(&["true"])))
        .unwrap();
    // Simulate a daemon that died before acknowledging the create.
    std::fs::remove_file(c.run_dir.join("state.json")).unwrap();
    let (rt2, report) = Runtime::open(common::options(env.dir.path())).unwrap();
    assert_eq!(report.cleaned_up, vec![c.record.id.clone()]);
    assert!(rt2.container(&c.record.id).is_err());
    assert!(!c.run_dir.exists());
    // The first Runtime's entry: removal must still succeed (everything is gone already).
    env.rt.remove_container(&c.record.id).unwrap();
}

/// Records are written without fsync (per-boot state): a power loss can leave one empty or
/// cut short. Such a record is no record, so its container goes like a half-created one;
/// a record that is whole JSON of another shape (a newer version's) is kept as Unknown.
#[test]
fn torn_records_are_removed_and_foreign_ones_kept_unknown() {
    let env = Env::new();
    let create = |name: &str| {
        env.rt
            .create_container(env.request(name, "runc", env.spec(&["true"])))
            .unwrap()
    };
    let (empty, cut, foreign) = (create("empty"), create("cut"), create("foreign"));
    std::fs::write(empty.run_dir.join("state.json"), b"").unwrap();
    let whole = std::fs::read(cut.run_dir.join("state.json")).unwrap();
    std::fs::write(cut.run_dir.join("state.json"), &whole[..whole.len() / 2]).unwrap();
    std::fs::write(foreign.run_dir.join("state.json"), br#"{"version": 99}"#).unwrap();

    let (rt2, report) = Runtime::open(common::options(env.dir.path())).unwrap();
    let mut torn = report.torn.clone();
    torn.sort();
    let mut want = vec![empty.record.id.clone(), cut.record.id.clone()];
    want.sort();
    assert_eq!(torn, want, "{report:?}");
    for c in [&empty, &cut] {
        assert!(rt2.container(&c.record.id).is_err());
        assert!(!c.run_dir.exists(), "{} left", c.run_dir.display());
    }
    assert_eq!(report.unreadable.len(), 1, "{report:?}");
    let kept = rt2.container(&foreign.record.id).unwrap();
    assert_eq!(kept.record.state, ContainerState::Unknown);
    rt2.remove_container(&foreign.record.id).unwrap();
    assert!(!foreign.run_dir.exists());
}

const HELPER_DIR: &str = "ROOTSTOCK_TEST_HELPER_DIR";
const HELPER_CGROUP: &str = "ROOTSTOCK_TEST_HELPER_CGROUP";

/// Not a test on its own: the "daemon" of `monitor_survives_the_death_of_its_starter`, run
/// in a child process that the test SIGKILLs.
#[test]
#[ignore]
fn helper_start_container_and_hang() {
    let (Ok(dir), Ok(cgroup)) = (std::env::var(HELPER_DIR), std::env::var(HELPER_CGROUP)) else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let (rt, _) = Runtime::open(common::options(&dir)).unwrap();
    let spec = rootstock_runtime::spec::ContainerSpec {
        command: vec![
            "sh".into(),
            "-c".into(),
            "echo before; sleep 1; echo after; exit 7".into(),
        ],
        cgroup_parent: cgroup,
        ..Default::default()
    };
    let req = rootstock_runtime::CreateRequest {
        id: rootstock_runtime::ContainerId::new(format!("orphan-{}", std::process::id())).unwrap(),
        handler: "runc".into(),
        spec,
        rootfs_lower: dir.join("image"),
        log_path: dir.join("logs/orphan.log"),
        sandbox_id: None,
        client_data: Default::default(),
    };
    let c = rt.create_container(req).unwrap();
    rt.start_container(&c.record.id).unwrap();
    println!("STARTED {}", c.record.id);
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn monitor_survives_the_death_of_its_starter() {
    use std::io::BufRead;
    let mut env = Env::new();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_start_container_and_hang",
            "--ignored",
            "--nocapture",
        ])
        .env(HELPER_DIR, env.dir.path())
        .env(HELPER_CGROUP, &env.cgroup_parent)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut id = None;
    for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("STARTED ") {
            id = Some(rootstock_runtime::ContainerId::new(rest.trim()).unwrap());
            break;
        }
    }
    let id = id.expect("helper did not start the container");
    child.kill().unwrap();
    child.wait().unwrap();

    env.restart();
    let rt2 = &env.rt;
    let info = rt2.container(&id).unwrap();
    let monitor = info.record.monitor.unwrap();
    assert!(monitor.is_alive(), "monitor died with its starter");
    let done = common::wait_exited(rt2, &id, Duration::from_secs(10));
    assert_eq!(exit_code(&done), 7);
    let log = std::fs::read_to_string(env.dir.path().join("logs/orphan.log")).unwrap();
    assert!(log.contains("stdout F after"), "{log}");
    rt2.remove_container(&id).unwrap();
}

#[test]
fn without_private_pid_namespace_leftover_processes_are_killed_at_init_exit() {
    let env = Env::new();
    let mut spec = env.spec(&["sh", "-c", "sleep 1234 & echo started; sleep 0.3; exit 2"]);
    spec.namespaces.pid = rootstock_runtime::spec::PidMode::Host;
    let c = env
        .rt
        .create_container(env.request("hostpid", "runc", spec))
        .unwrap();
    assert!(c.record.kill_all_on_exit);
    env.rt.start_container(&c.record.id).unwrap();
    let done = env.wait_exited(&c.record.id, Duration::from_secs(10));
    assert_eq!(exit_code(&done), 2);
    // The monitor killed the background `sleep` before recording the exit.
    let layout = rootstock_runtime::cgroup::CgroupLayout::detect();
    assert!(layout.procs(&done.record.cgroup_path).unwrap().is_empty());
    assert!(common::processes_mentioning("sleep 1234").is_empty());
}

#[test]
fn monitor_stays_small() {
    let env = Env::new();
    let c = env.run("rss", "runc", &["sleep", "1000"]);
    let pid = c.record.monitor.unwrap().pid;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    let field = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .unwrap_or("")
            .to_owned()
    };
    eprintln!(
        "rootstock-monitor VmRSS: {rss_kib} KiB ({}; {})",
        field("RssAnon:")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
        field("RssFile:")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    );
    let pss = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let pss = pss
        .lines()
        .find(|l| l.starts_with("Pss:"))
        .unwrap_or("")
        .to_owned();
    eprintln!(
        "rootstock-monitor {}",
        pss.split_whitespace().collect::<Vec<_>>().join(" ")
    );
    // #18: at most 512 KiB per pod for the release build (measured 288 KiB: static, its
    // start-up pages released, hot code laid out together; see monitor/build.rs); a debug
    // build's code is larger and unordered (measured 704 KiB). A dynamically linked or
    // unreleased monitor is 1.4 MiB (release) to 1.8 MiB (debug) and fails here.
    let bound = if cfg!(debug_assertions) { 1024 } else { 512 };
    assert!(
        rss_kib < bound,
        "monitor RSS {rss_kib} KiB (bound {bound} KiB)"
    );
}

#[test]
fn oom_kill_is_recorded_with_137() {
    let env = Env::new();
    let mut spec = env.spec(&["dd", "if=/dev/zero", "of=/dev/null", "bs=256M", "count=1"]);
    spec.resources.memory_limit_bytes = Some(32 * 1024 * 1024);
    let c = env
        .rt
        .create_container(env.request("oom", "runc", spec))
        .unwrap();
    env.rt.start_container(&c.record.id).unwrap();
    let done = env.wait_exited(&c.record.id, Duration::from_secs(20));
    match done.record.state {
        ContainerState::Exited(e) => {
            assert_eq!(e.exit_code, 137);
            assert_eq!(e.reason, ExitReason::OomKilled);
        }
        s => panic!("{s:?}"),
    }
}

#[test]
fn update_changes_memory_limit_and_cpu_quota_of_a_running_container() {
    let env = Env::new();
    let mut spec = env.spec(&["sleep", "1000"]);
    spec.resources.memory_limit_bytes = Some(128 * 1024 * 1024);
    let c = env
        .rt
        .create_container(env.request("update", "runc", spec))
        .unwrap();
    env.rt.start_container(&c.record.id).unwrap();
    let cg = c.record.cgroup_path.trim_start_matches('/');
    let read = |f: &str| {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{f}"))
            .unwrap()
            .trim()
            .to_owned()
    };
    assert_eq!(
        read(&format!("memory/{cg}/memory.limit_in_bytes")),
        "134217728"
    );
    let r = rootstock_runtime::spec::Resources {
        memory_limit_bytes: Some(64 * 1024 * 1024),
        cpu_quota: Some(50_000),
        cpu_period: Some(100_000),
        ..Default::default()
    };
    env.rt.update_container_resources(&c.record.id, &r).unwrap();
    assert_eq!(
        read(&format!("memory/{cg}/memory.limit_in_bytes")),
        "67108864"
    );
    assert_eq!(read(&format!("cpu/{cg}/cpu.cfs_quota_us")), "50000");
}

#[test]
fn negative_oom_score_adj_is_clamped_where_the_node_cannot_lower_it() {
    let env = Env::new();
    let mut spec = env.spec(&["sleep", "1000"]);
    spec.resources.oom_score_adj = Some(-997);
    let c = env
        .rt
        .create_container(env.request("oomadj", "runc", spec))
        .unwrap();
    let c = env.rt.start_container(&c.record.id).unwrap();
    let got: i32 = std::fs::read_to_string(format!("/proc/{}/oom_score_adj", c.record.init_pid))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let host = env.rt.host_facts();
    if host.can_lower_oom_score_adj {
        assert_eq!(got, -997);
    } else {
        assert_eq!(got, host.oom_score_adj);
    }
}

#[test]
fn tty_container_output_is_logged_as_stdout() {
    for handler in ["runc", "crun"] {
        let env = Env::new();
        let mut spec = env.spec(&["sh", "-c", "tty; echo on-a-terminal"]);
        spec.tty = true;
        let name = format!("tty-{handler}");
        let c = env
            .rt
            .create_container(env.request(&name, handler, spec))
            .unwrap();
        env.rt.start_container(&c.record.id).unwrap();
        assert_eq!(
            exit_code(&env.wait_exited(&c.record.id, Duration::from_secs(10))),
            0
        );
        let log = env.log(&name);
        let records = log_records(&log);
        assert!(records.iter().all(|r| r.0 == "stdout"), "{handler}: {log}");
        assert!(log.contains("/dev/pts/"), "{handler}: {log}");
        assert!(log.contains("on-a-terminal"), "{handler}: {log}");
    }
}

/// Start, exec and signal share one prologue (entry, operation lock, exit file read, state
/// guard): each refuses the states it cannot act in, naming the state, and the exit watcher
/// records an exit that no call asked about.
#[test]
fn start_exec_and_signal_are_refused_by_state_and_exits_are_recorded_unasked() {
    let env = Env::new();
    let created = env
        .rt
        .create_container(env.request("guards", "runc", env.spec(&["sleep", "1000"])))
        .unwrap();
    let id = &created.record.id;
    let exec = ExecRequest {
        args: vec!["true".into()],
        ..Default::default()
    };
    let refused = |e: Error, words: &str| {
        assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{e}");
        assert!(e.to_string().contains(words), "{e}");
    };
    refused(
        env.rt.exec_sync(id, &exec, None).unwrap_err(),
        "cannot exec in (state Created)",
    );
    env.rt.start_container(id).unwrap();
    refused(
        env.rt.start_container(id).unwrap_err(),
        "cannot start (state Running)",
    );
    // Killed behind the runtime's back: only the monitor's exit tells, and the record
    // follows without a stop, start or exec refreshing it.
    env.rt
        .kill_container(id, rootstock_runtime::Signal::KILL, false)
        .unwrap();
    let done = env.wait_exited(id, Duration::from_secs(10));
    assert_eq!(exit_code(&done), 137);
    refused(
        env.rt
            .kill_container(id, rootstock_runtime::Signal::TERM, false)
            .unwrap_err(),
        "cannot signal (state Exited)",
    );
    env.rt.remove_container(id).unwrap();
}
