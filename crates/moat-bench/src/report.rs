//! The side-by-side table, as aligned text or as Markdown.

use std::fmt::Write as _;

use crate::brokers::BrokerKind;
use crate::scenarios::{Better, Figure, Outcome, Scenario};

/// One scenario's results on every broker that ran it.
#[derive(Debug)]
pub struct ScenarioReport {
    /// Which scenario.
    pub scenario: Scenario,
    /// Human title with the scenario's parameters.
    pub title: String,
    /// Per broker, its outcome or why it failed.
    pub runs: Vec<(BrokerKind, Result<Outcome, String>)>,
}

impl ScenarioReport {
    fn figure(&self, broker: BrokerKind, metric: &str) -> Option<&Figure> {
        self.runs
            .iter()
            .find(|(kind, _)| *kind == broker)
            .and_then(|(_, outcome)| outcome.as_ref().ok())
            .and_then(|outcome| outcome.figures.iter().find(|f| f.metric == metric))
    }

    /// Metrics in the order the first successful run reported them.
    fn metrics(&self) -> Vec<(&'static str, &'static str, Better)> {
        let mut metrics: Vec<(&'static str, &'static str, Better)> = Vec::new();
        for (_, outcome) in &self.runs {
            for figure in outcome.iter().flat_map(|o| &o.figures) {
                if !metrics.iter().any(|(m, _, _)| *m == figure.metric) {
                    metrics.push((figure.metric, figure.unit, figure.better));
                }
            }
        }
        metrics
    }

    fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        for (kind, outcome) in &self.runs {
            match outcome {
                Ok(outcome) => notes.extend(outcome.notes.iter().map(|n| format!("{kind}: {n}"))),
                Err(e) => notes.push(format!("{kind} failed: {e}")),
            }
        }
        notes
    }
}

/// A target from issue 2's "How we know", shown beside the figure it applies to. Only
/// reported, never asserted: timing is not a test.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Target {
    /// Moat/Mosquitto at least this.
    RatioAtLeast(f64),
    /// Moat/Mosquitto at most this.
    RatioAtMost(f64),
    /// Moat's own value at most this, in the figure's unit.
    MoatAtMost(f64, &'static str),
}

fn target(scenario: Scenario, metric: &str) -> Option<Target> {
    use Scenario::*;
    Some(match (scenario, metric) {
        (FanInQos0 | SecureNamespaces, "delivered") => Target::RatioAtLeast(3.5),
        (FanInQos1, "delivered") => Target::RatioAtLeast(4.0),
        (FanOut, "delivered") => Target::RatioAtLeast(10.0),
        (Latency | LatencyPaired | LatencyRounds, "p50 latency" | "p99 latency") => {
            Target::RatioAtMost(1.0)
        }
        // 4 KB and 20 KB, in KiB.
        (IdleTcp, "broker RSS per connection") => Target::MoatAtMost(4000.0 / 1024.0, "4 KB"),
        (IdleTls, "broker RSS per connection") => Target::MoatAtMost(20_000.0 / 1024.0, "20 KB"),
        (Handshakes, "broker CPU per handshake") => Target::MoatAtMost(400.0, "400 µs"),
        _ => return None,
    })
}

impl Target {
    fn describe(self, moat: Option<f64>, mosquitto: Option<f64>) -> String {
        let ratio = match (moat, mosquitto) {
            (Some(moat), Some(mosquitto)) if mosquitto != 0.0 => Some(moat / mosquitto),
            _ => None,
        };
        let (text, met) = match self {
            Self::RatioAtLeast(min) => (format!("≥ {min}×"), ratio.map(|r| r >= min)),
            Self::RatioAtMost(max) => (format!("≤ {max}×"), ratio.map(|r| r <= max)),
            Self::MoatAtMost(max, text) => (format!("≤ {text}"), moat.map(|v| v <= max)),
        };
        match met {
            Some(true) => format!("{text} met"),
            Some(false) => format!("{text} NOT met"),
            None => text,
        }
    }
}

struct Row {
    cells: [String; 7],
}

const HEADER: [&str; 7] = [
    "metric",
    "unit",
    "Mosquitto",
    "Moat",
    "Moat/Mosquitto",
    "better",
    "issue 2 target",
];

fn rows(report: &ScenarioReport) -> Vec<Row> {
    report
        .metrics()
        .into_iter()
        .map(|(metric, unit, better)| {
            let mosquitto = report.figure(BrokerKind::Mosquitto, metric);
            let moat = report.figure(BrokerKind::Moat, metric);
            let ratio = match (moat, mosquitto) {
                (Some(moat), Some(mosquitto)) if mosquitto.value != 0.0 => {
                    format!("{:.2}×", moat.value / mosquitto.value)
                }
                _ => "—".to_owned(),
            };
            let value =
                |f: Option<&Figure>| f.map_or("—".to_owned(), |f| format_value(f.value, unit));
            Row {
                cells: [
                    metric.to_owned(),
                    unit.to_owned(),
                    value(mosquitto),
                    value(moat),
                    ratio,
                    match better {
                        Better::Higher => "higher",
                        Better::Lower => "lower",
                        Better::Neither => "",
                    }
                    .to_owned(),
                    target(report.scenario, metric).map_or_else(String::new, |t| {
                        t.describe(moat.map(|f| f.value), mosquitto.map(|f| f.value))
                    }),
                ],
            }
        })
        .collect()
}

/// Aligned text tables, one per scenario.
pub fn text(reports: &[ScenarioReport]) -> String {
    let mut out = String::new();
    for report in reports {
        let rows = rows(report);
        let mut widths = HEADER.map(|h| h.chars().count());
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(&row.cells) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let _ = writeln!(out, "\n== {} ==", report.title);
        let line = |cells: &[String; 7]| {
            let mut line = String::new();
            for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
                let pad = width - cell.chars().count();
                if matches!(i, 0 | 1 | 5 | 6) {
                    let _ = write!(line, "{cell}{}  ", " ".repeat(pad));
                } else {
                    let _ = write!(line, "{}{cell}  ", " ".repeat(pad));
                }
            }
            line.trim_end().to_owned()
        };
        let _ = writeln!(out, "{}", line(&HEADER.map(str::to_owned)));
        for row in &rows {
            let _ = writeln!(out, "{}", line(&row.cells));
        }
        for note in report.notes() {
            let _ = writeln!(out, "note: {note}");
        }
    }
    out
}

/// One Markdown table for every scenario, then the notes.
pub fn markdown(reports: &[ScenarioReport]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| scenario | metric | unit | Mosquitto | Moat | Moat/Mosquitto | better | issue 2 target |"
    );
    let _ = writeln!(out, "|---|---|---|--:|--:|--:|---|---|");
    let mut notes = Vec::new();
    for report in reports {
        for (i, row) in rows(report).iter().enumerate() {
            let scenario = if i == 0 { report.title.as_str() } else { "" };
            let _ = writeln!(out, "| {scenario} | {} |", row.cells.join(" | "));
        }
        notes.extend(report.notes());
    }
    if !notes.is_empty() {
        out.push('\n');
        for note in notes {
            let _ = writeln!(out, "- {note}");
        }
    }
    out
}

/// Formats `value` to a precision that suits `unit`.
pub fn format_value(value: f64, unit: &str) -> String {
    match unit {
        "msg/s" | "conn/s" | "1/s" => thousands(value.round() as u64),
        "µs" if value < 10.0 => format!("{value:.2}"),
        "µs" if value < 1000.0 => format!("{value:.1}"),
        "µs" => thousands(value.round() as u64),
        "cores" => format!("{value:.2}"),
        _ => format!("{value:.1}"),
    }
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_judged_on_ratio_or_moat_value() {
        let at_least = Target::RatioAtLeast(3.5);
        assert_eq!(at_least.describe(Some(700.0), Some(200.0)), "≥ 3.5× met");
        assert_eq!(
            at_least.describe(Some(600.0), Some(200.0)),
            "≥ 3.5× NOT met"
        );
        assert_eq!(at_least.describe(None, Some(200.0)), "≥ 3.5×");
        let at_most = Target::MoatAtMost(400.0, "400 µs");
        assert_eq!(at_most.describe(Some(390.0), None), "≤ 400 µs met");
        assert_eq!(at_most.describe(Some(410.0), Some(1.0)), "≤ 400 µs NOT met");
    }

    #[test]
    fn values_are_formatted_per_unit() {
        assert_eq!(format_value(215_301.4, "msg/s"), "215,301");
        assert_eq!(format_value(999.0, "msg/s"), "999");
        assert_eq!(format_value(4.567, "µs"), "4.57");
        assert_eq!(format_value(123.45, "µs"), "123.5");
        assert_eq!(format_value(41_234.0, "µs"), "41,234");
        assert_eq!(format_value(1.234, "cores"), "1.23");
        assert_eq!(format_value(3.26, "KiB"), "3.3");
    }
}
