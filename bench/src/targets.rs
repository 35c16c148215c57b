//! Issue #18's targets, checked in the run itself: each row as the issue defines it (crun's
//! rows against containerd with runc, memory and files per second as absolute bounds), so
//! that the acceptance table is `make bench`'s output rather than a note's arithmetic.

use super::Outcome;
use super::report::{Report, Row, number};

/// What a target row asks of rootstock's figure.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Goal {
    /// At most this fraction of containerd's figure.
    Ratio(f64),
    AtMost(f64),
    AtLeast(f64),
}

/// One row of the table: rootstock's key, containerd's (for a ratio), the goal, and
/// the keys of the row's floor and of rootstock's paired excess over it, where measured
/// ([`crate::floor`]).
struct Target {
    what: String,
    ours: Key,
    peer: Option<Key>,
    goal: Goal,
    floor: Option<[Key; 2]>,
}

/// A row's key, or the start and end of one whose middle names a fixture's size.
enum Key {
    Exact(String),
    Around(&'static str, &'static str),
}

impl Key {
    fn find<'a>(&self, rows: &'a [Row]) -> Option<&'a Row> {
        rows.iter().find(|r| match self {
            Key::Exact(k) => r.key == *k,
            Key::Around(start, end) => r.key.starts_with(start) && r.key.ends_with(end),
        })
    }
}

/// The rows for the handlers measured; runc is the peer's handler throughout.
fn targets(handlers: &[String], concurrent: usize, many: usize) -> Vec<Target> {
    let mut out = Vec::new();
    for h in handlers {
        let (start, stop, burst) = match h.as_str() {
            "runc" => (0.25, 0.30, 0.25),
            "crun" => (0.20, 0.30, 0.20),
            _ => continue,
        };
        let burst_what = format!("{concurrent} pods started at once");
        let burst_key = format!("{burst_what}: wall");
        for (what, key, goal, floored) in [
            ("pod start median", "pod start median", start, true),
            ("stop+remove median", "pod stop+remove median", stop, false),
            (burst_what.as_str(), burst_key.as_str(), burst, true),
        ] {
            out.push(Target {
                what: format!("{what}, {h}"),
                ours: Key::Exact(format!("{key} ({h})")),
                peer: Some(Key::Exact(format!("{key} (runc)"))),
                goal: Goal::Ratio(goal),
                floor: floored.then(|| {
                    [
                        Key::Exact(format!("floor: {key} ({h})")),
                        Key::Exact(format!("floor: {key}, rootstock over it, paired ({h})")),
                    ]
                }),
            });
        }
    }
    out.push(Target {
        what: "cold pull, median".into(),
        ours: Key::Around("cold pull (", "): median"),
        peer: Some(Key::Around("cold pull (", "): median")),
        goal: Goal::Ratio(0.40),
        floor: None,
    });
    if let Some(h) = handlers.first() {
        for (what, key, bound) in [
            (
                "per-pod RSS",
                format!("memory per running pod: RSS ({h})"),
                512.0,
            ),
            (
                "per-pod PSS",
                format!("memory per running pod: PSS ({h})"),
                150.0,
            ),
            (
                "per-pod RSS, many pods",
                format!("{many} pods: memory per pod, RSS ({h})"),
                512.0,
            ),
            (
                "per-pod PSS, many pods",
                format!("{many} pods: memory per pod, PSS ({h})"),
                150.0,
            ),
            ("daemon RSS, idle", "daemon idle RSS".into(), 10.0),
            (
                "daemon RSS, many pods",
                format!("{many} pods: daemon RSS ({h})"),
                16.0,
            ),
        ] {
            out.push(Target {
                what: what.into(),
                ours: Key::Exact(key),
                peer: None,
                goal: Goal::AtMost(bound),
                floor: None,
            });
        }
    }
    out.push(Target {
        what: "small-file unpack".into(),
        ours: Key::Around("small-file pull (", "): files/s at median"),
        peer: None,
        goal: Goal::AtLeast(15_000.0),
        floor: None,
    });
    out
}

fn value(o: &Option<Outcome>) -> Option<f64> {
    match o {
        Some(Outcome::Value(v)) => Some(*v),
        _ => None,
    }
}

/// The targets table in markdown: each row's figures, ratio, floor (and the floor's own
/// ratio: what the row would be with a runtime that cost nothing; and rootstock's excess
/// over the floor, the median of pairs taken a moment apart), goal and whether it is met
/// ("–" where a figure is missing).
pub(super) fn markdown(report: &Report) -> String {
    let rows = report.rows();
    let opts = &report.options;
    let mut out = String::from(
        "\n### #18 targets (crun's rows against containerd with runc)\n\n\
         | target | unit | rootstock | containerd | ratio | floor | floor ratio | over floor, paired \
         | goal | met |\n\
         |---|---|--:|--:|--:|--:|--:|--:|---|---|\n",
    );
    for t in targets(&opts.handlers, opts.concurrent, opts.many_pods) {
        let ours_row = t.ours.find(&rows);
        let ours = ours_row.and_then(|r| value(&r.rootstock));
        let peer = t
            .peer
            .as_ref()
            .and_then(|k| k.find(&rows))
            .and_then(|r| value(&r.containerd));
        let [floor, over] = [0, 1].map(|i| {
            t.floor
                .as_ref()
                .and_then(|k| k[i].find(&rows))
                .and_then(|r| value(&r.rootstock))
        });
        let to_peer = |v: Option<f64>| match (v, peer) {
            (Some(v), Some(p)) if p != 0.0 => Some(v / p),
            _ => None,
        };
        let (ratio, floor_ratio) = (to_peer(ours), to_peer(floor));
        let (goal, met) = match t.goal {
            Goal::Ratio(g) => (format!("≤ {g:.2}×"), ratio.map(|r| r <= g)),
            Goal::AtMost(b) => (format!("≤ {}", number(b)), ours.map(|o| o <= b)),
            Goal::AtLeast(b) => (format!("≥ {}", number(b)), ours.map(|o| o >= b)),
        };
        let show = |v: Option<f64>| v.map_or("–".to_owned(), number);
        let times = |r: Option<f64>| r.map_or("–".to_owned(), |r| format!("{r:.2}"));
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {goal} | {} |\n",
            t.what,
            ours_row.map_or("–", |r| r.unit),
            show(ours),
            show(peer),
            times(ratio),
            show(floor),
            times(floor_ratio),
            over.map_or("–".to_owned(), |o| format!("{o:+.1}")),
            met.map_or("–", |m| if m { "yes" } else { "no" }),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::path::Path;

    use super::*;
    use crate::report::tests::run;
    use crate::{Kind, Measure, Options};

    #[test]
    fn crun_is_held_against_containerd_with_runc_floors_likewise_and_bounds_are_absolute() {
        let mut opts = Options::smoke(Path::new("/nonexistent"));
        opts.handlers = vec!["runc".into(), "crun".into()];
        let mut report = Report::new(&opts);
        report.runtimes = vec![
            run(
                Kind::Rootstock,
                vec![
                    Measure::value("pod start median (runc)", "ms", 40.0),
                    Measure::value("pod start median (crun)", "ms", 25.0),
                    Measure::value("floor: pod start median (runc)", "ms", 35.0),
                    Measure::value(
                        "floor: pod start median, rootstock over it, paired (runc)",
                        "ms",
                        -0.4,
                    ),
                    Measure::value("daemon idle RSS", "MiB", 10.5),
                    Measure::value(
                        "small-file pull (9 x 1 KiB, 1 layer): files/s at median",
                        "files/s",
                        15_001.0,
                    ),
                ],
            ),
            run(
                Kind::Containerd,
                vec![
                    Measure::value("pod start median (runc)", "ms", 125.0),
                    Measure::value("pod start median (crun)", "ms", 80.0),
                ],
            ),
        ];
        let table = markdown(&report);
        assert!(
            table.contains(
                "| pod start median, runc | ms | 40.0 | 125 | 0.32 | 35.0 | 0.28 | -0.4 | ≤ 0.25× | no |"
            ),
            "{table}"
        );
        assert!(
            table.contains(
                "| pod start median, crun | ms | 25.0 | 125 | 0.20 | – | – | – | ≤ 0.20× | yes |"
            ),
            "{table}"
        );
        assert!(
            table.contains("| daemon RSS, idle | MiB | 10.5 | – | – | – | – | – | ≤ 10.0 | no |"),
            "{table}"
        );
        assert!(table.contains("| ≥ 15000 | yes |"), "{table}");
        assert!(
            table.contains("| cold pull, median | – | – | – | – | – | – | – | ≤ 0.40× | – |"),
            "{table}"
        );
    }
}
