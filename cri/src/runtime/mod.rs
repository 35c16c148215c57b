//! `RuntimeService`: the dispatch table. Each RPC family lives in its own module as inherent
//! methods on [`RuntimeApi`] returning `Result<_, CriError>`; this table only unwraps the
//! request and converts the result.
//!
//! Calls that create or destroy things (run/stop/remove sandbox, create/stop/remove
//! container) run detached from the RPC's future: tonic drops that future when the client
//! hangs up, and a RunPodSandbox cancelled between CNI ADD and its rollback would leak an IP.
//!
//! Reads (ContainerStatus, ListContainers, PodSandboxStatus, ListPodSandbox) run on the async
//! worker: the runtime serves them from memory and they never wait for an operation in
//! progress. Everything that may block goes through [`crate::blocking::blocking`].

mod container_create;
mod container_exec;
mod container_log;
mod container_remove;
mod container_start;
mod container_status;
mod container_stop;
mod container_update;
mod events;
mod ids;
mod info;
mod meta;
mod metrics;
mod names;
mod sandbox_remove;
mod sandbox_run;
mod sandbox_status;
mod sandbox_stop;
mod stats;
mod undo;
mod userns;
mod validate;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use k8s_cri::v1::runtime_service_server::RuntimeService;
use k8s_cri::v1::*;
use rootstock_cni::CniManager;
use rootstock_imagestore::ImageStore;
use rootstock_runtime::Runtime;
use rootstock_runtime::stats::CpuRates;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::blocking::blocking;
use crate::config::Config;
use crate::error::{CriError, not_yet, reply};
use crate::metrics::DaemonMetrics;

use self::names::Names;

/// State shared by the runtime RPCs. Cheap to clone: every field is shared.
#[derive(Clone)]
pub struct RuntimeApi {
    config: Arc<Config>,
    cni: Arc<CniManager>,
    rt: Arc<Runtime>,
    store: Arc<ImageStore>,
    /// Sandbox and container names in use (CRI reserves a name until its owner is removed).
    names: Arc<Names>,
    /// One lock per sandbox: CreateContainer holds it, so StopPodSandbox/RemovePodSandbox
    /// (which take it too) never miss a container being created in the pod meanwhile.
    sandbox_locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    /// Pod IPs by sandbox id, so that PodSandboxStatus (polled by kubelet) does not read the
    /// CNI cache each time; filled at ADD and, after a restart, by recovery.
    pod_ips: Arc<Mutex<HashMap<String, Vec<String>>>>,
    /// The previous CPU sample of each container and pod, for `usage_nano_cores`.
    cpu_rates: Arc<CpuRates>,
    /// The node's pod CIDR as kubelet last sent it (UpdateRuntimeConfig).
    pod_cidr: Arc<Mutex<String>>,
    /// Serves the URLs Exec hands out.
    streaming: Arc<crate::streaming::StreamingServer>,
    /// The daemon's Prometheus metrics.
    metrics: Arc<DaemonMetrics>,
}

impl RuntimeApi {
    pub fn new(
        config: Arc<Config>,
        cni: Arc<CniManager>,
        rt: Arc<Runtime>,
        store: Arc<ImageStore>,
        streaming: Arc<crate::streaming::StreamingServer>,
        pod_ips: HashMap<String, Vec<String>>,
        metrics: Arc<DaemonMetrics>,
    ) -> Self {
        let names = Arc::new(Names::default());
        names.rebuild(&rt);
        Self {
            config,
            cni,
            rt,
            store,
            names,
            sandbox_locks: Arc::default(),
            pod_ips: Arc::new(Mutex::new(pod_ips)),
            cpu_rates: Arc::default(),
            pod_cidr: Arc::default(),
            streaming,
            metrics,
        }
    }

    /// Takes sandbox `id`'s lock (see `sandbox_locks`).
    async fn lock_sandbox(&self, id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            // Entries are inserted and removed whole; a poisoned map is still consistent.
            let mut locks = self.sandbox_locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(id.to_owned()).or_default().clone()
        };
        lock.lock_owned().await
    }

    /// Forgets sandbox `id`'s lock once the sandbox is removed.
    fn forget_sandbox_lock(&self, id: &str) {
        let mut locks = self.sandbox_locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.remove(id);
    }

    /// Runs `call` on its own task, so it completes (or rolls back) even when the client
    /// goes away mid-call.
    async fn detached<T, F, Fut>(&self, call: F) -> Result<T, CriError>
    where
        T: Send + 'static,
        F: FnOnce(RuntimeApi) -> Fut,
        Fut: Future<Output = Result<T, CriError>> + Send + 'static,
    {
        let result = tokio::spawn(call(self.clone())).await;
        // Create/destroy calls allocate the most (specs, plugin output): trim after a burst.
        crate::trim::poke();
        result.map_err(|e| CriError::Internal(format!("runtime call task failed: {e}")))?
    }
}

/// CRI label selectors match when every selector pair is present with the same value.
fn labels_match(labels: &HashMap<String, String>, selector: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

pub(super) type EventStream =
    Pin<Box<dyn Stream<Item = Result<ContainerEventResponse, Status>> + Send>>;

#[tonic::async_trait]
impl RuntimeService for RuntimeApi {
    type GetContainerEventsStream = EventStream;

    async fn version(
        &self,
        req: Request<VersionRequest>,
    ) -> Result<Response<VersionResponse>, Status> {
        reply(self.handle_version(req.into_inner()))
    }

    async fn status(
        &self,
        req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        reply(self.handle_status(req.into_inner()).await)
    }

    async fn runtime_config(
        &self,
        _req: Request<RuntimeConfigRequest>,
    ) -> Result<Response<RuntimeConfigResponse>, Status> {
        reply(self.handle_runtime_config())
    }

    async fn update_runtime_config(
        &self,
        req: Request<UpdateRuntimeConfigRequest>,
    ) -> Result<Response<UpdateRuntimeConfigResponse>, Status> {
        reply(self.handle_update_runtime_config(req.into_inner()))
    }

    async fn run_pod_sandbox(
        &self,
        req: Request<RunPodSandboxRequest>,
    ) -> Result<Response<RunPodSandboxResponse>, Status> {
        let req = req.into_inner();
        let started = std::time::Instant::now();
        let result = self
            .detached(|api| async move { api.handle_run_pod_sandbox(req).await })
            .await;
        if result.is_ok() {
            self.metrics
                .sandbox_start_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        reply(result)
    }

    async fn stop_pod_sandbox(
        &self,
        req: Request<StopPodSandboxRequest>,
    ) -> Result<Response<StopPodSandboxResponse>, Status> {
        let req = req.into_inner();
        reply(
            self.detached(|api| async move { api.handle_stop_pod_sandbox(req).await })
                .await,
        )
    }

    async fn remove_pod_sandbox(
        &self,
        req: Request<RemovePodSandboxRequest>,
    ) -> Result<Response<RemovePodSandboxResponse>, Status> {
        let req = req.into_inner();
        reply(
            self.detached(|api| async move { api.handle_remove_pod_sandbox(req).await })
                .await,
        )
    }

    async fn pod_sandbox_status(
        &self,
        req: Request<PodSandboxStatusRequest>,
    ) -> Result<Response<PodSandboxStatusResponse>, Status> {
        let req = req.into_inner();
        reply(self.handle_pod_sandbox_status(req).await)
    }

    async fn list_pod_sandbox(
        &self,
        req: Request<ListPodSandboxRequest>,
    ) -> Result<Response<ListPodSandboxResponse>, Status> {
        let req = req.into_inner();
        reply(self.handle_list_pod_sandbox(req))
    }

    async fn create_container(
        &self,
        req: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerResponse>, Status> {
        let req = req.into_inner();
        reply(
            self.detached(|api| async move { api.handle_create_container(req).await })
                .await,
        )
    }

    async fn start_container(
        &self,
        req: Request<StartContainerRequest>,
    ) -> Result<Response<StartContainerResponse>, Status> {
        let req = req.into_inner();
        let started = std::time::Instant::now();
        let result = self.handle_start_container(req).await;
        if result.is_ok() {
            self.metrics
                .container_start_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        reply(result)
    }

    async fn stop_container(
        &self,
        req: Request<StopContainerRequest>,
    ) -> Result<Response<StopContainerResponse>, Status> {
        let req = req.into_inner();
        reply(
            self.detached(|api| async move { api.handle_stop_container(req).await })
                .await,
        )
    }

    async fn remove_container(
        &self,
        req: Request<RemoveContainerRequest>,
    ) -> Result<Response<RemoveContainerResponse>, Status> {
        let req = req.into_inner();
        reply(
            self.detached(|api| async move { api.handle_remove_container(req).await })
                .await,
        )
    }

    async fn list_containers(
        &self,
        req: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        let req = req.into_inner();
        reply(self.handle_list_containers(req))
    }

    async fn container_status(
        &self,
        req: Request<ContainerStatusRequest>,
    ) -> Result<Response<ContainerStatusResponse>, Status> {
        let req = req.into_inner();
        reply(self.handle_container_status(req))
    }

    async fn update_container_resources(
        &self,
        req: Request<UpdateContainerResourcesRequest>,
    ) -> Result<Response<UpdateContainerResourcesResponse>, Status> {
        reply(
            self.handle_update_container_resources(req.into_inner())
                .await,
        )
    }

    async fn reopen_container_log(
        &self,
        req: Request<ReopenContainerLogRequest>,
    ) -> Result<Response<ReopenContainerLogResponse>, Status> {
        let req = req.into_inner();
        reply(self.handle_reopen_container_log(req).await)
    }

    async fn exec_sync(
        &self,
        req: Request<ExecSyncRequest>,
    ) -> Result<Response<ExecSyncResponse>, Status> {
        let req = req.into_inner();
        self.metrics.exec_session("exec_sync");
        reply(self.handle_exec_sync(req).await)
    }

    async fn exec(&self, req: Request<ExecRequest>) -> Result<Response<ExecResponse>, Status> {
        self.metrics.exec_session("exec");
        reply(self.handle_exec(req.into_inner()).await)
    }

    async fn attach(
        &self,
        req: Request<AttachRequest>,
    ) -> Result<Response<AttachResponse>, Status> {
        self.metrics.exec_session("attach");
        reply(self.handle_attach(req.into_inner()).await)
    }

    async fn port_forward(
        &self,
        req: Request<PortForwardRequest>,
    ) -> Result<Response<PortForwardResponse>, Status> {
        self.metrics.exec_session("port_forward");
        reply(self.handle_port_forward(req.into_inner()).await)
    }

    async fn container_stats(
        &self,
        req: Request<ContainerStatsRequest>,
    ) -> Result<Response<ContainerStatsResponse>, Status> {
        let api = self.clone();
        // Reads cgroup files: off the async workers.
        reply(blocking(move || api.handle_container_stats(req.into_inner())).await)
    }

    async fn list_container_stats(
        &self,
        req: Request<ListContainerStatsRequest>,
    ) -> Result<Response<ListContainerStatsResponse>, Status> {
        let api = self.clone();
        // Reads cgroup files: off the async workers.
        reply(blocking(move || api.handle_list_container_stats(req.into_inner())).await)
    }

    async fn pod_sandbox_stats(
        &self,
        req: Request<PodSandboxStatsRequest>,
    ) -> Result<Response<PodSandboxStatsResponse>, Status> {
        let api = self.clone();
        // Reads cgroup files: off the async workers.
        reply(blocking(move || api.handle_pod_sandbox_stats(req.into_inner())).await)
    }

    async fn list_pod_sandbox_stats(
        &self,
        req: Request<ListPodSandboxStatsRequest>,
    ) -> Result<Response<ListPodSandboxStatsResponse>, Status> {
        let api = self.clone();
        // Reads cgroup files: off the async workers.
        reply(blocking(move || api.handle_list_pod_sandbox_stats(req.into_inner())).await)
    }

    async fn checkpoint_container(
        &self,
        _req: Request<CheckpointContainerRequest>,
    ) -> Result<Response<CheckpointContainerResponse>, Status> {
        not_yet("CheckpointContainer")
    }

    async fn get_container_events(
        &self,
        _req: Request<GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        Ok(Response::new(self.handle_get_container_events()))
    }

    async fn list_metric_descriptors(
        &self,
        _req: Request<ListMetricDescriptorsRequest>,
    ) -> Result<Response<ListMetricDescriptorsResponse>, Status> {
        reply(Ok(self.handle_list_metric_descriptors()))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _req: Request<ListPodSandboxMetricsRequest>,
    ) -> Result<Response<ListPodSandboxMetricsResponse>, Status> {
        let api = self.clone();
        // Reads cgroup files and netlink: off the async workers.
        reply(blocking(move || api.handle_list_pod_sandbox_metrics()).await)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn a_label_selector_matches_when_every_pair_is_present() {
        let labels: HashMap<String, String> = [("app", "web"), ("tier", "front")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into();
        let sel = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert!(labels_match(&labels, &sel(&[])));
        assert!(labels_match(&labels, &sel(&[("app", "web")])));
        assert!(labels_match(
            &labels,
            &sel(&[("app", "web"), ("tier", "front")])
        ));
        assert!(!labels_match(&labels, &sel(&[("app", "db")])));
        assert!(!labels_match(
            &labels,
            &sel(&[("app", "web"), ("zone", "a")])
        ));
        assert!(!labels_match(&HashMap::new(), &sel(&[("app", "web")])));
    }
}
