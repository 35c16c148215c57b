//! The report: figures of both runtimes paired by key into rows with their ratio, a markdown
//! table, JSON, and the machine facts that go with them.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{Kind, Options, Outcome, RuntimeRun, peer};

/// One row of the table: a key both runtimes measured (or one did), and their ratio.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub key: String,
    pub unit: &'static str,
    pub rootstock: Option<Outcome>,
    pub containerd: Option<Outcome>,
    /// rootstock / containerd, where both are values and containerd's is not zero.
    pub ratio: Option<f64>,
}

/// The figures of one run of the benchmark, paired into rows by key.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// When the run started (seconds since the epoch): the results' directory name.
    pub unix_time: u64,
    pub options: Options,
    /// Versions and machine facts, `(what, value)`.
    pub environment: Vec<(String, String)>,
    pub runtimes: Vec<RuntimeRun>,
    pub elapsed_secs: f64,
}

impl Report {
    pub fn new(opts: &Options) -> Self {
        Self {
            unix_time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            options: opts.clone(),
            environment: environment(opts),
            runtimes: Vec::new(),
            elapsed_secs: 0.0,
        }
    }

    /// The rows, in the order rootstock measured them (then any key only containerd has).
    pub fn rows(&self) -> Vec<Row> {
        let mut rows: Vec<Row> = Vec::new();
        for run in &self.runtimes {
            // A key the runtimes before did not measure goes right after this runtime's
            // previous row, so a family's rows stay together.
            let mut after: Option<usize> = None;
            for m in &run.measures {
                let i = match rows.iter().position(|r| r.key == m.key) {
                    Some(i) => i,
                    None => {
                        let at = after.map_or(rows.len(), |a| a + 1);
                        rows.insert(
                            at,
                            Row {
                                key: m.key.clone(),
                                unit: m.unit,
                                rootstock: None,
                                containerd: None,
                                ratio: None,
                            },
                        );
                        at
                    }
                };
                after = Some(i);
                let slot = match run.kind {
                    Kind::Rootstock => &mut rows[i].rootstock,
                    Kind::Containerd => &mut rows[i].containerd,
                };
                if slot.is_some() {
                    eprintln!("bench[{}] {}: measured twice", run.kind.name(), m.key);
                    continue;
                }
                *slot = Some(m.outcome.clone());
            }
        }
        for row in &mut rows {
            if let (Some(Outcome::Value(r)), Some(Outcome::Value(c))) =
                (&row.rootstock, &row.containerd)
                && *c != 0.0
                && (r / c).is_finite()
            {
                row.ratio = Some(r / c);
            }
        }
        rows
    }

    /// The measurements of `kind`, if it ran.
    pub fn run_of(&self, kind: Kind) -> Option<&RuntimeRun> {
        self.runtimes.iter().find(|r| r.kind == kind)
    }

    /// The table (and a header naming what ran where) as markdown.
    pub fn markdown(&self) -> String {
        let mode = if self.options.peer {
            "full"
        } else {
            "smoke, rootstock only"
        };
        let mut out = format!("## rootstock vs containerd ({mode})\n\n");
        for (what, value) in &self.environment {
            out.push_str(&format!("- {what}: {value}\n"));
        }
        out.push_str(&format!(
            "- handlers: {}; {} runs per latency figure; {} pods at once (median of {} bursts); \
             {} pods for memory; {} pods in the many-pods family\n",
            self.options.handlers.join(", "),
            self.options.runs,
            self.options.concurrent,
            self.options.bursts,
            self.options.memory_pods,
            self.options.many_pods
        ));
        let took: Vec<String> = self
            .runtimes
            .iter()
            .map(|r| format!("{} {:.0} s", r.kind.name(), r.elapsed_secs))
            .collect();
        out.push_str(&format!(
            "- took {:.0} s in all ({})\n\n",
            self.elapsed_secs,
            took.join(", ")
        ));
        out.push_str("| row | unit | rootstock | containerd | rootstock/containerd |\n");
        out.push_str("|---|---|--:|--:|--:|\n");
        for row in self.rows() {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                cell(&row.key),
                row.unit,
                self.cell_of(Kind::Rootstock, &row.rootstock),
                self.cell_of(Kind::Containerd, &row.containerd),
                row.ratio.map(|r| format!("{r:.2}")).unwrap_or("–".into())
            ));
        }
        // Judged only in a full run: the smoke run's debug build and small fixtures are not
        // what the issue's bounds are about.
        if self.options.peer {
            out.push_str(&super::targets::markdown(self));
        }
        out
    }

    fn cell_of(&self, kind: Kind, outcome: &Option<Outcome>) -> String {
        match (outcome, self.run_of(kind)) {
            (Some(Outcome::Value(v)), _) => number(*v),
            (Some(Outcome::Failed(why)), _) => cell(&format!("failed: {}", shorten(why))),
            (None, None) => "not run".into(),
            (
                None,
                Some(RuntimeRun {
                    failure: Some(why), ..
                }),
            ) => cell(&format!("failed: {}", shorten(why))),
            (None, Some(_)) => "–".into(),
        }
    }

    /// Writes `results.md` and `results.json` into `dir/<unix time>/` and returns that dir.
    pub fn save(&self, dir: &Path) -> std::io::Result<PathBuf> {
        #[derive(Serialize)]
        struct Json<'a> {
            #[serde(flatten)]
            report: &'a Report,
            rows: Vec<Row>,
        }
        let dir = dir.join(self.unix_time.to_string());
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("results.md"), self.markdown())?;
        let json = serde_json::to_vec_pretty(&Json {
            report: self,
            rows: self.rows(),
        })
        .map_err(std::io::Error::other)?;
        std::fs::write(dir.join("results.json"), json)?;
        Ok(dir)
    }
}

/// A figure with the decimals its size deserves.
pub(super) fn number(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    match v.abs() {
        a if a >= 100.0 => format!("{v:.0}"),
        a if a >= 10.0 => format!("{v:.1}"),
        _ => format!("{v:.2}"),
    }
}

/// Text safe in a markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// A reason cut to about 160 characters: its start and its end, where the cause usually is
/// (`CreateContainer: failed to create … : mount options is too long`). The JSON keeps all.
fn shorten(why: &str) -> String {
    const KEEP: usize = 80;
    let chars: Vec<char> = why.chars().collect();
    if chars.len() <= 2 * KEEP {
        return why.to_owned();
    }
    let head: String = chars[..KEEP].iter().collect();
    let tail: String = chars[chars.len() - KEEP..].iter().collect();
    format!("{head} … {tail}")
}

/// Versions and machine facts for the report's header.
fn environment(opts: &Options) -> Vec<(String, String)> {
    let first_line = |program: &str, args: &[&str]| -> String {
        std::process::Command::new(program)
            .args(args)
            .output()
            .ok()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned()
            })
            .filter(|l| !l.is_empty())
            .unwrap_or_else(|| format!("({program} not found)"))
    };
    let mut env = vec![
        (
            "date".into(),
            first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        ),
        ("kernel".into(), first_line("uname", &["-r"])),
        (
            "cpus".into(),
            std::thread::available_parallelism()
                .map(|n| n.to_string())
                .unwrap_or_default(),
        ),
        (
            "rootstock".into(),
            first_line(
                &rootstock_test_e2e::daemon::rootstock_bin()
                    .display()
                    .to_string(),
                &["--version"],
            ),
        ),
    ];
    if opts.peer {
        env.push((
            "containerd".into(),
            first_line(peer::CONTAINERD_BIN, &["--version"]),
        ));
    }
    for handler in &opts.handlers {
        env.push((handler.clone(), first_line(handler, &["--version"])));
    }
    env
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::Measure;

    /// A run of `kind` that measured `measures` (for the report's and the targets' tests).
    pub(crate) fn run(kind: Kind, measures: Vec<Measure>) -> RuntimeRun {
        RuntimeRun {
            measures,
            ..RuntimeRun::new(kind)
        }
    }

    #[test]
    fn rows_pair_keys_keep_families_together_and_give_ratios() {
        let mut report = Report::new(&Options::smoke(Path::new("/nonexistent")));
        report.runtimes = vec![
            run(
                Kind::Rootstock,
                vec![
                    Measure::value("a", "ms", 10.0),
                    Measure::value("monitor", "KiB", 1.0),
                    Measure::value("b", "ms", 5.0),
                ],
            ),
            run(
                Kind::Containerd,
                vec![
                    Measure::value("a", "ms", 20.0),
                    Measure::value("shim", "KiB", 2.0),
                    Measure::failed("b", "ms", "x".repeat(100) + " | the cause"),
                ],
            ),
        ];
        let rows = report.rows();
        let keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, ["a", "shim", "monitor", "b"]);
        assert_eq!(rows[0].ratio, Some(0.5));
        assert_eq!(rows[3].ratio, None);
        let table = report.markdown();
        assert!(table.contains("| a | ms | 10.0 | 20.0 | 0.50 |"), "{table}");
        assert!(table.contains("| shim | KiB | – | 2.00 | – |"), "{table}");
        assert!(table.contains("\\| the cause |"), "{table}");
    }

    #[test]
    fn a_runtime_that_did_not_start_fails_every_row_and_one_not_run_says_so() {
        let mut report = Report::new(&Options::smoke(Path::new("/nonexistent")));
        report.runtimes = vec![run(Kind::Rootstock, vec![Measure::value("a", "ms", 1.0)])];
        assert!(
            report
                .markdown()
                .contains("| a | ms | 1.00 | not run | – |")
        );
        let mut containerd = RuntimeRun::new(Kind::Containerd);
        containerd.failure = Some("no socket".into());
        report.runtimes.push(containerd);
        assert!(
            report
                .markdown()
                .contains("| a | ms | 1.00 | failed: no socket | – |")
        );
    }
}
