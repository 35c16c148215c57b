//! Pod sandboxes without a pause process: network, IPC and UTS namespaces are created by a
//! short-lived child (`rootstock-monitor pin-namespaces`) and pinned by bind-mounting
//! `/proc/<pid>/ns/<kind>` under `<state_dir>/sandboxes/<id>/ns/`; containers join them by
//! path. The hostname is set when the UTS namespace is created; `/etc/hostname`,
//! `/etc/hosts`, `/etc/resolv.conf` and `/dev/shm` are prepared per sandbox.
//!
//! ```text
//!   RunPodSandbox ──▶ Ready ──StopPodSandbox──▶ NotReady ──RemovePodSandbox──▶ (removed)
//! ```
//! A pod sharing one PID namespace (CRI `POD`) is the one case with a process: the monitor
//! in pod-init mode is PID 1 of that namespace (reaps orphans, sleeps).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use serde::{Deserialize, Serialize};

use crate::cgroup::CgroupLayout;
use crate::error::{Error, Result};
use crate::id::SandboxId;
use crate::monitor::ProcessIdentity;
use crate::runtime::{Runtime, lock};
use crate::spec::{BindMount, NamespaceMode, Namespaces, PidMode, Propagation};
use crate::{sysctl, util};

/// File name of a sandbox's persisted record.
pub const SANDBOX_FILE: &str = "sandbox.json";
/// Current version of [`SandboxRecord`].
pub const SANDBOX_RECORD_VERSION: u32 = 1;

/// The pod's PID namespace mode (CRI `NamespaceMode` for pid).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SandboxPidMode {
    /// Each container has its own (CRI `CONTAINER`, the default).
    #[default]
    Container,
    /// Shared by the pod's containers (CRI `POD`): a `rootstock-monitor pod-init` process
    /// is its PID 1.
    Pod,
    /// The node's (hostPID).
    Host,
}

/// DNS settings (CRI `DNSConfig`); `None` in [`SandboxSpec`] copies the node's resolv.conf.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsConfig {
    /// `nameserver` lines.
    pub servers: Vec<String>,
    /// `search` domains.
    pub searches: Vec<String>,
    /// `options`.
    pub options: Vec<String>,
}

/// What RunPodSandbox asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxSpec {
    /// Sandbox id (the caller generates it).
    pub id: SandboxId,
    /// Pod hostname; empty keeps the node's.
    pub hostname: String,
    /// hostNetwork: the node's network and UTS namespaces, no hostname of its own.
    pub host_network: bool,
    /// hostIPC: the node's IPC namespace and `/dev/shm`.
    pub host_ipc: bool,
    /// PID namespace mode.
    pub pid: SandboxPidMode,
    /// DNS.
    pub dns: Option<DnsConfig>,
    /// Sysctls applied inside the new namespaces (before CNI ADD); only namespaced ones
    /// whose namespace the pod owns ([`crate::sysctl::check`]).
    pub sysctls: BTreeMap<String, String>,
    /// The pod's cgroup (cleaned by [`crate::cgroup_join::clean_cgroup_parent`]); pod-init
    /// runs in the leaf `<cgroup_parent>/<sandbox id>` below it.
    pub cgroup_parent: String,
    /// Opaque caller data (CRI metadata, labels, annotations…).
    pub client_data: serde_json::Value,
}

/// Sandbox lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SandboxState {
    /// Namespaces pinned.
    Ready,
    /// Stopped (namespaces released), or from a previous boot.
    NotReady,
}

/// A sandbox's persisted record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxRecord {
    /// [`SANDBOX_RECORD_VERSION`].
    pub version: u32,
    /// Sandbox id.
    pub id: SandboxId,
    /// Lifecycle state.
    pub state: SandboxState,
    /// Pod hostname.
    pub hostname: String,
    /// hostNetwork.
    pub host_network: bool,
    /// hostIPC.
    pub host_ipc: bool,
    /// PID mode.
    pub pid: SandboxPidMode,
    /// When it was created.
    pub created_at_unix_nanos: i64,
    /// Boot it was created in.
    pub boot_id: String,
    /// PID 1 of the pod's shared PID namespace (`SandboxPidMode::Pod` only).
    #[serde(default)]
    pub pod_init: Option<ProcessIdentity>,
    /// The cgroup pod-init was placed in (removed with the sandbox).
    #[serde(default)]
    pub pod_init_cgroup: Option<String>,
    /// Opaque caller data.
    #[serde(default)]
    pub client_data: serde_json::Value,
}

/// A sandbox's record and its files.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxInfo {
    /// The record.
    pub record: SandboxRecord,
    /// `<state_dir>/sandboxes/<id>`.
    pub dir: PathBuf,
}

const KINDS: [&str; 4] = ["net", "ipc", "uts", "pid"];

impl SandboxInfo {
    /// The pinned namespace file of `kind` (`net`, `ipc`, `uts`), when the sandbox has one.
    pub fn namespace_path(&self, kind: &str) -> Option<PathBuf> {
        let own = match kind {
            "net" | "uts" => !self.record.host_network,
            "ipc" => !self.record.host_ipc,
            _ => false,
        };
        (own && self.record.state == SandboxState::Ready).then(|| self.dir.join("ns").join(kind))
    }

    /// The network namespace path for CNI (`None` for hostNetwork).
    pub fn netns_path(&self) -> Option<PathBuf> {
        self.namespace_path("net")
    }

    /// The namespaces a container of this pod joins.
    pub fn container_namespaces(&self) -> Namespaces {
        let mode = |kind: &str| match self.namespace_path(kind) {
            Some(p) => NamespaceMode::Path(p),
            None => NamespaceMode::Host,
        };
        Namespaces {
            network: mode("net"),
            ipc: mode("ipc"),
            uts: mode("uts"),
            pid: match self.record.pid {
                SandboxPidMode::Host => PidMode::Host,
                // The pinned namespace, never `/proc/<pid>/ns/pid`: a recycled pid would
                // join another process's namespace. A namespace whose init has died takes
                // no new process (fork fails in it), and such a sandbox is NotReady anyway.
                SandboxPidMode::Pod if self.record.state == SandboxState::Ready => {
                    PidMode::Pod(self.dir.join("ns").join("pid"))
                }
                // A pod-mode sandbox without its init (stopped): nothing can join it; a
                // private namespace is the safe reading.
                SandboxPidMode::Container | SandboxPidMode::Pod => PidMode::Private,
            },
        }
    }

    /// The runtime-provided mounts (`ContainerSpec::sandbox_mounts`): hostname, hosts,
    /// resolv.conf and `/dev/shm`; the spec builder skips any a CRI mount overrides.
    pub fn container_mounts(&self) -> Vec<BindMount> {
        let m = |dst: &str, src: PathBuf| BindMount {
            container_path: dst.into(),
            host_path: src,
            readonly: false,
            propagation: Propagation::Private,
            recursive_readonly: false,
        };
        let mut v = vec![
            m("/etc/hostname", self.dir.join("hostname")),
            m("/etc/hosts", self.dir.join("hosts")),
            m("/etc/resolv.conf", self.dir.join("resolv.conf")),
        ];
        v.push(m(
            "/dev/shm",
            if self.record.host_ipc {
                PathBuf::from("/dev/shm")
            } else {
                self.dir.join("shm")
            },
        ));
        v
    }

    /// The hostname containers get (`None` for hostNetwork: the node's).
    pub fn container_hostname(&self) -> Option<String> {
        (!self.record.host_network).then(|| self.record.hostname.clone())
    }
}

/// resolv.conf content for `dns`.
pub fn resolv_conf(dns: &DnsConfig) -> String {
    let mut s = String::new();
    for srv in &dns.servers {
        s.push_str(&format!("nameserver {srv}\n"));
    }
    if !dns.searches.is_empty() {
        s.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    if !dns.options.is_empty() {
        s.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    s
}

fn hosts_file(hostname: &str, host_network: bool) -> String {
    let mut s = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    if !host_network && !hostname.is_empty() {
        s.push_str(&format!("127.0.1.1\t{hostname}\n"));
    }
    s
}

impl Runtime {
    fn sandbox_dir(&self, id: &SandboxId) -> PathBuf {
        self.opts.state_dir.join("sandboxes").join(id.as_str())
    }

    /// The sandbox as clients see it: one whose pod-init has died is NotReady (its PID
    /// namespace is gone with it; kubelet then recreates the pod).
    fn sandbox_info(&self, rec: &SandboxRecord) -> SandboxInfo {
        let mut record = rec.clone();
        // The exit watcher noted the pod init's end: no /proc read on this (status) path.
        if record.state == SandboxState::Ready
            && record.pod_init.is_some()
            && lock(&self.pod_inits_gone).contains(&rec.id)
        {
            record.state = SandboxState::NotReady;
        }
        SandboxInfo {
            record,
            dir: self.sandbox_dir(&rec.id),
        }
    }

    fn persist_sandbox(&self, rec: &SandboxRecord) -> Result<()> {
        util::write_record(&self.sandbox_dir(&rec.id).join(SANDBOX_FILE), rec)
    }

    /// RunPodSandbox's runtime part: namespaces, hostname, files, `/dev/shm`. CNI ADD is
    /// the caller's next step, with [`SandboxInfo::netns_path`].
    pub fn create_sandbox(&self, spec: SandboxSpec) -> Result<SandboxInfo> {
        let id = spec.id.clone();
        let own = sysctl::OwnNamespaces {
            net: !spec.host_network,
            ipc: !spec.host_ipc,
            uts: !spec.host_network,
        };
        for (k, v) in &spec.sysctls {
            sysctl::check(k, v, own)?;
        }
        let dir = self.sandbox_dir(&id);
        fs::create_dir_all(dir.parent().unwrap_or(&dir))
            .map_err(|e| Error::io("create directory", &dir, e))?;
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::SandboxExists { id: id.to_string() });
            }
            Err(e) => return Err(Error::io("create directory", &dir, e)),
        }
        let mut rec = SandboxRecord {
            version: SANDBOX_RECORD_VERSION,
            id: id.clone(),
            state: SandboxState::Ready,
            // No hostname asked: the pod keeps the node's, as with containerd.
            hostname: if spec.hostname.is_empty() {
                node_hostname()
            } else {
                spec.hostname.clone()
            },
            host_network: spec.host_network,
            host_ipc: spec.host_ipc,
            pid: spec.pid,
            created_at_unix_nanos: util::now_unix_nanos(),
            boot_id: self.boot_id.clone(),
            pod_init: None,
            pod_init_cgroup: None,
            client_data: spec.client_data.clone(),
        };
        let info = self.sandbox_info(&rec);
        let prepared = self.prepare_sandbox(&spec, &info).and_then(|()| {
            if spec.pid == SandboxPidMode::Pod {
                let cgroup = (!spec.cgroup_parent.is_empty())
                    .then(|| format!("{}/{id}", spec.cgroup_parent.trim_end_matches('/')));
                rec.pod_init_cgroup = cgroup.clone();
                rec.pod_init = Some(self.start_pod_init(&info, cgroup.as_deref())?);
            }
            self.persist_sandbox(&rec)
        });
        if let Err(e) = prepared {
            stop_pod_init(&rec);
            if let Err(c) = self.teardown_sandbox(&info, true) {
                tracing::warn!(sandbox = %id, "cleanup after failed create: {c}");
            }
            return Err(e);
        }
        let info = self.sandbox_info(&rec);
        if let Some(init) = rec.pod_init {
            self.watch_pod_init(&id, init);
        }
        lock(&self.sandboxes).insert(id, rec);
        Ok(info)
    }

    fn prepare_sandbox(&self, spec: &SandboxSpec, info: &SandboxInfo) -> Result<()> {
        let dir = &info.dir;
        let err = |message: String| Error::Sandbox {
            id: spec.id.to_string(),
            message,
        };
        let write = |name: &str, data: &str| {
            let p = dir.join(name);
            fs::write(&p, data).map_err(|e| Error::io("write", &p, e))
        };
        let hostname = match &info.record.hostname {
            _ if spec.host_network => node_hostname(),
            h => h.clone(),
        };
        write("hostname", &format!("{hostname}\n"))?;
        write("hosts", &hosts_file(&hostname, spec.host_network))?;
        let resolv = match &spec.dns {
            Some(dns) => resolv_conf(dns),
            None => fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        };
        write("resolv.conf", &resolv)?;
        if !spec.host_ipc {
            let shm = dir.join("shm");
            fs::create_dir(&shm).map_err(|e| Error::io("create directory", &shm, e))?;
            mount(
                Some("shm"),
                &shm,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some("mode=1777,size=65536k"),
            )
            .map_err(|source| Error::Mount {
                op: "mount tmpfs at",
                target: shm.clone(),
                source,
            })?;
        }
        let mut args: Vec<String> = vec!["pin-namespaces".into()];
        let mut kinds = Vec::new();
        if !spec.host_network {
            args.extend(["--net".into(), "--uts".into()]);
            // A new UTS namespace starts with the node's hostname: set only one asked for.
            if !spec.hostname.is_empty() {
                args.extend(["--hostname".into(), spec.hostname.clone()]);
            }
            kinds.extend(["net", "uts"]);
        }
        if !spec.host_ipc {
            args.push("--ipc".into());
            kinds.push("ipc");
        }
        for (k, v) in &spec.sysctls {
            args.extend(["--sysctl".into(), format!("{k}={v}")]);
        }
        if kinds.is_empty() && spec.sysctls.is_empty() {
            return Ok(());
        }
        let nsdir = dir.join("ns");
        fs::create_dir(&nsdir).map_err(|e| Error::io("create directory", &nsdir, e))?;
        let mut child = Command::new(&self.monitor_binary)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| Error::Spawn {
                program: self.monitor_binary.clone(),
                source,
            })?;
        let result = (|| -> Result<()> {
            let mut line = String::new();
            let out = child.stdout.take().ok_or_else(|| err("no stdout".into()))?;
            BufReader::new(out)
                .read_line(&mut line)
                .map_err(|e| err(format!("read namespace helper: {e}")))?;
            let pid: i32 = match line.trim().strip_prefix("ok ") {
                Some(p) => p
                    .parse()
                    .map_err(|_| err(format!("bad helper report {line:?}")))?,
                None => return Err(err(line.trim().trim_start_matches("error ").to_owned())),
            };
            for kind in &kinds {
                bind_namespace(pid, kind, &nsdir.join(kind))?;
            }
            Ok(())
        })();
        // EOF on its stdin ends the helper: the pod keeps no process.
        drop(child.stdin.take());
        let _ = child.wait();
        result
    }

    /// Starts the pod's PID 1 (`rootstock-monitor pod-init`, see [`crate::pod_helpers`])
    /// in `cgroup`, waits until it reports itself confined, and pins its PID namespace
    /// under `ns/pid`.
    fn start_pod_init(&self, info: &SandboxInfo, cgroup: Option<&str>) -> Result<ProcessIdentity> {
        let id = &info.record.id;
        let err = |message: String| Error::Sandbox {
            id: id.to_string(),
            message: format!("pod init: {message}"),
        };
        let mut cmd = Command::new(&self.monitor_binary);
        cmd.arg("pod-init");
        if let Some(cg) = cgroup {
            cmd.args(["--cgroup", cg]);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| Error::Spawn {
                program: self.monitor_binary.clone(),
                source,
            })?;
        // Two writers share the pipe: the first stage ("pid <n>", then it exits) and PID 1
        // itself ("ok" once confined, then it closes its end). EOF means both are done.
        let mut out = String::new();
        if let Some(mut pipe) = child.stdout.take() {
            let _ = pipe.read_to_string(&mut out);
        }
        let _ = child.wait();
        let mut pid = None;
        let mut ok = false;
        for line in out.lines() {
            if let Some(p) = line.strip_prefix("pid ") {
                pid = p.trim().parse::<i32>().ok();
            } else if line.trim() == "ok" {
                ok = true;
            } else if let Some(e) = line.strip_prefix("error ") {
                if let Some(p) = pid {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(p),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                return Err(err(e.to_owned()));
            }
        }
        let pid = pid.ok_or_else(|| err(format!("no pid reported ({out:?})")))?;
        let start_time = util::process_start_time(pid).map_err(|e| err(format!("{pid}: {e}")))?;
        let identity = ProcessIdentity { pid, start_time };
        if !ok {
            stop_identity(&identity);
            return Err(err(format!("exited before it was confined ({out:?})")));
        }
        let nsdir = info.dir.join("ns");
        let pinned = fs::create_dir_all(&nsdir)
            .map_err(|e| Error::io("create directory", &nsdir, e))
            .and_then(|()| bind_namespace(pid, "pid", &nsdir.join("pid")));
        if let Err(e) = pinned {
            stop_identity(&identity);
            return Err(e);
        }
        Ok(identity)
    }

    /// Unmounts namespaces and `/dev/shm`; with `remove`, deletes the directory too.
    /// Every step tolerates "already gone".
    fn teardown_sandbox(&self, info: &SandboxInfo, remove: bool) -> Result<()> {
        for kind in KINDS {
            unmount_if_mounted(&info.dir.join("ns").join(kind))?;
        }
        unmount_if_mounted(&info.dir.join("shm"))?;
        if remove {
            match fs::remove_dir_all(&info.dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove", &info.dir, e)),
            }
        }
        Ok(())
    }

    /// StopPodSandbox's runtime part (after the caller stopped the containers and ran CNI
    /// DEL): releases the namespaces and `/dev/shm`; NotReady is persisted. Stopping an
    /// unknown or stopped sandbox is OK (CRI idempotence).
    ///
    /// The map is locked only to copy the record out and the new one in, never across the
    /// kill, unmounts and fsync: PodSandboxStatus and ListPodSandbox read it meanwhile. The
    /// caller serializes stop and remove of one sandbox (the daemon's per-sandbox lock).
    pub fn stop_sandbox(&self, id: &SandboxId) -> Result<()> {
        let Some(rec) = lock(&self.sandboxes).get(id).cloned() else {
            return Ok(());
        };
        let info = self.sandbox_info(&rec);
        // SIGKILL of a PID namespace's init kills every process left in it.
        stop_pod_init(&rec);
        self.teardown_sandbox(&info, false)?;
        if rec.state != SandboxState::NotReady || rec.pod_init.is_some() {
            let mut next = rec.clone();
            next.state = SandboxState::NotReady;
            next.pod_init = None;
            self.persist_sandbox(&next)?;
            // Never resurrects a sandbox removed meanwhile.
            if let Some(cur) = lock(&self.sandboxes).get_mut(id) {
                *cur = next;
            }
        }
        Ok(())
    }

    /// RemovePodSandbox's runtime part (the caller removes the containers first). Removing
    /// an unknown sandbox is OK.
    pub fn remove_sandbox(&self, id: &SandboxId) -> Result<()> {
        // As in stop_sandbox: the map is not held across the teardown.
        let info = match lock(&self.sandboxes).get(id) {
            Some(rec) => self.sandbox_info(rec),
            None => return Ok(()),
        };
        stop_pod_init(&info.record);
        self.teardown_sandbox(&info, true)?;
        lock(&self.sandboxes).remove(id);
        lock(&self.pod_inits_gone).remove(id);
        Ok(())
    }

    /// PodSandboxStatus's runtime part.
    pub fn sandbox(&self, id: &SandboxId) -> Result<SandboxInfo> {
        lock(&self.sandboxes)
            .get(id)
            .map(|r| self.sandbox_info(r))
            .ok_or_else(|| Error::SandboxNotFound { id: id.to_string() })
    }

    /// The ids of every sandbox (for prefix lookups).
    pub fn sandbox_ids(&self) -> Vec<SandboxId> {
        lock(&self.sandboxes).keys().cloned().collect()
    }

    /// Every sandbox.
    pub fn list_sandboxes(&self) -> Vec<SandboxInfo> {
        lock(&self.sandboxes)
            .values()
            .map(|r| self.sandbox_info(r))
            .collect()
    }

    /// Loads sandbox records at start-up; those of another boot become NotReady.
    pub(crate) fn recover_sandboxes(&self) -> Result<()> {
        let dir = self.opts.state_dir.join("sandboxes");
        let Ok(entries) = fs::read_dir(&dir) else {
            return Ok(());
        };
        for e in entries.flatten() {
            let Ok(id) = SandboxId::new(e.file_name().to_string_lossy().into_owned()) else {
                continue;
            };
            let path = e.path().join(SANDBOX_FILE);
            let mut data = Vec::new();
            let loaded = File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut data))
                .map_err(|e| e.to_string())
                .and_then(|_| {
                    serde_json::from_slice::<SandboxRecord>(&data).map_err(|e| e.to_string())
                });
            match loaded {
                Ok(mut rec) => {
                    if rec.boot_id != self.boot_id && rec.state == SandboxState::Ready {
                        rec.state = SandboxState::NotReady;
                        self.persist_sandbox(&rec)?;
                    }
                    if let Some(init) = rec.pod_init.filter(|_| rec.state == SandboxState::Ready) {
                        self.watch_pod_init(&id, init);
                    }
                    lock(&self.sandboxes).insert(id, rec);
                }
                Err(msg) => {
                    // A sandbox whose create never completed: release what it pinned.
                    tracing::warn!(sandbox = %id, "removing unreadable sandbox {}: {msg}", path.display());
                    let info = SandboxInfo {
                        record: SandboxRecord {
                            version: SANDBOX_RECORD_VERSION,
                            id: id.clone(),
                            state: SandboxState::NotReady,
                            hostname: String::new(),
                            host_network: false,
                            host_ipc: false,
                            pid: SandboxPidMode::Container,
                            created_at_unix_nanos: 0,
                            boot_id: String::new(),
                            pod_init: None,
                            pod_init_cgroup: None,
                            client_data: serde_json::Value::Null,
                        },
                        dir: e.path(),
                    };
                    self.teardown_sandbox(&info, true)?;
                }
            }
        }
        Ok(())
    }
}

/// The node's hostname (what a new UTS namespace starts with).
fn node_hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Kills the pod's PID 1 if it is still that process (pid reuse is checked by start time)
/// and removes the cgroup it was placed in.
fn stop_pod_init(rec: &SandboxRecord) {
    if let Some(init) = &rec.pod_init {
        stop_identity(init);
    }
    if let Some(cg) = &rec.pod_init_cgroup
        && let Err(e) = CgroupLayout::detect().remove(cg)
    {
        tracing::warn!(sandbox = %rec.id, "pod init cgroup: {e}");
    }
}

fn stop_identity(init: &ProcessIdentity) {
    if init.is_alive() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(init.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    // Wait (briefly) until it is gone, so that its cgroup can be removed.
    for _ in 0..100 {
        if !init.is_alive() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Pins `/proc/<pid>/ns/<kind>` by bind-mounting it onto `target` (created empty).
fn bind_namespace(pid: i32, kind: &str, target: &Path) -> Result<()> {
    File::create(target).map_err(|e| Error::io("create", target, e))?;
    let source = PathBuf::from(format!("/proc/{pid}/ns/{kind}"));
    mount(
        Some(&source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|source| Error::Mount {
        op: "bind-mount namespace to",
        target: target.to_owned(),
        source,
    })
}

fn unmount_if_mounted(path: &Path) -> Result<()> {
    match umount2(path, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
        Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => Ok(()),
        Err(source) => Err(Error::Mount {
            op: "unmount",
            target: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_from_dns_config() {
        let d = DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
            ],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(&d),
            "nameserver 10.96.0.10\nsearch default.svc.cluster.local svc.cluster.local\noptions ndots:5\n"
        );
    }

    #[test]
    fn hosts_names_the_pod() {
        assert!(hosts_file("pod-a", false).contains("127.0.1.1\tpod-a\n"));
        assert!(!hosts_file("node", true).contains("127.0.1.1"));
    }
}
