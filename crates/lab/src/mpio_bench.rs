//! `shadowlun bench mpio`: what the emulated host's MPIO costs a command against one plain
//! iSCSI session, and what a move of the LU to another target port group costs the first
//! command after it. One target server on loopback serves two target ports in two groups and
//! a memory LU; the contenders take turns, command by command:
//!
//! - one session (`IscsiStorage`) to the port of the Active/Optimized group: the baseline;
//! - `MpioStorage` over both ports, the other group Standby: the same commands after a path
//!   choice, so its latency should be the baseline's;
//! - the first WRITE after the LU's groups swap states: a unit attention, the standby sense,
//!   REPORT TARGET PORT GROUPS and the unit attention of the other path before it runs,
//!   against a WRITE through MPIO that needs none of it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use iscsi::{AuthPolicy, TargetConfig, TargetPort, TargetServer};
use scsi::{AccessState, LogicalUnit, LuIdentity, MemDevice, PortGroup};
use vss_emulator::HostStorage;
use vss_emulator::iscsi_storage::IscsiStorage;
use vss_emulator::mpio::MpioStorage;
use vss_emulator::storage::DiskAddress;

use crate::report::{Goal, Report, Row, machine};

const TARGET: &str = "iqn.2026-01.org.shadowlun:bench-mpio";
const SINGLE: &str = "iqn.1991-05.com.microsoft:bench-single";
const MULTI: &str = "iqn.1991-05.com.microsoft:bench-mpio";
const BLOCKS: u64 = 131_072;

/// How many samples of each contender.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// 4 KiB READs and WRITEs of each contender.
    pub ops: usize,
    /// Moves of the LU from one group to the other.
    pub moves: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            ops: 2000,
            moves: 50,
        }
    }
}

/// (median, (min, max)) of `v`.
fn stats(v: &mut [f64]) -> (f64, (f64, f64)) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], (v[0], v[v.len() - 1]))
}

fn us(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e6
}

fn serve() -> anyhow::Result<(TargetServer, Arc<scsi::Target>, Vec<SocketAddr>)> {
    let t = Arc::new(scsi::Target::new(TARGET));
    t.set_port_groups(vec![
        PortGroup {
            id: 1,
            ports: vec![1],
        },
        PortGroup {
            id: 2,
            ports: vec![2],
        },
    ])?;
    let lu = Arc::new(LogicalUnit::new(
        Arc::new(MemDevice::new(512, BLOCKS)),
        LuIdentity {
            vendor: "SHADOWLN".into(),
            product: "bench-mpio".into(),
            revision: "0001".into(),
            serial: "MPIOBENCH1".into(),
            designators: vec![vss::inquiry::Designator::naa_locally_assigned(0x3B1)],
        },
    ));
    t.map(SINGLE, 0, lu.clone());
    t.map(MULTI, 0, lu);
    t.set_access_state(2, AccessState::Standby);
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let port = |n: u16| TargetPort {
        relative_port: n,
        portal_group_tag: n,
        portals: vec![any],
    };
    let server = TargetServer::spawn(TargetConfig {
        target_ports: vec![port(1), port(2)],
        ..TargetConfig::default()
    })?;
    server.add_target(TARGET, None, t.clone(), AuthPolicy::None)?;
    let portals = server.ports().iter().map(|p| p.portals[0]).collect();
    Ok((server, t, portals))
}

pub fn run(o: &BenchOptions) -> anyhow::Result<Report> {
    let (server, target, portals) = serve()?;
    let single = IscsiStorage::new(portals[0], TARGET, SINGLE);
    let mpio = MpioStorage::new(&portals, TARGET, MULTI);
    let contenders: [&dyn HostStorage; 2] = [single.as_ref(), mpio.as_ref()];
    let disk = DiskAddress {
        target: TARGET.into(),
        lun: 0,
    };
    let data = vec![0x5Au8; 4096];
    for c in contenders {
        c.report_luns()?;
        // Warm up: logins, block size, the power-on unit attention.
        for i in 0..20 {
            c.write(&disk, i * 8, &data)?;
            c.read(&disk, i * 8, 8)?;
        }
    }
    let ops = o.ops.max(1);
    let mut writes: [Vec<f64>; 2] = Default::default();
    let mut reads: [Vec<f64>; 2] = Default::default();
    for i in 0..ops as u64 {
        let lba = (i * 8 * 97) % (BLOCKS - 8);
        // Each goes first every other round: the first command after the other contender's
        // pays for waking the target's threads.
        let order: [usize; 2] = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        for k in order {
            let t = Instant::now();
            contenders[k].write(&disk, lba, &data)?;
            writes[k].push(us(t));
        }
        for k in order {
            let c = contenders[k];
            let t = Instant::now();
            let got = c.read(&disk, lba, 8)?;
            reads[k].push(us(t));
            if got != data {
                anyhow::bail!("READ at {lba} returned other bytes than were written");
            }
        }
    }
    // Moves: the LU swaps groups; the first WRITE after each against a WRITE before it.
    let mut first = Vec::new();
    let mut steady = Vec::new();
    let mut optimized = 1u16;
    for i in 0..o.moves.max(1) as u64 {
        let t = Instant::now();
        mpio.write(&disk, i * 8, &data)?;
        steady.push(us(t));
        let other = 3 - optimized;
        target.set_access_state(optimized, AccessState::Standby);
        target.set_access_state(other, AccessState::ActiveOptimized);
        optimized = other;
        let t = Instant::now();
        mpio.write(&disk, i * 8, &data)?;
        first.push(us(t));
        let current = mpio.paths().into_iter().find(|p| p.current);
        if current.and_then(|p| p.group) != Some(optimized) {
            anyhow::bail!("after a move, MPIO is not on group {optimized}");
        }
    }
    drop((single, mpio));
    server.shutdown();

    let [w_single, w_mpio] = writes.map(|mut v| stats(&mut v));
    let [r_single, r_mpio] = reads.map(|mut v| stats(&mut v));
    let moved = stats(&mut first);
    let before = stats(&mut steady);
    let rows = vec![
        Row::new(
            "4 KiB WRITE, MPIO over two paths",
            "µs",
            w_mpio.0,
            "one session",
            Some(w_single.0),
            Some(Goal::AtMost(1.2)),
        )
        .with_ranges(Some(w_mpio.1), Some(w_single.1)),
        Row::new(
            "4 KiB READ, MPIO over two paths",
            "µs",
            r_mpio.0,
            "one session",
            Some(r_single.0),
            Some(Goal::AtMost(1.2)),
        )
        .with_ranges(Some(r_mpio.1), Some(r_single.1)),
        Row::new(
            "first 4 KiB WRITE after the LU moved to the other group",
            "µs",
            moved.0,
            "4 KiB WRITE through MPIO before the move",
            Some(before.0),
            None,
        )
        .with_ranges(Some(moved.1), Some(before.1)),
    ];
    Ok(Report {
        title: "MPIO in the emulated host: command latency and a move between port groups".into(),
        machine: machine(),
        rows,
        notes: vec![
            format!(
                "{ops} READs and WRITEs per contender at queue depth 1, contenders in turn (each \
                 first every other round); {} \
                 moves; median (min-max); one target server on loopback, two ports in two groups",
                o.moves.max(1)
            ),
            "a move costs the first WRITE: unit attention 2A/06, sense 02/04/0B, REPORT TARGET \
             PORT GROUPS, the other path's unit attention, then the WRITE"
                .into(),
        ],
    })
}
