//! Running one CNI plugin binary (CNI spec 1.x, "Execution protocol").
//!
//! Written on `tokio::process` rather than a crate: the protocol is a handful of environment
//! variables, a JSON stdin and a JSON stdout, and no maintained Rust crate runs plugins with
//! per-call timeouts and process-group kill.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::{CniError, Result};

/// The CNI operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CniCommand {
    /// Attach the container to the network.
    Add,
    /// Detach it (must tolerate repeated calls and missing resources).
    Del,
    /// Verify the attachment is as the cached result says.
    Check,
}

impl CniCommand {
    /// The `CNI_COMMAND` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::Check => "CHECK",
        }
    }
}

/// Everything of one invocation except the plugin and its stdin.
#[derive(Debug, Clone)]
pub(crate) struct InvokeArgs<'a> {
    pub command: CniCommand,
    pub network: &'a str,
    pub container_id: &'a str,
    /// `None` is an absent `CNI_NETNS`, which the spec allows for DEL when the namespace is gone.
    pub netns: Option<&'a Path>,
    pub ifname: &'a str,
    pub cni_args: &'a str,
    pub bin_dirs: &'a [PathBuf],
    pub timeout: Duration,
}

/// Finds `plugin` in the bin dirs (first match wins, like `CNI_PATH` lookup in libcni).
pub(crate) fn find_plugin(plugin: &str, bin_dirs: &[PathBuf]) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    for dir in bin_dirs {
        let p = dir.join(plugin);
        if let Ok(md) = std::fs::metadata(&p)
            && md.is_file()
            && md.permissions().mode() & 0o111 != 0
        {
            return Ok(p);
        }
    }
    Err(CniError::PluginNotFound {
        plugin: plugin.to_string(),
        searched: bin_dirs.to_vec(),
    })
}

/// Runs the plugin at `path` with `stdin`; returns its parsed stdout (`None` when empty, as
/// DEL and CHECK print nothing on success).
pub(crate) async fn invoke(
    plugin: &str,
    path: &Path,
    args: &InvokeArgs<'_>,
    stdin: &[u8],
) -> Result<Option<Value>> {
    let exec_err = |source| CniError::PluginExec {
        plugin: plugin.to_string(),
        path: path.to_path_buf(),
        source,
    };
    let cni_path = std::env::join_paths(args.bin_dirs).map_err(|e| {
        exec_err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            e.to_string(),
        ))
    })?;
    let mut cmd = tokio::process::Command::new(path);
    // The parent's environment is kept (plugins run iptables and need PATH), the CNI_*
    // variables are set explicitly so nothing inherited leaks into the protocol.
    cmd.env("CNI_COMMAND", args.command.as_str())
        .env("CNI_CONTAINERID", args.container_id)
        .env("CNI_IFNAME", args.ifname)
        .env("CNI_PATH", &cni_path)
        .env("CNI_ARGS", args.cni_args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Own process group: on timeout the plugin *and* what it spawned (iptables, the IPAM
        // plugin) are killed together.
        .process_group(0)
        .kill_on_drop(true);
    match args.netns {
        Some(ns) => cmd.env("CNI_NETNS", ns),
        None => cmd.env_remove("CNI_NETNS"),
    };

    // `execve` of a file that some thread of this process still has open for writing fails
    // with ETXTBSY: a fork in another thread can briefly inherit a just-written plugin's fd.
    let mut attempt = 0;
    let mut child = loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempt < 10 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            r => break r.map_err(exec_err)?,
        }
    };
    let pid = child.id();
    let mut child_stdin = child.stdin.take();
    let mut child_stdout = child.stdout.take();
    let mut child_stderr = child.stderr.take();

    let run = async {
        let write = async {
            if let Some(mut s) = child_stdin.take() {
                // A plugin may exit without reading stdin (EPIPE): its exit status tells.
                let _ = s.write_all(stdin).await;
                let _ = s.shutdown().await;
            }
        };
        let read_out = async {
            let mut buf = Vec::new();
            if let Some(s) = child_stdout.as_mut() {
                s.read_to_end(&mut buf).await?;
            }
            Ok::<_, std::io::Error>(buf)
        };
        let read_err = async {
            let mut buf = Vec::new();
            if let Some(s) = child_stderr.as_mut() {
                s.read_to_end(&mut buf).await?;
            }
            Ok::<_, std::io::Error>(buf)
        };
        let ((), out, err, status) = tokio::join!(write, read_out, read_err, child.wait());
        Ok::<_, std::io::Error>((out?, err?, status?))
    };

    let (stdout, stderr, status) = match tokio::time::timeout(args.timeout, run).await {
        Ok(r) => r.map_err(exec_err)?,
        Err(_) => {
            if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            // Reap it; SIGKILL cannot be ignored, so this is quick.
            let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
            return Err(CniError::PluginTimeout {
                plugin: plugin.to_string(),
                command: args.command.as_str().to_string(),
                timeout_secs: args.timeout.as_secs(),
            });
        }
    };

    if !status.success() {
        return Err(plugin_error(plugin, args, &stdout, &stderr, status));
    }
    let text = String::from_utf8_lossy(&stdout);
    if text.trim().is_empty() {
        return Ok(None);
    }
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| CniError::InvalidResult {
            plugin: plugin.to_string(),
            reason: format!("{e}: {}", text.trim()),
        })
}

/// Builds `PluginFailed` from the spec's error JSON (`code`, `msg`, `details`) on stdout, or
/// from stderr when the plugin printed none.
fn plugin_error(
    plugin: &str,
    args: &InvokeArgs<'_>,
    stdout: &[u8],
    stderr: &[u8],
    status: std::process::ExitStatus,
) -> CniError {
    let parsed: Option<Value> = serde_json::from_slice(stdout).ok();
    let field = |k: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(k))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let code = parsed
        .as_ref()
        .and_then(|v| v.get("code"))
        .and_then(Value::as_u64)
        .and_then(|c| u32::try_from(c).ok())
        .unwrap_or(0);
    let msg = field("msg").unwrap_or_else(|| {
        let err = String::from_utf8_lossy(stderr).trim().to_string();
        let out = String::from_utf8_lossy(stdout).trim().to_string();
        if !err.is_empty() {
            err
        } else if !out.is_empty() {
            out
        } else {
            format!("exited with {status}")
        }
    });
    CniError::PluginFailed {
        plugin: plugin.to_string(),
        network: args.network.to_string(),
        command: args.command.as_str().to_string(),
        code,
        msg,
        details: field("details").unwrap_or_default(),
    }
}
