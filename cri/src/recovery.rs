//! Start-up reconciliation: the one place that rebuilds the daemon's view after a restart
//! and settles what a crash left between the runtime, CNI and the image store (containerd's
//! `internal/cri/server/restart.go`). Runs before the socket is bound, in this order:
//!
//! 1. **Runtime**: sandboxes and containers from their records; exits recorded by the
//!    monitors while the daemon was down; half-created containers removed
//!    ([`Runtime::open`], `runtime/src/recovery.rs`).
//!    Sandboxes whose RunPodSandbox never answered are removed, CNI DEL first (the RPC's
//!    effect is absent; kubelet's retry starts afresh).
//! 2. **CNI**: DEL for every cached attachment whose sandbox is gone or not Ready (a crash
//!    interrupted its StopPodSandbox or RemovePodSandbox; a reboot, or a loss of its
//!    namespaces, made it NotReady): its IP would otherwise stay allocated. The IPs of the
//!    ready sandboxes are read once here, so PodSandboxStatus serves them from memory.
//! 3. **Store**: image tree leases whose container is gone are given back (a crash between
//!    RemoveContainer's teardown and its release), so their trees can be collected.
//!
//! Each step logs and goes on when an object fails: one broken object never stops the
//! daemon from serving the others (STYLE rule 7).

use std::collections::{HashMap, HashSet};

use anyhow::Context;
use rootstock_cni::CniManager;
use rootstock_imagestore::ImageStore;
use rootstock_runtime::{Runtime, RuntimeOptions, SandboxId, SandboxState};
use tracing::{info, warn};

use crate::blocking::blocking;
use crate::config::Config;

/// What the daemon serves from after recovery.
pub struct Recovered {
    /// The runtime, with every sandbox and container loaded.
    pub rt: Runtime,
    /// Pod IPs by sandbox id, for every ready sandbox with a network attachment.
    pub pod_ips: HashMap<String, Vec<String>>,
}

/// Runs the three steps (see the module doc).
pub async fn recover(
    config: &Config,
    store: &ImageStore,
    cni: &CniManager,
) -> anyhow::Result<Recovered> {
    let (rt, unfinished) = open_runtime(config).await?;
    let rt = remove_unfinished(cni, rt, unfinished).await?;
    release_orphan_networks(cni, &rt).await;
    let pod_ips = pod_ips(cni, &rt).await;
    release_orphan_leases(store, &rt).await;
    Ok(Recovered { rt, pod_ips })
}

/// Opens the runtime over `<state_dir>` and `<root_dir>/containers` and rebuilds every
/// sandbox and container from disk (running containers stay running: their monitors outlived
/// the previous daemon).
async fn open_runtime(config: &Config) -> anyhow::Result<(Runtime, Vec<SandboxId>)> {
    let opts = RuntimeOptions {
        state_dir: config.state_dir.clone(),
        layers_dir: config.root_dir.join("containers"),
        config: config.runtime.clone(),
    };
    let (rt, report) = blocking(move || Runtime::open(opts))
        .await
        .context("opening the runtime")?;
    info!(
        loaded = report.loaded.len(),
        cleaned_up = report.cleaned_up.len(),
        torn = report.torn.len(),
        previous_boot = report.previous_boot.len(),
        unreadable = report.unreadable.len(),
        started = report.started.len(),
        sandboxes = rt.list_sandboxes().len(),
        unfinished_sandboxes = report.sandboxes.unfinished.len(),
        lost_namespaces = report.sandboxes.lost_namespaces.len(),
        "runtime state recovered"
    );
    for id in &report.started {
        info!(container = %id, "recovery: container started before the crash marked running");
    }
    for id in &report.cleaned_up {
        info!(container = %id, "recovery: removed a half-created container");
    }
    for id in &report.torn {
        warn!(container = %id, "recovery: removed a container whose record a power loss tore");
    }
    for id in &report.previous_boot {
        info!(container = %id, "recovery: container of a previous boot marked exited");
    }
    for (id, why) in &report.unreadable {
        warn!(container = %id, "recovery: unreadable container record: {why}");
    }
    Ok((rt, report.sandboxes.unfinished))
}

/// Removes the sandboxes whose RunPodSandbox never answered: CNI DEL (from the cache entry
/// written before ADD, so a half-done ADD is undone too), then the runtime's teardown. One
/// that fails stays (NotReady after its teardown) for kubelet to remove.
async fn remove_unfinished(
    cni: &CniManager,
    rt: Runtime,
    ids: Vec<SandboxId>,
) -> anyhow::Result<Runtime> {
    let mut released = Vec::new();
    for id in ids {
        match cni.teardown(id.as_str()).await {
            Ok(()) => released.push(id),
            Err(e) => warn!(sandbox = %id, "recovery: CNI teardown of an unfinished sandbox: {e}"),
        }
    }
    // The runtime goes into the blocking task and comes back with the outcomes.
    let (rt, outcomes) = blocking(move || {
        let outcomes: Vec<_> = released
            .into_iter()
            .map(|id| {
                let r = rt.remove_sandbox(&id);
                (id, r)
            })
            .collect();
        Ok::<_, crate::error::CriError>((rt, outcomes))
    })
    .await
    .context("removing unfinished sandboxes")?;
    for (id, r) in outcomes {
        match r {
            Ok(()) => {
                info!(sandbox = %id, "recovery: removed a sandbox whose RunPodSandbox never answered")
            }
            Err(e) => warn!(sandbox = %id, "recovery: removing an unfinished sandbox: {e}"),
        }
    }
    Ok(rt)
}

/// CNI DEL for every cached attachment whose sandbox no longer exists or is not Ready (its
/// namespaces are gone: a reboot, or a loss within this boot). Failures are logged; the
/// cache entry stays, so the next start-up (or StopPodSandbox) retries.
async fn release_orphan_networks(cni: &CniManager, rt: &Runtime) {
    let ids = match cni.attached_sandbox_ids().await {
        Ok(ids) => ids,
        Err(e) => {
            warn!("recovery: listing CNI attachments: {e}");
            return;
        }
    };
    let ready: HashSet<String> = rt
        .list_sandboxes()
        .into_iter()
        .filter(|s| s.record.state == SandboxState::Ready)
        .map(|s| s.record.id.to_string())
        .collect();
    for id in ids.into_iter().filter(|id| !ready.contains(id)) {
        match cni.teardown(&id).await {
            Ok(()) => info!(sandbox = %id, "recovery: released the network of a removed sandbox"),
            Err(e) => warn!(sandbox = %id, "recovery: CNI teardown: {e}"),
        }
    }
}

/// The IPs of every ready sandbox with its own network, from the CNI result cache.
async fn pod_ips(cni: &CniManager, rt: &Runtime) -> HashMap<String, Vec<String>> {
    let mut ips = HashMap::new();
    let ready = rt
        .list_sandboxes()
        .into_iter()
        .filter(|s| s.record.state == SandboxState::Ready && !s.record.host_network);
    for sandbox in ready {
        let id = sandbox.record.id.to_string();
        match cni.attachment(&id).await {
            Ok(Some(status)) => {
                ips.insert(id, status.ips.iter().map(ToString::to_string).collect());
            }
            Ok(None) => {}
            Err(e) => warn!(sandbox = %id, "recovery: reading the pod's CNI result: {e}"),
        }
    }
    ips
}

/// Gives back image tree leases whose container no longer exists (lease ids are container
/// ids).
async fn release_orphan_leases(store: &ImageStore, rt: &Runtime) {
    let live: HashSet<String> = rt
        .container_ids()
        .into_iter()
        .map(|id| id.to_string())
        .collect();
    match store.reconcile_leases(&live).await {
        Ok(done) => {
            for id in &done.released {
                info!(lease = %id, "recovery: released the tree lease of a removed container");
            }
            for (id, why) in &done.failed {
                warn!(lease = %id, "recovery: releasing a tree lease: {why}");
            }
        }
        Err(e) => warn!("recovery: listing image tree leases: {e}"),
    }
}
