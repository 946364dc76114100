//! `shadowlun bench array` on its real path with tiny sizes and durations: the daemon, its
//! engine LUN written full through the target, snapshots through the provider, the file LUN
//! and (when asked) tgt. The numbers mean nothing at this size; what is checked is that every
//! row is there and measured. The tgt variant needs `tgtd` and `tgtadm`, so it is ignored in
//! the plain test run and run by `scripts/ci.d/30-iscsi.sh`.

use std::time::Duration;

use lab::array_bench::{BenchOptions, run};
use lab::report::Report;

fn tiny(with_tgt: bool) -> BenchOptions {
    BenchOptions {
        dir: std::env::temp_dir(),
        size_mib: 4,
        duration: Duration::from_millis(30),
        runs: 1,
        snapshots: 3,
        with_tgt,
        only: None,
    }
}

const LOADS: [&str; 4] = [
    "seq read 64 KiB QD8",
    "seq write 64 KiB QD8",
    "random read 4 KiB QD32",
    "random write 4 KiB QD32",
];
const PHASES: [&str; 3] = ["", ", right after a snapshot", ", 3 snapshots"];

/// The row with exactly this measure and baseline, whose numbers are all positive.
fn measured<'a>(r: &'a Report, measure: &str, baseline: &str) -> &'a lab::report::Row {
    let row = r
        .rows
        .iter()
        .find(|x| x.measure == measure && x.baseline_name == baseline)
        .unwrap_or_else(|| panic!("no row {measure:?} against {baseline:?} in\n{r}"));
    let (lo, hi) = row.range.expect("a range");
    assert!(
        row.value > 0.0 && lo > 0.0 && lo <= row.value && row.value <= hi,
        "{measure}: {row:?}"
    );
    let base = row.baseline.expect("a baseline");
    assert!(base > 0.0 && row.ratio.is_some_and(|x| x > 0.0), "{row:?}");
    assert!(row.goal.is_some() && row.met.is_some(), "{row:?}");
    row
}

#[test]
fn every_workload_of_every_phase_is_measured_against_the_file_lun() {
    let r = run(&tiny(false)).expect("bench");
    for phase in PHASES {
        for load in LOADS {
            measured(&r, &format!("{load}{phase}: engine LUN"), "file LUN");
        }
    }
    measured(
        &r,
        "random write 4 KiB QD32 right after a snapshot: engine LUN",
        "engine LUN, no snapshot",
    );
    // Without tgt there is nothing to weigh the target's CPU time against.
    assert!(
        !r.rows.iter().any(|x| x.baseline_name.starts_with("tgt")),
        "{r}"
    );
    assert_eq!(r.rows.len(), LOADS.len() * PHASES.len() + 1, "{r}");
}

#[test]
#[ignore = "needs tgtd; run by scripts/ci.d/30-iscsi.sh"]
fn with_tgt_every_row_has_its_throughput_and_cpu_time_against_tgt() {
    let r = run(&tiny(true)).expect("bench");
    for phase in PHASES {
        for load in LOADS {
            measured(&r, &format!("{load}{phase}: engine LUN"), "file LUN");
            measured(&r, &format!("{load}{phase}: engine LUN"), "tgt");
            // CPU time can round to zero ticks in a run this short: only its presence and
            // its goal are checked.
            let cpu = r
                .rows
                .iter()
                .find(|x| {
                    x.measure == format!("{load}{phase}: target CPU, engine LUN")
                        && x.baseline_name == "tgtd"
                })
                .unwrap_or_else(|| panic!("no CPU row for {load}{phase} in\n{r}"));
            assert!(cpu.value >= 0.0 && cpu.baseline.is_some_and(|b| b >= 0.0));
            assert!(cpu.unit.starts_with("CPU s per"), "{cpu:?}");
        }
    }
}
