//! The protocol `rootstock-monitor` and the daemon share: the monitor's command line and the
//! files it leaves in the container's run directory. std only: the monitor includes this
//! file (`#[path]`), the daemon reaches it as `crate::monitor`.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

use crate::flatjson::{self, Value};

/// `<runtime> create --pid-file`: the container init's host pid.
pub const INIT_PID_FILE: &str = "init.pid";
/// The OCI runtime's own log (`--log`, JSON lines), kept out of the container's log.
pub const RUNTIME_LOG_FILE: &str = "runtime.log";
/// The console socket the OCI runtime sends a terminal's pty master to.
pub const CONSOLE_SOCKET_FILE: &str = "console.sock";
/// The monitor's own stderr.
pub const MONITOR_LOG_FILE: &str = "monitor.log";
/// The socket a client writes the container's stdin to (CRI `stdin`; see [`crate::stdin`]).
/// Relative to the run directory, the monitor's working directory: a unix socket path is
/// limited to 108 bytes.
pub const STDIN_SOCKET_FILE: &str = "stdin.sock";
/// The socket clients attach to the container's output on (see [`crate::attach`]);
/// relative to the run directory, as [`STDIN_SOCKET_FILE`].
pub const ATTACH_SOCKET_FILE: &str = "attach.sock";
/// Written atomically by the monitor when the container's init has exited.
pub const EXIT_FILE: &str = "exit.json";
/// `--runtime` naming the monitor's stdin: the daemon passed the runtime's sealed copy there
/// (see the daemon's `sealed_exe.rs`), and the monitor runs `create` from it.
pub const RUNTIME_FROM_STDIN: &str = "/proc/self/fd/0";

/// What the daemon writes to the monitor's stdout (a socket) once the bundle is complete:
/// run `<runtime> create` now. EOF instead means give up.
pub const CREATE_NOW: &[u8] = b"create\n";

/// The monitor's command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorArgs {
    /// OCI runtime binary (`runc`, `crun`, a path, or [`RUNTIME_FROM_STDIN`]).
    pub runtime: PathBuf,
    /// The runtime's `--root` (its state directory, one per handler).
    pub runtime_root: PathBuf,
    /// Container id.
    pub id: String,
    /// OCI bundle (holds `config.json`).
    pub bundle: PathBuf,
    /// The container's run directory: pid file, runtime log, exit file.
    pub run_dir: PathBuf,
    /// The CRI log file.
    pub log_path: PathBuf,
    /// The container's cgroup path (the spec's `cgroupsPath`).
    pub cgroup: String,
    /// Kill every process left in the cgroup when init exits (no private PID namespace).
    pub kill_all: bool,
    /// The container has a terminal: the runtime hands the pty master to the monitor over
    /// a console socket, and its output is logged as stdout.
    pub tty: bool,
    /// Give the container a stdin held open by the monitor ([`crate::stdin`]).
    pub stdin: bool,
    /// Close that stdin when the first client hangs up.
    pub stdin_once: bool,
}

impl MonitorArgs {
    /// The arguments to pass (without the program name).
    pub fn to_args(&self) -> Vec<OsString> {
        let mut v: Vec<OsString> = Vec::new();
        let mut pair = |k: &str, val: OsString| {
            v.push(k.into());
            v.push(val);
        };
        pair("--runtime", self.runtime.clone().into());
        pair("--runtime-root", self.runtime_root.clone().into());
        pair("--id", self.id.clone().into());
        pair("--bundle", self.bundle.clone().into());
        pair("--run-dir", self.run_dir.clone().into());
        pair("--log-path", self.log_path.clone().into());
        pair("--cgroup", self.cgroup.clone().into());
        if self.kill_all {
            v.push("--kill-all".into());
        }
        for (flag, on) in [
            ("--tty", self.tty),
            ("--stdin", self.stdin),
            ("--stdin-once", self.stdin_once),
        ] {
            if on {
                v.push(flag.into());
            }
        }
        v
    }

    /// Parses what [`MonitorArgs::to_args`] produced.
    pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Self, String> {
        let mut it = args.into_iter();
        let (mut runtime, mut runtime_root, mut id, mut bundle) = (None, None, None, None);
        let (mut run_dir, mut log_path, mut cgroup) = (None, None, None);
        let (mut kill_all, mut tty, mut stdin, mut stdin_once) = (false, false, false, false);
        while let Some(a) = it.next() {
            let key = a.to_string_lossy().into_owned();
            let flag = match key.as_str() {
                "--kill-all" => Some(&mut kill_all),
                "--tty" => Some(&mut tty),
                "--stdin" => Some(&mut stdin),
                "--stdin-once" => Some(&mut stdin_once),
                _ => None,
            };
            if let Some(flag) = flag {
                *flag = true;
                continue;
            }
            let val = it.next().ok_or_else(|| format!("{key} needs a value"))?;
            match key.as_str() {
                "--runtime" => runtime = Some(PathBuf::from(val)),
                "--runtime-root" => runtime_root = Some(PathBuf::from(val)),
                "--id" => id = Some(val.to_string_lossy().into_owned()),
                "--bundle" => bundle = Some(PathBuf::from(val)),
                "--run-dir" => run_dir = Some(PathBuf::from(val)),
                "--log-path" => log_path = Some(PathBuf::from(val)),
                "--cgroup" => cgroup = Some(val.to_string_lossy().into_owned()),
                _ => return Err(format!("unknown argument {key}")),
            }
        }
        fn need<T>(v: Option<T>, k: &str) -> Result<T, String> {
            v.ok_or_else(|| format!("missing {k}"))
        }
        Ok(Self {
            runtime: need(runtime, "--runtime")?,
            runtime_root: need(runtime_root, "--runtime-root")?,
            id: need(id, "--id")?,
            bundle: need(bundle, "--bundle")?,
            run_dir: need(run_dir, "--run-dir")?,
            log_path: need(log_path, "--log-path")?,
            cgroup: need(cgroup, "--cgroup")?,
            kill_all,
            tty,
            stdin,
            stdin_once,
        })
    }
}

/// How the container's init ended, as the monitor recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitRecord {
    /// Format version (1).
    pub version: u32,
    /// Exit status; 128 + signal number when a signal killed it.
    pub exit_code: i32,
    /// The signal that killed it, if any.
    pub signal: Option<i32>,
    /// When the monitor saw it exit.
    pub exited_at_unix_nanos: i64,
    /// The memory cgroup's OOM kill count was non-zero.
    pub oom_killed: bool,
}

impl ExitRecord {
    /// Reads `<run_dir>/exit.json`; `None` while the container has not exited.
    pub fn read(run_dir: &Path) -> io::Result<Option<Self>> {
        match std::fs::read_to_string(run_dir.join(EXIT_FILE)) {
            Ok(text) => Self::from_json(&text)
                .map(Some)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed exit record")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The record as one JSON object (the format serde_json wrote before: field names as
    /// they are here, `signal` null when none).
    pub fn to_json(self) -> String {
        let signal = self
            .signal
            .map_or_else(|| "null".to_owned(), |s| s.to_string());
        format!(
            "{{\"version\":{},\"exit_code\":{},\"signal\":{signal},\"exited_at_unix_nanos\":{},\"oom_killed\":{}}}",
            self.version, self.exit_code, self.exited_at_unix_nanos, self.oom_killed
        )
    }

    /// Parses [`ExitRecord::to_json`]'s output; `None` when a field is missing or mistyped
    /// (`signal` may be absent).
    pub fn from_json(text: &str) -> Option<Self> {
        let o = flatjson::parse_object(text)?;
        let num = |k: &str| match flatjson::get(&o, k) {
            Some(Value::Num(n)) => Some(n.as_str()),
            _ => None,
        };
        let signal = match flatjson::get(&o, "signal") {
            None | Some(Value::Null) => None,
            Some(Value::Num(n)) => Some(n.parse().ok()?),
            Some(_) => return None,
        };
        Some(Self {
            version: num("version")?.parse().ok()?,
            exit_code: num("exit_code")?.parse().ok()?,
            signal,
            exited_at_unix_nanos: num("exited_at_unix_nanos")?.parse().ok()?,
            oom_killed: match flatjson::get(&o, "oom_killed")? {
                Value::Bool(b) => *b,
                _ => return None,
            },
        })
    }

    /// Writes it atomically (temp, rename): the daemon may read it at any moment, and must
    /// never see a torn record. Not fsynced: the run directory is per-boot state (tmpfs
    /// under `/run` on a node), and a power loss that could lose the file ends the boot the
    /// record belongs to, after which every container counts as exited anyway; a daemon's
    /// crash loses nothing the kernel holds. The two fsyncs were on every stop's path.
    pub fn write(&self, run_dir: &Path) -> io::Result<()> {
        let tmp = run_dir.join(format!(".{EXIT_FILE}.tmp"));
        std::fs::write(&tmp, self.to_json())?;
        std::fs::rename(&tmp, run_dir.join(EXIT_FILE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_round_trip() {
        let a = MonitorArgs {
            runtime: "runc".into(),
            runtime_root: "/run/rootstock/runtime/runc".into(),
            id: "abc".into(),
            bundle: "/b".into(),
            run_dir: "/r".into(),
            log_path: "/var/log/pods/x/0.log".into(),
            cgroup: "/kubepods/abc".into(),
            kill_all: true,
            tty: true,
            stdin: true,
            stdin_once: false,
        };
        assert_eq!(MonitorArgs::parse(a.to_args()).unwrap(), a);
        assert!(MonitorArgs::parse(vec![OsString::from("--id")]).is_err());
    }

    #[test]
    fn exit_records_round_trip_and_read_what_serde_json_wrote() {
        let r = ExitRecord {
            version: 1,
            exit_code: 137,
            signal: Some(9),
            exited_at_unix_nanos: 1_765_000_000_123_456_789,
            oom_killed: true,
        };
        assert_eq!(ExitRecord::from_json(&r.to_json()), Some(r));
        // As serde_json::to_vec wrote it (monitors of an earlier version, still running
        // across the daemon's upgrade).
        let old = r#"{"version":1,"exit_code":0,"signal":null,"exited_at_unix_nanos":5,"oom_killed":false}"#;
        let want = ExitRecord {
            version: 1,
            exit_code: 0,
            signal: None,
            exited_at_unix_nanos: 5,
            oom_killed: false,
        };
        assert_eq!(ExitRecord::from_json(old), Some(want));
        assert_eq!(want.to_json(), old);
        assert_eq!(ExitRecord::from_json(r#"{"version":1}"#), None);
        assert_eq!(
            ExitRecord::from_json(
                r#"{"version":1,"exit_code":"0","exited_at_unix_nanos":5,"oom_killed":false}"#
            ),
            None
        );
    }
}
