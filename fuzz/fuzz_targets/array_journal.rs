//! The array's durable state as the daemon reads it at start: its journal (LUNs, hosts and
//! their mappings, snapshot sets, resync jobs, idempotency keys, one checksummed JSON record
//! a line). Whatever the file holds, opening the array gives an error or an array, never a
//! panic; an array that opened answers its read verbs, and closing and opening it again (from
//! the journal it rewrote) gives the same LUNs, snapshots, hosts and sets.
//!
//! Input: a mode byte, then the file. With mode bit 0 set each line of the file is given a
//! correct checksum in front, so the fuzzer reaches the record decoder and the replay rules
//! without forging CRCs. The journal lives in `/dev/shm`. Seeds are journals of a real array
//! after each of a series of changes:
//! `SHADOWLUN_FUZZ_SEEDS=<dir> cargo fuzz run array_journal -- -runs=0`.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use api::*;
use array::state::{new_token, token_hash};
use array::{Array, NoExport, Policy};
use libfuzzer_sys::fuzz_target;
use shadowlun_fuzz::{seed_dir, temp_dir, write_seed};
use vss::{SnapshotContext, VssId};

const MIB: u64 = 1 << 20;

fn open(journal: &Path) -> Result<Array, array::ArrayError> {
    Array::open(
        journal,
        Arc::new(storage::MemoryBackend::new(Some(64 * MIB))),
        Arc::new(NoExport),
        Policy::default(),
        token_hash("admin-token-of-the-fuzz-target"),
    )
}

/// Everything an administrator can read of the rows.
fn view(a: &Array) -> String {
    let mut hosts = a.list_hosts();
    let sets: Vec<_> = hosts.iter().map(|h| a.list_sets(&h.name)).collect();
    hosts.sort_by(|x, y| x.name.cmp(&y.name));
    format!(
        "{:?}\n{:?}\n{:?}\n{:?}\n{:?}",
        a.list_luns(false),
        a.list_luns(true),
        hosts,
        a.admin_sets(),
        sets
    )
}

/// The file as the input asks for it: as given, or with a checksum put in front of each line.
fn file(input: &[u8]) -> Option<Vec<u8>> {
    let (&mode, body) = input.split_first()?;
    if mode & 1 == 0 {
        return Some(body.to_vec());
    }
    let mut out = Vec::with_capacity(body.len() + body.len() / 8);
    for line in body.split_inclusive(|&b| b == b'\n') {
        let json = line.strip_suffix(b"\n").unwrap_or(line);
        out.extend_from_slice(format!("{:08x} ", crc32c::crc32c(json)).as_bytes());
        out.extend_from_slice(line);
    }
    Some(out)
}

thread_local! {
    static DIR: tempfile::TempDir = temp_dir("array-journal-");
}

fn journal_path() -> PathBuf {
    DIR.with(|d| d.path().join("journal"))
}

fuzz_target!(init: write_seeds(), |input: &[u8]| {
    let Some(bytes) = file(input) else { return };
    let path = journal_path();
    std::fs::write(&path, &bytes).unwrap();
    let Ok(a) = open(&path) else { return };
    let first = view(&a);
    for l in a.list_luns(true).iter().chain(a.list_luns(false).iter()) {
        let _ = a.lun_identity_pages(&l.id);
        let _ = a.get_lun(&l.id);
    }
    for h in a.list_hosts() {
        let _ = a.get_host(&h.name);
    }
    let _ = a.authenticate("not-a-token");
    let _ = a.pool_figures();
    a.reap(true).expect("a dry run of the reaper");
    drop(a);
    let again = open(&path).expect("a journal the array rewrote opens");
    assert_eq!(view(&again), first, "closing and opening keeps every row");
});

/// Journals of a real array after each change of a series that writes every kind of record.
fn write_seeds() {
    let Some(dir) = seed_dir() else { return };
    let tmp = temp_dir("array-journal-seeds-");
    let path = tmp.path().join("journal");
    let backend = Arc::new(storage::MemoryBackend::new(Some(64 * MIB)));
    let admin = new_token().unwrap();
    let a = Array::open(
        &path,
        backend,
        Arc::new(NoExport),
        Policy::default(),
        token_hash(&admin),
    )
    .unwrap();
    let set = VssId::from_u128(0x5e7);
    let mut lun_a = String::new();
    let mut snap = String::new();
    let mut step = 0;
    let mut save = |what: &str| {
        let raw = std::fs::read(&path).unwrap();
        let mut with = vec![0u8];
        with.extend_from_slice(&raw);
        write_seed(&dir, &format!("{step:02}-{what}"), &with);
        // The same records without checksums, for mode 1.
        let mut bare = vec![1u8];
        for line in raw.split_inclusive(|&b| b == b'\n') {
            bare.extend_from_slice(line.get(9..).unwrap_or_default());
        }
        write_seed(&dir, &format!("{step:02}-{what}-bare"), &bare);
        step += 1;
    };
    save("empty");
    for name in ["la", "lb"] {
        let l = a
            .create_lun(&CreateLun {
                name: name.into(),
                size_bytes: 4 * MIB,
            })
            .unwrap();
        if lun_a.is_empty() {
            lun_a = l.id;
        }
    }
    save("luns");
    a.create_host(&CreateHost {
        name: "a".into(),
        initiators: vec!["iqn.1991-05.com.microsoft:journal-a".into()],
        chap_secret: Some("secret-of-a-12".into()),
        import_from: Vec::new(),
    })
    .unwrap();
    a.map_lun(
        "a",
        &MapLun {
            lun: lun_a.clone(),
            lun_number: Some(3),
            shared: false,
        },
    )
    .unwrap();
    save("host");
    let plan = vec![PlannedSnapshot {
        snapshot_id: VssId::from_u128(1),
        source: lun_a.clone(),
    }];
    a.prepare("a", set, SnapshotContext(0), &plan).unwrap();
    save("prepared");
    a.end_prepare("a", set).unwrap();
    a.commit("a", set).unwrap();
    if let Some(m) = a.admin_sets().first().and_then(|s| s.snapshots.first()) {
        snap = m.lun.clone();
    }
    save("committed");
    a.complete("a", set).unwrap();
    a.expose("a", std::slice::from_ref(&snap)).unwrap();
    save("exposed");
    let _ = a.start_resync(
        &array::Scope::Admin,
        &[ResyncPair {
            snapshot: snap.clone(),
            destination: lun_a.clone(),
        }],
        true,
    );
    {
        let _g = a.idempotency_gate();
        a.idempotency_store("key-1", &"0".repeat(64), 201, "{}".into())
            .unwrap();
    }
    save("resync-and-key");
    a.delete_snapshot(&snap).ok();
    a.delete_host("a", true).unwrap();
    save("deleted");
    drop(a);
}
