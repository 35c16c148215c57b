//! Driving an OCI runtime binary (`runc`, `crun`) through its command line. Both speak the
//! same subcommands and flags; the differences handled here are in their error texts.
//! `create` is not here: the monitor runs it, so that it becomes the container's parent.

use std::ffi::OsString;
use std::ops::{Deref, DerefMut};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::id::ContainerId;
use crate::sealed_exe::{self, SealedExe};
use crate::signal::Signal;

/// One configured OCI runtime: handler name, binary, and its state root (`--root`), kept
/// apart from the runtime's default root so other users of runc on the node never see or
/// collide with our containers.
#[derive(Debug, Clone)]
pub struct OciRuntime {
    handler: String,
    binary: PathBuf,
    root: PathBuf,
    /// The binary's sealed in-memory copy, which every call runs (shared by the clones);
    /// `None`: the binary runs from its path.
    exe: Option<Arc<SealedExe>>,
}

impl PartialEq for OciRuntime {
    fn eq(&self, other: &Self) -> bool {
        (&self.handler, &self.binary, &self.root) == (&other.handler, &other.binary, &other.root)
    }
}

impl Eq for OciRuntime {}

/// A runtime command line ready for its arguments, holding the sealed copy it runs until
/// it is dropped (after the spawn).
pub struct RuntimeCommand {
    cmd: Command,
    _copy: Option<Arc<OwnedFd>>,
}

impl Deref for RuntimeCommand {
    type Target = Command;
    fn deref(&self) -> &Command {
        &self.cmd
    }
}

impl DerefMut for RuntimeCommand {
    fn deref_mut(&mut self) -> &mut Command {
        &mut self.cmd
    }
}

/// The part of `<runtime> state` we use.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct OciState {
    /// `creating`, `created`, `running`, `paused` or `stopped`.
    pub status: String,
    /// The init's host pid (0 once stopped, for some runtimes).
    #[serde(default)]
    pub pid: i32,
}

/// A command to run in a container with [`OciRuntime::exec`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecRequest {
    /// Program and arguments.
    pub args: Vec<String>,
    /// Extra `KEY=VALUE` environment entries (on top of the container's).
    pub env: Vec<String>,
    /// Working directory, if not the container's.
    pub cwd: Option<String>,
}

/// What an exec'd command produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    /// Everything it wrote to stdout (bounded, see [`crate::exec::MAX_EXEC_OUTPUT`]).
    pub stdout: Vec<u8>,
    /// Everything it wrote to stderr (bounded).
    pub stderr: Vec<u8>,
    /// Exit status; 128 + signal when killed by a signal.
    pub exit_code: i32,
}

impl OciRuntime {
    /// A runtime `binary` for `handler`, keeping its state under `root`.
    pub fn new(
        handler: impl Into<String>,
        binary: impl Into<PathBuf>,
        root: impl Into<PathBuf>,
    ) -> Self {
        Self {
            handler: handler.into(),
            binary: binary.into(),
            root: root.into(),
            exe: None,
        }
    }

    /// The same runtime, run from a sealed in-memory copy of its binary.
    pub fn sealed(self) -> Self {
        Self {
            exe: Some(Arc::new(SealedExe::new(&self.binary))),
            ..self
        }
    }

    /// The handler name.
    pub fn handler(&self) -> &str {
        &self.handler
    }

    /// The binary.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// The runtime's `--root`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The binary's sealed copy to run now (see [`crate::sealed_exe`]); `None`: run the
    /// binary by its path.
    pub fn sealed_copy(&self) -> Option<Arc<OwnedFd>> {
        self.exe.as_ref()?.copy()
    }

    /// `<runtime> --root <root>`, run from the sealed copy where there is one (`argv[0]`
    /// stays the configured binary, as `ps` and the runtime's messages show it).
    pub fn command(&self) -> RuntimeCommand {
        let copy = self.sealed_copy();
        let mut c = match &copy {
            Some(fd) => {
                let mut c = Command::new(sealed_exe::fd_path(fd));
                c.arg0(&self.binary);
                c
            }
            None => Command::new(&self.binary),
        };
        c.arg("--root").arg(&self.root).stdin(Stdio::null());
        RuntimeCommand {
            cmd: c,
            _copy: copy,
        }
    }

    fn run(&self, id: &ContainerId, action: &'static str, args: &[OsString]) -> Result<Vec<u8>> {
        let out = self
            .command()
            .args(args)
            .output()
            .map_err(|source| Error::Spawn {
                program: self.binary.clone(),
                source,
            })?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            let mut message = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            if message.is_empty() {
                message = out.status.to_string();
            }
            Err(Error::Runtime {
                id: id.to_string(),
                runtime: self.handler.clone(),
                action,
                message,
            })
        }
    }

    /// `<runtime> start <id>`: lets the created container's init exec the process.
    pub fn start(&self, id: &ContainerId) -> Result<()> {
        self.run(id, "start", &["start".into(), id.as_str().into()])
            .map(drop)
    }

    /// `<runtime> kill [--all] <id> <signal>`. `all` signals every process in the
    /// container's cgroup (needed when it has no private PID namespace).
    pub fn kill(&self, id: &ContainerId, signal: Signal, all: bool) -> Result<()> {
        let mut args: Vec<OsString> = vec!["kill".into()];
        if all {
            args.push("--all".into());
        }
        args.push(id.as_str().into());
        args.push(signal.as_raw().to_string().into());
        self.run(id, "kill", &args).map(drop)
    }

    /// `<runtime> delete [--force] <id>`. A container the runtime does not know is already
    /// deleted: that is success (removal is idempotent, as CRI's RemoveContainer is).
    pub fn delete(&self, id: &ContainerId, force: bool) -> Result<()> {
        // runc and crun keep a container's state in `<root>/<id>/`, made when `create`
        // starts and removed by `delete`: without it the runtime does not know the
        // container, and an exec (a Go program starting up, for runc) is spared.
        if !self.knows(id) {
            return Ok(());
        }
        let mut args: Vec<OsString> = vec!["delete".into()];
        if force {
            args.push("--force".into());
        }
        args.push(id.as_str().into());
        match self.run(id, "delete", &args) {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => match self.state(id) {
                Ok(None) => Ok(()),
                _ => Err(e),
            },
        }
    }

    /// Whether the runtime keeps state for container `id` (its `<root>/<id>` exists; an
    /// error other than NotFound counts as yes, and the runtime is asked).
    fn knows(&self, id: &ContainerId) -> bool {
        !matches!(
            std::fs::symlink_metadata(self.root.join(id.as_str())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound
        )
    }

    /// `<runtime> state <id>`; `None` when the runtime does not know the container.
    pub fn state(&self, id: &ContainerId) -> Result<Option<OciState>> {
        match self.run(id, "state", &["state".into(), id.as_str().into()]) {
            Ok(out) => serde_json::from_slice(&out)
                .map(Some)
                .map_err(|e| Error::Runtime {
                    id: id.to_string(),
                    runtime: self.handler.clone(),
                    action: "state",
                    message: format!("unparsable state: {e}"),
                }),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `<runtime> update --resources <file> <id>` with an OCI `LinuxResources` document.
    pub fn update(
        &self,
        id: &ContainerId,
        resources: &oci_spec::runtime::LinuxResources,
        scratch_dir: &Path,
    ) -> Result<()> {
        let file = scratch_dir.join("resources.json");
        let data = serde_json::to_vec(resources)
            .map_err(|e| Error::InvalidArgument(format!("resources: {e}")))?;
        std::fs::write(&file, data).map_err(|e| Error::io("write", &file, e))?;
        let r = self.run(
            id,
            "update",
            &[
                "update".into(),
                "--resources".into(),
                file.clone().into(),
                id.as_str().into(),
            ],
        );
        let _ = std::fs::remove_file(&file);
        r.map(drop)
    }
}

/// runc: "container does not exist"; crun: "…/status: No such file or directory".
fn is_not_found(e: &Error) -> bool {
    match e {
        Error::Runtime { message, .. } => {
            message.contains("does not exist")
                || message.contains("No such file or directory")
                || message.contains("not found")
        }
        _ => false,
    }
}
