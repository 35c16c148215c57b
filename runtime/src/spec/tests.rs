//! Unit tests of the spec builder, through `build` where the families meet.

use super::security::capabilities;
use super::*;
use oci_spec::runtime::Capability;

/// A node that cannot lower `oom_score_adj`, with every capability, no AppArmor, cgroup v1.
fn host() -> HostFacts {
    HostFacts {
        oom_score_adj: 0,
        can_lower_oom_score_adj: false,
        capability_bounding: u64::MAX,
        apparmor: false,
        cgroup_v2: false,
    }
}

fn base() -> ContainerSpec {
    ContainerSpec {
        image: ImageConfig {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["serve".into()],
            env: vec!["PATH=/bin".into(), "A=image".into(), "B=image".into()],
            working_dir: "/srv".into(),
            user: String::new(),
        },
        cgroup_parent: "/kubepods/pod1".into(),
        ..Default::default()
    }
}

#[test]
fn args_follow_cri_override_rules() {
    let mut s = base();
    assert_eq!(process_args(&s), ["/entry", "serve"]);
    s.args = vec!["x".into()];
    assert_eq!(process_args(&s), ["/entry", "x"]);
    s.command = vec!["/bin/sh".into()];
    s.args = vec![];
    assert_eq!(process_args(&s), ["/bin/sh"]);
    s.args = vec!["-c".into(), "true".into()];
    assert_eq!(process_args(&s), ["/bin/sh", "-c", "true"]);
}

#[test]
fn cri_env_wins_and_hostname_is_set() {
    let mut s = base();
    s.env = vec![("B".into(), "cri".into()), ("C".into(), "cri".into())];
    s.hostname = Some("pod-a".into());
    assert_eq!(
        process_env(&s),
        ["PATH=/bin", "A=image", "B=cri", "HOSTNAME=pod-a", "C=cri"]
    );
    s.image.env.clear();
    assert!(process_env(&s)[0].starts_with("PATH=/usr/local/sbin"));
}

#[test]
fn spec_has_paths_namespaces_and_clamped_oom() {
    let mut s = base();
    s.namespaces.network = NamespaceMode::Path("/run/ns/net".into());
    s.namespaces.uts = NamespaceMode::Host;
    s.namespaces.pid = PidMode::Host;
    s.hostname = Some("h".into());
    s.resources.oom_score_adj = Some(-997);
    s.mounts.push(BindMount {
        container_path: "/data/sub".into(),
        host_path: "/x".into(),
        readonly: true,
        propagation: Propagation::HostToContainer,
        recursive_readonly: false,
        idmapped: false,
    });
    s.mounts.push(BindMount {
        container_path: "/data".into(),
        host_path: "/y".into(),
        readonly: false,
        propagation: Propagation::Private,
        recursive_readonly: false,
        idmapped: false,
    });
    s.sandbox_mounts.push(BindMount {
        container_path: "/dev/shm".into(),
        host_path: "/run/shm".into(),
        readonly: false,
        propagation: Propagation::Private,
        recursive_readonly: false,
        idmapped: false,
    });
    let id = ContainerId::new("c1").unwrap();
    let host = host();
    let dir = tempfile::tempdir().unwrap();
    let b = build(&id, &s, dir.path(), &host).unwrap();
    assert_eq!(b.cgroup_path, "/kubepods/pod1/c1");
    assert_eq!(b.oom_score_adj_clamped, Some((-997, 0)));
    let json = serde_json::to_value(&b.spec).unwrap();
    assert_eq!(json["process"]["oomScoreAdj"], 0);
    assert!(json.get("hostname").is_none());
    let ns = json["linux"]["namespaces"].as_array().unwrap();
    let types: Vec<&str> = ns.iter().map(|n| n["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["mount", "network", "ipc"]);
    assert_eq!(ns[1]["path"], "/run/ns/net");
    assert_eq!(json["linux"]["rootfsPropagation"], "rslave");
    let dests: Vec<&str> = json["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["destination"].as_str().unwrap())
        .collect();
    let data = dests.iter().position(|d| *d == "/data").unwrap();
    let sub = dests.iter().position(|d| *d == "/data/sub").unwrap();
    assert!(data < sub);
    assert_eq!(dests.iter().filter(|d| **d == "/dev/shm").count(), 1);
    assert_eq!(json["root"]["readonly"], false);
    assert_eq!(json["process"]["cwd"], "/srv");
}

#[test]
fn capabilities_add_and_drop() {
    let sc = SecurityContext {
        drop_capabilities: vec!["ALL".into()],
        add_capabilities: vec!["CAP_NET_ADMIN".into(), "kill".into()],
        ..Default::default()
    };
    let host = host();
    let caps = capabilities(&sc, &host).unwrap();
    let b = caps.bounding().clone().unwrap();
    assert_eq!(b.len(), 2);
    assert!(b.contains(&Capability::NetAdmin));
    assert!(
        capabilities(
            &SecurityContext {
                add_capabilities: vec!["NOPE".into()],
                ..Default::default()
            },
            &host
        )
        .is_err()
    );
}

#[test]
fn privileged_gets_bounded_caps_devices_rw_sysfs_and_no_masked_paths() {
    let mut s = base();
    s.security.privileged = true;
    s.security.masked_paths = Some(vec!["/proc/kcore".into()]);
    let id = ContainerId::new("c1").unwrap();
    // No CAP_SYS_RESOURCE (24) in the daemon's bounding set, as on these nodes.
    let host = HostFacts {
        capability_bounding: ((1u64 << 41) - 1) & !(1 << 24),
        ..host()
    };
    let dir = tempfile::tempdir().unwrap();
    let json = serde_json::to_value(build(&id, &s, dir.path(), &host).unwrap().spec).unwrap();
    let bnd = json["process"]["capabilities"]["bounding"]
        .as_array()
        .unwrap();
    assert_eq!(bnd.len(), 40);
    assert!(!bnd.iter().any(|c| c == "CAP_SYS_RESOURCE"));
    assert!(bnd.iter().any(|c| c == "CAP_SYS_ADMIN"));
    assert_eq!(json["linux"]["maskedPaths"].as_array().unwrap().len(), 0);
    assert_eq!(json["linux"]["readonlyPaths"].as_array().unwrap().len(), 0);
    let devices = json["linux"]["resources"]["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0]["allow"], true);
    let sys = json["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["destination"] == "/sys")
        .unwrap();
    let opts: Vec<&str> = sys["options"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_str().unwrap())
        .collect();
    assert!(opts.contains(&"rw") && !opts.contains(&"ro"), "{opts:?}");
}

#[test]
fn localhost_seccomp_is_loaded_and_privileged_or_default_get_none() {
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("deny-mkdir.json");
    // Docker's format: `archMap` is Docker-only and ignored.
    std::fs::write(
        &profile,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","archMap":[],
            "syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#,
    )
    .unwrap();
    let id = ContainerId::new("c1").unwrap();
    let host = host();
    let mut s = base();
    s.security.seccomp = SeccompProfile::Localhost(profile.clone());
    let b = build(&id, &s, dir.path(), &host).unwrap();
    let json = serde_json::to_value(&b.spec).unwrap();
    assert_eq!(json["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ALLOW");
    assert_eq!(
        json["linux"]["seccomp"]["syscalls"][0]["names"][1],
        "mkdirat"
    );
    assert_eq!(json["linux"]["seccomp"]["syscalls"][0]["errnoRet"], 1);

    s.security.privileged = true;
    let json = serde_json::to_value(build(&id, &s, dir.path(), &host).unwrap().spec).unwrap();
    assert!(json["linux"].get("seccomp").is_none());
    s.security.privileged = false;

    s.security.seccomp = SeccompProfile::RuntimeDefault;
    let b = build(&id, &s, dir.path(), &host).unwrap();
    assert!(b.runtime_default_skipped.is_empty());
    let json = serde_json::to_value(&b.spec).unwrap();
    assert_eq!(json["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
    s.security.privileged = true;
    let json = serde_json::to_value(build(&id, &s, dir.path(), &host).unwrap().spec).unwrap();
    assert!(
        json["linux"].get("seccomp").is_none(),
        "privileged: unconfined"
    );
    s.security.privileged = false;

    for bad in [
        dir.path().join("missing.json"),
        PathBuf::from("relative.json"),
    ] {
        s.security.seccomp = SeccompProfile::Localhost(bad);
        let err = build(&id, &s, dir.path(), &host).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument, "{err}");
    }
    std::fs::write(&profile, "{\"defaultAction\": 3}").unwrap();
    s.security.seccomp = SeccompProfile::Localhost(profile);
    let err = build(&id, &s, dir.path(), &host).unwrap_err();
    assert!(err.to_string().contains("not a seccomp profile"), "{err}");
}

#[test]
fn apparmor_without_apparmor_fails_unless_unconfined_and_unified_passes_through() {
    let id = ContainerId::new("c1").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut host = host();
    let mut s = base();
    s.security.apparmor = AppArmorProfile::Localhost("my-profile".into());
    let err = build(&id, &s, dir.path(), &host).unwrap_err();
    assert!(
        err.to_string().contains("apparmor is not supported"),
        "{err}"
    );
    s.security.apparmor = AppArmorProfile::RuntimeDefault;
    assert!(build(&id, &s, dir.path(), &host).is_err());
    s.security.apparmor = AppArmorProfile::Unconfined;
    assert!(build(&id, &s, dir.path(), &host).is_ok());

    host.apparmor = true;
    s.security.apparmor = AppArmorProfile::Localhost("my-profile".into());
    s.resources.memory_limit_bytes = Some(1 << 30);
    s.resources.memory_swap_limit_bytes = Some(2 << 30);
    s.resources.unified = [("memory.high".to_owned(), "1000".to_owned())].into();
    let json = serde_json::to_value(build(&id, &s, dir.path(), &host).unwrap().spec).unwrap();
    assert_eq!(json["process"]["apparmorProfile"], "my-profile");
    let r = &json["linux"]["resources"];
    assert_eq!(r["unified"]["memory.high"], "1000");
    assert_eq!(r["memory"]["swap"], 2i64 << 30);
}

#[test]
fn cgroup_v2_gives_a_cgroup_namespace_and_our_cpu_weight() {
    let id = ContainerId::new("c1").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut host = host();
    let mut s = base();
    s.resources.cpu_shares = Some(512);
    let spec = |host: &HostFacts, s: &ContainerSpec| {
        serde_json::to_value(build(&id, s, dir.path(), host).unwrap().spec).unwrap()
    };
    let has_cgroupns = |json: &serde_json::Value| {
        json["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["type"] == "cgroup")
    };
    // v1: shares as given (runc writes cpu.shares), the node's cgroup namespace.
    let v1 = spec(&host, &s);
    assert_eq!(v1["linux"]["resources"]["cpu"]["shares"], 512);
    assert!(!has_cgroupns(&v1));

    host.cgroup_v2 = true;
    let v2 = spec(&host, &s);
    assert!(has_cgroupns(&v2));
    let r = &v2["linux"]["resources"];
    assert!(r["cpu"]["shares"].is_null(), "{r}");
    let update = crate::cgroup::v2_settings(&s.resources).unwrap();
    assert!(update.contains(&("cpu.weight".to_owned(), "20".to_owned())));
    assert_eq!(r["unified"]["cpu.weight"], "20", "create = update");
    // The request's own cpu.weight wins, at create as at update.
    s.resources.unified = [("cpu.weight".to_owned(), "300".to_owned())].into();
    assert_eq!(
        spec(&host, &s)["linux"]["resources"]["unified"]["cpu.weight"],
        "300"
    );
    // Privileged: the node's cgroup namespace, as containerd.
    s.security.privileged = true;
    assert!(!has_cgroupns(&spec(&host, &s)));
}
