//! What a plugin is given: `CNI_ARGS`, the capability arguments and its stdin config.

use serde_json::{Map, Value, json};

use super::PodNetwork;
use crate::conflist::{self, NetworkConfigList};
use crate::error::{CniError, Result};

/// `CNI_ARGS`: `IgnoreUnknown=1` first, or host-local rejects the K8S_* keys it does not know
/// (containernetworking `pkg/types/args.go`).
pub(super) fn cni_args(pod: &PodNetwork) -> String {
    format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
        pod.pod_namespace, pod.pod_name, pod.sandbox_id, pod.pod_uid
    )
}

/// The capability arguments in the well-known `runtimeConfig` shapes (CNI
/// `CONVENTIONS.md`). Mappings without a host port are not port mappings (containerd and
/// CRI-O drop them too).
pub(super) fn capability_args(pod: &PodNetwork) -> Map<String, Value> {
    let mut m = Map::new();
    let ports: Vec<Value> = pod
        .port_mappings
        .iter()
        .filter(|p| p.host_port != 0)
        .map(|p| {
            let mut v = json!({
                "hostPort": p.host_port,
                "containerPort": p.container_port,
                "protocol": p.protocol,
            });
            if !p.host_ip.is_empty()
                && let Some(o) = v.as_object_mut()
            {
                o.insert("hostIP".into(), Value::String(p.host_ip.clone()));
            }
            v
        })
        .collect();
    if !ports.is_empty() {
        m.insert("portMappings".into(), Value::Array(ports));
    }
    if let Some(b) = &pod.bandwidth {
        m.insert(
            "bandwidth".into(),
            json!({
                "ingressRate": b.ingress_rate,
                "ingressBurst": b.ingress_burst,
                "egressRate": b.egress_rate,
                "egressBurst": b.egress_burst,
            }),
        );
    }
    if let Some(d) = &pod.dns {
        m.insert(
            "dns".into(),
            json!({ "servers": d.servers, "searches": d.searches, "options": d.options }),
        );
    }
    m
}

/// A plugin's stdin (CNI spec, "Deriving execution configuration from plugin
/// configuration"): its own object plus the list's `name` and `cniVersion`, `prevResult`, and
/// `runtimeConfig` with only the capabilities it declares.
pub(super) fn plugin_stdin(
    network: &NetworkConfigList,
    plugin: &conflist::PluginConfig,
    prev: Option<&Value>,
    caps: &Map<String, Value>,
) -> Result<Vec<u8>> {
    let mut conf = plugin.conf.clone();
    conf.insert("name".into(), Value::String(network.name.clone()));
    conf.insert(
        "cniVersion".into(),
        Value::String(network.cni_version.clone()),
    );
    match prev {
        Some(p) => {
            conf.insert("prevResult".into(), p.clone());
        }
        None => {
            conf.remove("prevResult");
        }
    }
    let mut rc = Map::new();
    for cap in plugin.capabilities() {
        if let Some(v) = caps.get(&cap) {
            rc.insert(cap, v.clone());
        }
    }
    if !rc.is_empty() {
        conf.insert("runtimeConfig".into(), Value::Object(rc));
    }
    serde_json::to_vec(&conf).map_err(|e| CniError::InvalidConfig {
        path: network.source.clone(),
        reason: format!("serialize config of plugin {}: {e}", plugin.plugin_type),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::manager::{DnsConfig, PortMapping, Protocol};

    fn pod() -> PodNetwork {
        PodNetwork {
            sandbox_id: "sb1".into(),
            netns_path: "/run/x".into(),
            pod_name: "web".into(),
            pod_namespace: "default".into(),
            pod_uid: "uid-1".into(),
            port_mappings: vec![
                PortMapping {
                    protocol: Protocol::Tcp,
                    container_port: 80,
                    host_port: 8080,
                    host_ip: "127.0.0.1".into(),
                },
                PortMapping {
                    protocol: Protocol::Udp,
                    container_port: 53,
                    host_port: 0,
                    host_ip: String::new(),
                },
            ],
            bandwidth: None,
            dns: Some(DnsConfig {
                servers: vec!["10.0.0.10".into()],
                ..Default::default()
            }),
        }
    }

    #[test]
    fn cni_args_start_with_ignore_unknown() {
        assert_eq!(
            cni_args(&pod()),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=sb1;K8S_POD_UID=uid-1"
        );
    }

    #[test]
    fn plugins_get_name_version_prev_result_and_only_declared_capabilities() {
        let n = NetworkConfigList::builtin_default().unwrap();
        let caps = capability_args(&pod());
        let prev = json!({"cniVersion": "1.0.0", "ips": []});
        let bridge: Value =
            serde_json::from_slice(&plugin_stdin(&n, &n.plugins[0], None, &caps).unwrap()).unwrap();
        assert_eq!(bridge["name"], "rootstock");
        assert_eq!(bridge["cniVersion"], "1.0.0");
        assert!(bridge.get("runtimeConfig").is_none());
        assert!(bridge.get("prevResult").is_none());
        let portmap: Value =
            serde_json::from_slice(&plugin_stdin(&n, &n.plugins[1], Some(&prev), &caps).unwrap())
                .unwrap();
        assert_eq!(portmap["prevResult"], prev);
        assert_eq!(
            portmap["runtimeConfig"],
            json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"}]})
        );
    }
}
