//! The one report shape every benchmark prints: a table of measures, each against a
//! baseline measured in the same run, with the ratio and the goal it must meet.

use std::fmt;

use serde::Serialize;

/// Which way a ratio must go, and how far.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Goal {
    /// `value / baseline` at least this (throughputs).
    AtLeast(f64),
    /// `value / baseline` at most this (times, latencies).
    AtMost(f64),
}

impl Goal {
    pub fn met_by(self, ratio: f64) -> bool {
        match self {
            Goal::AtLeast(x) => ratio >= x,
            Goal::AtMost(x) => ratio <= x,
        }
    }
}

impl fmt::Display for Goal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Goal::AtLeast(x) => write!(f, ">= {x}x"),
            Goal::AtMost(x) => write!(f, "<= {x}x"),
        }
    }
}

/// One measure against its baseline.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub measure: String,
    /// Unit of `value` and `baseline` (`MB/s`, `IOPS`, `ms`, `µs`).
    pub unit: String,
    pub value: f64,
    /// None when the baseline could not be measured in this run (a tool missing).
    pub baseline: Option<f64>,
    pub baseline_name: String,
    /// `value / baseline`.
    pub ratio: Option<f64>,
    /// None for rows shown for context only.
    pub goal: Option<Goal>,
    /// Whether the ratio meets the goal; None without a goal or a baseline.
    pub met: Option<bool>,
    /// Lowest and highest of the runs `value` is the median of, when it is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range: Option<(f64, f64)>,
    /// Lowest and highest of the runs `baseline` is the median of, when it is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_range: Option<(f64, f64)>,
}

impl Row {
    /// A row whose ratio and verdict follow from the numbers.
    pub fn new(
        measure: impl Into<String>,
        unit: impl Into<String>,
        value: f64,
        baseline_name: impl Into<String>,
        baseline: Option<f64>,
        goal: Option<Goal>,
    ) -> Row {
        let ratio = baseline.map(|b| if b > 0.0 { value / b } else { f64::INFINITY });
        let met = match (goal, ratio) {
            (Some(g), Some(r)) => Some(g.met_by(r)),
            _ => None,
        };
        Row {
            measure: measure.into(),
            unit: unit.into(),
            value,
            baseline,
            baseline_name: baseline_name.into(),
            ratio,
            goal,
            met,
            range: None,
            baseline_range: None,
        }
    }

    /// The same row with the lowest and highest run of its value and of its baseline.
    pub fn with_ranges(
        mut self,
        range: Option<(f64, f64)>,
        baseline_range: Option<(f64, f64)>,
    ) -> Row {
        self.range = range;
        self.baseline_range = baseline_range;
        self
    }
}

/// A benchmark's results.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What was measured, one line.
    pub title: String,
    /// The machine it ran on ([`machine`]).
    pub machine: String,
    pub rows: Vec<Row>,
    /// Lines printed under the table (set-up, time taken, caveats).
    pub notes: Vec<String>,
}

impl Report {
    /// True when every row with a goal met it.
    pub fn all_met(&self) -> bool {
        self.rows.iter().all(|r| r.met != Some(false))
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} ({})", self.title, self.machine)?;
        let w = self
            .rows
            .iter()
            .map(|r| r.measure.chars().count())
            .max()
            .unwrap_or(0)
            .max("measure".len());
        let num = |v: f64| {
            if v.abs() >= 100.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.2}")
            }
        };
        let dash = || "-".to_string();
        let span = |r: Option<(f64, f64)>| {
            r.map(|(lo, hi)| format!("{}-{}", num(lo), num(hi)))
                .unwrap_or_else(dash)
        };
        // Ranges get columns of their own only when some row has one.
        let ranged = self
            .rows
            .iter()
            .any(|r| r.range.is_some() || r.baseline_range.is_some());
        let rw = self
            .rows
            .iter()
            .flat_map(|r| [span(r.range).len(), span(r.baseline_range).len()])
            .max()
            .unwrap_or(0)
            .max("baseline min-max".len());
        let ranges = |a: &str, b: &str| {
            if ranged {
                format!(" {a:>rw$} {b:>rw$}")
            } else {
                String::new()
            }
        };
        writeln!(
            f,
            "{:<w$} {:>12} {:>12} {:>9} {:>9} {:>4}{}  unit (baseline)",
            "measure",
            "value",
            "baseline",
            "ratio",
            "goal",
            "met",
            ranges("min-max", "baseline min-max")
        )?;
        for r in &self.rows {
            writeln!(
                f,
                "{:<w$} {:>12} {:>12} {:>9} {:>9} {:>4}{}  {} ({})",
                r.measure,
                num(r.value),
                r.baseline.map(num).unwrap_or_else(dash),
                r.ratio.map(|x| format!("{x:.2}x")).unwrap_or_else(dash),
                r.goal.map(|g| g.to_string()).unwrap_or_else(dash),
                match r.met {
                    Some(true) => "yes",
                    Some(false) => "NO",
                    None => "-",
                },
                ranges(&span(r.range), &span(r.baseline_range)),
                r.unit,
                r.baseline_name
            )?;
        }
        for n in &self.notes {
            writeln!(f, "{n}")?;
        }
        Ok(())
    }
}

/// A one-line description of the machine: CPUs visible to the process and the CPU model.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cpus} CPU(s), {model}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_and_verdicts_follow_the_goal_direction() {
        let r = Row::new(
            "read",
            "MB/s",
            150.0,
            "tgt",
            Some(100.0),
            Some(Goal::AtLeast(1.5)),
        );
        assert_eq!((r.ratio, r.met), (Some(1.5), Some(true)));
        let r = Row::new(
            "read",
            "MB/s",
            140.0,
            "tgt",
            Some(100.0),
            Some(Goal::AtLeast(1.5)),
        );
        assert_eq!(r.met, Some(false));
        let r = Row::new(
            "commit",
            "ms",
            30.0,
            "1 LUN",
            Some(10.0),
            Some(Goal::AtMost(2.0)),
        );
        assert_eq!((r.ratio, r.met), (Some(3.0), Some(false)));
        let r = Row::new("ctx", "MB/s", 1.0, "tgt", None, Some(Goal::AtLeast(1.0)));
        assert_eq!((r.ratio, r.met), (None, None));
        let r = Row::new("ctx", "MB/s", 1.0, "raw", Some(2.0), None);
        assert_eq!((r.ratio, r.met), (Some(0.5), None));
    }

    #[test]
    fn the_table_fits_the_longest_measure_and_says_which_rows_fail() {
        let report = Report {
            title: "t".into(),
            machine: "m".into(),
            rows: vec![
                Row::new(
                    "short",
                    "MB/s",
                    10.0,
                    "b",
                    Some(10.0),
                    Some(Goal::AtLeast(1.5)),
                ),
                Row::new(
                    "a measure whose name is longer than the usual column width",
                    "ms",
                    5.0,
                    "b",
                    Some(10.0),
                    Some(Goal::AtMost(1.0)),
                ),
            ],
            notes: vec!["note".into()],
        };
        assert!(!report.all_met());
        let text = report.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        // Columns line up: "value" ends at the same place on every row.
        let end = |l: &str, w: &str| l.find(w).map(|i| i + w.len());
        let width = lines[1].find("value").unwrap() + "value".len();
        assert_eq!(end(lines[2], "10.00"), Some(width), "{text}");
        assert_eq!(end(lines[3], "5.00"), Some(width), "{text}");
        assert!(lines[2].contains(" NO "), "{text}");
        assert!(lines[3].contains(" yes "), "{text}");
        assert_eq!(lines[4], "note");
        assert!(
            !lines[1].contains("min-max"),
            "no range column without ranges: {text}"
        );
    }

    #[test]
    fn ranges_get_columns_and_rows_without_one_show_a_dash() {
        let report = Report {
            title: "t".into(),
            machine: "m".into(),
            rows: vec![
                Row::new("ranged", "IOPS", 150.0, "b", Some(100.0), None)
                    .with_ranges(Some((120.0, 180.0)), Some((90.0, 110.0))),
                Row::new("plain", "IOPS", 5.0, "b", Some(10.0), None),
            ],
            notes: vec![],
        };
        let text = report.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].contains("min-max") && lines[1].contains("baseline min-max"));
        assert!(
            lines[2].contains(" 120-180 ") && lines[2].contains(" 90.00-110 "),
            "{text}"
        );
        assert!(lines[3].contains(" - "), "{text}");
        let json = serde_json::to_value(&report.rows[0]).unwrap();
        assert_eq!(json["range"], serde_json::json!([120.0, 180.0]));
        assert!(
            serde_json::to_value(&report.rows[1])
                .unwrap()
                .get("range")
                .is_none()
        );
    }
}
