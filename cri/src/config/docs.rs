//! One line of documentation per configuration key, and the commented TOML that
//! `rootstock config default` prints from it.
//!
//! Adding a key to any section's type means adding its line to [`DOCS`]: the test below
//! walks the serialized default configuration and names every key that has none.
//! `<name>`/`<host>` in a key stand for any map key (a handler name, a registry host).

/// `(dotted key, one-line explanation)`; a section's own line documents its header.
pub const DOCS: &[(&str, &str)] = &[
    (
        "root_dir",
        "Persistent store: image metadata, blobs, file objects, trees, container layers. Not on overlayfs.",
    ),
    (
        "state_dir",
        "Per-boot state: sandboxes, containers, monitor sockets. Written without fsync: a power \
         loss ends the boot it belongs to (tmpfs is fine).",
    ),
    (
        "socket",
        "The CRI endpoint kubelet and crictl connect to (unix socket, mode 0660).",
    ),
    (
        "log_level",
        "tracing filter: info, debug, or per module (rootstock=debug,h2=warn); RUST_LOG wins.",
    ),
    (
        "cgroup_driver",
        "Must match kubelet's cgroupDriver; only \"cgroupfs\" is supported so far.",
    ),
    ("runtime", "OCI runtimes and container creation."),
    (
        "runtime.default_handler",
        "Handler of a pod without a RuntimeClass (kubelet sends an empty handler).",
    ),
    (
        "runtime.handlers",
        "RuntimeClass handler name -> OCI runtime; add [runtime.handlers.<name>] tables.",
    ),
    (
        "runtime.handlers.<name>",
        "One OCI runtime, driven through its command line.",
    ),
    (
        "runtime.handlers.<name>.binary",
        "Path of the runtime binary, or a bare name looked up in PATH.",
    ),
    (
        "runtime.handlers.<name>.sealed_copy",
        "Run the binary from one sealed in-memory copy (costs its size once; pays for crun, \
         which otherwise copies itself on every call). Default false; true for the built-in crun.",
    ),
    (
        "runtime.monitor_binary",
        "rootstock-monitor binary; empty means the one next to the rootstock binary.",
    ),
    (
        "runtime.create_timeout_secs",
        "How long CreateContainer waits for the runtime's `create` to report.",
    ),
    (
        "runtime.cdi_spec_dirs",
        "CDI spec directories (JSON/YAML), lowest priority first.",
    ),
    (
        "runtime.userns_kubelet_ranges_only",
        "User-namespaced pods: only kubelet's id ranges (host ids >= 65536, length a multiple of 65536); false takes any one range mapping id 0 to a non-root host id (critest needs false).",
    ),
    ("images", "The image store and registries."),
    (
        "images.registries",
        "Per-registry settings; add [images.registries.\"<host>\"] tables (host[:port] as in image names).",
    ),
    (
        "images.registries.<host>",
        "Settings for one registry or mirror host.",
    ),
    (
        "images.registries.<host>.mirrors",
        "Mirrors tried in order before the registry (host[:port] or http(s)://host[:port]).",
    ),
    (
        "images.registries.<host>.insecure",
        "Talk plain HTTP to this host, never TLS (trusted networks only).",
    ),
    (
        "images.registries.<host>.ca_files",
        "PEM files of extra CAs trusted for this host, besides the system roots.",
    ),
    (
        "images.registries.<host>.username",
        "User name for this host (with password), unless the pull brings credentials.",
    ),
    (
        "images.registries.<host>.password",
        "Password for username.",
    ),
    (
        "images.registries.<host>.auth",
        "base64(username:password) as in Docker's config.json; instead of username/password.",
    ),
    (
        "images.keep_layer_blobs",
        "Keep compressed layer blobs besides the unpacked trees (store repair can then work offline).",
    ),
    (
        "images.allow_device_nodes",
        "Create device nodes layers carry (skipped by default; the runtime mounts its own /dev).",
    ),
    (
        "images.max_image_bytes",
        "Uncompressed bytes one image may unpack (sparse holes included); a pull past it fails.",
    ),
    (
        "images.max_image_entries",
        "Tar entries one image may have, all its layers together.",
    ),
    (
        "images.max_path_depth",
        "Path components one layer entry may have.",
    ),
    (
        "images.request_timeout_secs",
        "Deadline of each registry request other than a blob body (manifests, tokens), seconds.",
    ),
    (
        "images.blob_min_bytes_per_sec",
        "A blob download slower than this over blob_stall_secs is abandoned as stalled.",
    ),
    (
        "images.blob_stall_secs",
        "Window in seconds over which blob_min_bytes_per_sec is measured.",
    ),
    ("cni", "Pod networking through CNI plugins."),
    (
        "cni.conf_dirs",
        "Network config directories in priority order; the first valid file (lexical order) is used.",
    ),
    (
        "cni.bin_dirs",
        "Plugin binary directories, in order (also CNI_PATH).",
    ),
    (
        "cni.cache_dir",
        "Results of ADD kept for DEL; must survive reboots. Unset: <root_dir>/cni/cache.",
    ),
    (
        "cni.plugin_timeout_secs",
        "Timeout of one plugin run; its process group is killed when it expires.",
    ),
    (
        "cni.default_network",
        "Built-in bridge network (rootstock0, 10.88.0.0/16) when no config exists; standalone only.",
    ),
    (
        "cni.poll_interval_ms",
        "How often the conf dirs are re-read for a config written after start-up.",
    ),
    (
        "streaming",
        "The server behind Exec and PortForward URLs (kubelet proxies kubectl to it).",
    ),
    (
        "streaming.address",
        "IP it listens on; loopback keeps it reachable only from this node (kubelet).",
    ),
    ("streaming.port", "TCP port; 0 picks a free one at start."),
    (
        "streaming.enable_tls",
        "Serve HTTPS (https:// URLs); without the files below, a self-signed certificate is made at start.",
    ),
    (
        "streaming.tls_cert_file",
        "PEM certificate (leaf first, then its chain) for enable_tls; with tls_key_file or neither.",
    ),
    (
        "streaming.tls_key_file",
        "PEM private key (PKCS#8, PKCS#1 or SEC1) of tls_cert_file.",
    ),
    (
        "streaming.token_ttl_secs",
        "How long an Exec/PortForward URL stays valid; each is good for one connection.",
    ),
    (
        "streaming.idle_timeout_secs",
        "A stream with no data either way for this long is closed (its command killed).",
    ),
    (
        "streaming.session_timeout_secs",
        "Any stream session is closed this long after it started, busy or not; 0: no limit.",
    ),
    (
        "metrics",
        "Prometheus endpoint and the CRI pod metrics (ListPodSandboxMetrics).",
    ),
    (
        "metrics.address",
        "host:port serving Prometheus text at GET /metrics (e.g. 127.0.0.1:1338); empty: off.",
    ),
    (
        "metrics.included_pod_metrics",
        "Families ListPodSandboxMetrics returns: cpu, memory, network, oom, process, disk.",
    ),
    (
        "events",
        "GetContainerEvents (kubelet's evented PLEG, crictl events).",
    ),
    (
        "events.subscriber_buffer",
        "Events queued per subscriber; one that falls this far behind is dropped (it relists).",
    ),
];

/// The documentation of a dotted key path (map keys already split out), if any.
pub fn doc_of(path: &[String]) -> Option<&'static str> {
    DOCS.iter()
        .find(|(key, _)| matches(key, path))
        .map(|&(_, doc)| doc)
}

/// Does the DOCS key `pattern` name `path`? `<…>` segments match any one segment.
fn matches(pattern: &str, path: &[String]) -> bool {
    let segments: Vec<&str> = pattern.split('.').collect();
    segments.len() == path.len()
        && segments
            .iter()
            .zip(path)
            .all(|(s, p)| (s.starts_with('<') && s.ends_with('>')) || s == p)
}

/// Splits a TOML dotted key (`images.registries."127.0.0.1:5000"`) into its parts.
fn split_dotted(key: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in key.chars() {
        match c {
            '"' => quoted = !quoted,
            '.' if !quoted => parts.push(std::mem::take(&mut current)),
            c if c.is_whitespace() && !quoted => {}
            c => current.push(c),
        }
    }
    parts.push(current);
    parts
}

/// `text` (pretty TOML of a configuration) with each key's and section's documentation as a
/// comment above it, then the documented keys that have no value in `text` (optional keys,
/// map entries), commented out.
pub fn annotate(text: &str) -> String {
    let mut out = String::from(
        "# rootstock configuration (/etc/rootstock/config.toml). Every key is optional: the\n\
         # values below are the defaults. An unknown key or a wrong type stops start-up.\n\n",
    );
    let mut table: Vec<String> = Vec::new();
    let mut seen: Vec<Vec<String>> = Vec::new();
    for line in text.lines() {
        let path = if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            table = split_dotted(header);
            // `[runtime.handlers.runc]` is also the first sight of `runtime.handlers`, which
            // has no header of its own: its line goes first.
            for n in 1..table.len() {
                let parent = table[..n].to_vec();
                if !seen.contains(&parent) {
                    if let Some(doc) = doc_of(&parent) {
                        out.push_str(&format!("# {doc}\n"));
                    }
                    seen.push(parent);
                }
            }
            Some(table.clone())
        } else if !line.starts_with(char::is_whitespace)
            && let Some((key, _)) = line.split_once(" = ")
        {
            let mut path = table.clone();
            path.extend(split_dotted(key));
            Some(path)
        } else {
            None
        };
        if let Some(path) = path {
            let doc = doc_of(&path).unwrap_or("(undocumented)");
            out.push_str(&format!("# {doc}\n"));
            seen.push(path);
        }
        out.push_str(line);
        out.push('\n');
    }
    let unset: Vec<_> = DOCS
        .iter()
        .filter(|(key, _)| !seen.iter().any(|path| matches(key, path)))
        .collect();
    if !unset.is_empty() {
        out.push_str("\n# Keys without a default value (unset unless given):\n");
        for (key, doc) in unset {
            out.push_str(&format!("#   {key}: {doc}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::config::Config;

    /// Every leaf key of the value, as dotted paths.
    fn leaves(value: &toml::Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        match value {
            toml::Value::Table(t) if !t.is_empty() => {
                for (k, v) in t {
                    path.push(k.clone());
                    leaves(v, path, out);
                    path.pop();
                }
            }
            _ => out.push(path.clone()),
        }
    }

    fn assert_documented(keys: &[Vec<String>]) {
        let missing: Vec<String> = keys
            .iter()
            .filter(|k| doc_of(k).is_none())
            .map(|k| k.join("."))
            .collect();
        assert!(
            missing.is_empty(),
            "keys without a line in cri/src/config/docs.rs DOCS: {missing:?}"
        );
    }

    #[test]
    fn every_key_of_the_default_config_is_documented() {
        let value = toml::Value::try_from(Config::default()).unwrap();
        let mut keys = Vec::new();
        leaves(&value, &mut Vec::new(), &mut keys);
        assert!(keys.len() > 10, "{keys:?}");
        assert_documented(&keys);
    }

    /// Every leaf key the configuration *types* have (also optional keys and the fields of
    /// map entries, which the default leaves out), `<key>` standing for a map key.
    fn typed_keys() -> Vec<Vec<String>> {
        use serde_reflection::{ContainerFormat, Format, Registry, Tracer, TracerConfig};
        fn walk(reg: &Registry, f: &Format, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
            match f {
                Format::TypeName(name) => match reg.get(name) {
                    Some(ContainerFormat::Struct(fields)) => {
                        for field in fields {
                            path.push(field.name.clone());
                            walk(reg, &field.value, path, out);
                            path.pop();
                        }
                    }
                    _ => out.push(path.clone()), // an enum: one value
                },
                Format::Option(inner) => walk(reg, inner, path, out),
                Format::Map { value, .. } => {
                    path.push("<key>".to_owned());
                    walk(reg, value, path, out);
                    path.pop();
                }
                _ => out.push(path.clone()),
            }
        }
        let mut tracer = Tracer::new(TracerConfig::default());
        // Nested enums are traced on their own, so that every variant is seen.
        tracer
            .trace_simple_type::<crate::config::CgroupDriver>()
            .unwrap();
        tracer.trace_simple_type::<std::net::IpAddr>().unwrap();
        tracer
            .trace_simple_type::<crate::metrics::PodMetricFamily>()
            .unwrap();
        tracer.trace_simple_type::<Config>().unwrap();
        let reg = tracer.registry().unwrap();
        let mut out = Vec::new();
        walk(
            &reg,
            &Format::TypeName("Config".into()),
            &mut Vec::new(),
            &mut out,
        );
        out
    }

    #[test]
    fn every_key_the_types_have_is_documented() {
        let keys = typed_keys();
        assert!(
            keys.iter()
                .any(|k| k.join(".") == "images.registries.<key>.password"),
            "{keys:?}"
        );
        assert_documented(&keys);
    }

    #[test]
    fn commented_default_names_every_key_and_parses_back() {
        let text = Config::default().to_commented_toml().unwrap();
        assert!(!text.contains("(undocumented)"), "{text}");
        for (key, doc) in DOCS {
            assert!(text.contains(doc), "the line of {key} is not in:\n{text}");
        }
        let parsed = Config::parse(&text, std::path::Path::new("default.toml")).unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn quoted_keys_split_on_unquoted_dots_only() {
        assert_eq!(
            split_dotted("images.registries.\"127.0.0.1:5000\""),
            ["images", "registries", "127.0.0.1:5000"]
        );
    }
}
