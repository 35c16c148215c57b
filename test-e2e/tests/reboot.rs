//! The node loses what a boot holds while the daemon is down (#19): every container
//! process, monitor and pod-init is killed and every mount under the state dir is gone.
//! - **Reboot** (the daemon then starts with a new boot id): every sandbox is NotReady and
//!   every container Exited, CNI DEL ran for every pod with a network (its IP is back in the
//!   pool), and kubelet's flow — stop, remove, run again — works.
//! - **Same boot** (a clean-up script or an OOM-killer storm): recovery finds the pinned
//!   namespaces gone (`ns/net` a plain empty file, pod-init dead) and reports the sandboxes
//!   NotReady instead of Ready with their old IPs, so kubelet recreates them.
//! - **Power loss** (a reboot that also tore records: the state dir is per-boot and not
//!   fsynced, so a record may be left empty or cut short): a torn sandbox or container is
//!   gone as if never made, its IP released all the same (the CNI cache is durable), and
//!   what is left is what kubelet removes and runs again.
//!
//! The boot id comes from `$ROOTSTOCK_BOOT_ID_FILE` in builds with `rootstock-cri/failpoints`.
#![cfg(feature = "failpoints")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::footprint::{self, CgroupRoot};
use common::*;
use k8s_cri::v1::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rootstock_test_e2e::network::TestNet;
use rootstock_test_e2e::registry::Registry;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_reboot_every_pod_is_notready_its_ip_released_and_it_runs_again() {
    lose_the_boot(Loss::Reboot).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_whose_namespace_pins_were_lost_in_the_same_boot_are_notready() {
    lose_the_boot(Loss::SameBoot).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_power_loss_torn_records_are_gone_and_every_pod_runs_again() {
    lose_the_boot(Loss::PowerOff).await;
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Loss {
    SameBoot,
    Reboot,
    /// A reboot that also tore the solo pod's sandbox record and the shared pod's
    /// container record.
    PowerOff,
}

async fn lose_the_boot(loss: Loss) {
    let tag = match loss {
        Loss::SameBoot => "pinloss",
        Loss::Reboot => "reboot",
        Loss::PowerOff => "powerloss",
    };
    let registry = Registry::start().await;
    let net = TestNet::new(tag);
    let cgroups = CgroupRoot::new(tag);
    let (mut daemon, image) = daemon_with_busybox(&registry, &net.daemon_config()).await;
    net.write_conflist(&net.conflist(vec![]));
    wait_network_ready(&daemon).await;
    let baseline = footprint::take(&daemon, &net, &cgroups);

    let mut rt = daemon.runtime().await;
    let pods: Vec<PodSandboxConfig> = [
        ("solo", NamespaceMode::Container),
        ("shared", NamespaceMode::Pod),
    ]
    .into_iter()
    .map(|(name, mode)| {
        let mut pod = pod_config(name, mode);
        pod.linux.get_or_insert_with(Default::default).cgroup_parent = cgroups.pod_parent(name);
        pod
    })
    .collect();
    let mut ids = Vec::new();
    for pod in &pods {
        ids.push(pod_with_sleeper(&mut rt, pod, &image).await);
    }
    assert_eq!(net.reserved_ips().len(), 2, "each pod holds an IP");
    drop(rt);

    // The loss: the daemon dies, then everything the boot held goes.
    daemon
        .signal_and_wait(Signal::SIGKILL, Duration::from_secs(10))
        .await
        .expect("daemon did not die");
    kill_everything(&daemon, &cgroups);
    let unmounted = rootstock_test_e2e::mounts::unmount_under(&daemon.state_dir);
    assert!(
        !unmounted.is_empty(),
        "nothing was mounted: not simulating a loss"
    );
    let torn = loss == Loss::PowerOff;
    if torn {
        let sandbox = daemon.state_dir.join("sandboxes").join(&ids[0].0);
        std::fs::write(sandbox.join("sandbox.json"), b"").unwrap();
        let record = daemon
            .state_dir
            .join("containers")
            .join(&ids[1].1)
            .join("state.json");
        let whole = std::fs::read(&record).unwrap();
        std::fs::write(&record, &whole[..whole.len() / 2]).unwrap();
    }
    let boot = tempfile::NamedTempFile::new().unwrap();
    if loss != Loss::SameBoot {
        std::fs::write(boot.path(), "7d3c1f4e-0000-4000-8000-000000000001\n").unwrap();
        daemon.set_env(
            "ROOTSTOCK_BOOT_ID_FILE",
            Some(boot.path().to_str().unwrap()),
        );
    }
    daemon.start_again().await;

    let mut rt = daemon.runtime().await;
    if torn {
        // The solo pod is gone; its container, whose record is whole, is an exited one of
        // a pod kubelet no longer has, which its garbage collection removes.
        let (pod, c) = &ids[0];
        let gone = rt
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: pod.clone(),
                verbose: false,
            })
            .await
            .unwrap_err();
        assert_eq!(gone.code(), tonic::Code::NotFound, "{gone}");
        let s = container_status(&mut rt, c).await;
        assert_eq!(s.state, ContainerState::ContainerExited as i32);
        rt.remove_container(RemoveContainerRequest {
            container_id: c.clone(),
        })
        .await
        .unwrap();
        // The shared pod's container is gone; the pod is NotReady.
        let (pod, c) = &ids[1];
        let listed: Vec<String> = list_containers(&mut rt)
            .await
            .into_iter()
            .map(|c| c.id)
            .collect();
        assert!(!listed.contains(c), "torn container {c} still listed");
        let status = pod_status(&mut rt, pod).await.status.unwrap();
        assert_eq!(status.state, PodSandboxState::SandboxNotready as i32);
    }
    // Untorn, each pod is NotReady and its container Exited.
    for (id, c) in ids.iter().filter(|_| !torn) {
        let status = pod_status(&mut rt, id).await.status.unwrap();
        assert_eq!(
            status.state,
            PodSandboxState::SandboxNotready as i32,
            "sandbox {id} reported Ready after losing its namespaces"
        );
        let s = container_status(&mut rt, c).await;
        assert_eq!(
            s.state,
            ContainerState::ContainerExited as i32,
            "container {c}"
        );
    }
    // CNI DEL ran at start-up for every pod that had a network: the IPs are back.
    assert_eq!(
        net.reserved_ips(),
        Vec::<String>::new(),
        "IPs still reserved"
    );
    assert_eq!(
        net.cache_entries(),
        Vec::<String>::new(),
        "CNI attachments left"
    );
    // The veths went with their namespaces (the kernel frees them asynchronously).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !net.bridge_ports().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        net.bridge_ports(),
        Vec::<String>::new(),
        "veths left on the bridge"
    );

    // kubelet's flow: stop and remove the dead pods, run them again.
    // (Torn, the solo pod is gone already.)
    for (id, _) in ids.iter().skip(usize::from(torn)) {
        stop_pod(&mut rt, id).await;
        remove_pod(&mut rt, id).await;
    }
    for pod in &pods {
        let (id, c) = pod_with_sleeper(&mut rt, pod, &image).await;
        let status = pod_status(&mut rt, &id).await.status.unwrap();
        assert_eq!(status.state, PodSandboxState::SandboxReady as i32);
        assert!(!status.network.unwrap_or_default().ip.is_empty());
        assert_eq!(
            container_status(&mut rt, &c).await.state,
            ContainerState::ContainerRunning as i32
        );
        stop_pod(&mut rt, &id).await;
        remove_pod(&mut rt, &id).await;
    }
    let now = footprint::take(&daemon, &net, &cgroups);
    footprint::assert_same(&baseline, &now, "after the pods ran again and were removed");
}

/// RunPodSandbox of `pod` and a running `sleep` in it: (sandbox id, container id).
async fn pod_with_sleeper(rt: &mut Rt, pod: &PodSandboxConfig, image: &str) -> (String, String) {
    let id = run_pod(rt, pod.clone())
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}"));
    let c = start_container(
        rt,
        &id,
        pod,
        container_config("c", image, &["sleep", "3600"]),
    )
    .await;
    (id, c)
}

/// SIGKILLs every process of the test's pods (containers, pod-init) and every monitor of
/// the daemon, until none is left.
fn kill_everything(daemon: &rootstock_test_e2e::daemon::Daemon, cgroups: &CgroupRoot) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut pids = cgroups.processes();
        pids.extend(footprint::processes_naming(&daemon.state_dir));
        pids.retain(|p| is_live(*p));
        if pids.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "processes survive SIGKILL: {pids:?}"
        );
        for pid in pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
