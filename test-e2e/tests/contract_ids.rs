//! The CRI contract on ids, as crictl uses it: every by-id RPC and filter takes a unique
//! prefix of an id, refuses an ambiguous one, and Stop/Remove of an absent object stay
//! idempotent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use k8s_cri::v1::*;
use rootstock_test_e2e::registry::Registry;
use tonic::Code;

/// Every by-id RPC, for the table below. `Ok` carries the id the call acted on, where the
/// reply names one (else the given one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ById {
    ContainerStatus,
    ContainerStats,
    ExecSync,
    UpdateResources,
    ReopenLog,
    ListContainers,
    ListContainerStats,
    PodSandboxStatus,
    PodSandboxStats,
    ListPodSandbox,
    ListPodSandboxStats,
    StopContainer,
    RemoveContainer,
    StopPodSandbox,
    RemovePodSandbox,
}

impl ById {
    fn idempotent(self) -> bool {
        matches!(
            self,
            ById::StopContainer
                | ById::RemoveContainer
                | ById::StopPodSandbox
                | ById::RemovePodSandbox
        )
    }

    /// Whether the reply names the object it acted on.
    fn echoes_id(self) -> bool {
        !self.idempotent()
            && !matches!(
                self,
                ById::ExecSync | ById::UpdateResources | ById::ReopenLog
            )
    }

    fn is_list(self) -> bool {
        matches!(
            self,
            ById::ListContainers
                | ById::ListContainerStats
                | ById::ListPodSandbox
                | ById::ListPodSandboxStats
        )
    }

    async fn call(self, rt: &mut Rt, id: &str) -> Result<Vec<String>, tonic::Status> {
        let id = id.to_owned();
        Ok(match self {
            ById::ContainerStatus => vec![
                rt.container_status(ContainerStatusRequest {
                    container_id: id,
                    verbose: false,
                })
                .await?
                .into_inner()
                .status
                .unwrap()
                .id,
            ],
            ById::ContainerStats => vec![
                rt.container_stats(ContainerStatsRequest { container_id: id })
                    .await?
                    .into_inner()
                    .stats
                    .unwrap()
                    .attributes
                    .unwrap()
                    .id,
            ],
            ById::ExecSync => {
                let r = rt
                    .exec_sync(ExecSyncRequest {
                        container_id: id.clone(),
                        cmd: vec!["true".into()],
                        timeout: 10,
                    })
                    .await?
                    .into_inner();
                assert_eq!(r.exit_code, 0);
                Vec::new()
            }
            ById::UpdateResources => {
                rt.update_container_resources(UpdateContainerResourcesRequest {
                    container_id: id.clone(),
                    linux: Some(LinuxContainerResources {
                        cpu_shares: 512,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await?;
                Vec::new()
            }
            ById::ReopenLog => {
                rt.reopen_container_log(ReopenContainerLogRequest { container_id: id })
                    .await?;
                Vec::new()
            }
            ById::ListContainers => rt
                .list_containers(ListContainersRequest {
                    filter: Some(ContainerFilter {
                        id,
                        ..Default::default()
                    }),
                })
                .await?
                .into_inner()
                .containers
                .into_iter()
                .map(|c| c.id)
                .collect(),
            ById::ListContainerStats => rt
                .list_container_stats(ListContainerStatsRequest {
                    filter: Some(ContainerStatsFilter {
                        id,
                        ..Default::default()
                    }),
                })
                .await?
                .into_inner()
                .stats
                .into_iter()
                .map(|s| s.attributes.unwrap().id)
                .collect(),
            ById::PodSandboxStatus => vec![
                rt.pod_sandbox_status(PodSandboxStatusRequest {
                    pod_sandbox_id: id,
                    verbose: false,
                })
                .await?
                .into_inner()
                .status
                .unwrap()
                .id,
            ],
            ById::PodSandboxStats => vec![
                rt.pod_sandbox_stats(PodSandboxStatsRequest { pod_sandbox_id: id })
                    .await?
                    .into_inner()
                    .stats
                    .unwrap()
                    .attributes
                    .unwrap()
                    .id,
            ],
            ById::ListPodSandbox => rt
                .list_pod_sandbox(ListPodSandboxRequest {
                    filter: Some(PodSandboxFilter {
                        id,
                        ..Default::default()
                    }),
                })
                .await?
                .into_inner()
                .items
                .into_iter()
                .map(|p| p.id)
                .collect(),
            ById::ListPodSandboxStats => rt
                .list_pod_sandbox_stats(ListPodSandboxStatsRequest {
                    filter: Some(PodSandboxStatsFilter {
                        id,
                        ..Default::default()
                    }),
                })
                .await?
                .into_inner()
                .stats
                .into_iter()
                .map(|s| s.attributes.unwrap().id)
                .collect(),
            ById::StopContainer => {
                rt.stop_container(StopContainerRequest {
                    container_id: id.clone(),
                    timeout: 0,
                })
                .await?;
                vec![id]
            }
            ById::RemoveContainer => {
                rt.remove_container(RemoveContainerRequest {
                    container_id: id.clone(),
                })
                .await?;
                vec![id]
            }
            ById::StopPodSandbox => {
                rt.stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await?;
                vec![id]
            }
            ById::RemovePodSandbox => {
                rt.remove_pod_sandbox(RemovePodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await?;
                vec![id]
            }
        })
    }
}

/// Two of `ids` that start with the same hex digit: that digit is an ambiguous prefix.
fn ambiguous(ids: &[String]) -> Option<(String, Vec<String>)> {
    for c in "0123456789abcdef".chars() {
        let m: Vec<String> = ids.iter().filter(|i| i.starts_with(c)).cloned().collect();
        if m.len() >= 2 {
            return Some((c.to_string(), m));
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_by_id_rpc_takes_a_short_id_refuses_an_ambiguous_one_and_stop_remove_stay_idempotent()
{
    let registry = Registry::start().await;
    let (daemon, image) = daemon_with_busybox(&registry, "").await;
    loopback_network(&daemon).await;
    let mut rt = daemon.runtime().await;

    // Pods until two share a first digit (at most 17 by pigeonhole), each with a container
    // started in the first one until two containers share one too.
    let mut pods: Vec<(String, PodSandboxConfig)> = Vec::new();
    while ambiguous(&pods.iter().map(|p| p.0.clone()).collect::<Vec<_>>()).is_none() {
        let config = pod_config(&format!("short-{}", pods.len()), NamespaceMode::Container);
        pods.push((run_pod(&mut rt, config.clone()).await.unwrap(), config));
    }
    let (pod, pod_config) = pods[0].clone();
    let mut containers = Vec::new();
    while ambiguous(&containers).is_none() {
        let config = container_config(
            &format!("c{}", containers.len()),
            &image,
            &["sleep", "3600"],
        );
        containers.push(start_container(&mut rt, &pod, &pod_config, config).await);
    }
    let (c_prefix, c_matches) = ambiguous(&containers).unwrap();
    let pod_ids: Vec<String> = pods.iter().map(|p| p.0.clone()).collect();
    let (p_prefix, p_matches) = ambiguous(&pod_ids).unwrap();
    let unknown = "0".repeat(63) + "1";

    // Containers, the destructive calls last; sandboxes likewise. Each with its object.
    let container_rpcs = [
        ById::ContainerStatus,
        ById::ContainerStats,
        ById::ExecSync,
        ById::UpdateResources,
        ById::ReopenLog,
        ById::ListContainers,
        ById::ListContainerStats,
        ById::StopContainer,
        ById::RemoveContainer,
    ];
    let sandbox_rpcs = [
        ById::PodSandboxStatus,
        ById::PodSandboxStats,
        ById::ListPodSandbox,
        ById::ListPodSandboxStats,
        ById::StopPodSandbox,
        ById::RemovePodSandbox,
    ];
    let cases = container_rpcs
        .iter()
        .map(|r| (*r, &containers, &c_prefix, &c_matches))
        .chain(
            sandbox_rpcs
                .iter()
                .map(|r| (*r, &pod_ids, &p_prefix, &p_matches)),
        );
    for (rpc, ids, ambiguous_prefix, matches) in cases {
        // The last object: for sandboxes not the first one, which holds the containers.
        let full = ids.last().unwrap();
        let short = &full[..12];

        // An ambiguous prefix: refused naming every match, nothing done.
        let err = rpc.call(&mut rt, ambiguous_prefix).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{rpc:?}: {err:?}");
        for m in matches {
            assert!(
                err.message().contains(m.as_str()),
                "{rpc:?}: {}",
                err.message()
            );
        }
        // An unknown id: NotFound, an empty list, or the idempotent OK of Stop/Remove.
        match rpc.call(&mut rt, &unknown).await {
            Ok(acted) if rpc.is_list() => assert!(acted.is_empty(), "{rpc:?}: {acted:?}"),
            Ok(_) => assert!(rpc.idempotent(), "{rpc:?} accepted an unknown id"),
            Err(e) => {
                assert!(!rpc.idempotent(), "{rpc:?}: {e:?}");
                assert_eq!(e.code(), Code::NotFound, "{rpc:?}: {e:?}");
            }
        }
        // A 12-character prefix acts on the object itself.
        let acted = rpc
            .call(&mut rt, short)
            .await
            .unwrap_or_else(|e| panic!("{rpc:?}: {e:?}"));
        if rpc.echoes_id() {
            assert_eq!(acted, std::slice::from_ref(full), "{rpc:?}");
        }
        // The full id, too.
        let acted = rpc
            .call(&mut rt, full)
            .await
            .unwrap_or_else(|e| panic!("{rpc:?}: {e:?}"));
        if rpc.echoes_id() {
            assert_eq!(acted, std::slice::from_ref(full), "{rpc:?}");
        }
        // Stop and Remove by the short id really acted (crictl's `stop <short id>` did not).
        match rpc {
            ById::StopContainer => {
                let s = container_status(&mut rt, full).await;
                assert_eq!(s.state, ContainerState::ContainerExited as i32);
            }
            ById::RemoveContainer => {
                let left = ById::ListContainers.call(&mut rt, full).await.unwrap();
                assert!(left.is_empty(), "{left:?}");
            }
            ById::StopPodSandbox => {
                let s = pod_status(&mut rt, full).await;
                assert_eq!(
                    s.status.unwrap().state,
                    PodSandboxState::SandboxNotready as i32
                );
            }
            ById::RemovePodSandbox => {
                let left = ById::ListPodSandbox.call(&mut rt, full).await.unwrap();
                assert!(left.is_empty(), "{left:?}");
            }
            _ => {}
        }
    }
    for (pod, _) in &pods {
        stop_pod(&mut rt, pod).await;
        remove_pod(&mut rt, pod).await;
    }
}
