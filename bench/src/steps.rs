//! The CRI calls every family makes, the same for both runtimes: start a pod of one workload
//! container (timed), remove it (timed), remove every pod (clean-up), wait until ready.

use std::time::{Duration, Instant};

use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use rootstock_test_e2e::cri::{container_config, pod_config};
use tonic::transport::Channel;

use super::Target;

/// The command every workload container runs (also how memory figures tell workload processes
/// from the runtime's own).
pub const WORKLOAD: [&str; 2] = ["sleep", "86399"];

/// A running pod: its sandbox and one container.
#[derive(Clone, Debug)]
pub struct Pod {
    pub sandbox: String,
    pub container: String,
}

/// How long a pod start took: RunPodSandbox, and CreateContainer + StartContainer.
#[derive(Clone, Copy, Debug)]
pub struct StartTimes {
    pub run: Duration,
    pub create_start: Duration,
}

impl StartTimes {
    pub fn total(&self) -> Duration {
        self.run + self.create_start
    }
}

/// RunPodSandbox, then CreateContainer + StartContainer of one [`WORKLOAD`] container with
/// `handler`, each part timed. On failure the sandbox, if one was made, is removed again
/// (untimed) and the error says which call failed and why.
pub async fn start_pod(
    rt: &mut RuntimeServiceClient<Channel>,
    handler: &str,
    name: &str,
    image: &str,
) -> Result<(Pod, StartTimes), String> {
    let config = pod_config("bench", name);
    let t = Instant::now();
    let sandbox = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.to_owned(),
        })
        .await
        .map_err(|e| format!("RunPodSandbox: {}", e.message()))?
        .into_inner()
        .pod_sandbox_id;
    let run = t.elapsed();
    let t = Instant::now();
    match create_and_start(rt, &sandbox, config, image).await {
        Ok(container) => Ok((
            Pod { sandbox, container },
            StartTimes {
                run,
                create_start: t.elapsed(),
            },
        )),
        Err(why) => {
            let _ = remove_pod(rt, &sandbox).await;
            Err(why)
        }
    }
}

async fn create_and_start(
    rt: &mut RuntimeServiceClient<Channel>,
    sandbox: &str,
    config: PodSandboxConfig,
    image: &str,
) -> Result<String, String> {
    let container = rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: sandbox.to_owned(),
            config: Some(container_config("c", image, &WORKLOAD)),
            sandbox_config: Some(config),
        })
        .await
        .map_err(|e| format!("CreateContainer: {}", e.message()))?
        .into_inner()
        .container_id;
    rt.start_container(StartContainerRequest {
        container_id: container.clone(),
    })
    .await
    .map_err(|e| format!("StartContainer: {}", e.message()))?;
    Ok(container)
}

/// StopPodSandbox + RemovePodSandbox (which stop and remove its containers), timed.
pub async fn remove_pod(
    rt: &mut RuntimeServiceClient<Channel>,
    sandbox: &str,
) -> Result<Duration, String> {
    let t = Instant::now();
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: sandbox.to_owned(),
    })
    .await
    .map_err(|e| format!("StopPodSandbox: {}", e.message()))?;
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: sandbox.to_owned(),
    })
    .await
    .map_err(|e| format!("RemovePodSandbox: {}", e.message()))?;
    Ok(t.elapsed())
}

/// Every pod this runtime has: stopped and removed (after a family that failed half-way, and
/// before a runtime is stopped). Errors are ignored: this is clean-up.
pub async fn remove_all_pods(t: &Target) {
    let mut rt = t.runtime().await;
    let Ok(list) = rt
        .list_pod_sandbox(ListPodSandboxRequest { filter: None })
        .await
    else {
        return;
    };
    for pod in list.into_inner().items {
        if let Err(why) = remove_pod(&mut rt, &pod.id).await {
            eprintln!("bench[{}] removing pod {}: {why}", t.kind.name(), pod.id);
        }
    }
}

/// How long a runtime may take to report RuntimeReady and NetworkReady after it answers.
const READY_DEADLINE: Duration = Duration::from_secs(60);

/// Polls CRI `Status` until the runtime reports RuntimeReady and NetworkReady (the network
/// config is in place before either runtime starts, so both must see it).
pub async fn wait_ready(t: &Target) -> Result<(), String> {
    let mut rt = t.runtime().await;
    let deadline = Instant::now() + READY_DEADLINE;
    loop {
        let why = match rt.status(StatusRequest { verbose: false }).await {
            Ok(r) => {
                let conditions = r.into_inner().status.map(|s| s.conditions);
                let not_ready: Vec<String> = ["RuntimeReady", "NetworkReady"]
                    .iter()
                    .filter(|kind| {
                        !conditions
                            .iter()
                            .flatten()
                            .any(|c| c.r#type == **kind && c.status)
                    })
                    .map(|kind| {
                        let reason = conditions
                            .iter()
                            .flatten()
                            .find(|c| c.r#type == *kind)
                            .map(|c| format!("{}: {}", c.reason, c.message))
                            .unwrap_or_else(|| "not reported".into());
                        format!("{kind} false ({reason})")
                    })
                    .collect();
                if not_ready.is_empty() {
                    return Ok(());
                }
                not_ready.join(", ")
            }
            Err(e) => format!("Status: {}", e.message()),
        };
        if Instant::now() > deadline {
            return Err(format!("not ready after {READY_DEADLINE:?}: {why}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
