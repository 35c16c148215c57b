//! Property tests of CNI results (#19): what plugins print on ADD, kept in the result cache
//! and read back at every start. Well-formed results of every supported version parse to
//! what they say; anything else never panics and its error names the field at fault.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;

use proptest::prelude::*;
use rootstock_cni::{CniResult, Interface, IpConfig};
use rootstock_testkit::prop::chars;
use serde_json::{Value, json};

const CASES: u32 = 10_000;

/// Arbitrary JSON, its object keys sometimes those of an IP entry.
fn arb_json() -> impl Strategy<Value = Value> {
    rootstock_testkit::prop::json(&["address", "gateway", "interface", "version", "x"])
}

fn interface() -> impl Strategy<Value = Interface> {
    let mac = proptest::option::of(any::<[u8; 6]>()).prop_map(|m| {
        m.map(|m| m.map(|b| format!("{b:02x}")).join(":"))
            .unwrap_or_default()
    });
    let sandbox = proptest::option::of(chars("abcxyz", 1..8))
        .prop_map(|s| s.map(|s| format!("/run/netns/{s}")).unwrap_or_default());
    (chars("ethvbr0123", 1..6), mac, sandbox).prop_map(|(name, mac, sandbox)| Interface {
        name,
        mac,
        sandbox,
    })
}

/// An address with a prefix that fits it, a gateway of the same family, an interface index.
fn ip(interfaces: usize) -> impl Strategy<Value = IpConfig> {
    let v4 = (
        any::<[u8; 4]>(),
        0..=32u8,
        proptest::option::of(any::<[u8; 4]>()),
    )
        .prop_map(|(a, p, g)| (IpAddr::from(a), p, g.map(IpAddr::from)));
    let v6 = (
        any::<[u16; 8]>(),
        0..=128u8,
        proptest::option::of(any::<[u16; 8]>()),
    )
        .prop_map(|(a, p, g)| (IpAddr::from(a), p, g.map(IpAddr::from)));
    (
        prop_oneof![v4, v6],
        proptest::option::of(0..interfaces.max(1)),
    )
        .prop_map(|((address, prefix_len, gateway), interface)| IpConfig {
            address,
            prefix_len,
            gateway,
            interface,
        })
}

fn result() -> impl Strategy<Value = CniResult> {
    let versions = proptest::sample::select(vec!["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]);
    (versions, proptest::collection::vec(interface(), 0..4))
        .prop_flat_map(|(v, interfaces)| {
            let n = interfaces.len();
            (
                Just(v),
                Just(interfaces),
                proptest::collection::vec(ip(n), 0..5),
                proptest::collection::vec(chars("0123456789.", 1..16), 0..3),
                chars("abcz.", 0..12),
            )
        })
        .prop_map(|(v, interfaces, ips, nameservers, domain)| CniResult {
            cni_version: v.to_owned(),
            interfaces,
            ips,
            dns: rootstock_cni::result::Dns {
                nameservers,
                domain,
                ..Default::default()
            },
        })
}

/// The JSON a plugin of the result's version prints for it.
fn plugin_json(r: &CniResult) -> Value {
    let old = r.cni_version.starts_with("0.");
    let ips: Vec<Value> = r
        .ips
        .iter()
        .map(|ip| {
            let mut v = json!({"address": format!("{}/{}", ip.address, ip.prefix_len)});
            if let Some(g) = ip.gateway {
                v["gateway"] = json!(g.to_string());
            }
            if let Some(i) = ip.interface {
                v["interface"] = json!(i);
            }
            if old {
                v["version"] = json!(if ip.address.is_ipv4() { "4" } else { "6" });
            }
            v
        })
        .collect();
    json!({
        "cniVersion": r.cni_version,
        "interfaces": r.interfaces,
        "ips": ips,
        "dns": {"nameservers": r.dns.nameservers, "domain": r.dns.domain},
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// What a plugin prints parses back to what it meant; the pod's IPs are the sandbox's,
    /// IPv4 first, each once.
    #[test]
    fn plugin_results_parse_to_what_they_say(r in result()) {
        let parsed = CniResult::parse(&plugin_json(&r)).unwrap();
        prop_assert_eq!(&parsed, &r);
        let pod_ips = parsed.pod_ips();
        let v6_at = pod_ips.iter().position(IpAddr::is_ipv6).unwrap_or(pod_ips.len());
        prop_assert!(pod_ips[v6_at..].iter().all(IpAddr::is_ipv6));
        for (i, a) in pod_ips.iter().enumerate() {
            prop_assert!(!pod_ips[i + 1..].contains(a), "{a} twice");
            let from_sandbox = r.ips.iter().any(|ip| ip.address == *a && match ip.interface {
                Some(n) => r.interfaces.get(n).is_none_or(|f| !f.sandbox.is_empty()),
                None => true,
            });
            prop_assert!(from_sandbox, "{a} is not a sandbox address");
        }
    }

    /// IP entries, interfaces and DNS replaced by arbitrary JSON: never a panic; an error
    /// names a field, and for an IP entry one that was replaced.
    #[test]
    fn damaged_results_fail_naming_the_field(
        r in result(),
        junk_ips in proptest::collection::vec(proptest::option::of(arb_json()), 0..5),
        junk_interfaces in proptest::option::of(arb_json()),
        junk_dns in proptest::option::of(arb_json()),
        junk_version in proptest::option::of(arb_json()),
        junk_whole in proptest::option::weighted(0.05, arb_json()),
    ) {
        let mut v = plugin_json(&r);
        let mut replaced = Vec::new();
        if let Value::Array(ips) = &mut v["ips"] {
            for (i, junk) in junk_ips.into_iter().enumerate() {
                if let Some(j) = junk {
                    if i < ips.len() { ips[i] = j } else { ips.push(j) }
                    replaced.push(i.min(ips.len() - 1));
                }
            }
        }
        for (key, junk) in [("interfaces", junk_interfaces), ("dns", junk_dns),
            ("cniVersion", junk_version)] {
            if let Some(j) = junk {
                v[key] = j;
            }
        }
        if let Some(j) = junk_whole {
            v = j;
        }
        match CniResult::parse(&v) {
            Ok(parsed) => {
                // Whatever was accepted is consistent: prefixes fit their addresses.
                for ip in &parsed.ips {
                    let max = if ip.address.is_ipv4() { 32 } else { 128 };
                    prop_assert!(ip.prefix_len <= max, "{:?}", ip);
                }
            }
            Err(e) => {
                let named = ["result", "interfaces", "dns", "ips["]
                    .iter()
                    .any(|f| e.starts_with(f));
                prop_assert!(named, "error names no field: {e}");
                if let Some(rest) = e.strip_prefix("ips[") {
                    let i: usize = rest.split(']').next().unwrap().parse().unwrap();
                    prop_assert!(replaced.contains(&i), "ips[{i}] was not damaged: {e}");
                }
            }
        }
    }
}
