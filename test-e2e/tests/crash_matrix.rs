//! The crash matrix (#19): the daemon SIGKILLs itself at a deterministic failpoint inside
//! each step of the pod lifecycle (and of pull and image removal), is started again, and
//! then, as kubelet would see it:
//! - the RPC's effect is complete or absent, and retrying it (as kubelet does) succeeds;
//! - a witness container running all along still runs, and its log keeps growing;
//! - once the step's pod is gone, nothing is left on the host: mounts under the root and
//!   state dirs, namespace pins, cgroups, veths, IPAM reservations, CNI cache entries,
//!   monitors, OCI runtime state, writable layers, image trees held by a lost lease
//!   (`common/footprint.rs`), and `rootstock store verify` is clean.
//!
//! `make test` runs a fast subset (one point per RPC family); `make test-reliability` runs
//! every point (`--ignored`). Needs the daemon built with `rootstock-cri/failpoints`.
#![cfg(feature = "failpoints")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::footprint::{self, CgroupRoot, Footprint};
use common::*;
use k8s_cri::v1::*;
use rootstock_test_e2e::cri::remove_image;
use rootstock_test_e2e::daemon::Daemon;
use rootstock_test_e2e::failpoints::{STORE_POINTS, StoreOp};
use rootstock_test_e2e::fixtures::crash_images;
use rootstock_test_e2e::registry::Registry;

/// The RPC each point is reached through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    RunPod,
    /// RunPodSandbox of a pod sharing one PID namespace (it has a pod-init).
    RunSharedPod,
    Create,
    Start,
    Stop,
    Remove,
    StopPod,
    RemovePod,
    Pull,
    RemoveImage,
}

/// Every failpoint of the runtime, CNI and the RPC handlers ([`all`] adds the store's).
const LIFECYCLE: &[(&str, Op)] = &[
    ("sandbox.namespaces-pinned", Op::RunPod),
    ("sandbox.record-persisted", Op::RunPod),
    ("cni.intent-cached", Op::RunPod),
    ("cni.add-done", Op::RunPod),
    ("cni.result-cached", Op::RunPod),
    ("sandbox.network-ready", Op::RunPod),
    ("sandbox.cgroup-created", Op::RunSharedPod),
    ("container.lease-taken", Op::Create),
    ("container.monitor-started", Op::Create),
    ("container.rootfs-mounted", Op::Create),
    ("container.spec-written", Op::Create),
    ("container.monitor-spawned", Op::Create),
    ("container.runc-created", Op::Create),
    ("container.record-persisted", Op::Create),
    ("container.runc-started", Op::Start),
    ("container.start-persisted", Op::Start),
    ("container.kill-sent", Op::Stop),
    ("container.runc-deleted", Op::Remove),
    ("container.rootfs-unmounted", Op::Remove),
    ("container.removed", Op::Remove),
    ("sandbox-stop.before-cni-del", Op::StopPod),
    ("cni.del-done", Op::StopPod),
    ("sandbox-stop.after-cni-del", Op::StopPod),
    ("sandbox-stop.namespaces-released", Op::StopPod),
    ("sandbox-remove.containers-removed", Op::RemovePod),
    ("sandbox-remove.torn-down", Op::RemovePod),
];

/// Every failpoint: the lifecycle's, then the image store's.
fn all() -> Vec<(&'static str, Op)> {
    let store = STORE_POINTS.iter().map(|&(p, op)| match op {
        StoreOp::Pull => (p, Op::Pull),
        StoreOp::Remove => (p, Op::RemoveImage),
    });
    LIFECYCLE.iter().copied().chain(store).collect()
}

/// `make test`'s subset: the riskiest point of each lifecycle RPC (a half-done CNI ADD, a
/// monitor waiting for its bundle, a monitor still creating, a start not yet recorded, a
/// kill not yet seen, a half-removed container, a network released but a sandbox still
/// Ready, a torn-down sandbox).
const FAST: &[&str] = &[
    "cni.add-done",
    "sandbox.cgroup-created",
    "container.monitor-started",
    "container.monitor-spawned",
    "container.runc-started",
    "container.kill-sent",
    "container.rootfs-unmounted",
    "sandbox-stop.after-cni-del",
    "sandbox-remove.torn-down",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_at_the_riskiest_points_leaves_no_orphan_and_retries_succeed() {
    let points: Vec<(&str, Op)> = all()
        .into_iter()
        .filter(|(p, _)| FAST.contains(p))
        .collect();
    assert_eq!(
        points.len(),
        FAST.len(),
        "a fast point is not in the matrix"
    );
    run_matrix("crashfast", &points).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the full matrix: make test-reliability"]
async fn a_kill_at_every_failpoint_leaves_no_orphan_and_retries_succeed() {
    let points = all();
    assert!(points.len() >= 30);
    run_matrix("crashall", &points).await;
}

/// One test's world: registry, network, cgroup root, daemon, the witness pod.
struct World {
    daemon: Daemon,
    net: rootstock_test_e2e::network::TestNet,
    cgroups: CgroupRoot,
    logs: tempfile::TempDir,
    /// The witness's image (also the pull points' image stays out of its way).
    image: String,
    /// The image every step's containers use, pulled and removed at every step.
    other: String,
    _registry: Registry,
    witness: (String, String),
    baseline: Footprint,
}

/// What a step set up before its RPC.
#[derive(Default)]
struct Step {
    pod: Option<(String, PodSandboxConfig)>,
    container: Option<String>,
}

async fn run_matrix(tag: &str, points: &[(&str, Op)]) {
    let started = Instant::now();
    let mut w = World::new(tag).await;
    for (n, &(point, op)) in points.iter().enumerate() {
        let t0 = Instant::now();
        let name = format!("p{n}");
        let step = w.prepare(op, &name).await;
        // Stopped cleanly: the store verifies offline, and the next start arms the point.
        w.daemon.stop().await;
        w.daemon.verify_store(&format!("before {point}"));
        w.daemon.set_env("ROOTSTOCK_FAILPOINT", Some(point));
        w.daemon.start_again().await;
        let result = w.drive(op, &name, &step).await;
        assert!(
            result.is_err(),
            "{point}: {op:?} finished: the point was not reached"
        );
        w.daemon.wait_killed_at(point).await;
        w.daemon.set_env("ROOTSTOCK_FAILPOINT", None);
        w.daemon.start_again().await;

        w.witness_runs(point).await;
        w.settle(op, &name, &step, point).await;
        w.clean_up_step(point).await;
        eprintln!("{point:36} ok ({:.1} s)", t0.elapsed().as_secs_f64());
    }
    w.daemon.stop().await;
    w.daemon.verify_store("at the end");
    w.daemon.start_again().await;
    w.finish().await;
    eprintln!(
        "{} points in {:.0} s",
        points.len(),
        started.elapsed().as_secs_f64()
    );
}

impl World {
    async fn new(tag: &str) -> Self {
        let registry = Registry::start().await;
        let (image, other) = crash_images();
        registry.push("crash", "v1", &image).await;
        registry.push("crash", "other", &other).await;
        let (image_ref, other_ref) = (
            registry.image_ref("crash", "v1"),
            registry.image_ref("crash", "other"),
        );
        let net = rootstock_test_e2e::network::TestNet::new(tag);
        let config = format!(
            "{}\n[images.registries.\"{}\"]\ninsecure = true\n",
            net.daemon_config(),
            registry.host()
        );
        let daemon = Daemon::start_with_config(&config).await;
        net.write_conflist(&net.conflist(vec![]));
        wait_network_ready(&daemon).await;
        let image = pull_ok(&mut daemon.images().await, &image_ref).await;
        let mut w = Self {
            daemon,
            net,
            cgroups: CgroupRoot::new(tag),
            logs: tempfile::tempdir().unwrap(),
            image,
            other: other_ref,
            _registry: registry,
            witness: Default::default(),
            baseline: Default::default(),
        };
        let pod = w.pod("witness", NamespaceMode::Container);
        let mut rt = w.daemon.runtime().await;
        let pod_id = run_pod(&mut rt, pod.clone()).await.unwrap();
        let mut c = container_config(
            "ticker",
            &w.image,
            &[
                "sh",
                "-c",
                "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done",
            ],
        );
        c.log_path = "ticker.log".to_owned();
        let cid = start_container(&mut rt, &pod_id, &pod, c).await;
        w.witness = (pod_id, cid);
        w.baseline = footprint::take(&w.daemon, &w.net, &w.cgroups);
        w
    }

    /// A pod config as kubelet sends it, with its cgroup under the test's root and its logs
    /// in the test's log dir.
    fn pod(&self, name: &str, pid: NamespaceMode) -> PodSandboxConfig {
        let mut pod = pod_config(name, pid);
        let linux = pod.linux.get_or_insert_with(Default::default);
        linux.cgroup_parent = self.cgroups.pod_parent(name);
        let dir = self.logs.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        pod.log_directory = dir.display().to_string();
        pod
    }

    fn sleeper(&self) -> ContainerConfig {
        let mut c = container_config("sleeper", &self.other, &["sleep", "3600"]);
        c.log_path = "sleeper.log".to_owned();
        c
    }

    /// What `op` needs in place before it runs (on the unarmed daemon).
    async fn prepare(&self, op: Op, name: &str) -> Step {
        let mut step = Step::default();
        if op != Op::Pull {
            pull_ok(&mut self.daemon.images().await, &self.other).await;
        }
        if matches!(
            op,
            Op::Pull | Op::RemoveImage | Op::RunPod | Op::RunSharedPod
        ) {
            return step;
        }
        let mut rt = self.daemon.runtime().await;
        let pod = self.pod(name, NamespaceMode::Container);
        let id = run_pod(&mut rt, pod.clone()).await.unwrap();
        step.pod = Some((id.clone(), pod.clone()));
        if op == Op::Create {
            return step;
        }
        let cid = create_container(&mut rt, &id, &pod, self.sleeper())
            .await
            .unwrap();
        if op != Op::Start {
            rt.start_container(StartContainerRequest {
                container_id: cid.clone(),
            })
            .await
            .unwrap();
        }
        step.container = Some(cid);
        step
    }

    /// The RPC under test, on the armed daemon.
    async fn drive(&self, op: Op, name: &str, step: &Step) -> Result<(), tonic::Status> {
        let mut rt = self.daemon.runtime().await;
        let pod = || step.pod.clone().unwrap();
        let cid = || step.container.clone().unwrap();
        match op {
            Op::RunPod => run_pod(&mut rt, self.pod(name, NamespaceMode::Container))
                .await
                .map(drop),
            Op::RunSharedPod => run_pod(&mut rt, self.pod(name, NamespaceMode::Pod))
                .await
                .map(drop),
            Op::Create => {
                let (id, config) = pod();
                create_container(&mut rt, &id, &config, self.sleeper())
                    .await
                    .map(drop)
            }
            Op::Start => rt
                .start_container(StartContainerRequest {
                    container_id: cid(),
                })
                .await
                .map(drop),
            Op::Stop => rt
                .stop_container(StopContainerRequest {
                    container_id: cid(),
                    timeout: 0,
                })
                .await
                .map(drop),
            Op::Remove => rt
                .remove_container(RemoveContainerRequest {
                    container_id: cid(),
                })
                .await
                .map(drop),
            Op::StopPod => rt
                .stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: pod().0,
                })
                .await
                .map(drop),
            Op::RemovePod => rt
                .remove_pod_sandbox(RemovePodSandboxRequest {
                    pod_sandbox_id: pod().0,
                })
                .await
                .map(drop),
            Op::Pull => rootstock_test_e2e::cri::pull(&mut self.daemon.images().await, &self.other)
                .await
                .map(drop)
                .map_err(tonic::Status::internal),
            Op::RemoveImage => remove_image(&mut self.daemon.images().await, &self.other)
                .await
                .map_err(tonic::Status::internal),
        }
    }

    /// The witness still runs after the restart, and its log keeps growing.
    async fn witness_runs(&self, point: &str) {
        let mut rt = self.daemon.runtime().await;
        let s = container_status(&mut rt, &self.witness.1).await;
        assert_eq!(
            s.state,
            ContainerState::ContainerRunning as i32,
            "{point}: the witness is {:?}",
            s.state
        );
        let log = Path::new(&s.log_path);
        let lines = |p: &Path| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .count()
        };
        let before = lines(log);
        wait_file(log, |t| t.lines().count() >= before + 3).await;
    }

    /// After the restart: the RPC's effect is complete or absent, and kubelet's retry (or
    /// its next step) succeeds.
    async fn settle(&self, op: Op, name: &str, step: &Step, point: &str) {
        let mut rt = self.daemon.runtime().await;
        match op {
            Op::RunPod | Op::RunSharedPod => {
                let listed = self.pods_named(&mut rt, name).await;
                // Never acknowledged: recovery removed it (a whole pod would also do, but
                // every RunPodSandbox point is before the commit).
                assert!(
                    listed.is_empty(),
                    "{point}: unfinished sandbox kept: {listed:?}"
                );
                let mode = if op == Op::RunPod {
                    NamespaceMode::Container
                } else {
                    NamespaceMode::Pod
                };
                let id = run_pod(&mut rt, self.pod(name, mode))
                    .await
                    .unwrap_or_else(|e| panic!("{point}: retried RunPodSandbox: {e}"));
                let status = pod_status(&mut rt, &id).await.status.unwrap();
                assert_eq!(
                    status.state,
                    PodSandboxState::SandboxReady as i32,
                    "{point}"
                );
                assert!(
                    !status.network.unwrap_or_default().ip.is_empty(),
                    "{point}: retried pod has no IP"
                );
            }
            Op::Create => {
                let (id, config) = step.pod.clone().unwrap();
                let listed = self.containers_of(&mut rt, &id).await;
                let cid = match listed.as_slice() {
                    // Complete: the record was written; kubelet finds it and starts it.
                    [c] => {
                        assert_eq!(c.state, ContainerState::ContainerCreated as i32, "{point}");
                        c.id.clone()
                    }
                    [] => create_container(&mut rt, &id, &config, self.sleeper())
                        .await
                        .unwrap_or_else(|e| panic!("{point}: retried CreateContainer: {e}")),
                    more => panic!("{point}: {} containers after one create", more.len()),
                };
                rt.start_container(StartContainerRequest {
                    container_id: cid.clone(),
                })
                .await
                .unwrap_or_else(|e| panic!("{point}: StartContainer after recovery: {e}"));
                self.runs(&mut rt, &cid, point).await;
            }
            Op::Start => {
                // `start` ran before the kill: it happened, and the record says so.
                self.runs(&mut rt, step.container.as_ref().unwrap(), point)
                    .await;
            }
            Op::Stop => {
                let cid = step.container.clone().unwrap();
                let s = wait_exited(&mut rt, &cid, Duration::from_secs(10)).await;
                assert_ne!(s.exit_code, 0, "{point}");
                rt.stop_container(StopContainerRequest {
                    container_id: cid,
                    timeout: 0,
                })
                .await
                .unwrap_or_else(|e| panic!("{point}: retried StopContainer: {e}"));
            }
            Op::Remove => {
                let cid = step.container.clone().unwrap();
                rt.remove_container(RemoveContainerRequest {
                    container_id: cid.clone(),
                })
                .await
                .unwrap_or_else(|e| panic!("{point}: retried RemoveContainer: {e}"));
                let (pod, _) = step.pod.clone().unwrap();
                let left = self.containers_of(&mut rt, &pod).await;
                assert!(
                    left.is_empty(),
                    "{point}: removed container listed: {left:?}"
                );
            }
            Op::StopPod => {
                let (pod, _) = step.pod.clone().unwrap();
                stop_pod(&mut rt, &pod).await;
                let status = pod_status(&mut rt, &pod).await.status.unwrap();
                assert_eq!(
                    status.state,
                    PodSandboxState::SandboxNotready as i32,
                    "{point}"
                );
                let s = container_status(&mut rt, step.container.as_ref().unwrap()).await;
                assert_eq!(s.state, ContainerState::ContainerExited as i32, "{point}");
            }
            Op::RemovePod => {
                let (pod, _) = step.pod.clone().unwrap();
                remove_pod(&mut rt, &pod).await;
                assert!(self.pods_named(&mut rt, name).await.is_empty(), "{point}");
            }
            Op::Pull => {
                pull_ok(&mut self.daemon.images().await, &self.other).await;
            }
            Op::RemoveImage => {
                remove_image(&mut self.daemon.images().await, &self.other)
                    .await
                    .unwrap_or_else(|e| panic!("{point}: retried RemoveImage: {e}"));
            }
        }
    }

    async fn runs(&self, rt: &mut Rt, cid: &str, point: &str) {
        let s = container_status(rt, cid).await;
        assert_eq!(
            s.state,
            ContainerState::ContainerRunning as i32,
            "{point}: container is {:?}",
            s.state
        );
        let out = exec(rt, cid, &["true"], 20)
            .await
            .unwrap_or_else(|e| panic!("{point}: exec: {e}"));
        assert_eq!(out.exit_code, 0, "{point}");
    }

    async fn pods_named(&self, rt: &mut Rt, name: &str) -> Vec<PodSandbox> {
        list_pods(rt, None)
            .await
            .into_iter()
            .filter(|p| p.metadata.as_ref().map(|m| m.name.as_str()) == Some(name))
            .collect()
    }

    async fn containers_of(&self, rt: &mut Rt, pod: &str) -> Vec<Container> {
        list_containers(rt)
            .await
            .into_iter()
            .filter(|c| c.pod_sandbox_id == pod)
            .collect()
    }

    /// kubelet's clean-up of the step's pods (stop, remove), the step's image removed, then
    /// the host must look exactly as with only the witness.
    async fn clean_up_step(&self, point: &str) {
        let mut rt = self.daemon.runtime().await;
        for p in list_pods(&mut rt, None).await {
            if p.id == self.witness.0 {
                continue;
            }
            stop_pod(&mut rt, &p.id).await;
            remove_pod(&mut rt, &p.id).await;
        }
        remove_image(&mut self.daemon.images().await, &self.other)
            .await
            .unwrap_or_else(|e| panic!("{point}: RemoveImage: {e}"));
        let now = footprint::take(&self.daemon, &self.net, &self.cgroups);
        footprint::assert_same(&self.baseline, &now, &format!("after a kill at {point}"));
    }

    async fn finish(self) {
        let mut rt = self.daemon.runtime().await;
        stop_pod(&mut rt, &self.witness.0).await;
        remove_pod(&mut rt, &self.witness.0).await;
        assert!(self.net.reserved_ips().is_empty());
        assert!(mounts_under(&self.daemon.state_dir).is_empty());
    }
}
