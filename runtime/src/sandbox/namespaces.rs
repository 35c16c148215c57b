//! Pinning a sandbox's namespaces (from a thread, [`super::pin`], or through the short-lived
//! `pin-namespaces` helper for a pod with a user namespace), its files, the pod-init
//! process of a shared PID namespace, and tearing all of them down again.

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use super::pin::PinRequest;
use super::{KINDS, SandboxInfo, SandboxRecord, SandboxSpec, hosts_file, resolv_conf};
use crate::error::{Error, Result};
use crate::monitor::ProcessIdentity;
use crate::runtime::Runtime;
use crate::userns::PinHelper;
use crate::util;

impl Runtime {
    /// Makes and pins the sandbox's namespaces (and applies its sysctls inside them): what
    /// CNI ADD needs, so RunPodSandbox does it first and writes the pod's files
    /// ([`Runtime::prepare_sandbox_files`]) while ADD runs. Without a user namespace a
    /// thread of the daemon does it ([`super::pin`]); with one, the `pin-namespaces` helper.
    pub(super) fn pin_sandbox_namespaces(
        &self,
        spec: &SandboxSpec,
        info: &SandboxInfo,
    ) -> Result<()> {
        let err = |message: String| Error::Sandbox {
            id: spec.id.to_string(),
            message,
        };
        // In a user namespace the pod's root owns its files (and may rewrite /etc/hosts, as
        // root can elsewhere); the OCI runtime reaches them from inside the namespace, so
        // the directory lets the pod's group search it (and nobody else in).
        let owner = spec.userns.map(|ns| ns.root_gid());
        util::restrict_dir(&info.dir, owner)?;
        let request = PinRequest {
            net: !spec.host_network,
            ipc: !spec.host_ipc,
            // A new UTS namespace starts with the node's hostname: set only one asked for.
            hostname: (!spec.host_network && !spec.hostname.is_empty())
                .then(|| spec.hostname.clone()),
            sysctls: spec
                .sysctls
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        let mut kinds = request.kinds();
        if spec.userns.is_some() {
            kinds.push("user");
        }
        if kinds.is_empty() && request.sysctls.is_empty() {
            return Ok(());
        }
        let nsdir = info.dir.join("ns");
        fs::create_dir(&nsdir).map_err(|e| Error::io("create directory", &nsdir, e))?;
        let Some(userns) = spec.userns.as_ref() else {
            return request.pin(&nsdir).map_err(err);
        };
        let mut args: Vec<String> = Vec::new();
        if request.net {
            args.extend(["--net".into(), "--uts".into()]);
        }
        if let Some(h) = request.hostname {
            args.extend(["--hostname".into(), h]);
        }
        if request.ipc {
            args.push("--ipc".into());
        }
        for (k, v) in request.sysctls {
            args.extend(["--sysctl".into(), format!("{k}={v}")]);
        }
        let helper = PinHelper::spawn(&self.monitor_binary, &args, Some(userns)).map_err(err)?;
        let result = kinds
            .iter()
            .try_for_each(|kind| bind_namespace(helper.pid, kind, &nsdir.join(kind)));
        helper.finish();
        result
    }

    /// The pod's `/etc/hostname`, `/etc/hosts`, `/etc/resolv.conf` and `/dev/shm`.
    pub(super) fn prepare_sandbox_files(
        &self,
        spec: &SandboxSpec,
        info: &SandboxInfo,
    ) -> Result<()> {
        let dir = &info.dir;
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
        let owner = spec.userns.map(|ns| (ns.root_uid(), ns.root_gid()));
        if let Some((uid, gid)) = owner {
            for name in ["hostname", "hosts", "resolv.conf"] {
                let p = dir.join(name);
                std::os::unix::fs::chown(&p, Some(uid), Some(gid))
                    .map_err(|e| Error::io("chown", &p, e))?;
            }
        }
        if !spec.host_ipc {
            let shm = dir.join("shm");
            fs::create_dir(&shm).map_err(|e| Error::io("create directory", &shm, e))?;
            let opts = match owner {
                Some((uid, gid)) => format!("mode=1777,size=65536k,uid={uid},gid={gid}"),
                None => "mode=1777,size=65536k".to_owned(),
            };
            mount(
                Some("shm"),
                &shm,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some(opts.as_str()),
            )
            .map_err(|source| Error::Mount {
                op: "mount tmpfs at",
                target: shm.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// Spawns a `rootstock-monitor` helper that reports on its stdout (stderr dropped).
    fn spawn_helper(&self, mut cmd: Command) -> Result<std::process::Child> {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| Error::Spawn {
                program: self.monitor_binary.clone(),
                source,
            })
    }

    /// Starts the pod's PID 1 (`rootstock-monitor pod-init`, see [`crate::pod_helpers`])
    /// in `cgroup`, waits until it reports itself confined, and pins its PID namespace
    /// under `ns/pid`.
    pub(super) fn start_pod_init(
        &self,
        info: &SandboxInfo,
        cgroup: Option<&str>,
    ) -> Result<ProcessIdentity> {
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
        if let Some(userns) = info.namespace_path("user") {
            cmd.arg("--userns").arg(userns);
        }
        cmd.stdin(Stdio::null());
        let mut child = self.spawn_helper(cmd)?;
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

    /// Kills the pod's PID 1 if it is still that process (pid reuse is checked by start
    /// time) and removes the cgroup it was placed in.
    pub(super) fn stop_pod_init(&self, rec: &SandboxRecord) {
        if let Some(init) = &rec.pod_init {
            stop_identity(init);
        }
        if let Some(cg) = &rec.pod_init_cgroup
            && let Err(e) = self.cgroups.remove(cg)
        {
            tracing::warn!(sandbox = %rec.id, "pod init cgroup: {e}");
        }
    }

    /// Removes a pod cgroup the runtime made, in every hierarchy; one already gone is fine.
    pub(super) fn remove_cgroup(&self, cgroup: &str) -> Result<()> {
        self.cgroups
            .remove(cgroup)
            .map_err(|message| Error::Cgroup {
                cgroup: cgroup.to_owned(),
                message,
            })
    }

    /// Unmounts namespaces and `/dev/shm`; with `remove`, deletes the directory too.
    /// Every step tolerates "already gone".
    pub(super) fn teardown_sandbox(&self, info: &SandboxInfo, remove: bool) -> Result<()> {
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
}

/// The node's hostname (what a new UTS namespace starts with).
pub(super) fn node_hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
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
