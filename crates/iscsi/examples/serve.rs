//! Starts an iSCSI target from command line arguments, for conformance runs and manual tests.
//!
//! ```text
//! cargo run -p iscsi --example serve -- --portal 127.0.0.1:3260 \
//!     --target iqn.2026-01.org.shadowlun:demo --initiator iqn.1991-05.com.microsoft:host \
//!     --lun 0:file:/tmp/x.img:1024 --lun 1:mem:64
//! ```
//! `--lun N:file:PATH[:MiB]` serves a file (created with that size if missing) through the
//! page cache, `--lun N:direct:PATH[:MiB]` the same with direct I/O (`O_DIRECT`, sequential
//! reads read ahead in 1 MiB requests);
//! `--lun N:mem:MiB` serves memory. Every LUN is mapped to every `--initiator`, unless
//! `--map N=IQN[,IQN...]` names the initiators of LUN N.
//! `--chap INITIATOR:USER:SECRET[:TARGETUSER:TARGETSECRET]` sets CHAP secrets; `--auth chap`
//! requires CHAP. `--port-group N` puts the target's port (relative port 1) in target port
//! group N, every LUN Active/Optimized in it (asymmetric access, as the array serves).
//!
//! Several target ports: `--portal ADDR=G` serves ADDR as a portal of target port G, whose
//! relative target port identifier, iSCSI target portal group tag and target port group
//! (asymmetric access) are all G; portals with the same G are one port. Either every
//! `--portal` names a group or none does (then they are all portals of the one port, relative
//! port 1, tag 1, and `--port-group` applies). `--remote-group G=PORT[,PORT...]` adds target
//! port group G whose ports another process serves (reported by REPORT TARGET PORT GROUPS).
//! `--access [LUN:]G=STATE` sets LUN's (or every LUN's) state in group G: `active-optimized`,
//! `active-non-optimized`, `standby`, `unavailable` or `transitioning`.
//!
//! ```text
//! serve --portal 127.0.0.1:3260=1 --portal 127.0.0.1:3261=2 --access 2=standby --lun 0:mem:64
//! ```
//! Stops on SIGINT or SIGTERM (asking initiators to log out first).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use iscsi::{AuthPolicy, TargetConfig, TargetPort, TargetServer};
use scsi::{AccessState, FileDevice, LogicalUnit, LuIdentity, MemDevice, PortGroup};

const USAGE: &str = "usage: serve [--portal ADDR[=GROUP]]... [--target IQN] [--initiator IQN]... \
     --lun N:file:PATH[:MiB]|N:direct:PATH[:MiB]|N:mem:MiB ... [--block-size 512|4096] [--serial-prefix S] \
     [--map N=IQN[,IQN]]... [--chap INIT:USER:SECRET[:TUSER:TSECRET]]... [--auth none|chap] \
     [--digests on|off] [--port-group N] [--remote-group GROUP=PORT[,PORT]]... \
     [--access [LUN:]GROUP=STATE]...\n\
     \n\
     --portal ADDR=GROUP    ADDR is a portal of target port GROUP: relative target port\n\
     \x20                      identifier, portal group tag and target port group GROUP\n\
     \x20                      (every --portal names a group, or none does)\n\
     --port-group N         the one port of ungrouped portals (relative port 1) is in group N\n\
     --remote-group G=P,..  group G holds relative ports P served by another process\n\
     --access [LUN:]GROUP=STATE\n\
     \x20                      the access state in GROUP of LUN (of every LUN without it):\n\
     \x20                      active-optimized, active-non-optimized, standby, unavailable,\n\
     \x20                      transitioning; later ones win\n\
     \n\
     e.g. serve --portal 127.0.0.1:3260=1 --portal 127.0.0.1:3261=2 --access 2=standby --lun 0:mem:64";

fn usage(msg: &str) -> ! {
    eprintln!("serve: {msg}");
    eprintln!("{USAGE}");
    std::process::exit(2)
}

struct Lun {
    number: u64,
    device: scsi::Device,
}

fn parse_lun(spec: &str, block_size: u32) -> Lun {
    let parts: Vec<&str> = spec.splitn(4, ':').collect();
    let number: u64 = parts
        .first()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| usage("bad LUN number"));
    let mib = |s: Option<&&str>| -> u64 {
        s.and_then(|v| v.parse().ok())
            .unwrap_or_else(|| usage("bad size"))
    };
    let device: scsi::Device = match parts.get(1).copied() {
        Some("mem") => {
            let blocks = mib(parts.get(2)) * 1024 * 1024 / u64::from(block_size);
            Arc::new(MemDevice::new(block_size, blocks))
        }
        Some(kind @ ("file" | "direct")) => {
            let path = parts
                .get(2)
                .unwrap_or_else(|| usage("file LUN needs a path"));
            let p = Path::new(path);
            let dev = if p.exists() {
                Ok(())
            } else {
                let blocks = mib(parts.get(3)) * 1024 * 1024 / u64::from(block_size);
                FileDevice::create(p, block_size, blocks).map(drop)
            }
            .and_then(|()| {
                if kind == "direct" {
                    FileDevice::open_direct(p, block_size, false)
                } else {
                    FileDevice::open(p, block_size, false)
                }
            });
            Arc::new(dev.unwrap_or_else(|e| usage(&format!("{path}: {e}"))))
        }
        _ => usage("LUN kind must be file, direct or mem"),
    };
    Lun { number, device }
}

fn parse_state(s: &str) -> AccessState {
    match s {
        "active-optimized" => AccessState::ActiveOptimized,
        "active-non-optimized" => AccessState::ActiveNonOptimized,
        "standby" => AccessState::Standby,
        "unavailable" => AccessState::Unavailable,
        "transitioning" => AccessState::Transitioning,
        _ => usage(&format!("unknown access state {s}")),
    }
}

fn parse_group(s: &str, what: &str) -> u16 {
    s.parse()
        .unwrap_or_else(|_| usage(&format!("bad group in {what}")))
}

/// The target ports of grouped portals, one per group in the order first named; `None` if
/// no portal names a group.
fn grouped_ports(portals: &[(SocketAddr, Option<u16>)]) -> Option<Vec<TargetPort>> {
    let named = portals.iter().filter(|(_, g)| g.is_some()).count();
    if named == 0 {
        return None;
    }
    if named != portals.len() {
        usage("either every --portal names a group or none does");
    }
    let mut ports: Vec<TargetPort> = Vec::new();
    for &(addr, g) in portals {
        let g = g.expect("grouped");
        match ports.iter_mut().find(|p| p.relative_port == g) {
            Some(p) => p.portals.push(addr),
            None => ports.push(TargetPort {
                relative_port: g,
                portal_group_tag: g,
                portals: vec![addr],
            }),
        }
    }
    Some(ports)
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut portals: Vec<(SocketAddr, Option<u16>)> = Vec::new();
    let mut remote_groups: Vec<PortGroup> = Vec::new();
    let mut access: Vec<(Option<u64>, u16, AccessState)> = Vec::new();
    let mut target = "iqn.2026-01.org.shadowlun:serve".to_string();
    let mut initiators: Vec<String> = Vec::new();
    let mut lun_specs: Vec<String> = Vec::new();
    let mut chaps: Vec<String> = Vec::new();
    let mut auth = AuthPolicy::None;
    let mut block_size = 512u32;
    let mut serial_prefix = "SL".to_string();
    let mut digests = true;
    let mut port_group: Option<u16> = None;
    let mut maps: Vec<(u64, Vec<String>)> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--help" | "-h" => {
                println!("{USAGE}");
                return;
            }
            "--portal" => {
                let v = val();
                let (addr, group) = match v.split_once('=') {
                    Some((a, g)) => (a, Some(parse_group(g, "--portal"))),
                    None => (v.as_str(), None),
                };
                let addr = addr.parse().unwrap_or_else(|_| usage("bad portal address"));
                portals.push((addr, group));
            }
            "--remote-group" => {
                let v = val();
                let (g, list) = v
                    .split_once('=')
                    .unwrap_or_else(|| usage("--remote-group is GROUP=PORT[,PORT]"));
                let ports = list
                    .split(',')
                    .map(|p| {
                        p.parse()
                            .unwrap_or_else(|_| usage("bad port in --remote-group"))
                    })
                    .collect();
                remote_groups.push(PortGroup {
                    id: parse_group(g, "--remote-group"),
                    ports,
                });
            }
            "--access" => {
                let v = val();
                let (g, st) = v
                    .split_once('=')
                    .unwrap_or_else(|| usage("--access is [LUN:]GROUP=STATE"));
                let (lun, g) = match g.split_once(':') {
                    Some((l, g)) => (
                        Some(l.parse().unwrap_or_else(|_| usage("bad LUN in --access"))),
                        g,
                    ),
                    None => (None, g),
                };
                access.push((lun, parse_group(g, "--access"), parse_state(st)));
            }
            "--target" => target = val(),
            "--initiator" => initiators.push(val()),
            "--lun" => lun_specs.push(val()),
            "--chap" => chaps.push(val()),
            "--auth" => {
                auth = match val().as_str() {
                    "none" => AuthPolicy::None,
                    "chap" => AuthPolicy::Chap,
                    _ => usage("--auth is none or chap"),
                }
            }
            "--block-size" => {
                block_size = val().parse().unwrap_or_else(|_| usage("bad block size"))
            }
            "--serial-prefix" => serial_prefix = val(),
            "--digests" => digests = val() == "on",
            "--port-group" => {
                port_group = Some(val().parse().unwrap_or_else(|_| usage("bad --port-group")))
            }
            "--map" => {
                let v = val();
                let (n, list) = v
                    .split_once('=')
                    .unwrap_or_else(|| usage("--map is N=IQN[,IQN]"));
                let n = n.parse().unwrap_or_else(|_| usage("bad LUN in --map"));
                maps.push((n, list.split(',').map(str::to_string).collect()));
            }
            _ => usage(&format!("unknown argument {a}")),
        }
    }
    if portals.is_empty() {
        portals.push((SocketAddr::from(([127, 0, 0, 1], 3260)), None));
    }
    if lun_specs.is_empty() {
        usage("at least one --lun is needed");
    }
    let scsi_target = Arc::new(scsi::Target::new(&target));
    let mut cfg = TargetConfig::default();
    // The groups of the ports served here, then those served elsewhere.
    let mut groups: Vec<PortGroup> = Vec::new();
    match grouped_ports(&portals) {
        Some(ports) => {
            if port_group.is_some() {
                usage("--port-group is for ungrouped portals; name the group in --portal");
            }
            groups.extend(ports.iter().map(|p| PortGroup {
                id: p.relative_port,
                ports: vec![p.relative_port],
            }));
            cfg.target_ports = ports;
        }
        None => {
            cfg.portals = portals.iter().map(|(a, _)| *a).collect();
            groups.extend(port_group.map(|id| PortGroup {
                id,
                ports: vec![cfg.relative_port],
            }));
        }
    }
    groups.extend(remote_groups);
    if !groups.is_empty() {
        scsi_target
            .set_port_groups(groups)
            .unwrap_or_else(|e| usage(&format!("target port groups: {e}")));
    }
    let mut units: Vec<(u64, Arc<LogicalUnit>)> = Vec::new();
    for spec in &lun_specs {
        let lun = parse_lun(spec, block_size);
        let id = u64::from_be_bytes(*b"shdwlun\0") ^ lun.number ^ (target.len() as u64) << 40;
        let identity = LuIdentity {
            vendor: "SHADOWLN".into(),
            product: "shadowlun LUN".into(),
            revision: "0001".into(),
            serial: format!("{serial_prefix}{:04}", lun.number),
            designators: vec![vss::inquiry::Designator::naa_locally_assigned(id)],
        };
        if let Err(e) = identity.validate() {
            usage(&format!("identity: {e}"));
        }
        let unit = Arc::new(LogicalUnit::new(lun.device, identity));
        let who = maps
            .iter()
            .find(|(n, _)| *n == lun.number)
            .map(|(_, l)| l.clone())
            .unwrap_or_else(|| initiators.clone());
        for i in &who {
            scsi_target.map(i, lun.number, unit.clone());
        }
        units.push((lun.number, unit));
    }
    for (lun, g, state) in access {
        if !scsi_target.port_groups().iter().any(|p| p.id == g) {
            usage(&format!(
                "--access names group {g}, which is not configured"
            ));
        }
        let mut found = false;
        for (_, unit) in units.iter().filter(|(n, _)| lun.is_none_or(|l| l == *n)) {
            unit.set_access_state(g, state);
            found = true;
        }
        if !found {
            usage("--access names a LUN that is not configured");
        }
    }
    cfg.limits.allow_digests = digests;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let server = TargetServer::bind(cfg)
            .await
            .unwrap_or_else(|e| usage(&e.to_string()));
        server
            .add_target(&target, Some("shadowlun"), scsi_target, auth)
            .unwrap_or_else(|e| usage(&e.to_string()));
        for c in &chaps {
            let p: Vec<&str> = c.split(':').collect();
            match p.as_slice() {
                [i, u, s] => server.set_chap(i, u, s.as_bytes(), None),
                [i, u, s, tu, ts] => server.set_chap(i, u, s.as_bytes(), Some((tu, ts.as_bytes()))),
                _ => usage("bad --chap"),
            }
        }
        for p in server.ports() {
            for a in &p.portals {
                println!(
                    "listening on {a} (relative target port {}, target portal group tag {})",
                    p.relative_port, p.portal_group_tag
                );
            }
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        server.shutdown_async().await;
    });
}
