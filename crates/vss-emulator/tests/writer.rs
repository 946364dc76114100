//! The ledger writer over a host on the in-process SAN: freezes, thaws, and what its ledgers
//! prove.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lab::san::MemorySan;
use vss_emulator::Host;
use vss_emulator::writer::{
    LedgerWriter, Writer, WriterError, encode_record, read_ledger, verify_ledgers,
};

fn setup() -> (Arc<MemorySan>, Arc<Host>) {
    let san = MemorySan::new();
    san.create_lun(4 << 20, &["i"]).unwrap();
    let h = Host::new("h", san.host_storage("i"));
    h.rescan().unwrap();
    let d = "\\\\.\\PHYSICALDRIVE0".to_string();
    h.partition_disk(&d, &[1 << 20, 1 << 20]).unwrap();
    h.mount("E:", &[(d.clone(), 1)]).unwrap();
    h.mount("F:", &[(d, 2)]).unwrap();
    (san, h)
}

#[test]
fn frozen_writer_stops_and_ledgers_agree() {
    let (_san, h) = setup();
    let vols = vec!["E:".to_string(), "F:".to_string()];
    let w = LedgerWriter::start("ledger", 7, Arc::clone(&h), vols.clone(), Duration::ZERO).unwrap();
    assert!(w.wait_for(20, Duration::from_secs(5)));
    w.freeze(Duration::from_secs(5)).unwrap();
    let at = w.frozen_at().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(w.acknowledged(), at, "no transaction while frozen");
    let c = verify_ledgers(&h, &vols, 7, at, None).unwrap();
    assert!(c.consistent, "{:?}", c.problems);
    assert_eq!(c.ledgers[0].last, at);
    w.thaw().unwrap();
    assert!(w.wait_for(at + 5, Duration::from_secs(5)));
    let c = verify_ledgers(&h, &vols, 7, at, Some(at + 1)).unwrap();
    assert!(!c.consistent, "later transactions are detected");
    w.stop();
}

#[test]
fn corrupted_record_is_reported() {
    let (_san, h) = setup();
    for seq in 1..=3 {
        h.write_volume("E:", (seq - 1) * 512, &encode_record(1, 0, seq))
            .unwrap();
    }
    let mut bad = encode_record(1, 0, 4);
    bad[100] ^= 1;
    h.write_volume("E:", 3 * 512, &bad).unwrap();
    let l = read_ledger(&h, "E:", 1, 0).unwrap();
    assert_eq!(l.last, 3);
    assert_eq!(l.defects, vec!["record 4: checksum mismatch".to_string()]);
}

#[test]
fn freezing_a_stopped_writer_returns_at_once() {
    let (_san, h) = setup();
    let w = LedgerWriter::start("l", 2, Arc::clone(&h), vec!["E:".into()], Duration::ZERO).unwrap();
    w.stop();
    let t = Instant::now();
    w.freeze(Duration::from_secs(30)).unwrap();
    w.thaw().unwrap();
    assert!(t.elapsed() < Duration::from_secs(1));
    assert_eq!(w.frozen_at(), None);
}

#[test]
fn writer_thaws_itself_after_the_freeze_window() {
    let (_san, h) = setup();
    let w = LedgerWriter::start("l", 1, Arc::clone(&h), vec!["E:".into()], Duration::ZERO).unwrap();
    w.freeze(Duration::from_millis(30)).unwrap();
    let at = w.frozen_at().unwrap();
    assert!(w.wait_for(at + 3, Duration::from_secs(5)));
    assert_eq!(w.thaw(), Err(WriterError::Timeout("l".into())));
    w.stop();
}

#[test]
fn a_restarted_writer_replaces_a_torn_transaction_and_carries_on() {
    let (_san, h) = setup();
    let vols = vec!["E:".to_string(), "F:".to_string()];
    let w = LedgerWriter::start("l", 4, Arc::clone(&h), vols.clone(), Duration::ZERO).unwrap();
    assert!(w.wait_for(30, Duration::from_secs(5)));
    w.stop();
    let acked = w.acknowledged();
    // A transaction torn by a crash: on E: only.
    h.write_volume("E:", acked * 512, &encode_record(4, 0, acked + 1))
        .unwrap();
    assert!(
        !verify_ledgers(&h, &vols, 4, acked, None)
            .unwrap()
            .consistent
    );
    w.restart(acked).unwrap();
    assert!(w.wait_for(acked + 10, Duration::from_secs(5)));
    w.freeze(Duration::from_secs(5)).unwrap();
    let at = w.frozen_at().unwrap();
    let c = verify_ledgers(&h, &vols, 4, at, None).unwrap();
    assert!(c.consistent, "{:?}", c.problems);
    // Restarted from an earlier transaction (a restore), it writes over what followed.
    w.restart(5).unwrap();
    assert!(w.wait_for(6, Duration::from_secs(5)));
    w.stop();
    let l = read_ledger(&h, "E:", 4, 0).unwrap();
    assert!(l.defects.is_empty(), "{:?}", l.defects);
    assert!(l.last >= 6);
}
