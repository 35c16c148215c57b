//! Test fixture: one private CNI network per test — the shared [`Net`] of `rootstock-testkit`
//! (its own conf, cache, IPAM data and bin dirs, network name, bridge and /24, a FORWARD rule
//! that keeps the /24 from leaving, the host's nat chains restored, and the lock that
//! serialises every test touching iptables) plus what the cni crate's tests need on top: a
//! [`CniManager`] on those dirs and pinned network namespaces. Everything is undone in `Drop`,
//! also on panic.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use rootstock_cni::{CniConfig, CniManager, PodNetwork};
use rootstock_testkit::netns;
pub use rootstock_testkit::network::SYSTEM_PLUGINS;
use rootstock_testkit::network::TestNet as Net;

/// True when the tests can run (they need root for namespaces, bridges and iptables).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

pub struct TestNet {
    net: Net,
    namespaces: Mutex<Vec<PathBuf>>,
}

impl Deref for TestNet {
    type Target = Net;
    fn deref(&self) -> &Net {
        &self.net
    }
}

fn run(cmd: &str, args: &[&str]) -> std::process::Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} {args:?}: {e}"))
}

impl TestNet {
    pub fn new(tag: &str) -> Self {
        Self {
            net: Net::new(tag),
            namespaces: Mutex::new(Vec::new()),
        }
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

    /// Creates a pinned netns owned by this fixture.
    pub async fn netns(&self, tag: &str) -> PathBuf {
        let p = self.dir.path().join(format!("ns-{tag}"));
        netns::create_netns(&p).unwrap();
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

    /// Removes one of the fixture's namespaces early (as if the sandbox's netns vanished).
    pub fn drop_netns(&self, p: &Path) {
        netns::remove_netns(p).unwrap();
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
            let _ = netns::remove_netns(&ns);
        }
        // `net` goes next: the bridge (and any veth left on it), the FORWARD rule, the lock.
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
