//! `shadowlun bench rbd` on a lab cluster (`scripts/ceph-lab`: the one `CEPH_CONF` names, or
//! one started for the test), briefly: every row must come out with positive numbers, and
//! nothing the run made may be left in the pool. Skipped, saying why, only where Ceph is not
//! installed (`SHADOWLUN_REQUIRE_CEPH=1` makes that a failure), like the other rbd tests.

use std::time::Duration;

use lab::rbd_bench::{RbdBenchOptions, run};
use rbd::lab::Lab;

#[test]
fn the_rbd_benchmark_measures_every_row_on_a_lab_cluster() {
    let Some(lab) = Lab::get() else { return };
    let before = lab.rbd(&["ls", "rbd"]);
    let report = run(&RbdBenchOptions {
        ceph_conf: Some(lab.conf().to_path_buf()),
        size_mib: 32,
        duration: Duration::from_millis(300),
        reps: 3,
        commits: 2,
        ..RbdBenchOptions::default()
    })
    .unwrap();
    let text = report.to_string();
    let tgt = std::path::Path::new(lab::tgt::RBD_BACKING_STORE).exists()
        && std::process::Command::new("tgtd")
            .arg("--help")
            .output()
            .is_ok();
    let perf = std::process::Command::new("iscsi-perf").output().is_ok();
    let loads = [
        "seq read 64 KiB QD8 (own initiator)",
        "seq write 64 KiB QD8 (own initiator)",
        "random read 4 KiB QD32 (own initiator)",
        "random write 4 KiB QD32 (own initiator)",
    ];
    let mut expected: Vec<(String, &str)> = Vec::new();
    if tgt {
        expected.extend(
            loads
                .iter()
                .map(|l| (l.to_string(), "tgt, rbd backing store")),
        );
        if perf {
            for l in [
                "seq read 64 KiB QD8 (iscsi-perf)",
                "random read 4 KiB QD32 (iscsi-perf)",
            ] {
                expected.push((l.to_string(), "tgt, rbd backing store"));
            }
        }
    } else {
        assert!(text.contains("rows against tgt skipped"), "{text}");
    }
    expected.extend(
        loads
            .iter()
            .map(|l| (format!("{l} vs rbd bench"), "rbd bench")),
    );
    for mode in ["idle", "under writes"] {
        for p in ["p50", "p99"] {
            for (n, luns) in [(1, "LUN"), (8, "LUNs"), (64, "LUNs")] {
                expected.push((format!("CommitSnapshots {n} {luns}, {mode}, {p}"), ""));
            }
        }
        expected.push((
            format!("CommitSnapshots 64 LUNs, {mode}, p99 vs 1 s"),
            "1 s",
        ));
    }
    let names: Vec<&str> = report.rows.iter().map(|r| r.measure.as_str()).collect();
    assert_eq!(
        names,
        expected.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        "{text}"
    );
    for (row, (_, baseline)) in report.rows.iter().zip(&expected) {
        assert!(row.value > 0.0 && row.value.is_finite(), "{text}");
        assert!(row.baseline_name.contains(baseline), "{text}");
        let single = row.measure.starts_with("CommitSnapshots 1 LUN");
        match row.baseline {
            Some(b) => assert!(b > 0.0 && b.is_finite() && !single, "{text}"),
            None => assert!(single, "only the 1-LUN rows have no baseline: {text}"),
        }
        if row.goal.is_some() {
            assert!(row.met.is_some(), "{text}");
        }
    }
    // The goals the rows carry.
    let goal = |name: &str| {
        report
            .rows
            .iter()
            .find(|r| r.measure == name)
            .and_then(|r| r.goal)
    };
    use lab::report::Goal;
    assert_eq!(
        goal("random write 4 KiB QD32 (own initiator) vs rbd bench"),
        Some(Goal::AtLeast(0.7))
    );
    assert_eq!(
        goal("CommitSnapshots 64 LUNs, under writes, p99"),
        Some(Goal::AtMost(3.0))
    );
    assert_eq!(
        goal("CommitSnapshots 64 LUNs, idle, p99 vs 1 s"),
        Some(Goal::AtMost(1.0))
    );
    if tgt {
        assert_eq!(
            goal("seq write 64 KiB QD8 (own initiator)"),
            Some(Goal::AtLeast(1.5))
        );
    }
    // The JSON form carries the same rows.
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["rows"].as_array().unwrap().len(), expected.len());
    // Everything the run made is gone: the pool lists what it listed before.
    assert_eq!(lab.rbd(&["ls", "rbd"]), before, "{text}");
}
