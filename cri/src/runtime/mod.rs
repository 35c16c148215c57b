//! `RuntimeService`: the dispatch table. Each RPC family lives in its own module as inherent
//! methods on [`RuntimeApi`] returning `Result<_, CriError>`; this table only unwraps the
//! request and converts the result.

mod info;

use std::pin::Pin;
use std::sync::Arc;

use k8s_cri::v1::runtime_service_server::RuntimeService;
use k8s_cri::v1::*;
use rootstock_cni::CniManager;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::config::Config;
use crate::error::{not_yet, reply};

/// State shared by the runtime RPCs.
pub struct RuntimeApi {
    config: Arc<Config>,
    cni: Arc<CniManager>,
}

impl RuntimeApi {
    pub fn new(config: Arc<Config>, cni: Arc<CniManager>) -> Self {
        Self { config, cni }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<ContainerEventResponse, Status>> + Send>>;

#[tonic::async_trait]
impl RuntimeService for RuntimeApi {
    type GetContainerEventsStream = EventStream;

    async fn version(
        &self,
        req: Request<VersionRequest>,
    ) -> Result<Response<VersionResponse>, Status> {
        reply(self.version_info(req.into_inner()))
    }

    async fn status(
        &self,
        req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        reply(self.runtime_status(req.into_inner()).await)
    }

    async fn runtime_config(
        &self,
        _req: Request<RuntimeConfigRequest>,
    ) -> Result<Response<RuntimeConfigResponse>, Status> {
        reply(self.cgroup_config())
    }

    async fn update_runtime_config(
        &self,
        _req: Request<UpdateRuntimeConfigRequest>,
    ) -> Result<Response<UpdateRuntimeConfigResponse>, Status> {
        not_yet("UpdateRuntimeConfig")
    }

    async fn run_pod_sandbox(
        &self,
        _req: Request<RunPodSandboxRequest>,
    ) -> Result<Response<RunPodSandboxResponse>, Status> {
        not_yet("RunPodSandbox")
    }

    async fn stop_pod_sandbox(
        &self,
        _req: Request<StopPodSandboxRequest>,
    ) -> Result<Response<StopPodSandboxResponse>, Status> {
        not_yet("StopPodSandbox")
    }

    async fn remove_pod_sandbox(
        &self,
        _req: Request<RemovePodSandboxRequest>,
    ) -> Result<Response<RemovePodSandboxResponse>, Status> {
        not_yet("RemovePodSandbox")
    }

    async fn pod_sandbox_status(
        &self,
        _req: Request<PodSandboxStatusRequest>,
    ) -> Result<Response<PodSandboxStatusResponse>, Status> {
        not_yet("PodSandboxStatus")
    }

    async fn list_pod_sandbox(
        &self,
        _req: Request<ListPodSandboxRequest>,
    ) -> Result<Response<ListPodSandboxResponse>, Status> {
        not_yet("ListPodSandbox")
    }

    async fn create_container(
        &self,
        _req: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerResponse>, Status> {
        not_yet("CreateContainer")
    }

    async fn start_container(
        &self,
        _req: Request<StartContainerRequest>,
    ) -> Result<Response<StartContainerResponse>, Status> {
        not_yet("StartContainer")
    }

    async fn stop_container(
        &self,
        _req: Request<StopContainerRequest>,
    ) -> Result<Response<StopContainerResponse>, Status> {
        not_yet("StopContainer")
    }

    async fn remove_container(
        &self,
        _req: Request<RemoveContainerRequest>,
    ) -> Result<Response<RemoveContainerResponse>, Status> {
        not_yet("RemoveContainer")
    }

    async fn list_containers(
        &self,
        _req: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        not_yet("ListContainers")
    }

    async fn container_status(
        &self,
        _req: Request<ContainerStatusRequest>,
    ) -> Result<Response<ContainerStatusResponse>, Status> {
        not_yet("ContainerStatus")
    }

    async fn update_container_resources(
        &self,
        _req: Request<UpdateContainerResourcesRequest>,
    ) -> Result<Response<UpdateContainerResourcesResponse>, Status> {
        not_yet("UpdateContainerResources")
    }

    async fn reopen_container_log(
        &self,
        _req: Request<ReopenContainerLogRequest>,
    ) -> Result<Response<ReopenContainerLogResponse>, Status> {
        not_yet("ReopenContainerLog")
    }

    async fn exec_sync(
        &self,
        _req: Request<ExecSyncRequest>,
    ) -> Result<Response<ExecSyncResponse>, Status> {
        not_yet("ExecSync")
    }

    async fn exec(&self, _req: Request<ExecRequest>) -> Result<Response<ExecResponse>, Status> {
        not_yet("Exec")
    }

    async fn attach(
        &self,
        _req: Request<AttachRequest>,
    ) -> Result<Response<AttachResponse>, Status> {
        not_yet("Attach")
    }

    async fn port_forward(
        &self,
        _req: Request<PortForwardRequest>,
    ) -> Result<Response<PortForwardResponse>, Status> {
        not_yet("PortForward")
    }

    async fn container_stats(
        &self,
        _req: Request<ContainerStatsRequest>,
    ) -> Result<Response<ContainerStatsResponse>, Status> {
        not_yet("ContainerStats")
    }

    async fn list_container_stats(
        &self,
        _req: Request<ListContainerStatsRequest>,
    ) -> Result<Response<ListContainerStatsResponse>, Status> {
        not_yet("ListContainerStats")
    }

    async fn pod_sandbox_stats(
        &self,
        _req: Request<PodSandboxStatsRequest>,
    ) -> Result<Response<PodSandboxStatsResponse>, Status> {
        not_yet("PodSandboxStats")
    }

    async fn list_pod_sandbox_stats(
        &self,
        _req: Request<ListPodSandboxStatsRequest>,
    ) -> Result<Response<ListPodSandboxStatsResponse>, Status> {
        not_yet("ListPodSandboxStats")
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
        not_yet("GetContainerEvents")
    }

    async fn list_metric_descriptors(
        &self,
        _req: Request<ListMetricDescriptorsRequest>,
    ) -> Result<Response<ListMetricDescriptorsResponse>, Status> {
        not_yet("ListMetricDescriptors")
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _req: Request<ListPodSandboxMetricsRequest>,
    ) -> Result<Response<ListPodSandboxMetricsResponse>, Status> {
        not_yet("ListPodSandboxMetrics")
    }
}
