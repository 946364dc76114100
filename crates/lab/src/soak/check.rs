//! The soak's invariants as functions of what was observed, each returning the precise
//! violation: no acknowledged write lost, every snapshot one point in time, no orphan LUN or
//! set, no orphan engine volume, resources bounded, space returned.

use std::collections::{BTreeMap, BTreeSet};

use api::{LunRecord, SetRecord, SetState};
use vss::VssId;
use vss_emulator::writer::{Consistency, LedgerState};

use super::daemon::Resources;

/// A broken invariant, in words an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation(pub String);

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Violation {}

fn v(s: String) -> Violation {
    Violation(s)
}

/// A ledger on an original volume after the daemon died: every acknowledged transaction is
/// there; at most the one in flight follows; nothing is damaged.
pub fn durable(ledger: &LedgerState, acknowledged: u64) -> Result<(), Violation> {
    if let Some(d) = ledger.defects.first() {
        return Err(v(format!("{}: damaged ledger: {d}", ledger.volume)));
    }
    if ledger.last < acknowledged {
        return Err(v(format!(
            "acknowledged write lost: {} ends at transaction {}, but {} were acknowledged \
             (transaction {} is missing)",
            ledger.volume,
            ledger.last,
            acknowledged,
            ledger.last + 1
        )));
    }
    if ledger.last > acknowledged + 1 {
        return Err(v(format!(
            "{} holds transaction {}, but only {} was ever written",
            ledger.volume,
            ledger.last,
            acknowledged + 1
        )));
    }
    Ok(())
}

/// A snapshot set's ledgers (read from its snapshot LUNs): one point in time across every
/// LUN of the consistency group, between the freeze and the thaw.
pub fn one_point_in_time(what: &str, c: &Consistency) -> Result<u64, Violation> {
    if !c.consistent {
        return Err(v(format!(
            "{what} is not one point in time (acknowledged at the freeze: {}, first written \
             after the thaw: {}): {}",
            c.acknowledged_at_freeze,
            c.first_after_thaw
                .map_or_else(|| "none".to_string(), |t| t.to_string()),
            c.problems.join("; ")
        )));
    }
    Ok(c.ledgers.first().map_or(0, |l| l.last))
}

/// What the soak expects on the array at a moment nothing is in flight.
#[derive(Debug, Default, Clone)]
pub struct Expected {
    /// Original LUNs by name.
    pub originals: BTreeSet<String>,
    /// Sets that exist, with the number of snapshot LUNs each holds.
    pub sets: BTreeMap<VssId, usize>,
}

/// Every LUN and set on the array is one the soak knows; every snapshot LUN of a known set
/// is there.
pub fn no_orphans(exp: &Expected, luns: &[LunRecord], sets: &[SetRecord]) -> Result<(), Violation> {
    let mut per_set: BTreeMap<VssId, usize> = BTreeMap::new();
    for l in luns {
        match &l.snapshot_of {
            None if !exp.originals.contains(&l.name) => {
                return Err(v(format!(
                    "orphan LUN: {} ({}) is on the array but no host or administrator step \
                     of the soak created it",
                    l.id, l.name
                )));
            }
            None => {}
            Some(o) if !exp.sets.contains_key(&o.set_id) => {
                return Err(v(format!(
                    "orphan snapshot LUN: {} ({}, snapshot of {}) belongs to set {}, which \
                     no host holds",
                    l.id, l.name, o.source, o.set_id
                )));
            }
            Some(o) => *per_set.entry(o.set_id).or_default() += 1,
        }
    }
    for name in &exp.originals {
        if !luns.iter().any(|l| &l.name == name) {
            return Err(v(format!("LUN {name} was created and is gone")));
        }
    }
    for (set, n) in &exp.sets {
        let have = per_set.get(set).copied().unwrap_or(0);
        if have != *n {
            return Err(v(format!(
                "set {set} should hold {n} snapshot LUN(s), the array has {have}"
            )));
        }
    }
    for s in sets {
        let live = s.snapshots.iter().any(|m| !m.deleted);
        let done = s.state == SetState::Aborted || !live;
        if !done && !exp.sets.contains_key(&s.set_id) {
            return Err(v(format!(
                "orphan set: {} of host {} is {:?} with snapshot LUNs, and no host holds it",
                s.set_id, s.host, s.state
            )));
        }
    }
    Ok(())
}

/// Engine volumes on a stopped pool: each belongs to a LUN (`lun-N`, and for the engine's
/// snapshot LUNs its read-only base `lun-N.base`).
pub fn no_orphan_volumes(volumes: &[String], luns: &[LunRecord]) -> Result<(), Violation> {
    let ids: BTreeSet<&str> = luns.iter().map(|l| l.id.as_str()).collect();
    for name in volumes {
        let owner = name.strip_suffix(".base").unwrap_or(name);
        if !ids.contains(owner) {
            return Err(v(format!(
                "orphan volume: the engine holds {name}, which no LUN of the array owns"
            )));
        }
    }
    Ok(())
}

/// How much a daemon may grow between its warm-up and a later quiet moment.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Bounds {
    pub fd_slack: usize,
    pub thread_slack: usize,
    pub rss_growth_bytes: u64,
}

impl Default for Bounds {
    fn default() -> Self {
        Self {
            fd_slack: 16,
            thread_slack: 12,
            rss_growth_bytes: 64 << 20,
        }
    }
}

/// Compares a daemon's resources at a quiet moment with those after its warm-up.
pub fn bounded(what: &str, warm: &Resources, now: &Resources, b: &Bounds) -> Result<(), Violation> {
    if now.fds > warm.fds + b.fd_slack {
        return Err(v(format!(
            "file descriptors leak: {what}: {} open ({} sockets), {} after warm-up ({} \
             sockets; bound +{})",
            now.fds, now.sockets, warm.fds, warm.sockets, b.fd_slack
        )));
    }
    if now.threads > warm.threads + b.thread_slack {
        return Err(v(format!(
            "threads leak: {what}: {} running, {} after warm-up (bound +{})",
            now.threads, warm.threads, b.thread_slack
        )));
    }
    if now.rss_bytes > warm.rss_bytes + b.rss_growth_bytes {
        return Err(v(format!(
            "memory grows: {what}: resident {} MiB, {} MiB after warm-up (bound +{} MiB)",
            now.rss_bytes >> 20,
            warm.rss_bytes >> 20,
            b.rss_growth_bytes >> 20
        )));
    }
    Ok(())
}

/// The pool's used space after everything was deleted, as the daemon reported it, as the
/// engine recounts it from its metadata on disk, and as the file system allocates the
/// engine's data file, against their values before the soak.
pub fn space_returned(
    start: u64,
    daemon_end: u64,
    engine_recount: u64,
    file_start: u64,
    file_end: u64,
) -> Result<(), Violation> {
    if daemon_end != start {
        return Err(v(format!(
            "space not returned: the pool used {start} bytes before the soak and {daemon_end} \
             after everything was deleted"
        )));
    }
    if engine_recount != daemon_end {
        return Err(v(format!(
            "the engine's accounting disagrees with its metadata: the daemon reported \
             {daemon_end} bytes used, a recount of the pool on disk finds {engine_recount}"
        )));
    }
    if file_end != file_start {
        return Err(v(format!(
            "space not returned to the file system: the engine's data file held {file_start} \
             bytes of data before the soak and {file_end} after everything was deleted"
        )));
    }
    Ok(())
}

/// The file system holds no more of the engine's data file than the engine counts as used
/// (plus its first chunk, which holds the file's magic): freed chunks were given back.
pub fn file_system_agrees(engine_used: u64, file_allocated: u64) -> Result<(), Violation> {
    let chunk = blockstore::CHUNK_SIZE;
    if file_allocated > engine_used + chunk {
        return Err(v(format!(
            "the file system and the engine disagree: the engine's data file holds \
             {file_allocated} bytes of data, the engine counts {engine_used} used (+{chunk} \
             for its first chunk)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use api::{SetMember, SnapshotOrigin};
    use vss::SnapshotContext;
    use vss_emulator::Host;
    use vss_emulator::writer::{encode_record, read_ledger, verify_ledgers};

    use super::*;
    use crate::san::MemorySan;

    fn host() -> (Arc<MemorySan>, Arc<Host>) {
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

    fn write(h: &Host, vol: &str, index: u32, seqs: std::ops::RangeInclusive<u64>) {
        for s in seqs {
            h.write_volume(vol, (s - 1) * 512, &encode_record(1, index, s))
                .unwrap();
        }
    }

    #[test]
    fn a_lost_acknowledged_write_is_detected() {
        let (_san, h) = host();
        write(&h, "E:", 0, 1..=5);
        let l = read_ledger(&h, "E:", 1, 0).unwrap();
        let e = durable(&l, 7).unwrap_err();
        assert!(
            e.0.contains("acknowledged write lost: E: ends at transaction 5")
                && e.0.contains("transaction 6 is missing"),
            "{e}"
        );
        assert!(durable(&l, 5).is_ok());
        assert!(
            durable(&l, 4).is_ok(),
            "the transaction in flight may be there"
        );
        assert!(durable(&l, 3).is_err(), "more than was ever written");
    }

    #[test]
    fn a_damaged_ledger_is_detected() {
        let (_san, h) = host();
        write(&h, "E:", 0, 1..=3);
        h.write_volume("E:", 4 * 512, &encode_record(1, 0, 5))
            .unwrap();
        let l = read_ledger(&h, "E:", 1, 0).unwrap();
        let e = durable(&l, 3).unwrap_err();
        assert!(e.0.contains("damaged ledger"), "{e}");
    }

    #[test]
    fn a_torn_snapshot_is_detected() {
        let (_san, h) = host();
        // One LUN of the group a transaction ahead of the other: not one point in time.
        write(&h, "E:", 0, 1..=10);
        write(&h, "F:", 1, 1..=9);
        let vols = ["E:".to_string(), "F:".to_string()];
        let c = verify_ledgers(&h, &vols, 1, 9, Some(11)).unwrap();
        let e = one_point_in_time("set X", &c).unwrap_err();
        assert!(
            e.0.contains("set X is not one point in time")
                && e.0
                    .contains("volumes end at different transactions: [10, 9]"),
            "{e}"
        );
        // A snapshot with a transaction written after the thaw.
        write(&h, "F:", 1, 10..=11);
        write(&h, "E:", 0, 11..=11);
        let c = verify_ledgers(&h, &vols, 1, 9, Some(11)).unwrap();
        assert!(one_point_in_time("set Y", &c).is_err());
        let c = verify_ledgers(&h, &vols, 1, 9, Some(12)).unwrap();
        assert_eq!(one_point_in_time("set Z", &c), Ok(11));
    }

    fn lun(id: &str, name: &str, set: Option<VssId>) -> LunRecord {
        LunRecord {
            id: id.into(),
            name: name.into(),
            size_bytes: 1 << 20,
            serial: String::new(),
            naa: String::new(),
            snapshot_of: set.map(|set_id| SnapshotOrigin {
                source: "lun-1".into(),
                set_id,
                snapshot_id: VssId::nil(),
            }),
            mapped_to: vec![],
            allocated_bytes: 0,
            plex: None,
            volume_missing: false,
        }
    }

    fn set(id: VssId, state: SetState, deleted: bool) -> SetRecord {
        SetRecord {
            set_id: id,
            host: "host1".into(),
            state,
            context: SnapshotContext::APP_ROLLBACK,
            snapshots: vec![SetMember {
                snapshot_id: VssId::nil(),
                source: "lun-1".into(),
                lun: "lun-9".into(),
                deleted,
            }],
            created_at: 0,
            updated_at: 0,
            imported_at: None,
            reserved_bytes: 0,
        }
    }

    #[test]
    fn an_orphan_lun_or_set_is_detected() {
        let known = VssId::from_u128(1);
        let stray = VssId::from_u128(2);
        let mut exp = Expected::default();
        exp.originals.insert("data".into());
        exp.sets.insert(known, 1);
        let good = vec![
            lun("lun-1", "data", None),
            lun("lun-2", "data@1", Some(known)),
        ];
        let sets = vec![set(known, SetState::Completed, false)];
        assert_eq!(no_orphans(&exp, &good, &sets), Ok(()));

        let mut extra = good.clone();
        extra.push(lun("lun-3", "scratch", None));
        let e = no_orphans(&exp, &extra, &sets).unwrap_err();
        assert!(e.0.starts_with("orphan LUN: lun-3 (scratch)"), "{e}");

        let mut extra = good.clone();
        extra.push(lun("lun-4", "data@2", Some(stray)));
        let e = no_orphans(&exp, &extra, &sets).unwrap_err();
        assert!(e.0.starts_with("orphan snapshot LUN: lun-4"), "{e}");

        let e = no_orphans(&exp, &good[..1], &sets).unwrap_err();
        assert!(
            e.0.contains("should hold 1 snapshot LUN(s), the array has 0"),
            "{e}"
        );

        let mut more = sets.clone();
        more.push(set(stray, SetState::Committed, false));
        let e = no_orphans(&exp, &good, &more).unwrap_err();
        assert!(e.0.starts_with("orphan set: "), "{e}");
        // Aborted sets and sets whose LUNs are all deleted are history, not orphans.
        let mut history = sets.clone();
        history.push(set(stray, SetState::Aborted, false));
        history.push(set(VssId::from_u128(3), SetState::Completed, true));
        assert_eq!(no_orphans(&exp, &good, &history), Ok(()));
    }

    #[test]
    fn an_orphan_volume_is_detected() {
        let luns = vec![
            lun("lun-1", "data", None),
            lun("lun-2", "data@1", Some(VssId::nil())),
        ];
        let ok = ["lun-1".to_string(), "lun-2".into(), "lun-2.base".into()];
        assert_eq!(no_orphan_volumes(&ok, &luns), Ok(()));
        let e = no_orphan_volumes(&["lun-7.base".to_string()], &luns).unwrap_err();
        assert_eq!(
            e.0,
            "orphan volume: the engine holds lun-7.base, which no LUN of the array owns"
        );
    }

    #[test]
    fn leaks_and_space_are_detected() {
        let warm = Resources {
            fds: 40,
            sockets: 10,
            threads: 20,
            rss_bytes: 30 << 20,
        };
        let b = Bounds::default();
        assert!(bounded("x", &warm, &warm, &b).is_ok());
        let fds = Resources { fds: 57, ..warm };
        assert!(
            bounded("x", &warm, &fds, &b)
                .unwrap_err()
                .0
                .starts_with("file descriptors leak")
        );
        let th = Resources {
            threads: 33,
            ..warm
        };
        assert!(
            bounded("x", &warm, &th, &b)
                .unwrap_err()
                .0
                .starts_with("threads leak")
        );
        let rss = Resources {
            rss_bytes: (30 << 20) + (65 << 20),
            ..warm
        };
        assert!(
            bounded("x", &warm, &rss, &b)
                .unwrap_err()
                .0
                .starts_with("memory grows")
        );
        assert!(space_returned(0, 0, 0, 4096, 4096).is_ok());
        let e = space_returned(0, 65536, 65536, 4096, 4096).unwrap_err();
        assert!(e.0.starts_with("space not returned"), "{e}");
        let e = space_returned(0, 0, 65536, 4096, 4096).unwrap_err();
        assert!(e.0.contains("recount"), "{e}");
        let e = space_returned(0, 0, 0, 4096, 69632).unwrap_err();
        assert!(
            e.0.starts_with("space not returned to the file system"),
            "{e}"
        );
        assert!(file_system_agrees(1 << 20, (1 << 20) + 4096).is_ok());
        let e = file_system_agrees(1 << 20, (2 << 20) + 4096).unwrap_err();
        assert!(
            e.0.starts_with("the file system and the engine disagree"),
            "{e}"
        );
    }
}
