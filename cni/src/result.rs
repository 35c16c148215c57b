//! CNI results: parsing 0.3.x/0.4.0 and 1.x ADD results into one shape.
//!
//! The two shapes differ only in details that matter here: 0.3.x/0.4.0 IP entries carry a
//! `"version": "4"|"6"` field that 1.0.0 dropped (the address itself says it). Both list
//! `interfaces` (with `sandbox` set for interfaces inside the container's netns) and `ips`
//! (with `interface` an index into `interfaces`).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One interface of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Interface name (`eth0`, the host-side veth, the bridge...).
    pub name: String,
    /// MAC address, if reported.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// The netns path for interfaces inside the sandbox; empty for host interfaces.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
}

/// One IP assignment of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// The address.
    pub address: IpAddr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// The gateway, if any.
    pub gateway: Option<IpAddr>,
    /// Index into [`CniResult::interfaces`].
    pub interface: Option<usize>,
}

/// DNS settings a plugin returned.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// `nameservers`.
    #[serde(default)]
    pub nameservers: Vec<String>,
    /// `domain`.
    #[serde(default)]
    pub domain: String,
    /// `search`.
    #[serde(default)]
    pub search: Vec<String>,
    /// `options`.
    #[serde(default)]
    pub options: Vec<String>,
}

/// A parsed ADD result (any supported version).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    /// The result's `cniVersion`.
    pub cni_version: String,
    /// `interfaces`.
    pub interfaces: Vec<Interface>,
    /// `ips`.
    pub ips: Vec<IpConfig>,
    /// `dns`.
    pub dns: Dns,
}

impl CniResult {
    /// Parses a result JSON of version 0.3.x, 0.4.0 or 1.x.
    pub fn parse(value: &Value) -> Result<Self, String> {
        let obj = value.as_object().ok_or("result is not a JSON object")?;
        let cni_version = obj
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if cni_version.starts_with("0.1") || cni_version.starts_with("0.2") {
            return Err(format!("result version {cni_version} is not supported"));
        }
        let interfaces = match obj.get("interfaces") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => serde_json::from_value::<Vec<Interface>>(v.clone())
                .map_err(|e| format!("interfaces: {e}"))?,
        };
        let mut ips = Vec::new();
        if let Some(list) = obj.get("ips").and_then(Value::as_array) {
            for (i, ip) in list.iter().enumerate() {
                ips.push(parse_ip(ip).map_err(|e| format!("ips[{i}]: {e}"))?);
            }
        }
        let dns = match obj.get("dns") {
            None | Some(Value::Null) => Dns::default(),
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| format!("dns: {e}"))?,
        };
        Ok(Self {
            cni_version,
            interfaces,
            ips,
            dns,
        })
    }

    /// The pod's addresses: those on interfaces inside the sandbox (or with no interface
    /// index, which 0.3+ plugins may omit), IPv4 first — kubelet takes the first as the
    /// primary pod IP, and a dual-stack pod's primary is IPv4 as in containerd and CRI-O.
    pub fn pod_ips(&self) -> Vec<IpAddr> {
        let mut ips: Vec<IpAddr> = self
            .ips
            .iter()
            .filter(|ip| match ip.interface {
                Some(i) => self
                    .interfaces
                    .get(i)
                    .is_none_or(|iface| !iface.sandbox.is_empty()),
                None => true,
            })
            .map(|ip| ip.address)
            .collect();
        ips.sort_by_key(|ip| ip.is_ipv6());
        ips.dedup();
        ips
    }
}

fn parse_ip(v: &Value) -> Result<IpConfig, String> {
    let address = v
        .get("address")
        .and_then(Value::as_str)
        .ok_or("missing \"address\"")?;
    let (addr, prefix) = address
        .split_once('/')
        .ok_or_else(|| format!("address {address:?} is not in CIDR form"))?;
    let address: IpAddr = addr.parse().map_err(|e| format!("address {addr:?}: {e}"))?;
    let prefix_len: u8 = prefix
        .parse()
        .map_err(|e| format!("prefix of {address:?}: {e}"))?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    if prefix_len > max {
        return Err(format!("prefix /{prefix_len} too long for {address}"));
    }
    // 0.3.x/0.4.0 only: "version" must agree with the address.
    if let Some(ver) = v.get("version").and_then(Value::as_str) {
        let ok = (ver == "4" && address.is_ipv4()) || (ver == "6" && address.is_ipv6());
        if !ok {
            return Err(format!("version {ver:?} does not match address {address}"));
        }
    }
    let gateway = match v.get("gateway").and_then(Value::as_str) {
        Some(g) if !g.is_empty() => Some(g.parse().map_err(|e| format!("gateway {g:?}: {e}"))?),
        _ => None,
    };
    let interface = v
        .get("interface")
        .and_then(Value::as_u64)
        .and_then(|i| usize::try_from(i).ok());
    Ok(IpConfig {
        address,
        prefix_len,
        gateway,
        interface,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_a_1_0_0_dual_stack_result_ipv4_first() {
        let r = CniResult::parse(&json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "rsk0", "mac": "aa:bb:cc:dd:ee:ff"},
                {"name": "veth1", "mac": "aa:bb:cc:dd:ee:00"},
                {"name": "eth0", "mac": "aa:bb:cc:dd:ee:01", "sandbox": "/run/netns/x"}
            ],
            "ips": [
                {"address": "fd00::5/64", "gateway": "fd00::1", "interface": 2},
                {"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 2},
                {"address": "10.9.9.9/24", "interface": 0}
            ],
            "dns": {"nameservers": ["10.1.0.10"]}
        }))
        .unwrap();
        assert_eq!(
            r.pod_ips(),
            vec![
                "10.1.0.5".parse::<IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ]
        );
        assert_eq!(r.ips[0].prefix_len, 64);
        assert_eq!(r.dns.nameservers, vec!["10.1.0.10"]);
    }

    #[test]
    fn parses_a_0_4_0_result_with_versions() {
        let r = CniResult::parse(&json!({
            "cniVersion": "0.4.0",
            "ips": [{"version": "4", "address": "10.1.0.5/24", "gateway": "10.1.0.1"}]
        }))
        .unwrap();
        assert_eq!(r.pod_ips(), vec!["10.1.0.5".parse::<IpAddr>().unwrap()]);
        assert!(
            CniResult::parse(&json!({
                "cniVersion": "0.4.0",
                "ips": [{"version": "6", "address": "10.1.0.5/24"}]
            }))
            .is_err()
        );
        assert!(CniResult::parse(&json!({"cniVersion": "0.2.0", "ip4": {}})).is_err());
        assert!(CniResult::parse(&json!({"ips": [{"address": "10.0.0.1"}]})).is_err());
    }
}
