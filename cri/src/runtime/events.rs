//! GetContainerEvents: the runtime's lifecycle events (`rootstock_runtime::events`) as the
//! server stream kubelet's evented PLEG reads (`pkg/kubelet/pleg/evented.go`).
//!
//! kubelet builds the pod's whole status from each event (`GeneratePodStatus`): the pod
//! sandbox status (it reads `pod_sandbox_status.metadata.uid` unconditionally, so it is
//! always set) and the statuses of *every* container of the pod, then keeps it when
//! `created_at` is newer than what it has. So each event carries, as containerd's do, the
//! sandbox's status and all its containers': the event's own container as of the
//! transition (its record travels with the event), the others as of now. A Deleted
//! container is left out of the list: it is gone. Pod sandboxes have events too, as with
//! containerd: the container id is the sandbox id.
//!
//! A subscriber that falls behind is dropped by the runtime; its stream then ends with
//! `RESOURCE_EXHAUSTED` naming the overflow, and kubelet falls back to relisting.

use std::collections::HashMap;

use k8s_cri::v1::{
    ContainerEventResponse, ContainerEventType, ContainerStatus, PodSandboxMetadata,
    PodSandboxState, PodSandboxStatus,
};
use rootstock_runtime::events::{ContainerEvent, EventKind, Subject, Subscription};
use rootstock_runtime::{SandboxId, SandboxInfo};
use tonic::Status;

use super::container_status::cri_status;
use super::{EventStream, RuntimeApi};
use crate::error::CriError;

/// kubelet's labels on every container it creates: enough to name the pod when its
/// sandbox is already gone.
const POD_NAME: &str = "io.kubernetes.pod.name";
const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
const POD_UID: &str = "io.kubernetes.pod.uid";

/// One subscriber's state between events.
struct Subscriber {
    api: RuntimeApi,
    events: Subscription,
    /// The last status sent for each sandbox: a container deleted after its sandbox
    /// (RemovePodSandbox removes the containers first, but the stream may convert the
    /// event later) still names its pod.
    sandboxes: HashMap<SandboxId, PodSandboxStatus>,
    done: bool,
}

impl RuntimeApi {
    pub(super) fn handle_get_container_events(&self) -> EventStream {
        let subscriber = Subscriber {
            api: self.clone(),
            events: self
                .rt
                .events()
                .subscribe(self.config.events.subscriber_buffer),
            sandboxes: HashMap::new(),
            done: false,
        };
        Box::pin(futures_util::stream::unfold(
            subscriber,
            |mut s| async move {
                if s.done {
                    return None;
                }
                match s.events.next().await {
                    Ok(Some(event)) => {
                        let response = s.response(&event).await;
                        Some((Ok(response), s))
                    }
                    // The daemon is stopping.
                    Ok(None) => None,
                    Err(overflow) => {
                        s.done = true;
                        let err = CriError::ResourceExhausted(overflow.to_string());
                        tracing::warn!("GetContainerEvents: {err}");
                        Some((Err(Status::from(err)), s))
                    }
                }
            },
        ))
    }
}

impl Subscriber {
    async fn response(&mut self, event: &ContainerEvent) -> ContainerEventResponse {
        match &event.subject {
            Subject::Container { record, spec } => {
                let own = cri_status(record, spec);
                let (sandbox, mut statuses) = match &record.sandbox_id {
                    Some(id) => (
                        self.sandbox_status(id, None, &own.labels).await,
                        self.api.container_statuses_of(id),
                    ),
                    None => (detached_pod(&own.labels), Vec::new()),
                };
                statuses.retain(|s| s.id != own.id);
                if event.kind != EventKind::Deleted {
                    statuses.push(own);
                }
                response(event, record.id.to_string(), sandbox, statuses)
            }
            Subject::Sandbox { id, info } => {
                let sandbox = self
                    .sandbox_status(id, info.as_deref(), &HashMap::new())
                    .await;
                let statuses = self.api.container_statuses_of(id);
                response(event, id.to_string(), sandbox, statuses)
            }
        }
    }

    /// The sandbox's status: as the event recorded it, else now; when it is gone, the
    /// last one sent (NotReady), else one made from the container's pod labels.
    async fn sandbox_status(
        &mut self,
        id: &SandboxId,
        recorded: Option<&SandboxInfo>,
        labels: &HashMap<String, String>,
    ) -> PodSandboxStatus {
        let now = match recorded {
            Some(info) => self.api.sandbox_status(info).await.ok(),
            None => match self.api.rt.sandbox(id) {
                Ok(info) => self.api.sandbox_status(&info).await.ok(),
                Err(_) => None,
            },
        };
        match now {
            Some(status) => {
                self.sandboxes.insert(id.clone(), status.clone());
                status
            }
            None => {
                let mut last = self
                    .sandboxes
                    .remove(id)
                    .unwrap_or_else(|| detached_pod(labels));
                last.id = id.to_string();
                last.state = PodSandboxState::SandboxNotready as i32;
                last.network = None;
                last
            }
        }
    }
}

fn response(
    event: &ContainerEvent,
    container_id: String,
    sandbox: PodSandboxStatus,
    containers_statuses: Vec<ContainerStatus>,
) -> ContainerEventResponse {
    ContainerEventResponse {
        container_id,
        container_event_type: event_type(event.kind) as i32,
        created_at: event.at_unix_nanos,
        pod_sandbox_status: Some(sandbox),
        containers_statuses,
    }
}

/// A NotReady pod status named from kubelet's container labels.
fn detached_pod(labels: &HashMap<String, String>) -> PodSandboxStatus {
    let label = |k: &str| labels.get(k).cloned().unwrap_or_default();
    PodSandboxStatus {
        metadata: Some(PodSandboxMetadata {
            name: label(POD_NAME),
            uid: label(POD_UID),
            namespace: label(POD_NAMESPACE),
            attempt: 0,
        }),
        state: PodSandboxState::SandboxNotready as i32,
        ..PodSandboxStatus::default()
    }
}

fn event_type(kind: EventKind) -> ContainerEventType {
    match kind {
        EventKind::Created => ContainerEventType::ContainerCreatedEvent,
        EventKind::Started => ContainerEventType::ContainerStartedEvent,
        EventKind::Stopped => ContainerEventType::ContainerStoppedEvent,
        EventKind::Deleted => ContainerEventType::ContainerDeletedEvent,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn a_pod_without_sandbox_is_named_from_kubelets_labels() {
        let labels: HashMap<String, String> =
            [(POD_NAME, "web"), (POD_NAMESPACE, "prod"), (POD_UID, "u-1")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .into();
        let status = detached_pod(&labels);
        let meta = status.metadata.unwrap();
        assert_eq!(
            (meta.name.as_str(), meta.namespace.as_str()),
            ("web", "prod")
        );
        assert_eq!(meta.uid, "u-1");
        assert_eq!(status.state, PodSandboxState::SandboxNotready as i32);
    }

    #[test]
    fn every_kind_has_its_cri_type() {
        for (kind, cri) in [
            (
                EventKind::Created,
                ContainerEventType::ContainerCreatedEvent,
            ),
            (
                EventKind::Started,
                ContainerEventType::ContainerStartedEvent,
            ),
            (
                EventKind::Stopped,
                ContainerEventType::ContainerStoppedEvent,
            ),
            (
                EventKind::Deleted,
                ContainerEventType::ContainerDeletedEvent,
            ),
        ] {
            assert_eq!(event_type(kind), cri);
        }
    }
}
