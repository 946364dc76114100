//! `shadowlun bench …`: benchmarks that compare against a baseline measured in the same run.

use std::time::{Duration, Instant};

use provider::testing::MemoryArray;
use provider::{HardwareProvider, ShadowlunProvider};
use serde::Serialize;
use vss::{BusType, LunInfo, SnapshotContext, VssId};

/// One row of a benchmark table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub measure: String,
    pub baseline: String,
    pub baseline_us: f64,
    pub value_us: f64,
    pub ratio: f64,
    /// `<= 2.0` or `>= 0.8`
    pub target: String,
    pub pass: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub name: String,
    pub machine: String,
    pub rows: Vec<Row>,
}

impl Report {
    pub fn print(&self, json: bool) -> anyhow::Result<()> {
        if json {
            return crate::output::json(self);
        }
        println!("{} ({})", self.name, self.machine);
        let rows: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| {
                vec![
                    r.measure.clone(),
                    r.baseline.clone(),
                    format!("{:.1} µs", r.baseline_us),
                    format!("{:.1} µs", r.value_us),
                    format!("{:.2}×", r.ratio),
                    r.target.clone(),
                    if r.pass { "pass".into() } else { "FAIL".into() },
                ]
            })
            .collect();
        crate::output::table(
            &[
                "MEASURE",
                "BASELINE",
                "BASELINE p50",
                "VALUE p50",
                "RATIO",
                "TARGET",
                "",
            ],
            &rows,
        );
        Ok(())
    }
}

/// A one-line description of the machine.
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

/// Median of `n` timed runs of `f` (after one warm-up), in microseconds.
pub fn median_us(n: usize, mut f: impl FnMut() -> Duration) -> f64 {
    f();
    let mut v: Vec<f64> = (0..n).map(|_| f().as_secs_f64() * 1e6).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn row(
    measure: &str,
    baseline: &str,
    base: f64,
    value: f64,
    max_ratio: Option<f64>,
    min_ratio: Option<f64>,
) -> Row {
    let ratio = value / base.max(1e-9);
    let (target, pass) = match (max_ratio, min_ratio) {
        (Some(m), _) => (format!("≤ {m}×"), ratio <= m),
        (_, Some(m)) => (format!("≥ {m}×"), ratio >= m),
        _ => ("-".into(), true),
    };
    Row {
        measure: measure.into(),
        baseline: baseline.into(),
        baseline_us: base,
        value_us: value,
        ratio,
        target,
        pass,
    }
}

const HOST: &str = "iqn.1991-05.com.microsoft:bench";

fn luns(san: &MemoryArray, n: usize) -> Vec<LunInfo> {
    (0..n)
        .map(|_| {
            let id = san.create_lun(4096, &[HOST]);
            LunInfo::from_identity(&san.identity(&id).expect("created"), BusType::ISCSI)
                .expect("valid")
        })
        .collect()
}

/// Times one full creation up to Commit; returns (AreLunsSupported, Commit) durations.
fn one_set(
    p: &ShadowlunProvider<provider::testing::MemoryArrayClient>,
    infos: &[LunInfo],
) -> (Duration, Duration) {
    let set = VssId::new_v4();
    let devices: Vec<String> = (0..infos.len()).map(|i| format!("disk{i}")).collect();
    let mut v = infos.to_vec();
    let t = Instant::now();
    assert!(
        p.are_luns_supported(SnapshotContext::BACKUP, &devices, &mut v)
            .expect("supported")
    );
    let support = t.elapsed();
    p.begin_prepare_snapshot(
        set,
        VssId::new_v4(),
        SnapshotContext::BACKUP,
        &devices,
        &mut v,
    )
    .expect("prepare");
    p.end_prepare_snapshots(set).expect("end prepare");
    p.pre_commit_snapshots(set).expect("precommit");
    let t = Instant::now();
    p.commit_snapshots(set).expect("commit");
    let commit = t.elapsed();
    p.abort_snapshots(set).expect("abort");
    (support, commit)
}

/// The provider core against the in-memory array: its own cost, without network or engine.
pub fn provider_core() -> Report {
    let mut rows = Vec::new();
    let measure = |n: usize| {
        let san = MemoryArray::new();
        let p = ShadowlunProvider::new(san.client(HOST));
        let infos = luns(&san, n);
        let mut support = Vec::new();
        let mut commit = Vec::new();
        for _ in 0..200 {
            let (s, c) = one_set(&p, &infos);
            support.push(s);
            commit.push(c);
        }
        let mut si = support.into_iter();
        let mut ci = commit.into_iter();
        (
            median_us(199, || si.next().expect("200 runs")),
            median_us(199, || ci.next().expect("200 runs")),
        )
    };
    let (s1, c1) = measure(1);
    let (s64, c64) = measure(64);
    rows.push(row(
        "AreLunsSupported, 64 LUNs",
        "same, 1 LUN",
        s1,
        s64,
        None,
        None,
    ));
    // The double copies each LUN's bytes at commit, so its cost grows with the LUN count;
    // the ≤ 2× target applies to the real array (`bench vss`), not to this double.
    rows.push(row(
        "CommitSnapshots, 64-LUN set",
        "same, 1-LUN set",
        c1,
        c64,
        None,
        None,
    ));
    Report {
        name: "provider core against the in-memory array".into(),
        machine: machine(),
        rows,
    }
}
