//! `shadowlun demo`: the whole product on one machine, on loopback, in a temporary directory.
//!
//! An array daemon (embedded engine, iSCSI target, HTTPS control API) starts; two emulated
//! Windows hosts attach over iSCSI; a ledger writer runs on two volumes of the first host; a
//! transportable hardware snapshot set is taken through shadowlun's provider and the real
//! control API; the second host imports it from the backup components document; the data
//! itself proves the snapshot is one point in time; the originals are resynced from the
//! snapshot inside the array; the set is deleted; everything is removed.
//!
//! With `--backend rbd` the array keeps its LUNs as RBD images in a Ceph pool
//! (`demo_ceph.rs`: the cluster `CEPH_CONF` names, or a throwaway one started for the demo)
//! and the same flow runs on them; at the end the `rbd` CLI must find none of the array's
//! images left in the pool, every image that was there before still there, and an image made
//! outside the array during the demo untouched.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use lab::real_lab::{RealLab, SharedLab};
use vss::{Hresult, RecoveryOptions, SnapshotContext, VolumeSnapshotAttributes, VssId};
use vss_emulator::bcd::Bcd;
use vss_emulator::conformance::Ctx;
use vss_emulator::coordinator::{Config, DeleteTarget};
use vss_emulator::trace::TraceEntry;
use vss_emulator::writer::verify_ledgers;

use crate::demo_ceph::Cluster;
use crate::output::{size, table};

/// Where the demo's array keeps its LUNs.
#[derive(Debug, Clone)]
pub enum Storage {
    /// The embedded engine, in the demo's temporary directory.
    Engine,
    /// RBD images in `pool` of the cluster `ceph_conf` names, or, without one, of a
    /// throwaway cluster started for the demo.
    Rbd {
        ceph_conf: Option<PathBuf>,
        pool: String,
    },
}

const HOST_A: &str = "iqn.1991-05.com.microsoft:sql01";
const HOST_B: &str = "iqn.1991-05.com.microsoft:backup01";
/// VSS's flush-and-hold limit around CommitSnapshots.
const HOLD_WINDOW: Duration = Duration::from_secs(10);

pub(crate) fn step(n: usize, title: &str) {
    println!("\n== {n}. {title}");
}

pub(crate) fn e<T, E: std::fmt::Display>(r: Result<T, E>) -> anyhow::Result<T> {
    r.map_err(|x| anyhow::anyhow!("{x}"))
}

fn print_luns(lab: &RealLab) -> anyhow::Result<usize> {
    let luns = e(lab.luns())?;
    let rows: Vec<Vec<String>> = luns
        .iter()
        .map(|l| {
            vec![
                l.id.clone(),
                l.name.clone(),
                size(l.size_bytes),
                l.serial.clone(),
                l.snapshot_of
                    .as_ref()
                    .map_or("original".into(), |o| format!("snapshot of {}", o.source)),
                l.mapped_to
                    .iter()
                    .map(|m| format!("{}:{}", m.host, m.lun_number))
                    .collect::<Vec<_>>()
                    .join(", "),
            ]
        })
        .collect();
    table(
        &[
            "LUN",
            "NAME",
            "SIZE",
            "SERIAL (VPD 0x80)",
            "KIND",
            "MAPPED TO host:lun",
        ],
        &rows,
    );
    Ok(luns.iter().filter(|l| l.snapshot_of.is_some()).count())
}

fn timeline(entries: &[TraceEntry]) -> Option<Duration> {
    let mut commit = None;
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|t| match t {
            TraceEntry::Call {
                at_us,
                method,
                result,
                duration_us,
                translated,
                ..
            } => {
                if method.name() == "CommitSnapshots" {
                    commit = Some(Duration::from_micros(*duration_us));
                }
                vec![
                    format!("{:>8.1}", *at_us as f64 / 1000.0),
                    format!("provider.{method}"),
                    match translated {
                        Some(t) => format!("{result} (VSS sees {t})"),
                        None => result.clone(),
                    },
                    format!("{:.2} ms", *duration_us as f64 / 1000.0),
                ]
            }
            TraceEntry::Step { at_us, what } => {
                vec![
                    format!("{:>8.1}", *at_us as f64 / 1000.0),
                    format!("vss: {what}"),
                    String::new(),
                    String::new(),
                ]
            }
        })
        .collect();
    table(&["T (ms)", "STEP", "RESULT", "DURATION"], &rows);
    commit
}

/// The cluster, what its pool held before the array started, and the witness image's name.
pub(crate) struct OnCeph {
    pub(crate) cluster: Cluster,
    before: std::collections::BTreeSet<String>,
    witness: String,
}

/// Opens (or starts) the cluster and makes the witness image, before the array starts.
pub(crate) fn ceph(
    ceph_conf: Option<PathBuf>,
    pool: &str,
    array_dir: &Path,
) -> anyhow::Result<OnCeph> {
    let pid = std::process::id();
    let t = Instant::now();
    if ceph_conf.is_none() {
        println!("starting a throwaway Ceph cluster (scripts/ceph-lab: one monitor, one OSD)...");
    }
    let lab_dir = std::env::temp_dir().join(format!("shadowlun-demo-ceph-{pid}"));
    let mut cluster = Cluster::open(ceph_conf, pool, &lab_dir, array_dir)?;
    if cluster.is_throwaway() {
        println!(
            "Ceph        throwaway cluster in {}, ready in {:.1} s (stopped at the end)",
            lab_dir.display(),
            t.elapsed().as_secs_f64()
        );
    } else {
        println!("Ceph        the cluster {}", cluster.conf.display());
    }
    let before = cluster.images()?;
    let witness = format!("shadowlun-demo-witness-{pid}");
    cluster.make_witness(&witness)?;
    println!(
        "rbd ls {pool}: {} image(s) before the array starts; {witness} made with the rbd CLI, \
         outside the array",
        before.len()
    );
    Ok(OnCeph {
        cluster,
        before,
        witness,
    })
}

/// After the array stopped: none of its images (every name it gives one carries its id) is
/// left in the pool, and every image that was there before, and the witness, still are.
/// Images others make meanwhile in a shared pool are theirs, not counted.
fn check_pool(on: &OnCeph, array_id: &str) -> anyhow::Result<()> {
    let pool = &on.cluster.pool;
    let after = on.cluster.images()?;
    let mine: Vec<&String> = after
        .iter()
        .filter(|i| {
            i.starts_with(&format!("sl-{array_id}-")) || i.starts_with(&format!("slc-{array_id}-"))
        })
        .collect();
    ensure!(
        mine.is_empty(),
        "rbd ls {pool}: the array's images are still there: {mine:?}"
    );
    let lost: Vec<&String> = on.before.difference(&after).collect();
    ensure!(
        lost.is_empty(),
        "rbd ls {pool}: images that were there before the demo are gone: {lost:?}"
    );
    ensure!(
        after.contains(&on.witness),
        "rbd ls {pool}: {} (not the array's) is gone",
        on.witness
    );
    println!(
        "rbd ls {pool}: no image of array {array_id} left; {} and the {} image(s) there before \
         are untouched",
        on.witness,
        on.before.len()
    );
    Ok(())
}

pub fn run(keep: bool, storage: Storage) -> anyhow::Result<()> {
    let started = Instant::now();
    println!("shadowlun demo: a transportable VSS hardware snapshot, end to end, on this machine.");
    let dir = std::env::temp_dir().join(format!("shadowlun-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);

    step(1, "Array");
    // Declared before the lab: dropped after it, so the array has stopped and deleted its
    // images before the cluster stops, also when a step fails.
    let (on_ceph, backend) = match storage {
        Storage::Engine => (None, array::BackendConfig::default()),
        Storage::Rbd { ceph_conf, pool } => {
            let on = ceph(ceph_conf, &pool, &dir)?;
            let backend = array::BackendConfig::Rbd(array::RbdConfig {
                pool,
                ceph_conf: Some(on.cluster.conf.clone()),
                ..Default::default()
            });
            (Some(on), backend)
        }
    };
    let lab =
        Arc::new(RealLab::start_on(dir.clone(), keep, backend).context("starting the array")?);
    println!("pool        {}", dir.display());
    let array_id = match &on_ceph {
        Some(on) => {
            let id = lab.array_id()?;
            println!(
                "LUNs        RBD images sl-{id}-* in pool {} (array {id})",
                on.cluster.pool
            );
            id
        }
        None => String::new(),
    };
    println!(
        "control API {} (certificate SHA-256 {})",
        lab.api_url, lab.fingerprint
    );
    println!("iSCSI       {} target {}", lab.portal, lab.target);

    step(2, "Windows hosts attach over iSCSI");
    let ctx = Ctx::new(Box::new(SharedLab(lab.clone())));
    let a = e(ctx.rig(HOST_A, Config::default(), vec![]))?;
    let b = e(ctx.bare_rig(HOST_B, Config::default(), vec![]))?;
    for d in a.host.disks() {
        println!(
            "{HOST_A}: {} = {} ({}), {}",
            d.device,
            d.lun_info.describe(),
            d.address.target,
            size(d.capacity.blocks * d.capacity.block_size as u64)
        );
    }
    for v in a.host.volumes() {
        let on: Vec<String> = v.extents.iter().map(|x| x.device.clone()).collect();
        println!("{HOST_A}: volume {} on {}", v.name, on.join(" + "));
    }
    println!(
        "{HOST_B}: {} disk(s) (nothing mapped yet)",
        b.host.disks().len()
    );

    step(3, "A ledger writer commits transactions to E: and G:");
    let writer = e(a.writer(1, &["E:", "G:"]))?;
    std::thread::sleep(Duration::from_millis(300));

    step(
        4,
        "Transportable hardware shadow copy of E: and G: (VSS_CTX_APP_ROLLBACK | TRANSPORTABLE)",
    );
    let trace_start = a.coord.trace().len();
    let context = SnapshotContext::APP_ROLLBACK.with(VolumeSnapshotAttributes::TRANSPORTABLE);
    let (set, bc) = e(a.create(context, &["E:", "G:"]))?;
    let frozen = writer.frozen_at().context("the writer never froze")?;
    let after = writer.first_after_thaw();
    writer.stop();
    let commit =
        timeline(&a.coord.trace().since(trace_start)).context("no CommitSnapshots in the trace")?;
    println!(
        "\nset {set}: CommitSnapshots took {:.2} ms, {:.3}% of the {} s flush-and-hold window",
        commit.as_secs_f64() * 1000.0,
        commit.as_secs_f64() / HOLD_WINDOW.as_secs_f64() * 100.0,
        HOLD_WINDOW.as_secs()
    );
    println!("writer: transaction {frozen} was the last acknowledged before the freeze");
    let snapshots = print_luns(&lab)?;
    ensure!(
        snapshots == 3,
        "expected 3 snapshot LUNs (E:/F: share one LUN, G: spans two), found {snapshots}"
    );

    step(
        5,
        "The backup host imports the set from the backup components document",
    );
    let bcd_path = dir.join("backup.bcd.json");
    e(bc.save_bcd(set, &bcd_path))?;
    let bcd = e(Bcd::load(&bcd_path))?;
    let mut ib = b.coord.backup_components();
    e(ib.load_bcd(bcd.clone()))?;
    let trace_b = b.coord.trace().len();
    let imported = e(ib.import_snapshots())?;
    timeline(&b.coord.trace().since(trace_b));
    ensure!(imported == Hresult::S_OK, "import returned {imported}");
    let vols: Vec<String> = ib
        .snapshot_volumes(set)
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    println!(
        "{HOST_B}: imported {imported}; shadow copy volumes {}",
        vols.join(", ")
    );

    step(6, "The data proves one point in time");
    let c = e(verify_ledgers(&b.host, &vols, 1, frozen, after))?;
    for l in &c.ledgers {
        println!(
            "{HOST_B}: {} holds transactions 1..={} ({} defect(s))",
            l.volume,
            l.last,
            l.defects.len()
        );
    }
    if !c.consistent {
        bail!("the imported snapshot is not consistent: {:?}", c.problems);
    }
    println!(
        "consistent: every volume at transaction {frozen}, nothing acknowledged before the hold missing, \
         nothing written after it present"
    );

    step(
        7,
        "Resync: the originals are damaged, then restored from the snapshot inside the array",
    );
    for v in ["E:", "G:"] {
        e(a.host.write_volume(v, 0, &vec![0xEE; 64 * 1024]))?;
    }
    let snapshot_ids: Vec<VssId> = bcd.set.snapshots.iter().map(|s| s.snapshot_id).collect();
    let mut rb = a.coord.backup_components();
    e(rb.load_bcd(bcd))?;
    for s in snapshot_ids {
        e(rb.add_snapshot_to_recovery_set(s, None))?;
    }
    let trace_r = a.coord.trace().len();
    let t = Instant::now();
    e(rb.recover_set(RecoveryOptions::NO_VOLUME_CHECK))?;
    timeline(&a.coord.trace().since(trace_r));
    let restored = e(verify_ledgers(
        &a.host,
        &["E:".into(), "G:".into()],
        1,
        frozen,
        after,
    ))?;
    ensure!(
        restored.consistent,
        "after resync the originals are not at the snapshot: {:?}",
        restored.problems
    );
    println!(
        "{HOST_A}: E: and G: back at transaction {frozen} after {:.0} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );

    step(
        8,
        "Delete the shadow copy set: VSS calls FillInLunInfo, then OnLunEmpty per LUN",
    );
    let trace_d = b.coord.trace().len();
    let deleted = e(ib.delete_snapshots(DeleteTarget::Set(set)))?;
    timeline(&b.coord.trace().since(trace_d));
    println!("{deleted} shadow copies deleted");
    let left = print_luns(&lab)?;
    ensure!(left == 0, "{left} snapshot LUN(s) left on the array");

    step(9, "Clean up");
    drop(a);
    drop(b);
    drop(ctx);
    lab.shutdown()?;
    drop(lab);
    if keep {
        println!("array stopped; pool kept in {}", dir.display());
    } else {
        ensure!(!dir.exists(), "{} was not removed", dir.display());
        println!("array stopped; {} removed", dir.display());
    }
    if let Some(on) = on_ceph {
        check_pool(&on, &array_id)?;
        let throwaway = on.cluster.is_throwaway();
        drop(on);
        if throwaway {
            println!("Ceph cluster stopped and removed");
        }
    }
    println!(
        "\ndemo finished in {:.1} s: all checks passed",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
