//! The provider's benchmarks (`shadowlun bench provider|vss`): its core against the array in
//! the process, and the whole path against the array daemon over HTTPS with hosts on iSCSI.

use std::time::{Duration, Instant};

use provider::{HardwareProvider, ShadowlunProvider};
use vss::{BusType, LunInfo, SnapshotContext, VssId};

use crate::memory_array::{MemoryArray, MemoryArrayClient};
use crate::report::{Goal, Report, Row, machine};

/// Median of `n` timed runs of `f` (after one warm-up), in microseconds.
pub fn median_us(n: usize, mut f: impl FnMut() -> Duration) -> f64 {
    f();
    let mut v: Vec<f64> = (0..n).map(|_| f().as_secs_f64() * 1e6).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// A row in microseconds: `value` against `base`, at most `max_ratio` or at least
/// `min_ratio` times it (or for context, with neither).
pub fn row(
    measure: &str,
    baseline: &str,
    base: f64,
    value: f64,
    max_ratio: Option<f64>,
    min_ratio: Option<f64>,
) -> Row {
    let goal = max_ratio.map(Goal::AtMost).or(min_ratio.map(Goal::AtLeast));
    Row::new(measure, "µs", value, baseline, Some(base), goal)
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
fn one_set(p: &ShadowlunProvider<MemoryArrayClient>, infos: &[LunInfo]) -> (Duration, Duration) {
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

/// The provider core against the array on the memory engine, called in the process: its own
/// cost and the array's rules, without network or the embedded engine.
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
    // For context only: the ≤ 2× target applies to the array daemon with the embedded engine
    // (`bench vss`), not to the memory engine.
    rows.push(row(
        "CommitSnapshots, 64-LUN set",
        "same, 1-LUN set",
        c1,
        c64,
        None,
        None,
    ));
    Report {
        title: "provider core against the array on the memory engine (in-process)".into(),
        machine: machine(),
        rows,
        notes: Vec::new(),
    }
}

/// Percentile (0..=100) of samples in microseconds.
fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p / 100.0).round() as usize;
    v[i.min(v.len() - 1)]
}

/// Commit timings (µs) of `runs` sets over `infos`, each aborted afterwards.
fn commit_samples(
    p: &ShadowlunProvider<provider::https::HttpsArray>,
    infos: &[LunInfo],
    runs: usize,
) -> anyhow::Result<Vec<f64>> {
    let devices: Vec<String> = (0..infos.len()).map(|i| format!("disk{i}")).collect();
    let mut out = Vec::with_capacity(runs);
    for _ in 0..runs {
        let set = VssId::new_v4();
        let mut v = infos.to_vec();
        let e = |h: vss::Hresult| anyhow::anyhow!("{h}");
        p.begin_prepare_snapshot(
            set,
            VssId::new_v4(),
            SnapshotContext::BACKUP,
            &devices,
            &mut v,
        )
        .map_err(e)?;
        p.end_prepare_snapshots(set).map_err(e)?;
        p.pre_commit_snapshots(set).map_err(e)?;
        let t = Instant::now();
        p.commit_snapshots(set).map_err(e)?;
        out.push(t.elapsed().as_secs_f64() * 1e6);
        p.post_commit_snapshots(set, infos.len() as i32)
            .map_err(e)?;
        p.abort_snapshots(set).map_err(e)?;
    }
    Ok(out)
}

/// The provider through the real array: HTTPS control API, embedded engine, iSCSI surfacing.
pub fn vss_end_to_end() -> anyhow::Result<Report> {
    use crate::real_lab::{RealLab, SharedLab};
    use vss::identity::LunIdentity;
    use vss_emulator::conformance::{Ctx, Lab};
    use vss_emulator::coordinator::Config;

    const HOST: &str = "iqn.1991-05.com.microsoft:bench-a";
    const HOST_C: &str = "iqn.1991-05.com.microsoft:bench-c";
    let dir = std::env::temp_dir().join(format!("shadowlun-bench-vss-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let lab = std::sync::Arc::new(RealLab::start(dir, false)?);
    let mut infos = Vec::new();
    for i in 0..64 {
        let rec = lab
            .create_mapped_lun(&format!("b{i}"), 1 << 20, HOST)
            .map_err(anyhow::Error::msg)?;
        let n = u64::from_str_radix(&rec.naa, 16)? & 0x0FFF_FFFF_FFFF_FFFF;
        infos.push(LunInfo::from_identity(
            &LunIdentity::for_number(n).scsi_identity(&[]),
            BusType::ISCSI,
        )?);
    }
    let p = lab.shadowlun_provider(HOST).map_err(anyhow::Error::msg)?;
    let _ = commit_samples(&p, &infos[..1], 3)?;
    let mut one = commit_samples(&p, &infos[..1], 50)?;
    let mut many = commit_samples(&p, &infos, 50)?;
    let p99 = percentile(&mut many, 99.0);
    let p50_64 = percentile(&mut many, 50.0);
    let p50_1 = percentile(&mut one, 50.0);

    // Full creation cycle with auto-import (surfacing over iSCSI) of 8 single-LUN volumes.
    let ctx = Ctx::new(Box::new(SharedLab(lab.clone())));
    for _ in 0..8 {
        lab.create_lun(4 << 20, HOST_C)
            .map_err(anyhow::Error::msg)?;
    }
    let rig = ctx
        .bare_rig(HOST_C, Config::default(), vec![])
        .map_err(anyhow::Error::msg)?;
    let mut volumes = Vec::new();
    for (i, d) in rig.host.disks().iter().enumerate() {
        let name = format!("V{i}:");
        rig.host
            .partition_disk(&d.device, &[2 << 20])
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        rig.host
            .mount(&name, &[(d.device.clone(), 1)])
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        volumes.push(name);
    }
    let vols: Vec<&str> = volumes.iter().map(String::as_str).collect();
    let mut cycles = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let (_set, bc) = rig
            .create(SnapshotContext::BACKUP, &vols)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        cycles.push(t.elapsed().as_secs_f64() * 1e6);
        drop(bc); // auto-release: the snapshot LUNs are released (OnLunEmpty)
    }
    let cycle = percentile(&mut cycles, 50.0);
    drop(rig);
    drop(ctx);
    lab.shutdown()?;

    let rows = vec![
        row(
            "CommitSnapshots p99, 64-LUN set, over HTTPS",
            "limit 20 ms",
            20_000.0,
            p99,
            Some(1.0),
            None,
        ),
        row(
            "CommitSnapshots p50, 64-LUN set",
            "same, 1-LUN set",
            p50_1,
            p50_64,
            Some(2.0),
            None,
        ),
        row(
            "Full cycle, 8 LUNs, with surfacing over iSCSI (p50)",
            "limit 1 s",
            1_000_000.0,
            cycle,
            Some(1.0),
            None,
        ),
    ];
    Ok(Report {
        title: "VSS provider against the real array (HTTPS, embedded engine, iSCSI)".into(),
        machine: machine(),
        rows,
        notes: Vec::new(),
    })
}
