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
//! Stops on SIGINT or SIGTERM (asking initiators to log out first).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use iscsi::{AuthPolicy, TargetConfig, TargetServer};
use scsi::{FileDevice, LogicalUnit, LuIdentity, MemDevice};

fn usage(msg: &str) -> ! {
    eprintln!("serve: {msg}");
    eprintln!(
        "usage: serve [--portal ADDR]... [--target IQN] [--initiator IQN]... \
         --lun N:file:PATH[:MiB]|N:direct:PATH[:MiB]|N:mem:MiB ... [--block-size 512|4096] [--serial-prefix S] \
         [--map N=IQN[,IQN]]... [--chap INIT:USER:SECRET[:TUSER:TSECRET]]... [--auth none|chap] \
         [--digests on|off] [--port-group N]"
    );
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

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut portals: Vec<SocketAddr> = Vec::new();
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
            "--portal" => portals.push(
                val()
                    .parse()
                    .unwrap_or_else(|_| usage("bad portal address")),
            ),
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
        portals.push(SocketAddr::from(([127, 0, 0, 1], 3260)));
    }
    if lun_specs.is_empty() {
        usage("at least one --lun is needed");
    }
    let scsi_target = Arc::new(scsi::Target::new(&target));
    let cfg = TargetConfig::default();
    if let Some(id) = port_group {
        scsi_target
            .set_port_groups(vec![scsi::PortGroup {
                id,
                ports: vec![cfg.relative_port],
            }])
            .unwrap_or_else(|e| usage(&format!("--port-group: {e}")));
    }
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
    }
    let mut cfg = TargetConfig { portals, ..cfg };
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
        for a in server.local_addrs() {
            println!("listening on {a}");
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
