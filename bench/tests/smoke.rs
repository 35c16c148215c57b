//! The benchmark's smoke mode (rootstock only, two iterations, one handler, small images), so
//! that `make test` keeps `make bench` from rotting: every figure must be a value, not a
//! failure. Nothing is asserted about the figures themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use rootstock_bench::{self as bench, Kind, Options, Outcome};

#[tokio::test(flavor = "multi_thread")]
async fn smoke_run_measures_every_family_on_rootstock() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let opts = Options::smoke(workspace);
    let report = bench::run(opts.clone()).await;

    let run = report
        .run_of(Kind::Rootstock)
        .expect("rootstock was measured");
    assert_eq!(run.failure, None);
    assert!(report.run_of(Kind::Containerd).is_none());
    let failed: Vec<String> = run
        .measures
        .iter()
        .filter_map(|m| match &m.outcome {
            Outcome::Failed(why) => Some(format!("{}: {why}", m.key)),
            Outcome::Value(_) => None,
        })
        .collect();
    assert!(failed.is_empty(), "failed figures:\n{}", failed.join("\n"));

    let keys: Vec<&str> = run.measures.iter().map(|m| m.key.as_str()).collect();
    let handler = &opts.handlers[0];
    let n = opts.concurrent;
    let m = opts.many_pods;
    for key in [
        "daemon idle RSS".to_owned(),
        "daemon idle PSS".to_owned(),
        format!("pod start median ({handler})"),
        format!("pod start p90 ({handler})"),
        format!("pod stop+remove median ({handler})"),
        format!("pod stop+remove p90 ({handler})"),
        format!("{n} pods started at once: wall ({handler})"),
        format!("{n} pods started at once: CPU per pod ({handler})"),
        format!("{n} pods stopped+removed at once: wall ({handler})"),
        format!("floor: pod start median ({handler})"),
        format!("floor: pod start median, rootstock over it, paired ({handler})"),
        format!("floor: {n} pods started at once: wall ({handler})"),
        format!("floor: {n} pods started at once: wall, rootstock over it, paired ({handler})"),
        format!("floor: {n} pods started at once: CPU per pod ({handler})"),
        format!(
            "floor: {n} pods started at once: CPU per pod, rootstock over it, paired ({handler})"
        ),
        format!("memory per running pod: RSS ({handler})"),
        format!("memory per running pod: PSS ({handler})"),
        format!("memory per running pod: processes ({handler})"),
        format!("{m} pods: started at once, wall ({handler})"),
        format!("{m} pods: daemon RSS ({handler})"),
        format!("{m} pods: memory per pod, RSS ({handler})"),
        format!("{m} pods: memory per pod, PSS ({handler})"),
        format!("{m} pods: ListPodSandbox median ({handler})"),
        format!("{m} pods: ListContainers median ({handler})"),
    ] {
        assert!(keys.contains(&key.as_str()), "no row {key:?} in {keys:#?}");
    }
    // The image families' rows, by the prefix of each family.
    for family in ["cold pull", "small-file pull", "disk", "depth"] {
        assert!(
            keys.iter().any(|k| k.starts_with(family)),
            "no {family} row in {keys:#?}"
        );
    }
    // Each started pod runs its workload under one monitor: the runtime adds processes.
    let processes = run
        .measures
        .iter()
        .find(|m| m.key == format!("memory per running pod: processes ({handler})"))
        .unwrap();
    assert!(
        matches!(processes.outcome, Outcome::Value(v) if v >= 1.0),
        "{processes:?}"
    );

    let table = report.markdown();
    assert!(table.contains("| row | unit | rootstock | containerd | rootstock/containerd |"));
    let saved = opts
        .results_dir
        .join(report.unix_time.to_string())
        .join("results.json");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&saved).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", saved.display()));
    assert_eq!(json["rows"].as_array().unwrap().len(), report.rows().len());
}
