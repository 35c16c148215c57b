//! Test harness: a private state/layers/log directory per test, a busybox root filesystem
//! as the image tree, its own cgroup parent, and a leak check when it is dropped.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rootstock_runtime::cgroup::CgroupLayout;
use rootstock_runtime::spec::{ContainerSpec, ImageConfig};
use rootstock_runtime::{
    ContainerId, ContainerInfo, ContainerState, CreateRequest, Runtime, RuntimeConfig,
    RuntimeOptions,
};

static N: AtomicU32 = AtomicU32::new(0);

pub struct Env {
    pub dir: tempfile::TempDir,
    pub rt: Runtime,
    pub lower: PathBuf,
    pub cgroup_parent: String,
}

pub fn monitor_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("ROOTSTOCK_TEST_MONITOR") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test exe> → target/<profile>/rootstock-monitor
    let exe = std::env::current_exe().unwrap();
    let p = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("rootstock-monitor");
    assert!(
        p.exists(),
        "{} missing: run `cargo build -p rootstock-monitor` first",
        p.display()
    );
    p
}

pub fn options(dir: &Path) -> RuntimeOptions {
    let config = RuntimeConfig {
        monitor_binary: monitor_binary(),
        ..RuntimeConfig::default()
    };
    RuntimeOptions {
        state_dir: dir.join("state"),
        layers_dir: dir.join("layers"),
        config,
    }
}

/// A root filesystem from /bin/busybox plus applet symlinks and /etc/passwd.
pub fn busybox_tree(root: &Path) {
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for applet in [
        "sh", "echo", "sleep", "printf", "cat", "true", "false", "id", "ps", "kill", "head", "ls",
        "hostname", "env", "yes", "readlink", "dd", "grep",
    ] {
        symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n",
    )
    .unwrap();
    fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
}

impl Env {
    /// A daemon restart: this runtime goes first (its exit watcher with it), then a new one
    /// opens the same directories. Two live runtimes over one state dir would both persist
    /// the exits they see, racing on one temp file; the daemon's instance lock rules that out.
    pub fn restart(&mut self) -> rootstock_runtime::recovery::RecoveryReport {
        let (idle, _) = Runtime::open(options(&self.dir.path().join("restarting"))).unwrap();
        drop(std::mem::replace(&mut self.rt, idle));
        let (rt, report) = Runtime::open(options(self.dir.path())).unwrap();
        self.rt = rt;
        report
    }

    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("rootstock-rt-")
            .tempdir()
            .unwrap();
        let lower = dir.path().join("image");
        busybox_tree(&lower);
        fs::create_dir_all(dir.path().join("logs")).unwrap();
        let (rt, _) = Runtime::open(options(dir.path())).unwrap();
        let n = N.fetch_add(1, Ordering::Relaxed);
        Self {
            cgroup_parent: format!("/rootstock-test-{}-{n}", std::process::id()),
            dir,
            rt,
            lower,
        }
    }

    pub fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join("logs").join(format!("{name}.log"))
    }

    pub fn spec(&self, cmd: &[&str]) -> ContainerSpec {
        ContainerSpec {
            command: cmd.iter().map(|s| s.to_string()).collect(),
            image: ImageConfig {
                env: vec!["PATH=/bin".into()],
                ..Default::default()
            },
            hostname: Some("testpod".into()),
            cgroup_parent: self.cgroup_parent.clone(),
            ..Default::default()
        }
    }

    pub fn request(&self, name: &str, handler: &str, spec: ContainerSpec) -> CreateRequest {
        CreateRequest {
            id: ContainerId::new(format!("{name}-{}", std::process::id())).unwrap(),
            handler: handler.into(),
            spec,
            rootfs_lower: self.lower.clone(),
            log_path: self.log_path(name),
            sandbox_id: None,
            client_data: serde_json::json!({"name": name}).into(),
        }
    }

    pub fn run(&self, name: &str, handler: &str, cmd: &[&str]) -> ContainerInfo {
        let info = self
            .rt
            .create_container(self.request(name, handler, self.spec(cmd)))
            .unwrap();
        self.rt.start_container(&info.record.id).unwrap()
    }

    pub fn wait_exited(&self, id: &ContainerId, timeout: Duration) -> ContainerInfo {
        wait_exited(&self.rt, id, timeout)
    }

    pub fn log(&self, name: &str) -> String {
        fs::read_to_string(self.log_path(name)).unwrap_or_default()
    }
}

pub fn wait_exited(rt: &Runtime, id: &ContainerId, timeout: Duration) -> ContainerInfo {
    let deadline = Instant::now() + timeout;
    loop {
        let info = rt.container(id).unwrap();
        if matches!(info.record.state, ContainerState::Exited(_)) {
            return info;
        }
        assert!(
            Instant::now() < deadline,
            "{id} still {:?}",
            info.record.state
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn exit_code(info: &ContainerInfo) -> i32 {
    match info.record.state {
        ContainerState::Exited(e) => e.exit_code,
        s => panic!("not exited: {s:?}"),
    }
}

/// Processes whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmd).contains(needle) {
            // Zombies have an empty cmdline, so anything listed here is alive.
            out.push(pid);
        }
    }
    out
}

pub fn mounts_under(dir: &Path) -> Vec<String> {
    let d = dir.to_string_lossy().into_owned();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|mp| mp.starts_with(&d))
        .map(str::to_owned)
        .collect()
}

impl Drop for Env {
    fn drop(&mut self) {
        for c in self.rt.list_containers() {
            if let Err(e) = self.rt.remove_container(&c.record.id) {
                eprintln!("cleanup {}: {e}", c.record.id);
            }
        }
        for s in self.rt.list_sandboxes() {
            if let Err(e) = self.rt.remove_sandbox(&s.record.id) {
                eprintln!("cleanup sandbox {}: {e}", s.record.id);
            }
        }
        let dir = self.dir.path().to_string_lossy().into_owned();
        // Monitors exit after their container; PID 1 on this machine reaps lazily, so poll.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !processes_mentioning(&dir).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let leaked_procs = processes_mentioning(&dir);
        let leaked_mounts = mounts_under(self.dir.path());
        let layout = CgroupLayout::detect();
        let mut leaked_cgroups = Vec::new();
        for d in layout.dirs(&self.cgroup_parent) {
            // Children first: containers' cgroups should be gone already (runc delete).
            if let Ok(rd) = fs::read_dir(&d) {
                for c in rd.flatten().filter(|e| e.path().is_dir()) {
                    leaked_cgroups.push(c.path());
                    let _ = fs::remove_dir(c.path());
                }
            }
            let _ = fs::remove_dir(&d);
        }
        if !std::thread::panicking() {
            assert!(leaked_procs.is_empty(), "processes left: {leaked_procs:?}");
            assert!(leaked_mounts.is_empty(), "mounts left: {leaked_mounts:?}");
            assert!(
                leaked_cgroups.is_empty(),
                "cgroups left: {leaked_cgroups:?}"
            );
        }
    }
}
