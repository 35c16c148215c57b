//! Security contexts over the socket, one test per family as critest exercises them: the
//! identity `id` shows (run_as_user, run_as_username, run_as_group, supplemental groups and
//! the image's /etc/group memberships), capabilities and no_new_privs as /proc/1/status
//! shows them, and the read-only rootfs, masked and read-only paths, lifted when privileged.
//! A Localhost seccomp profile is loaded into the spec and enforced. Resources are in
//! `resources.rs`, stats in `stats.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use k8s_cri::v1::*;

/// Starts `sleep` in a fresh pod with `sc` as its security context; returns the container id.
async fn sleeper(
    rt: &mut Rt,
    image: &str,
    name: &str,
    sc: LinuxContainerSecurityContext,
) -> (String, String) {
    let pod = pod_config(name, NamespaceMode::Container);
    let pod_id = run_pod(rt, pod.clone()).await.unwrap();
    let mut config = container_config(name, image, &["sleep", "3600"]);
    config.linux = Some(LinuxContainerConfig {
        security_context: Some(sc),
        ..Default::default()
    });
    let id = start_container(rt, &pod_id, &pod, config).await;
    (pod_id, id)
}

/// The hex mask after `key:` in /proc/1/status.
fn status_mask(status: &str, key: &str) -> u64 {
    let v = status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("{key} not in {status}"));
    u64::from_str_radix(v.trim_start_matches(':').trim(), 16).unwrap()
}

const CAP_CHOWN: u32 = 0;
const CAP_NET_RAW: u32 = 13;
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_shows_run_as_user_username_group_and_supplemental_groups() {
    let registry = rootstock_test_e2e::registry::Registry::start().await;
    let (daemon, image) = daemon_with_busybox(&registry, "").await;
    loopback_network(&daemon).await;
    let mut rt = daemon.runtime().await;

    // alice (1000) is in staff (50) and video (44) in the image's /etc/group.
    let (_, alice) = sleeper(
        &mut rt,
        &image,
        "uid",
        LinuxContainerSecurityContext {
            run_as_user: Some(Int64Value { value: 1000 }),
            supplemental_groups: vec![1234],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(stdout(&sh(&mut rt, &alice, "id -u").await), "1000");
    let groups = stdout(&sh(&mut rt, &alice, "id -G").await);
    for g in ["50", "44", "1234"] {
        assert!(groups.split(' ').any(|x| x == g), "{g} not in {groups}");
    }

    let (_, bob) = sleeper(
        &mut rt,
        &image,
        "username",
        LinuxContainerSecurityContext {
            run_as_username: "bob".to_owned(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(stdout(&sh(&mut rt, &bob, "id -u").await), "1001");
    assert!(stdout(&sh(&mut rt, &bob, "id -G").await).contains("50"));

    let (_, www) = sleeper(
        &mut rt,
        &image,
        "group",
        LinuxContainerSecurityContext {
            run_as_user: Some(Int64Value { value: 33 }),
            run_as_group: Some(Int64Value { value: 44 }),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(stdout(&sh(&mut rt, &www, "id -u").await), "33");
    assert_eq!(stdout(&sh(&mut rt, &www, "id -g").await), "44");

    // CRI: run_as_group without run_as_user/run_as_username MUST be an error.
    let pod = pod_config("group-only", NamespaceMode::Container);
    let pod_id = run_pod(&mut rt, pod.clone()).await.unwrap();
    let mut config = container_config("group-only", &image, &["sleep", "3600"]);
    config.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            run_as_group: Some(Int64Value { value: 44 }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let err = rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod_id,
            config: Some(config),
            sandbox_config: Some(pod),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("run_as_group") && err.message().contains("run_as_user"),
        "{}",
        err.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_add_drop_all_privileged_and_no_new_privs_show_in_proc_status() {
    let registry = rootstock_test_e2e::registry::Registry::start().await;
    let (daemon, image) = daemon_with_busybox(&registry, "").await;
    loopback_network(&daemon).await;
    let mut rt = daemon.runtime().await;
    let caps = |add: &[&str], drop: &[&str]| {
        Some(Capability {
            add_capabilities: add.iter().map(|s| s.to_string()).collect(),
            drop_capabilities: drop.iter().map(|s| s.to_string()).collect(),
            add_ambient_capabilities: vec![],
        })
    };
    let status = async |rt: &mut Rt, sc: LinuxContainerSecurityContext, name: &str| {
        let (_, id) = sleeper(rt, &image, name, sc).await;
        stdout(&sh(rt, &id, "cat /proc/1/status").await)
    };

    let s = status(
        &mut rt,
        LinuxContainerSecurityContext {
            capabilities: caps(&["NET_ADMIN"], &["CAP_CHOWN"]),
            no_new_privs: true,
            ..Default::default()
        },
        "adddrop",
    )
    .await;
    for key in ["CapBnd", "CapEff"] {
        let m = status_mask(&s, key);
        assert_ne!(m & (1 << CAP_NET_ADMIN), 0, "{key} {m:x}: NET_ADMIN added");
        assert_eq!(m & (1 << CAP_CHOWN), 0, "{key} {m:x}: CHOWN dropped");
        assert_ne!(
            m & (1 << CAP_NET_RAW),
            0,
            "{key} {m:x}: default NET_RAW kept"
        );
        assert_eq!(m & (1 << CAP_SYS_ADMIN), 0, "{key} {m:x}: no SYS_ADMIN");
    }
    assert!(
        s.lines()
            .any(|l| l.starts_with("NoNewPrivs:") && l.ends_with('1')),
        "{s}"
    );

    let s = status(
        &mut rt,
        LinuxContainerSecurityContext {
            capabilities: caps(&[], &["ALL"]),
            ..Default::default()
        },
        "dropall",
    )
    .await;
    assert_eq!(status_mask(&s, "CapBnd"), 0, "{s}");
    assert_eq!(status_mask(&s, "CapEff"), 0, "{s}");

    let s = status(
        &mut rt,
        LinuxContainerSecurityContext {
            privileged: true,
            ..Default::default()
        },
        "privileged",
    )
    .await;
    // Every capability the host kernel knows (the daemon runs as full root).
    let host = std::fs::read_to_string("/proc/self/status").unwrap();
    let host_bnd = status_mask(&host, "CapBnd");
    assert_eq!(status_mask(&s, "CapBnd"), host_bnd, "{s}");
    assert_eq!(status_mask(&s, "CapEff"), host_bnd, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readonly_rootfs_masked_and_readonly_paths_hold_unless_privileged() {
    let registry = rootstock_test_e2e::registry::Registry::start().await;
    let (daemon, image) = daemon_with_busybox(&registry, "").await;
    loopback_network(&daemon).await;
    let mut rt = daemon.runtime().await;

    let (_, ro) = sleeper(
        &mut rt,
        &image,
        "readonly",
        LinuxContainerSecurityContext {
            readonly_rootfs: true,
            ..Default::default()
        },
    )
    .await;
    let r = sh(&mut rt, &ro, "echo x > /written").await;
    assert_ne!(r.exit_code, 0, "write to a read-only rootfs succeeded");
    assert!(String::from_utf8_lossy(&r.stderr).contains("Read-only"));
    // Mounts stay writable (/dev/shm is the sandbox's).
    assert_eq!(sh(&mut rt, &ro, "echo x > /dev/shm/ok").await.exit_code, 0);

    let (_, plain) = sleeper(
        &mut rt,
        &image,
        "paths",
        LinuxContainerSecurityContext {
            masked_paths: vec!["/proc/timer_list".to_owned()],
            readonly_paths: vec!["/proc/sys".to_owned(), "/proc/sysrq-trigger".to_owned()],
            ..Default::default()
        },
    )
    .await;
    // Masked: /dev/null over a file reads empty (the request's list replaces the defaults).
    let r = sh(&mut rt, &plain, "wc -c < /proc/timer_list").await;
    assert_eq!(r.exit_code, 0, "{r:?}");
    assert_eq!(stdout(&r), "0");
    // Read-only, even for root with the default capabilities.
    let r = sh(&mut rt, &plain, "echo 1 > /proc/sys/kernel/ns_last_pid").await;
    assert_ne!(r.exit_code, 0, "write to a read-only path succeeded");
    // The default rootfs is writable.
    assert_eq!(sh(&mut rt, &plain, "echo x > /written").await.exit_code, 0);

    let (_, privileged) = sleeper(
        &mut rt,
        &image,
        "privileged",
        LinuxContainerSecurityContext {
            privileged: true,
            masked_paths: vec!["/proc/timer_list".to_owned()],
            readonly_paths: vec!["/proc/sys".to_owned()],
            ..Default::default()
        },
    )
    .await;
    // Not masked: /proc/timer_list is the kernel's, never empty.
    let r = sh(&mut rt, &privileged, "wc -c < /proc/timer_list").await;
    assert_ne!(stdout(&r), "0", "{r:?}");
    // /proc/sys is writable: write back the current value of a harmless knob of the
    // container's own UTS namespace.
    let r = sh(
        &mut rt,
        &privileged,
        "cat /proc/sys/kernel/hostname > /proc/sys/kernel/hostname",
    )
    .await;
    assert_eq!(r.exit_code, 0, "{r:?}");
    // sysfs is mounted read-write.
    let r = sh(&mut rt, &privileged, "grep ' /sys sysfs ' /proc/mounts").await;
    assert!(stdout(&r).contains("sysfs rw"), "{r:?}");
    // Host devices are there.
    assert_eq!(
        sh(
            &mut rt,
            &privileged,
            "test -c /dev/kmsg || test -b /dev/loop0 || ls /dev/tty1"
        )
        .await
        .exit_code,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn localhost_seccomp_profile_denies_mkdir_and_a_missing_one_is_refused() {
    let registry = rootstock_test_e2e::registry::Registry::start().await;
    let (daemon, image) = daemon_with_busybox(&registry, "").await;
    loopback_network(&daemon).await;
    let mut rt = daemon.runtime().await;
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("deny-mkdir.json");
    // Docker/OCI seccomp JSON: everything allowed but mkdir, which fails with EPERM.
    std::fs::write(
        &profile,
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}"#,
    )
    .unwrap();
    let localhost = |path: &std::path::Path| SecurityProfile {
        profile_type: security_profile::ProfileType::Localhost as i32,
        localhost_ref: path.display().to_string(),
    };

    let (_, confined) = sleeper(
        &mut rt,
        &image,
        "seccomp",
        LinuxContainerSecurityContext {
            seccomp: Some(localhost(&profile)),
            ..Default::default()
        },
    )
    .await;
    let r = sh(&mut rt, &confined, "mkdir /tmp/denied").await;
    assert_ne!(r.exit_code, 0, "{r:?}");
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("Operation not permitted"),
        "{r:?}"
    );
    assert!(stdout(&sh(&mut rt, &confined, "grep Seccomp: /proc/1/status").await).ends_with('2'));

    // The deprecated string field, `localhost/<path>`, is honoured too.
    #[allow(deprecated)]
    let legacy = LinuxContainerSecurityContext {
        seccomp_profile_path: format!("localhost/{}", profile.display()),
        ..Default::default()
    };
    let (_, legacy) = sleeper(&mut rt, &image, "seccomp-legacy", legacy).await;
    assert_ne!(sh(&mut rt, &legacy, "mkdir /tmp/denied").await.exit_code, 0);

    // Without a profile (and with RuntimeDefault, not applied yet) mkdir works.
    let (_, free) = sleeper(
        &mut rt,
        &image,
        "unconfined",
        LinuxContainerSecurityContext::default(),
    )
    .await;
    assert_eq!(sh(&mut rt, &free, "mkdir /tmp/allowed").await.exit_code, 0);
    let (_, default) = sleeper(
        &mut rt,
        &image,
        "runtime-default",
        LinuxContainerSecurityContext {
            seccomp: Some(SecurityProfile {
                profile_type: security_profile::ProfileType::RuntimeDefault as i32,
                localhost_ref: String::new(),
            }),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        sh(&mut rt, &default, "mkdir /tmp/allowed").await.exit_code,
        0
    );

    // A profile that is not there: InvalidArgument naming it.
    let pod = pod_config("seccomp-missing", NamespaceMode::Container);
    let pod_id = run_pod(&mut rt, pod.clone()).await.unwrap();
    let missing = dir.path().join("missing.json");
    let mut config = container_config("seccomp-missing", &image, &["sleep", "3600"]);
    config.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            seccomp: Some(localhost(&missing)),
            ..Default::default()
        }),
        ..Default::default()
    });
    let err = rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod_id,
            config: Some(config),
            sandbox_config: Some(pod),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("missing.json"), "{}", err.message());
}
