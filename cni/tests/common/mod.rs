//! Test fixture: one private CNI network per test — its own conf, cache, IPAM data and bin
//! dirs, network name, bridge and /24 inside 10.199.0.0/16, and a FORWARD rule that drops
//! traffic from that /24 to anything outside it. Everything is undone in `Drop`, also on
//! panic. Tests hold a file lock for their whole run because they share iptables.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use rootstock_cni::{CniConfig, CniManager, PodNetwork, netns};
use serde_json::{Value, json};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// True when the tests can run (they need root for namespaces, bridges and iptables).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

pub const SYSTEM_PLUGINS: &str = "/usr/lib/cni";

pub struct TestNet {
    pub dir: tempfile::TempDir,
    pub name: String,
    pub bridge: String,
    /// e.g. "10.199.37" — the /24 is `<prefix>.0/24`.
    pub prefix: String,
    pub conf_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub data_dir: PathBuf,
    pub bin_dir: PathBuf,
    namespaces: Mutex<Vec<PathBuf>>,
    rule: Vec<String>,
    host_guard: Option<HostNatGuard>,
    _lock: nix::fcntl::Flock<File>,
}

fn run(cmd: &str, args: &[&str]) -> std::process::Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} {args:?}: {e}"))
}

impl TestNet {
    pub fn new(tag: &str) -> Self {
        let lock_file = File::create("/run/lock/rootstock-cni-tests.lock").unwrap();
        let lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .unwrap();
        let pid = std::process::id();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let octet = (pid.wrapping_mul(7) + n) % 250 + 2;
        let bridge = format!("rsk{}{}", pid % 1000, n);
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
            name: format!("rsktest-{tag}-{pid}-{n}"),
            bridge,
            prefix,
            conf_dir: mk("net.d"),
            cache_dir: mk("cache"),
            data_dir: mk("ipam"),
            bin_dir: mk("bin"),
            namespaces: Mutex::new(Vec::new()),
            rule,
            host_guard: None,
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

    /// bridge + host-local on the test's /24, then `extra` plugins.
    pub fn conflist(&self, is_gateway: bool, extra: Vec<Value>) -> Value {
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

    pub fn write_conflist(&self, file: &str, v: &Value) {
        let tmp = self.conf_dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(v).unwrap()).unwrap();
        std::fs::rename(tmp, self.conf_dir.join(file)).unwrap();
    }

    pub fn config(&self) -> CniConfig {
        CniConfig {
            conf_dirs: vec![self.conf_dir.clone()],
            bin_dirs: vec![self.bin_dir.clone(), PathBuf::from(SYSTEM_PLUGINS)],
            cache_dir: Some(self.cache_dir.clone()),
            plugin_timeout_secs: 20,
            default_network: false,
            poll_interval_ms: 200,
        }
    }

    pub fn manager(&self) -> CniManager {
        CniManager::new(self.config(), self.dir.path())
    }

    /// Writes an executable script plugin into the test's own bin dir.
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

    /// Creates a pinned netns owned by this fixture.
    pub async fn netns(&self, tag: &str) -> PathBuf {
        let p = self.dir.path().join(format!("ns-{tag}"));
        netns::create_netns(&p).await.unwrap();
        self.namespaces.lock().unwrap().push(p.clone());
        p
    }

    pub fn pod(&self, id: &str, netns: &Path) -> PodNetwork {
        PodNetwork {
            sandbox_id: id.to_string(),
            netns_path: netns.to_path_buf(),
            pod_name: format!("pod-{id}"),
            pod_namespace: "rsk-test".into(),
            pod_uid: format!("uid-{id}"),
            port_mappings: Vec::new(),
            bandwidth: None,
            dns: None,
        }
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

    /// Interfaces enslaved to the test bridge.
    pub fn bridge_ports(&self) -> Vec<String> {
        let out = run("ip", &["-o", "link", "show", "master", &self.bridge]);
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

    /// Restore portmap's host-wide nat chains and ip_forward when the test is over.
    pub fn guard_host_nat(&mut self) {
        self.host_guard = Some(HostNatGuard::new());
    }

    /// Removes one of the fixture's namespaces early (as if the sandbox's netns vanished).
    pub fn drop_netns(&self, p: &Path) {
        netns::remove_netns_blocking(p).unwrap();
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        // A test that panicked may have left attachments: DEL them from the cache (this also
        // removes portmap's per-pod rules). Own thread and runtime: we may be inside a
        // runtime's `block_on` here.
        let config = self.config();
        let root = self.dir.path().to_path_buf();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let m = CniManager::new(config, &root);
                for id in m.attached_sandbox_ids().await.unwrap_or_default() {
                    let _ = m.teardown(&id).await;
                }
            });
        })
        .join();
        for ns in self
            .namespaces
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
        {
            let _ = netns::remove_netns_blocking(&ns);
        }
        // Deleting the bridge also frees any veth left on it.
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
        let mut del = vec!["-w".to_string(), "-D".to_string()];
        del.extend(self.rule.iter().cloned());
        let _ = Command::new("iptables").args(&del).output();
        drop(self.host_guard.take());
    }
}

/// `ip -o -4 addr show dev <ifname>` inside a netns, parsed into addresses.
pub fn addrs_in(netns: &Path, ifname: &str) -> Vec<String> {
    let out = run(
        "nsenter",
        &[
            &format!("--net={}", netns.display()),
            "ip",
            "-o",
            "addr",
            "show",
            "dev",
            ifname,
        ],
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            it.position(|w| w == "inet" || w == "inet6")?;
            it.next()
                .map(|a| a.split('/').next().unwrap_or("").to_string())
        })
        // Link-local addresses come with every interface; only assigned ones matter.
        .filter(|a| !a.starts_with("fe80:"))
        .collect()
}

/// Whether `ifname` is up inside a netns.
pub fn link_is_up(netns: &Path, ifname: &str) -> bool {
    let out = run(
        "nsenter",
        &[
            &format!("--net={}", netns.display()),
            "ip",
            "-o",
            "link",
            "show",
            "dev",
            ifname,
        ],
    );
    let s = String::from_utf8_lossy(&out.stdout);
    s.contains(",UP") || s.contains("<UP")
}

pub fn host_link_exists(name: &str) -> bool {
    run("ip", &["link", "show", "dev", name]).status.success()
}

/// One ping from inside `netns` to `ip`.
pub fn ping_from(netns: &Path, ip: &str) -> bool {
    run(
        "nsenter",
        &[
            &format!("--net={}", netns.display()),
            "busybox",
            "ping",
            "-c1",
            "-W2",
            ip,
        ],
    )
    .status
    .success()
}

/// Host-wide state the portmap plugin and a gateway bridge change and never undo: the
/// top-level `CNI-HOSTPORT-*` nat chains (shared by all portmap users, so only removed when
/// they did not exist before and are empty again) and `net.ipv4.ip_forward` (the bridge
/// plugin turns it on for `isGateway`). Restored on drop when this test introduced them.
pub struct HostNatGuard {
    chains_existed: bool,
    ip_forward: String,
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
const PORTMAP_CHAINS: [&str; 3] = [
    "CNI-HOSTPORT-DNAT",
    "CNI-HOSTPORT-MASQ",
    "CNI-HOSTPORT-SETMARK",
];

fn nat_rules() -> String {
    let out = run("iptables", &["-w", "-t", "nat", "-S"]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl HostNatGuard {
    pub fn new() -> Self {
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
        if self.chains_existed {
            return;
        }
        let rules = nat_rules();
        // Only the masquerade and mark rules portmap installs itself may remain in them.
        let busy = rules
            .lines()
            .any(|l| l.starts_with("-A CNI-HOSTPORT-DNAT "));
        if busy {
            return;
        }
        for (chain, jump_args) in [
            (
                "PREROUTING",
                vec![
                    "-m",
                    "addrtype",
                    "--dst-type",
                    "LOCAL",
                    "-j",
                    "CNI-HOSTPORT-DNAT",
                ],
            ),
            (
                "OUTPUT",
                vec![
                    "-m",
                    "addrtype",
                    "--dst-type",
                    "LOCAL",
                    "-j",
                    "CNI-HOSTPORT-DNAT",
                ],
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
        ] {
            let mut args = vec!["-w", "-t", "nat", "-D", chain];
            args.extend(jump_args);
            let _ = Command::new("iptables").args(&args).output();
        }
        for c in PORTMAP_CHAINS {
            let _ = Command::new("iptables")
                .args(["-w", "-t", "nat", "-F", c])
                .output();
            let _ = Command::new("iptables")
                .args(["-w", "-t", "nat", "-X", c])
                .output();
        }
    }
}
