//! A private CNI network for a test or a benchmark: its own conf, cache, IPAM and bin dirs,
//! network name, bridge and /24 inside 10.199.128.0/17, and a FORWARD rule that keeps that
//! /24 from leaving; undone on drop.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::{Value, json};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The CNI plugins Debian installs.
pub const SYSTEM_PLUGINS: &str = "/usr/lib/cni";

/// One private CNI network for one daemon, undone on drop (also on panic). Holds the lock the
/// cni crate's tests hold: they all share iptables.
pub struct TestNet {
    pub dir: tempfile::TempDir,
    pub name: String,
    pub bridge: String,
    /// e.g. "10.199.140" — the /24 is `<prefix>.0/24`.
    pub prefix: String,
    pub conf_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub data_dir: PathBuf,
    pub bin_dir: PathBuf,
    rule: Vec<String>,
    nat: Option<HostNatGuard>,
    _lock: nix::fcntl::Flock<File>,
}

impl TestNet {
    pub fn new(tag: &str) -> Self {
        let lock_file = File::create("/run/lock/rootstock-cni-tests.lock").unwrap();
        let lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .unwrap();
        let pid = std::process::id();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        // A /24 in 10.199.128.0/17; the lock keeps two live networks from sharing one, and
        // the route check a network left by a killed test or benchmark (a second route to the
        // same /24 makes the host's packets miss the pods: "No route to host").
        let start = pid.wrapping_mul(7) + n;
        let octet = (0..126)
            .map(|i| 128 + (start + i) % 126)
            .find(|&octet| !routed(octet))
            .expect("a /24 in 10.199.128.0/17 with no route yet");
        let bridge = format!("rse{}{}", pid % 10000, n);
        assert!(bridge.len() <= 15);
        let dir = tempfile::tempdir().unwrap();
        let mk = |d: &str| {
            let p = dir.path().join(d);
            std::fs::create_dir_all(&p).unwrap();
            p
        };
        let prefix = format!("10.199.{octet}");
        let subnet = format!("{prefix}.0/24");
        let rule: Vec<String> = ["FORWARD", "-s", &subnet, "!", "-d", &subnet, "-j", "DROP"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut insert = vec!["-w".to_string(), "-I".to_string()];
        insert.extend(rule.iter().cloned());
        let out = Command::new("iptables").args(&insert).output().unwrap();
        assert!(out.status.success(), "iptables: {out:?}");
        Self {
            name: format!("rse2e-{tag}-{pid}-{n}"),
            bridge,
            prefix,
            conf_dir: mk("net.d"),
            cache_dir: mk("cache"),
            data_dir: mk("ipam"),
            bin_dir: mk("bin"),
            rule,
            nat: Some(HostNatGuard::new()),
            dir,
            _lock: lock,
        }
    }

    pub fn subnet(&self) -> String {
        format!("{}.0/24", self.prefix)
    }

    pub fn gateway(&self) -> String {
        format!("{}.1", self.prefix)
    }

    /// The daemon's `[cni]` table: only this network's dirs.
    pub fn daemon_config(&self) -> String {
        format!(
            "[cni]\nconf_dirs = [\"{}\"]\nbin_dirs = [\"{}\", \"{SYSTEM_PLUGINS}\"]\n\
             cache_dir = \"{}\"\nplugin_timeout_secs = 20\npoll_interval_ms = 200\n",
            self.conf_dir.display(),
            self.bin_dir.display(),
            self.cache_dir.display()
        )
    }

    /// bridge (the pods' gateway) + host-local on the test's /24, then `extra` plugins.
    pub fn conflist(&self, extra: Vec<Value>) -> Value {
        self.conflist_with(true, extra)
    }

    /// [`Self::conflist`] with the bridge's `isGateway` as given.
    pub fn conflist_with(&self, is_gateway: bool, extra: Vec<Value>) -> Value {
        let mut plugins = vec![json!({
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": is_gateway,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "dataDir": self.data_dir,
                "ranges": [[{ "subnet": self.subnet(), "gateway": self.gateway() }]]
            }
        })];
        plugins.extend(extra);
        json!({ "cniVersion": "1.0.0", "name": self.name, "plugins": plugins })
    }

    /// Writes `v` as the network's `10-e2e.conflist`.
    pub fn write_conflist(&self, v: &Value) {
        self.write_conflist_file("10-e2e.conflist", v);
    }

    /// Writes `v` as `file` in the conf dir, atomically (the runtime watches the dir).
    pub fn write_conflist_file(&self, file: &str, v: &Value) {
        let tmp = self.conf_dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(v).unwrap()).unwrap();
        std::fs::rename(tmp, self.conf_dir.join(file)).unwrap();
    }

    /// Writes an executable script plugin into the network's own bin dir.
    pub fn script_plugin(&self, name: &str, body: &str) {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.bin_dir.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(&path)
            .unwrap();
        f.write_all(format!("#!/bin/sh\n{body}\n").as_bytes())
            .unwrap();
        f.sync_all().unwrap();
    }

    /// IPs host-local holds reserved for this network (files named by address).
    pub fn reserved_ips(&self) -> Vec<String> {
        let d = self.data_dir.join(&self.name);
        match std::fs::read_dir(&d) {
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.parse::<IpAddr>().is_ok())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Interfaces enslaved to the test bridge (the pods' host-side veths).
    pub fn bridge_ports(&self) -> Vec<String> {
        let out = Command::new("ip")
            .args(["-o", "link", "show", "master", &self.bridge])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|s| s.trim().split('@').next().unwrap_or("").to_string())
            .collect()
    }

    pub fn cache_entries(&self) -> Vec<String> {
        std::fs::read_dir(&self.cache_dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Whether the host has a route to 10.199.`octet`.0/24 (from `/proc/net/route`, whose
/// destinations are hex in the kernel's little-endian order).
fn routed(octet: u32) -> bool {
    let want = format!("{:08X}", u32::from_le_bytes([10, 199, octet as u8, 0]));
    std::fs::read_to_string("/proc/net/route")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .any(|l| l.split_whitespace().nth(1) == Some(want.as_str()))
}

impl Drop for TestNet {
    fn drop(&mut self) {
        // The daemon (dropped before this fixture) normally tore its pods down; deleting the
        // bridge frees any veth a failed test left on it.
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
        let mut del = vec!["-w".to_string(), "-D".to_string()];
        del.extend(self.rule.iter().cloned());
        let _ = Command::new("iptables").args(&del).output();
        drop(self.nat.take());
    }
}

/// Host-wide state portmap and a gateway bridge change and never undo: the top-level
/// `CNI-HOSTPORT-*` nat chains and `net.ipv4.ip_forward`; restored when this test made them.
struct HostNatGuard {
    chains_existed: bool,
    ip_forward: String,
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

fn nat_rules() -> String {
    let out = Command::new("iptables")
        .args(["-w", "-t", "nat", "-S"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl HostNatGuard {
    fn new() -> Self {
        Self {
            chains_existed: nat_rules().contains("-N CNI-HOSTPORT-DNAT"),
            ip_forward: std::fs::read_to_string(IP_FORWARD).unwrap_or_default(),
        }
    }
}

impl Drop for HostNatGuard {
    fn drop(&mut self) {
        if self.ip_forward.trim() == "0" {
            let _ = std::fs::write(IP_FORWARD, "0");
        }
        if self.chains_existed || !nat_rules().contains("-N CNI-HOSTPORT-DNAT") {
            return;
        }
        if nat_rules()
            .lines()
            .any(|l| l.starts_with("-A CNI-HOSTPORT-DNAT "))
        {
            return;
        }
        let local = ["-m", "addrtype", "--dst-type", "LOCAL"];
        let jumps: [(&str, Vec<&str>); 3] = [
            (
                "PREROUTING",
                [&local[..], &["-j", "CNI-HOSTPORT-DNAT"]].concat(),
            ),
            (
                "OUTPUT",
                [&local[..], &["-j", "CNI-HOSTPORT-DNAT"]].concat(),
            ),
            (
                "POSTROUTING",
                vec![
                    "-m",
                    "comment",
                    "--comment",
                    "CNI portfwd requiring masquerade",
                    "-j",
                    "CNI-HOSTPORT-MASQ",
                ],
            ),
        ];
        for (chain, rule) in jumps {
            let mut args = vec!["-w", "-t", "nat", "-D", chain];
            args.extend(rule);
            let _ = Command::new("iptables").args(&args).output();
        }
        for c in [
            "CNI-HOSTPORT-DNAT",
            "CNI-HOSTPORT-MASQ",
            "CNI-HOSTPORT-SETMARK",
        ] {
            let _ = Command::new("iptables")
                .args(["-w", "-t", "nat", "-F", c])
                .output();
            let _ = Command::new("iptables")
                .args(["-w", "-t", "nat", "-X", c])
                .output();
        }
    }
}
