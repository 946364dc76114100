//! The conformance catalogue against the in-process SAN and the reference provider.

use lab::reference::MemoryLabFactory;
use vss_emulator::conformance;

#[test]
fn every_catalogue_scenario_passes_against_the_reference_provider() {
    let report = conformance::run(&MemoryLabFactory, "");
    println!("{}", report.summary());
    for r in report.results.iter().filter(|r| !r.passed) {
        println!(
            "--- {} failed: {}\n{}",
            r.name,
            r.detail,
            vss_emulator::trace::Trace::render(&r.trace)
        );
    }
    assert_eq!(report.results.len(), conformance::catalogue().len());
    assert!(report.passed(), "failing scenarios:\n{}", report.summary());
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(
        json["results"].as_array().unwrap().len(),
        report.results.len()
    );
    let order = json["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "create.call_order_with_writers")
        .unwrap();
    let trace = order["trace"].as_array().unwrap();
    assert!(
        trace.iter().any(|e| e["kind"] == "call"
            && e["method"] == "CommitSnapshots"
            && e["result"] == "S_OK")
    );
    let support = &json["results"][0]["trace"];
    assert!(
        support
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["method"] == "AreLunsSupported")
    );
}

#[test]
fn every_catalogue_scenario_passes_against_the_shadowlun_provider() {
    let report = conformance::run(&lab::shadowlun_lab::ShadowlunLabFactory, "");
    println!("{}", report.summary());
    for r in report.results.iter().filter(|r| !r.passed) {
        println!(
            "--- {} failed: {}\n{}",
            r.name,
            r.detail,
            vss_emulator::trace::Trace::render(&r.trace)
        );
    }
    assert!(report.passed(), "failing scenarios:\n{}", report.summary());
}

#[test]
fn every_catalogue_scenario_passes_with_hosts_on_iscsi_over_loopback() {
    let report = conformance::run(&lab::iscsi_lab::IscsiLabFactory, "");
    println!("{}", report.summary());
    for r in report.results.iter().filter(|r| !r.passed) {
        println!(
            "--- {} failed: {}\n{}",
            r.name,
            r.detail,
            vss_emulator::trace::Trace::render(&r.trace)
        );
    }
    assert!(report.passed(), "failing scenarios:\n{}", report.summary());
}

#[test]
fn the_parts_of_the_catalogue_cover_it_once() {
    use std::collections::BTreeSet;
    let all = conformance::names("", None);
    assert_eq!(all.len(), conformance::selected(""));
    for of in [1, 2, 3] {
        let mut seen = BTreeSet::new();
        for index in 0..of {
            let part: conformance::Part = format!("{index}/{of}").parse().unwrap();
            for n in conformance::names("", Some(part)) {
                assert!(seen.insert(n), "{n} in two parts of {of}");
            }
        }
        assert_eq!(seen, all.iter().copied().collect(), "the {of} parts");
    }
    // A filter first, then the parts of what it selects.
    let abort = conformance::names("abort.", None);
    let halves: Vec<_> = (0..2)
        .flat_map(|i| conformance::names("abort.", Some(conformance::Part { index: i, of: 2 })))
        .collect();
    assert_eq!(halves.len(), abort.len());
    for bad in ["2/2", "1/0", "x/2", "1", ""] {
        assert!(bad.parse::<conformance::Part>().is_err(), "{bad}");
    }
}
