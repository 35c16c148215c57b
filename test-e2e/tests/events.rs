//! GetContainerEvents over the socket, as kubelet's evented PLEG and `crictl events` read it:
//! created, started, stopped (the process exits by itself, no RPC in flight) and deleted,
//! in order, each with the pod's status and statuses that match the event; several
//! subscribers; a subscriber that never reads is dropped without slowing CreateContainer;
//! PodSandboxStatus carries the timestamp and container statuses evented PLEG uses; the pod
//! sandbox has its own four events (containerd's: the container id is the sandbox's).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::Streaming;
use tonic::transport::{Channel, Endpoint, Uri};

type Events = Streaming<ContainerEventResponse>;

async fn subscribe(rt: &mut Rt) -> Events {
    rt.get_container_events(GetEventsRequest {})
        .await
        .unwrap_or_else(|e| panic!("GetContainerEvents: {e}"))
        .into_inner()
}

/// Reads `events` until container `id`'s event of type `last`; returns that container's
/// events (others' are skipped).
async fn events_until(
    events: &mut Events,
    id: &str,
    last: ContainerEventType,
) -> Vec<ContainerEventResponse> {
    let mut seen = Vec::new();
    let deadline = Duration::from_secs(60);
    tokio::time::timeout(deadline, async {
        loop {
            let e = events
                .message()
                .await
                .unwrap_or_else(|e| panic!("event stream failed: {e}"))
                .expect("event stream ended");
            if e.container_id != id {
                continue;
            }
            let done = e.container_event_type == last as i32;
            seen.push(e);
            if done {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {last:?} for {id} within {deadline:?}; got {seen:#?}"));
    seen
}

fn own_status<'a>(e: &'a ContainerEventResponse, id: &str) -> Option<&'a ContainerStatus> {
    e.containers_statuses.iter().find(|s| s.id == id)
}

/// The four events of a whole lifecycle, in order, and nothing else.
fn assert_lifecycle(events: &[ContainerEventResponse]) {
    use ContainerEventType as T;
    let kinds: Vec<i32> = events.iter().map(|e| e.container_event_type).collect();
    assert_eq!(
        kinds,
        [
            T::ContainerCreatedEvent as i32,
            T::ContainerStartedEvent as i32,
            T::ContainerStoppedEvent as i32,
            T::ContainerDeletedEvent as i32,
        ],
        "{events:#?}"
    );
}

/// The checks both subscribers' sequences must pass.
fn check_sequence(events: &[ContainerEventResponse], id: &str, pod_id: &str, pod_uid: &str) {
    assert_lifecycle(events);
    for pair in events.windows(2) {
        assert!(pair[0].created_at <= pair[1].created_at, "{events:#?}");
    }
    for e in events {
        assert!(
            e.created_at > 1_600_000_000_000_000_000,
            "created_at in ns: {e:?}"
        );
        let sandbox = e.pod_sandbox_status.as_ref().expect("pod sandbox status");
        assert_eq!(sandbox.id, pod_id);
        assert_eq!(sandbox.metadata.as_ref().unwrap().uid, pod_uid);
    }
    let state = |i: usize| own_status(&events[i], id).map(|s| s.state);
    assert_eq!(state(0), Some(ContainerState::ContainerCreated as i32));
    assert_eq!(state(1), Some(ContainerState::ContainerRunning as i32));
    assert!(own_status(&events[1], id).unwrap().started_at > 0);
    let stopped = own_status(&events[2], id).expect("status in the stopped event");
    assert_eq!(stopped.state, ContainerState::ContainerExited as i32);
    assert_eq!(stopped.exit_code, 3, "{stopped:?}");
    assert!(stopped.finished_at >= stopped.started_at);
    assert!(own_status(&events[3], id).is_none(), "deleted yet listed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_subscribers_see_created_started_stopped_deleted_in_order_with_matching_statuses() {
    let registry = rootstock_test_e2e::registry::Registry::start().await;
    let (daemon, image) = daemon_with_busybox(&registry, "").await;
    loopback_network(&daemon).await;
    let mut rt = daemon.runtime().await;
    let (mut first, mut second) = (subscribe(&mut rt).await, subscribe(&mut rt).await);
    let mut pods = subscribe(&mut rt).await;
    let pod = pod_config("events", NamespaceMode::Container);
    let pod_uid = pod.metadata.as_ref().unwrap().uid.clone();
    let pod_id = run_pod(&mut rt, pod.clone()).await.unwrap();
    // Exits by itself a moment after start: the stop is noticed with no RPC in flight.
    let id = start_container(
        &mut rt,
        &pod_id,
        &pod,
        container_config("ends", &image, &["sh", "-c", "sleep 1; exit 3"]),
    )
    .await;
    let until_stopped =
        events_until(&mut first, &id, ContainerEventType::ContainerStoppedEvent).await;
    assert_eq!(until_stopped.len(), 3, "{until_stopped:#?}");

    // PodSandboxStatus as evented PLEG reads it: a timestamp and every container's status.
    let status = pod_status(&mut rt, &pod_id).await;
    assert!(
        status.timestamp >= until_stopped[2].created_at,
        "{status:?}"
    );
    let listed = status
        .containers_statuses
        .iter()
        .find(|s| s.id == id)
        .expect("the container in PodSandboxStatus");
    assert_eq!(listed.state, ContainerState::ContainerExited as i32);

    rt.remove_container(RemoveContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    let mut all = until_stopped;
    all.extend(events_until(&mut first, &id, ContainerEventType::ContainerDeletedEvent).await);
    check_sequence(&all, &id, &pod_id, &pod_uid);
    let other = events_until(&mut second, &id, ContainerEventType::ContainerDeletedEvent).await;
    check_sequence(&other, &id, &pod_id, &pod_uid);
    stop_pod(&mut rt, &pod_id).await;
    remove_pod(&mut rt, &pod_id).await;

    // The sandbox's own events, as containerd sends them: the container id is the pod's.
    let pod_events = events_until(
        &mut pods,
        &pod_id,
        ContainerEventType::ContainerDeletedEvent,
    )
    .await;
    assert_lifecycle(&pod_events);
    let state = |e: &ContainerEventResponse| e.pod_sandbox_status.as_ref().unwrap().state;
    assert_eq!(state(&pod_events[1]), PodSandboxState::SandboxReady as i32);
    assert_eq!(
        state(&pod_events[2]),
        PodSandboxState::SandboxNotready as i32
    );
    assert_eq!(
        pod_events[3]
            .pod_sandbox_status
            .as_ref()
            .unwrap()
            .metadata
            .as_ref()
            .unwrap()
            .uid,
        pod_uid
    );
}

/// A channel whose stream flow-control window is tiny: once a stream has delivered
/// `window` bytes the client has not read, the server can send it nothing more — a kubelet
/// that stopped reading.
async fn stalled_channel(socket: &Path) -> Channel {
    let socket = socket.to_owned();
    Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .initial_stream_window_size(Some(1024))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .unwrap()
}

/// Creates and removes `n` containers; returns each CreateContainer's latency.
async fn churn(
    rt: &mut Rt,
    pod_id: &str,
    pod: &PodSandboxConfig,
    image: &str,
    n: usize,
) -> Vec<Duration> {
    let mut took = Vec::new();
    for i in 0..n {
        let started = Instant::now();
        let id = create_container(
            rt,
            pod_id,
            pod,
            container_config(&format!("churn-{i}"), image, &["sleep", "60"]),
        )
        .await
        .unwrap_or_else(|e| panic!("CreateContainer: {e}"));
        took.push(started.elapsed());
        rt.remove_container(RemoveContainerRequest { container_id: id })
            .await
            .unwrap();
    }
    took
}

fn mean(d: &[Duration]) -> Duration {
    d.iter().sum::<Duration>() / d.len().max(1) as u32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_is_dropped_and_does_not_slow_create_container() {
    let registry = rootstock_test_e2e::registry::Registry::start().await;
    let (daemon, image) = daemon_with_busybox(&registry, "[events]\nsubscriber_buffer = 8\n").await;
    loopback_network(&daemon).await;
    let mut rt = daemon.runtime().await;
    let pod = pod_config("slowsub", NamespaceMode::Container);
    let pod_id = run_pod(&mut rt, pod.clone()).await.unwrap();
    // A reader that keeps up is never dropped.
    let mut reader = subscribe(&mut rt).await;
    let reading = tokio::spawn(async move {
        let mut n = 0usize;
        while let Ok(Some(_)) = reader.message().await {
            n += 1;
        }
        n
    });
    const N: usize = 30;
    let baseline = churn(&mut rt, &pod_id, &pod, &image, N).await;

    let stalled_conn = stalled_channel(daemon.socket()).await;
    let mut stalled = subscribe(&mut RuntimeServiceClient::new(stalled_conn)).await;
    let with_stalled = churn(&mut rt, &pod_id, &pod, &image, N).await;
    println!(
        "CreateContainer mean over {N}: {:?} without, {:?} with a subscriber that never reads \
         (max {:?} / {:?})",
        mean(&baseline),
        mean(&with_stalled),
        baseline.iter().max().unwrap(),
        with_stalled.iter().max().unwrap(),
    );
    // A generous bound only: the runtime never waits for a subscriber, so a stalled one
    // costs nothing measurable (see the printed means).
    for d in &with_stalled {
        assert!(*d < Duration::from_secs(10), "CreateContainer took {d:?}");
    }
    assert!(
        daemon
            .log()
            .contains("dropping a container event subscriber"),
        "the stalled subscriber was not dropped; log:\n{}",
        daemon.log()
    );
    // Reading now: what was queued before the drop, then the reason.
    let err = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match stalled.message().await {
                Ok(Some(_)) => {}
                Ok(None) => panic!("the stream ended without saying why"),
                Err(status) => return status,
            }
        }
    })
    .await
    .expect("the stalled stream neither ended nor failed");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
    assert!(err.message().contains("behind"), "{err}");

    stop_pod(&mut rt, &pod_id).await;
    remove_pod(&mut rt, &pod_id).await;
    drop(rt);
    drop(daemon);
    let read = reading.await.unwrap();
    assert!(read >= 4 * N, "the reading subscriber saw {read} events");
}

const CRICTL: &str = "/usr/local/bin/crictl";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crictl_events_prints_the_events_of_a_pod_started_beside_it() {
    if !Path::new(CRICTL).exists() {
        eprintln!("skipped: {CRICTL} (cri-tools' crictl) is not installed");
        return;
    }
    let registry = rootstock_test_e2e::registry::Registry::start().await;
    let (daemon, image) = daemon_with_busybox(&registry, "").await;
    loopback_network(&daemon).await;
    let endpoint = format!("unix://{}", daemon.socket().display());
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut crictl = std::process::Command::new(CRICTL)
        .args(["--runtime-endpoint", &endpoint, "events", "-o", "json"])
        .stdout(out.reopen().unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // crictl subscribes asynchronously: wait until the daemon counts it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut rt = daemon.runtime().await;
    let pod = pod_config("crictl-events", NamespaceMode::Container);
    let pod_id = run_pod(&mut rt, pod.clone()).await.unwrap();
    let id = start_container(
        &mut rt,
        &pod_id,
        &pod,
        container_config("beside", &image, &["sleep", "60"]),
    )
    .await;
    stop_pod(&mut rt, &pod_id).await;
    remove_pod(&mut rt, &pod_id).await;
    let wanted = [
        "CONTAINER_CREATED_EVENT",
        "CONTAINER_STARTED_EVENT",
        "CONTAINER_STOPPED_EVENT",
        "CONTAINER_DELETED_EVENT",
    ];
    let deadline = Instant::now() + Duration::from_secs(15);
    let text = loop {
        let text = std::fs::read_to_string(out.path()).unwrap();
        if wanted.iter().all(|w| text.contains(w)) || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = crictl.kill();
    let _ = crictl.wait();
    for w in wanted {
        assert!(text.contains(w), "crictl events printed no {w}:\n{text}");
    }
    assert!(
        text.contains(&id),
        "crictl events did not name {id}:\n{text}"
    );
    assert!(text.contains("crictl-events"), "no pod name:\n{text}");
}
