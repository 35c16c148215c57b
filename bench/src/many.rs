//! (h) A node with many pods (issue 18, acceptance 2): `opts.many_pods` pods (100 in the
//! full run) started at once on the first handler, as after a node's reboot when kubelet's
//! pod workers all start together; then what the runtime costs with them running and how
//! fast it answers the two calls kubelet's relist makes every second.

use std::time::{Duration, Instant};

use k8s_cri::v1::{ListContainersRequest, ListPodSandboxRequest};

use super::pods::{Baseline, ensure_images, start_at_once};
use super::{Ctx, Measure, Target, quantiles, remove_all_pods};

/// Calls of each list per latency figure.
const LIST_CALLS: usize = 20;

/// The rows of this family: start wall time, the daemon's memory, memory per pod, and the
/// median of ListPodSandbox and ListContainers, each over [`LIST_CALLS`] calls made one after
/// the other on one connection (kubelet's relist).
pub async fn many_pods(t: &Target, ctx: &Ctx) -> Vec<Measure> {
    let n = ctx.opts.many_pods;
    let handler = t.handlers.first().map(String::as_str).unwrap_or("runc");
    let keys = [
        (format!("{n} pods: started at once, wall ({handler})"), "ms"),
        (format!("{n} pods: daemon RSS ({handler})"), "MiB"),
        (format!("{n} pods: daemon PSS ({handler})"), "MiB"),
        (format!("{n} pods: memory per pod, RSS ({handler})"), "KiB"),
        (format!("{n} pods: memory per pod, PSS ({handler})"), "KiB"),
        (format!("{n} pods: ListPodSandbox median ({handler})"), "ms"),
        (format!("{n} pods: ListContainers median ({handler})"), "ms"),
    ];
    let result = measure(t, ctx, handler).await;
    remove_all_pods(t).await;
    match result {
        Ok(figures) => keys
            .into_iter()
            .zip(figures)
            .map(|((key, unit), v)| Measure::value(key, unit, v))
            .collect(),
        Err(why) => {
            eprintln!("bench[{}] {n} pods: {why}", t.kind.name());
            keys.into_iter()
                .map(|(key, unit)| Measure::failed(key, unit, why.clone()))
                .collect()
        }
    }
}

/// The seven figures, in the order of the keys.
async fn measure(t: &Target, ctx: &Ctx, handler: &str) -> Result<[f64; 7], String> {
    let n = ctx.opts.many_pods;
    if n == 0 {
        return Err("no pods (many_pods = 0)".into());
    }
    ensure_images(t, ctx).await?;
    let baseline = Baseline::take(t).await?;
    // One connection for every request, as kubelet's: HTTP/2 carries them side by side.
    let mut rt = t.runtime().await;
    let (up, _) = start_at_once(vec![rt.clone(); n], handler, &ctx.busybox, "bench-many").await?;
    let footprint = baseline.footprint(t, n, handler).await?;
    let (mut sandboxes, mut containers) = (Vec::new(), Vec::new());
    for _ in 0..LIST_CALLS {
        let started = Instant::now();
        let listed = rt
            .list_pod_sandbox(ListPodSandboxRequest { filter: None })
            .await
            .map_err(|e| format!("ListPodSandbox: {}", e.message()))?
            .into_inner()
            .items
            .len();
        sandboxes.push(started.elapsed());
        if listed < n {
            return Err(format!("ListPodSandbox lists {listed} pods of {n}"));
        }
        let started = Instant::now();
        rt.list_containers(ListContainersRequest { filter: None })
            .await
            .map_err(|e| format!("ListContainers: {}", e.message()))?;
        containers.push(started.elapsed());
    }
    let median =
        |samples: &[Duration]| quantiles(samples).map_or(f64::NAN, |(m, _)| m.as_secs_f64() * 1e3);
    eprintln!(
        "bench[{}] {n} pods ({handler}): started in {:.0} ms; daemon RSS {} KiB; \
         ListPodSandbox {:.2} ms, ListContainers {:.2} ms",
        t.kind.name(),
        up.as_secs_f64() * 1e3,
        footprint.daemon_rss_kib,
        median(&sandboxes),
        median(&containers),
    );
    Ok([
        up.as_secs_f64() * 1e3,
        footprint.daemon_rss_kib as f64 / 1024.0,
        footprint.daemon_pss_kib as f64 / 1024.0,
        footprint.per_pod[0],
        footprint.per_pod[1],
        median(&sandboxes),
        median(&containers),
    ])
}
