//! `shadowlun demo --gateways 2`: two gateways of one array on Ceph, and a failover under a
//! host's writes. Two `shadowlun array serve` processes with `[gateway]` serve one array
//! from a pool of the cluster `CEPH_CONF` names, or of a throwaway cluster started for the
//! demo: one in office, one standing by with Standby paths (docs/gateways.md). An emulated
//! Windows host logs in to both with MPIO, puts a volume on the LUN and runs a ledger
//! writer that flushes every transaction. The serving gateway is killed with SIGKILL; the
//! standby takes office, its path turns Active/Optimized, the writer goes on without an I/O
//! error, and the ledger read back at the end holds every acknowledged transaction.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use lab::gateway_rig::{Admin, Gateway, Serving, cleanup, config, share_identity};
use vss_emulator::Host;
use vss_emulator::mpio::MpioStorage;
use vss_emulator::writer::{LedgerWriter, read_ledger};

use crate::demo::{ceph, e, step};
use crate::output::table;

const HOST: &str = "iqn.1991-05.com.microsoft:sql01";
/// The gateways' lease: how long the dead gateway keeps the array.
const LEASE_SECS: u64 = 5;
/// Transactions the writer makes before the kill, and at least after it.
const BEFORE: u64 = 40;
const AFTER: u64 = 40;

fn paths_table(mpio: &MpioStorage, names: &[(SocketAddr, &str)]) {
    let rows: Vec<Vec<String>> = mpio
        .paths()
        .iter()
        .map(|p| {
            let gateway = names
                .iter()
                .find(|(a, _)| *a == p.portal)
                .map_or("?", |(_, n)| *n);
            vec![
                gateway.to_string(),
                p.portal.to_string(),
                p.group.map_or("-".into(), |g| g.to_string()),
                match (&p.failed, p.state) {
                    (Some(f), _) => format!("failed: {f}"),
                    (None, Some(s)) => format!("{s:?}"),
                    (None, None) => "-".into(),
                },
                if p.current { "I/O here" } else { "" }.to_string(),
            ]
        })
        .collect();
    table(
        &["GATEWAY", "PORTAL", "TARGET PORT GROUP", "STATE", ""],
        &rows,
    );
}

/// A LUN mapped to the host through the serving gateway: (target, LUN number).
fn make_lun(s: &Serving, token: &str) -> anyhow::Result<(String, u64)> {
    let mut c = Admin::new(s, token)?;
    let lun = c.create_lun("ledger", 64 << 20)?;
    c.add_host("sql01", HOST)?;
    let number = c.map("sql01", &lun.id)?;
    println!(
        "through gw-a's API: LUN {} ({}, 64 MiB, serial {}) mapped to host sql01 at LUN {number}",
        lun.id, lun.name, lun.serial
    );
    Ok((c.target()?, number))
}

pub fn run(ceph_conf: Option<PathBuf>, pool: String, keep: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    println!(
        "shadowlun demo --gateways 2: two gateways of one array on Ceph, the serving one \
         killed under a host's writes."
    );
    let pid = std::process::id();
    let dir = std::env::temp_dir().join(format!("shadowlun-demo-{pid}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;

    step(1, "Ceph");
    let on = ceph(ceph_conf, &pool, &dir)?;
    let conf = on.cluster.conf.clone();
    let ns = format!("shadowlun-demo-{pid}");
    let result = gateways(&dir, &conf, &pool, &ns);
    cleanup(&conf, &pool, &ns);
    println!("\nRADOS namespace {pool}/{ns} removed (its images and objects)");
    let throwaway = on.cluster.is_throwaway();
    drop(on);
    if throwaway {
        println!("Ceph cluster stopped and removed");
    }
    if keep {
        println!("pool directories kept in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result?;
    println!(
        "\ndemo finished in {:.1} s: all checks passed",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn gateways(
    dir: &std::path::Path,
    conf: &std::path::Path,
    pool: &str,
    ns: &str,
) -> anyhow::Result<()> {
    step(2, "Two gateways of one array");
    let names = ["gw-a", "gw-b"];
    let configs = [1u16, 2].map(|port| {
        let name = names[usize::from(port) - 1];
        config(dir, conf, pool, ns, name, port, LEASE_SECS)
    });
    let pools = names.map(|n| dir.join(n));
    let a = Gateway::start(names[0], &pools[0], &configs[0])?;
    let at_a = a.serving()?;
    share_identity(&pools[0], &pools[1])?;
    let b = Gateway::start(names[1], &pools[1], &configs[1])?;
    let b_portal = b.standing_by()?;
    table(
        &[
            "GATEWAY",
            "ROLE",
            "CONTROL API",
            "iSCSI PORTAL",
            "TARGET PORT GROUP",
        ],
        &[
            vec![
                "gw-a".into(),
                "in office".into(),
                at_a.api.clone(),
                at_a.portal.clone(),
                "1".into(),
            ],
            vec![
                "gw-b".into(),
                "standing by".into(),
                "-".into(),
                b_portal.clone(),
                "2".into(),
            ],
        ],
    );
    println!(
        "LUNs are RBD images in {pool}/{ns}; the array's state is in RADOS; lease {LEASE_SECS} s"
    );
    let token = std::fs::read_to_string(pools[0].join("admin.token"))?;
    let (target, number) = make_lun(&at_a, token.trim())?;

    step(
        3,
        "A Windows host with MPIO over both gateways, a ledger writer",
    );
    let portals: [SocketAddr; 2] = [at_a.portal.parse()?, b_portal.parse()?];
    let labels = [(portals[0], "gw-a"), (portals[1], "gw-b")];
    let mpio = MpioStorage::new(&portals, &target, HOST);
    let host = Host::new("sql01", mpio.clone());
    e(host.rescan())?;
    // gw-a reports gw-b's group once it has looked at the gateways again (every half
    // second): until then gw-b's path has no state.
    let deadline = Instant::now() + Duration::from_secs(10);
    while mpio.paths().iter().any(|p| p.state.is_none()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        e(host.rescan())?;
    }
    let disk = host
        .disks()
        .into_iter()
        .find(|d| d.address.lun == number)
        .context("the host found no disk for the LUN")?;
    e(host.partition_disk(&disk.device, &[48 << 20]))?;
    e(host.mount("L:", &[(disk.device.clone(), 1)]))?;
    println!(
        "sql01: {} = {}, one disk through two paths; volume L: on it",
        disk.device,
        disk.lun_info.describe()
    );
    paths_table(&mpio, &labels);
    let writer = e(LedgerWriter::start_durable(
        "ledger",
        1,
        host.clone(),
        vec!["L:".into()],
        Duration::from_millis(10),
    ))?;
    ensure!(
        writer.wait_for(BEFORE, Duration::from_secs(60)),
        "the ledger writer did not get going: {:?}",
        writer.error()
    );
    println!(
        "ledger writer on L:, each transaction flushed (SYNCHRONIZE CACHE) before it counts: {} acknowledged",
        writer.acknowledged()
    );

    step(4, "gw-a killed with SIGKILL");
    let mut a = a;
    let t0 = Instant::now();
    a.signal("-KILL")?;
    let _ = a.child.wait();
    let at_kill = writer.acknowledged();
    println!("0.0 s   gw-a killed; the writer had {at_kill} transactions acknowledged");
    let at_b = b.serving()?;
    println!(
        "{:.1} s   gw-b in office: it fenced gw-a's Ceph client, broke its image locks, and its \
         paths turned Active/Optimized",
        t0.elapsed().as_secs_f64()
    );
    let mut resumed = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while writer.acknowledged() < at_kill + AFTER {
        if let Some(err) = writer.error() {
            bail!("the ledger writer failed: {err}");
        }
        if resumed.is_none() && writer.acknowledged() > at_kill {
            resumed = Some(t0.elapsed());
            println!(
                "{:.1} s   transaction {} acknowledged through gw-b",
                t0.elapsed().as_secs_f64(),
                at_kill + 1
            );
        }
        ensure!(
            Instant::now() < deadline,
            "the writer did not go on after the failover"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    if resumed.is_none() {
        println!(
            "{:.1} s   transactions acknowledged through gw-b",
            t0.elapsed().as_secs_f64()
        );
    }
    paths_table(&mpio, &labels);
    writer.stop();
    ensure!(
        writer.error().is_none(),
        "the ledger writer failed: {:?}",
        writer.error()
    );
    let acknowledged = writer.acknowledged();

    step(5, "The ledger, read back through gw-b");
    let ledger = e(read_ledger(&host, "L:", writer.id(), 0))?;
    ensure!(
        ledger.defects.is_empty(),
        "the ledger is damaged: {:?}",
        ledger.defects
    );
    ensure!(
        ledger.last >= acknowledged,
        "transaction {} was acknowledged but the ledger ends at {}",
        acknowledged,
        ledger.last
    );
    println!(
        "L: holds transactions 1..={} in order, every checksum good: all {acknowledged} \
         acknowledged ones ({at_kill} before the kill), no I/O error seen by the host",
        ledger.last
    );
    drop(host);
    drop(mpio);

    step(6, "Stop");
    let mut b = b;
    b.signal("-TERM")?;
    let status = b.child.wait()?;
    ensure!(status.success(), "gw-b did not stop cleanly: {status}");
    println!(
        "gw-b stopped cleanly (SIGTERM: it resigned office); API was {}",
        at_b.api
    );
    Ok(())
}
