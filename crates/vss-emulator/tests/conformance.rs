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
