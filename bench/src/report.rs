//! Figures of each run, their median with min–max over repeated runs, and
//! the ratio of our figures to each peer's, as a Markdown table and JSON.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Named figures of one run, in the order they are reported.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Figures {
    pub values: Vec<Figure>,
    /// Remarks in words: failures and anything else worth knowing about the run.
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    /// Whether a larger value is better (throughput) or worse (latency).
    pub higher_is_better: bool,
}

impl Figures {
    pub fn push(&mut self, name: &str, value: f64, higher_is_better: bool) {
        self.values.push(Figure {
            name: name.to_string(),
            value,
            higher_is_better,
        });
    }

    /// Adds p50, p99 and max of a histogram of microseconds, in milliseconds.
    pub fn push_latency(&mut self, name: &str, histogram: &Histogram<u64>) {
        if histogram.is_empty() {
            self.notes.push(format!("{name}: nothing measured"));
            return;
        }
        for (label, quantile) in [("p50", 0.5), ("p99", 0.99)] {
            let value = histogram.value_at_quantile(quantile) as f64 / 1000.0;
            self.push(&format!("{name} {label} ms"), value, false);
        }
        self.push(&format!("{name} max ms"), histogram.max() as f64 / 1000.0, false);
    }

    /// Returns the figure named `name`, if the run has one.
    pub fn get(&self, name: &str) -> Option<&Figure> {
        self.values.iter().find(|figure| figure.name == name)
    }
}

/// Every run of one scenario against one target.
#[derive(Debug, Clone, Serialize)]
pub struct Series {
    pub scenario: String,
    pub target: String,
    pub ours: bool,
    pub runs: Vec<Figures>,
    /// The reason the target could not run the scenario, if it could not.
    pub skipped: Option<String>,
}

/// A figure's median and range over a series' runs.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub name: String,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub higher_is_better: bool,
}

impl Series {
    /// Summaries of every figure, in the order of the first run.
    pub fn summaries(&self) -> Vec<Summary> {
        let Some(first) = self.runs.first() else {
            return Vec::new();
        };
        first
            .values
            .iter()
            .map(|figure| {
                let mut values: Vec<f64> = self
                    .runs
                    .iter()
                    .filter_map(|run| run.get(&figure.name))
                    .map(|figure| figure.value)
                    .collect();
                values.sort_by(f64::total_cmp);
                Summary {
                    name: figure.name.clone(),
                    median: median(&values),
                    min: values.first().copied().unwrap_or(f64::NAN),
                    max: values.last().copied().unwrap_or(f64::NAN),
                    higher_is_better: figure.higher_is_better,
                }
            })
            .collect()
    }
}

/// Returns the median of sorted values; the mean of the middle two for an even count.
fn median(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        count if count % 2 == 1 => sorted[count / 2],
        count => (sorted[count / 2 - 1] + sorted[count / 2]) / 2.0,
    }
}

/// The machine, commit, date and command of a measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Setting {
    pub command: String,
    pub date: String,
    pub cpu: String,
    pub cores: usize,
    pub commit: String,
    pub runs: usize,
}

/// Writes the results as Markdown: per scenario, one row per target and
/// figure with median and range, and the ratio ours/peer beside each peer.
pub fn markdown(setting: &Setting, series: &[Series]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "- Command: `{}`", setting.command);
    let _ = writeln!(out, "- Date: {}", setting.date);
    let _ = writeln!(out, "- CPU: {} ({} cores)", setting.cpu, setting.cores);
    let _ = writeln!(out, "- Commit: {}", setting.commit);
    let runs = if setting.runs == 1 {
        "1 run".to_string()
    } else {
        format!("{} runs", setting.runs)
    };
    let _ = writeln!(
        out,
        "- Each figure is the median of {runs}, with min–max; ratio = ours / peer, medians of the same run."
    );

    let mut scenarios: Vec<&str> = Vec::new();
    for entry in series {
        if !scenarios.contains(&entry.scenario.as_str()) {
            scenarios.push(&entry.scenario);
        }
    }
    for scenario in scenarios {
        let rows: Vec<&Series> = series.iter().filter(|entry| entry.scenario == scenario).collect();
        let _ = writeln!(out, "\n### {scenario}\n");
        let _ = writeln!(out, "| target | figure | median | min–max | ratio ours/target |");
        let _ = writeln!(out, "| --- | --- | ---: | ---: | ---: |");
        // Ratios compare against the first of our series, which for ingest
        // is the peers' durability.
        let ours = rows.iter().find(|entry| entry.ours && entry.skipped.is_none());
        let ours_summaries = ours.map(|entry| entry.summaries()).unwrap_or_default();
        for entry in &rows {
            if let Some(reason) = &entry.skipped {
                let _ = writeln!(out, "| {} | not run: {reason} | | | |", entry.target);
                continue;
            }
            for summary in entry.summaries() {
                let ratio = if entry.ours {
                    String::new()
                } else {
                    ours_summaries
                        .iter()
                        .find(|figure| figure.name == summary.name)
                        // A ratio of two changes in percent means nothing.
                        .filter(|_| summary.median != 0.0 && !summary.name.ends_with('%'))
                        .map(|figure| format!("{:.2}", figure.median / summary.median))
                        .unwrap_or_default()
                };
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {}–{} | {} |",
                    entry.target,
                    summary.name,
                    number(summary.median),
                    number(summary.min),
                    number(summary.max),
                    ratio
                );
            }
            let mut notes: Vec<&String> = entry.runs.iter().flat_map(|run| &run.notes).collect();
            notes.dedup();
            for note in notes {
                let _ = writeln!(out, "| {} | note: {note} | | | |", entry.target);
            }
        }
    }
    out
}

/// Prints a figure with the precision it deserves.
fn number(value: f64) -> String {
    if value.is_nan() {
        "n/a".to_string()
    } else if value.fract() == 0.0 || value.abs() >= 100.0 {
        format!("{value:.0}")
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[1.0, 2.0, 9.0]), 2.0);
        assert_eq!(median(&[1.0, 2.0, 4.0, 9.0]), 3.0);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn ratios_divide_our_median_by_the_peer_median() {
        let run = |value| {
            let mut figures = Figures::default();
            figures.push("accepted/s", value, true);
            figures
        };
        let series = vec![
            Series {
                scenario: "ingest".to_string(),
                target: "ours".to_string(),
                ours: true,
                runs: vec![run(900.0), run(1000.0), run(5000.0)],
                skipped: None,
            },
            Series {
                scenario: "ingest".to_string(),
                target: "peer".to_string(),
                ours: false,
                runs: vec![run(100.0), run(250.0), run(200.0)],
                skipped: None,
            },
        ];
        let setting = Setting {
            command: "bench".to_string(),
            date: "today".to_string(),
            cpu: "cpu".to_string(),
            cores: 2,
            commit: "abc".to_string(),
            runs: 3,
        };
        let table = markdown(&setting, &series);
        assert!(table.contains("| ours | accepted/s | 1000 | 900–5000 |  |"), "{table}");
        assert!(
            table.contains("| peer | accepted/s | 200 | 100–250 | 5.00 |"),
            "{table}"
        );
    }
}
