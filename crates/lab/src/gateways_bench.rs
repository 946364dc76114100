//! `shadowlun bench gateways`: how long hosts wait when the gateway serving an array goes
//! away. Two `shadowlun array serve` processes with `[gateway]` serve one array on a Ceph
//! cluster (docs/gateways.md), one in office and one standing by. Each round ends the
//! serving one, with SIGKILL (a failover: the standby waits out the lease, fences it and
//! takes office) or with SIGTERM (a planned handover: it resigns), and measures the time
//! from the signal to the first write acknowledged (WRITE then SYNCHRONIZE CACHE) through
//! the new gateway's iSCSI portal. Before that write, every block acknowledged in earlier
//! rounds is read back through the new gateway: a round that loses one fails the benchmark.
//! The gateway that was ended is started again as the standby for the next round.
//!
//! First, how long a control change takes to reach the other gateway: a LUN mapped (then
//! unmapped) through the serving gateway's API, timed from the API's answer until REPORT
//! LUNS through the standby's (Standby) path shows it (then no longer does).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use iscsi::initiator::{InitiatorConfig, Session};

use crate::gateway_rig::{Admin, Gateway, Serving, cleanup, config, share_identity};
use crate::rbd_bench::cluster_conf;
use crate::report::{Goal, Report, Row, machine};

const HOST: &str = "iqn.1991-05.com.microsoft:bench-gateways";
/// The failover bound hosts can live with (Windows' disk timeout is 60 s; MPIO's path
/// verification tens of seconds).
const BOUND_SECS: f64 = 10.0;

#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Rounds ended with SIGKILL.
    pub kills: usize,
    /// Rounds ended with SIGTERM.
    pub handovers: usize,
    /// Mappings made and removed through the serving gateway, each timed until the
    /// standby's paths show it.
    pub changes: usize,
    /// The gateways' `lease_secs`.
    pub lease_secs: u64,
    /// The cluster's configuration file (default: `CEPH_CONF`, then /etc/ceph/ceph.conf).
    pub ceph_conf: Option<PathBuf>,
    /// The pool; the benchmark works in a namespace of its own there, removed at the end.
    pub pool: String,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            kills: 10,
            handovers: 3,
            changes: 10,
            lease_secs: 5,
            ceph_conf: None,
            pool: "rbd".into(),
        }
    }
}

/// The LUN the rounds write, made through the first gateway and mapped to the benchmark's
/// host, and a probe LUN mapped to none: (target, LUN number, the probe's id).
fn make_luns(s: &Serving, token: &str) -> anyhow::Result<(String, u64, api::LunId)> {
    let mut c = Admin::new(s, token)?;
    let lun = c.create_lun("ledger", 16 << 20)?;
    c.add_host("bench", HOST)?;
    let number = c.map("bench", &lun.id)?;
    let probe = c.create_lun("probe", 4 << 20)?;
    Ok((c.target()?, number, probe.id))
}

/// Maps LUN `lun` (an id) through the serving gateway and unmaps it again, `rounds` times,
/// each change timed from the API's answer until REPORT LUNS through the standby's portal
/// shows it: (the mappings' times, the unmappings').
fn changes(
    s: &Serving,
    token: &str,
    standby: &str,
    target: &str,
    lun: &api::LunId,
    rounds: usize,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let mut c = Admin::new(s, token)?;
    let mut cfg = InitiatorConfig::new(HOST);
    cfg.timeout = Duration::from_secs(30);
    let mut sess = Session::login(standby.parse()?, target, &cfg)?;
    let (mut mapped, mut unmapped) = (Vec::new(), Vec::new());
    let mut shows = |number: u64, want: bool| -> anyhow::Result<f64> {
        let t0 = Instant::now();
        while sess.report_luns()?.contains(&number) != want {
            if t0.elapsed() > Duration::from_secs(10) {
                bail!("the standby's paths did not follow a change within 10 s");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(t0.elapsed().as_secs_f64())
    };
    for _ in 0..rounds {
        let number = c.map("bench", lun)?;
        mapped.push(shows(number, true)?);
        c.unmap("bench", lun)?;
        unmapped.push(shows(number, false)?);
    }
    let _ = sess.logout();
    Ok((mapped, unmapped))
}

/// Reads back every block written so far, then writes the next and makes it durable.
fn ledger(s: &Serving, target: &str, lun: u64, written: &mut Vec<u8>) -> anyhow::Result<()> {
    let mut cfg = InitiatorConfig::new(HOST);
    cfg.timeout = Duration::from_secs(30);
    let mut sess = Session::login(s.portal.parse()?, target, &cfg)?;
    for (i, b) in written.iter().enumerate() {
        let got = sess.read16(lun, i as u64 * 8, 8, 512)?;
        if got.iter().any(|x| x != b) {
            bail!("block {i} acknowledged earlier reads back otherwise through the new gateway");
        }
    }
    let next = (written.len() % 250) as u8 + 1;
    sess.write16(lun, written.len() as u64 * 8, &[next; 4096], 512, false)?;
    sess.synchronize_cache(lun)?;
    written.push(next);
    let _ = sess.logout();
    Ok(())
}

/// (median, (min, max)).
fn stats(v: &[f64]) -> (f64, (f64, f64)) {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], (v[0], v[v.len() - 1]))
}

pub fn run(o: &BenchOptions) -> anyhow::Result<Report> {
    let conf = cluster_conf(o.ceph_conf.as_deref())?;
    let ns = format!("gwbench{}", std::process::id());
    let dir = tempfile::tempdir()?;
    let names = ["gw-a", "gw-b"];
    let configs = [1, 2].map(|i| {
        let name = names[i - 1];
        config(
            dir.path(),
            &conf,
            &o.pool,
            &ns,
            name,
            i as u16,
            o.lease_secs,
        )
    });
    let pools = names.map(|n| dir.path().join(n));
    let started = Instant::now();
    let result = (|| -> anyhow::Result<Report> {
        let mut serving = Gateway::start(names[0], &pools[0], &configs[0])?;
        let mut at = serving.serving()?;
        share_identity(&pools[0], &pools[1])?;
        let mut standby = Gateway::start(names[1], &pools[1], &configs[1])?;
        let standby_portal = standby.standing_by()?;
        let token = std::fs::read_to_string(pools[0].join("admin.token"))?;
        let (target, lun, probe) = make_luns(&at, token.trim())?;
        let (mapped, unmapped) = changes(
            &at,
            token.trim(),
            &standby_portal,
            &target,
            &probe,
            o.changes,
        )?;
        let mut written = Vec::new();
        ledger(&at, &target, lun, &mut written)?;
        let (mut kills, mut handovers) = (Vec::new(), Vec::new());
        for round in 0..o.kills + o.handovers {
            let kill = round < o.kills;
            let t0 = Instant::now();
            if kill {
                serving.signal("-KILL")?;
            } else {
                serving.signal("-TERM")?;
            }
            let status = serving.child.wait()?;
            if !kill && !status.success() {
                bail!("gateway {} did not stop cleanly: {status}", serving.name);
            }
            at = standby.serving()?;
            ledger(&at, &target, lun, &mut written)?;
            let took = t0.elapsed().as_secs_f64();
            if kill { &mut kills } else { &mut handovers }.push(took);
            let again = Gateway::start(&serving.name, &serving.pool_dir, &serving.config)?;
            again.standing_by()?;
            (serving, standby) = (standby, again);
        }
        let _ = serving.signal("-TERM");
        let _ = serving.child.wait();
        drop(standby);
        let mut rows = Vec::new();
        for (what, times) in [("a mapping", &mapped), ("an unmapping", &unmapped)] {
            if times.is_empty() {
                continue;
            }
            let ms: Vec<f64> = times.iter().map(|t| t * 1000.0).collect();
            let (p50, range) = stats(&ms);
            rows.push(
                Row::new(
                    format!(
                        "{what} made through the serving gateway, shown by the standby's paths, p50"
                    ),
                    "ms",
                    p50,
                    "the standby's poll period",
                    Some(500.0),
                    None,
                )
                .with_ranges(Some(range), None),
            );
        }
        let lease = o.lease_secs as f64;
        if !kills.is_empty() {
            let (p50, range) = stats(&kills);
            rows.push(
                Row::new(
                    "failover (SIGKILL) to the first write acknowledged, p50",
                    "s",
                    p50,
                    "the 10 s bound",
                    Some(BOUND_SECS),
                    Some(Goal::AtMost(1.0)),
                )
                .with_ranges(Some(range), None),
            );
            rows.push(Row::new(
                "failover (SIGKILL) to the first write acknowledged, max",
                "s",
                range.1,
                "the 10 s bound",
                Some(BOUND_SECS),
                Some(Goal::AtMost(1.0)),
            ));
            rows.push(Row::new(
                "failover (SIGKILL), p50",
                "s",
                p50,
                "the lease (lease_secs)",
                Some(lease),
                None,
            ));
        }
        if !handovers.is_empty() {
            let (p50, range) = stats(&handovers);
            rows.push(
                Row::new(
                    "planned handover (SIGTERM) to the first write acknowledged, p50",
                    "s",
                    p50,
                    "the lease (lease_secs)",
                    Some(lease),
                    Some(Goal::AtMost(1.0)),
                )
                .with_ranges(Some(range), None),
            );
        }
        Ok(Report {
            title: "Several gateways on Ceph: from the serving gateway's end to the first write \
                    acknowledged through the next"
                .into(),
            machine: machine(),
            rows,
            notes: vec![
                format!(
                    "{} rounds ended with SIGKILL, {} with SIGTERM, lease_secs = {}; before each \
                     timed write every block acknowledged earlier ({} in all) was read back \
                     through the new gateway, intact",
                    kills.len(),
                    handovers.len(),
                    o.lease_secs,
                    written.len()
                ),
                format!(
                    "two `shadowlun array serve` processes on loopback, cluster {}; took {:.0?}",
                    conf.display(),
                    started.elapsed()
                ),
            ],
        })
    })();
    // The namespace's images and objects go, whatever happened.
    cleanup(&conf, &o.pool, &ns);
    result
}
