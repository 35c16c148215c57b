//! The CRI requests kubelet sends, built once for the e2e tests and the benchmark, so both
//! drive a runtime the same way.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::*;
use tonic::transport::Channel;

/// A pod as kubelet sends it: metadata in `namespace`, a hostname, the pod-uid label, network
/// and IPC namespaces per pod and the PID mode kubelet defaults to (CONTAINER).
pub fn pod_config(namespace: &str, name: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.to_owned(),
            uid: format!("uid-{name}"),
            namespace: namespace.to_owned(),
            attempt: 0,
        }),
        hostname: name.to_owned(),
        labels: HashMap::from([("io.kubernetes.pod.uid".to_owned(), format!("uid-{name}"))]),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: String::new(),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Pod as i32,
                    pid: NamespaceMode::Container as i32,
                    ipc: NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A container as kubelet sends it.
pub fn container_config(name: &str, image: &str, command: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.to_owned(),
            attempt: 0,
        }),
        image: image_spec(image),
        command: command.iter().map(|s| s.to_string()).collect(),
        labels: HashMap::from([("io.kubernetes.container.name".to_owned(), name.to_owned())]),
        ..Default::default()
    }
}

/// An image named by reference, as kubelet names one.
pub fn image_spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: image.to_owned(),
        ..Default::default()
    })
}

/// PullImage without credentials; returns the image ref the runtime answered and the time it
/// took.
pub async fn pull(
    images: &mut ImageServiceClient<Channel>,
    image: &str,
) -> Result<(String, Duration), String> {
    let t = Instant::now();
    let image_ref = try_pull(images, image)
        .await
        .map_err(|e| format!("PullImage {image}: {}", e.message()))?;
    Ok((image_ref, t.elapsed()))
}

/// PullImage without credentials, keeping the gRPC status for tests that check it.
pub async fn try_pull(
    images: &mut ImageServiceClient<Channel>,
    image: &str,
) -> Result<String, tonic::Status> {
    let r = images
        .pull_image(PullImageRequest {
            image: image_spec(image),
            auth: None,
            sandbox_config: None,
        })
        .await?;
    Ok(r.into_inner().image_ref)
}

/// RemoveImage.
pub async fn remove_image(
    images: &mut ImageServiceClient<Channel>,
    image: &str,
) -> Result<(), String> {
    images
        .remove_image(RemoveImageRequest {
            image: image_spec(image),
        })
        .await
        .map_err(|e| format!("RemoveImage {image}: {}", e.message()))?;
    Ok(())
}
