//! Devices over the socket: a host device node kubelet passes (as device plugins do) opens
//! in the container while the device cgroup still denies the others, and CDI devices from
//! a private CDI spec directory (YAML and JSON) inject their device node, environment and
//! mount; an unknown or malformed request is refused naming it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use k8s_cri::v1::*;
use rootstock_test_e2e::registry::Registry;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_and_cdi_devices_appear_with_their_rules_and_unknown_ones_are_refused() {
    let cdi = tempfile::tempdir().unwrap();
    let shared = cdi.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("f"), "from the host\n").unwrap();
    std::fs::write(
        cdi.path().join("example.yaml"),
        format!(
            "cdiVersion: \"0.6.0\"\nkind: example.com/dev\ndevices:\n- name: null\n  \
             containerEdits:\n    deviceNodes:\n    - path: /dev/cdi-null\n      hostPath: /dev/null\n    \
             env: [CDI_INJECTED=yes]\n    mounts:\n    - hostPath: {}\n      containerPath: /cdi\n      \
             options: [ro]\n",
            shared.display()
        ),
    )
    .unwrap();
    std::fs::write(
        cdi.path().join("other.json"),
        r#"{"cdiVersion":"0.6.0","kind":"example.com/other","devices":[{"name":"zero",
            "containerEdits":{"deviceNodes":[{"path":"/dev/cdi-zero","hostPath":"/dev/zero"}],
            "env":["OTHER=1"]}}]}"#,
    )
    .unwrap();
    let registry = Registry::start().await;
    let extra = format!(
        "[runtime]\ncdi_spec_dirs = [\"{}\"]\n",
        cdi.path().display()
    );
    let (daemon, image) = daemon_with_busybox(&registry, &extra).await;
    loopback_network(&daemon).await;
    let mut rt = daemon.runtime().await;
    let pod = pod_config("devices", NamespaceMode::Container);
    let pod_id = run_pod(&mut rt, pod.clone()).await.unwrap();

    // /dev/fuse, as the fuse device plugin hands it over.
    assert!(
        std::path::Path::new("/dev/fuse").exists(),
        "this test needs /dev/fuse on the node"
    );
    let mut config = container_config("fuse", &image, &["sleep", "3600"]);
    config.devices.push(Device {
        container_path: "/dev/fuse".to_owned(),
        host_path: "/dev/fuse".to_owned(),
        permissions: "rw".to_owned(),
    });
    let id = start_container(&mut rt, &pod_id, &pod, config).await;
    let r = exec(
        &mut rt,
        &id,
        &["sh", "-c", "exec 3<>/dev/fuse && echo opened"],
        10,
    )
    .await
    .unwrap();
    assert_eq!(stdout(&r), "opened", "{r:?}");
    // The device cgroup still denies the others: a node made with /dev/kvm's numbers does
    // not open, while one made with the granted /dev/fuse's does.
    let script = "mknod /tmp/fuse c 10 229; mknod /tmp/kvm c 10 232; \
                  (exec 3<>/tmp/fuse) && echo fuse-opened; \
                  (exec 3<>/tmp/kvm) 2>/dev/null && echo kvm-opened || echo kvm-denied";
    let r = exec(&mut rt, &id, &["sh", "-c", script], 10).await.unwrap();
    assert_eq!(stdout(&r), "fuse-opened\nkvm-denied", "{r:?}");

    // CDI: by CRI field and by annotation, from YAML and JSON.
    let mut config = container_config("cdi", &image, &["sleep", "3600"]);
    config.cdi_devices.push(CdiDevice {
        name: "example.com/dev=null".to_owned(),
    });
    config.annotations.insert(
        "cdi.k8s.io/e2e".to_owned(),
        "example.com/other=zero".to_owned(),
    );
    let id = start_container(&mut rt, &pod_id, &pod, config).await;
    let r = exec(
        &mut rt,
        &id,
        &[
            "sh",
            "-c",
            "echo $CDI_INJECTED $OTHER; test -c /dev/cdi-null && test -c /dev/cdi-zero && echo nodes; \
             cat /cdi/f; echo x > /dev/cdi-null && echo written; touch /cdi/g || echo read-only",
        ],
        10,
    )
    .await
    .unwrap();
    assert_eq!(
        stdout(&r),
        "yes 1\nnodes\nfrom the host\nwritten\nread-only",
        "{r:?}"
    );

    // Refused, naming what: not a device, bad permissions, an unknown CDI device.
    let mut refused = Vec::new();
    let mut c = container_config("bad-node", &image, &["sleep", "1"]);
    c.devices.push(Device {
        container_path: "/dev/x".to_owned(),
        host_path: "/etc/hostname".to_owned(),
        permissions: "rw".to_owned(),
    });
    refused.push((c, "devices[0].host_path"));
    let mut c = container_config("bad-perm", &image, &["sleep", "1"]);
    c.devices.push(Device {
        container_path: "/dev/x".to_owned(),
        host_path: "/dev/null".to_owned(),
        permissions: "rwx".to_owned(),
    });
    refused.push((c, "devices[0].permissions"));
    let mut c = container_config("bad-cdi", &image, &["sleep", "1"]);
    c.cdi_devices.push(CdiDevice {
        name: "example.com/dev=missing".to_owned(),
    });
    refused.push((c, "example.com/dev=missing"));
    for (config, what) in refused {
        let err = create_container(&mut rt, &pod_id, &pod, config)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert!(err.message().contains(what), "{what}: {}", err.message());
    }
    stop_pod(&mut rt, &pod_id).await;
    remove_pod(&mut rt, &pod_id).await;
}
