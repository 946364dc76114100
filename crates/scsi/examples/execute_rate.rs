//! Measures how many commands per second `Target::execute` handles in process (no transport):
//! 4 KiB READ(10) and WRITE(10) on a MemDevice, then 4 KiB writes on a FileDevice in a
//! temporary directory; last, the cost of asymmetric access on the I/O path: 4 KiB READ(10)
//! through a port in a target port group (the LU Active/Optimized, its state looked up on
//! every command) against the same without groups, alternated, median and min–max of seven
//! rounds each and their ratio. Bounded: a fixed number of commands per case.
//!
//! `cargo run --release -p scsi --example execute_rate`

use std::sync::Arc;
use std::time::Instant;

use scsi::{
    BlockDevice, Command, FileDevice, LogicalUnit, LuIdentity, MemDevice, Nexus, Target,
    TaskAttribute, encode_lun, status,
};

const COMMANDS: u32 = 200_000;

fn cdb(op: u8, lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = op;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn run(t: &Target, threads: u32, op: u8, label: &str) -> f64 {
    let start = Instant::now();
    std::thread::scope(|s| {
        for i in 0..threads {
            s.spawn(move || {
                let n = Nexus {
                    initiator_port: format!("iqn.2026-01.org.example:bench,i,0x{i:012x}"),
                    initiator: "iqn.2026-01.org.example:bench".into(),
                    target_port: 1,
                    portal_group_tag: 1,
                };
                let data = vec![0x5Au8; 4096];
                let mut ok = 0u32;
                for k in 0..COMMANDS / threads {
                    let c = cdb(op, (k * 8) % (1 << 20), 8);
                    let o = t.execute(&Command {
                        nexus: &n,
                        lun: encode_lun(0),
                        cdb: &c,
                        data_out: if op == 0x2A { &data } else { &[] },
                        expected_length: 4096,
                        task_tag: k,
                        attribute: TaskAttribute::Simple,
                    });
                    ok += u32::from(o.status == status::GOOD);
                }
                assert!(ok + 1 >= COMMANDS / threads, "commands failed");
            });
        }
    });
    let secs = start.elapsed().as_secs_f64();
    if label.is_empty() {
        return f64::from(COMMANDS) / secs;
    }
    println!(
        "{label:<34} threads={threads} {:>9.0} commands/s  {:>7.1} MiB/s",
        f64::from(COMMANDS) / secs,
        f64::from(COMMANDS) * 4096.0 / secs / (1 << 20) as f64
    );
    f64::from(COMMANDS) / secs
}

/// Median, min and max.
fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn target(dev: Arc<dyn BlockDevice>) -> Target {
    let t = Target::new("iqn.2026-01.org.shadowlun:bench");
    let id = LuIdentity {
        vendor: "SHADOWLN".into(),
        product: "bench".into(),
        revision: "0100".into(),
        serial: "SLBENCH".into(),
        designators: vec![vss::inquiry::Designator::naa_locally_assigned(1)],
    };
    t.map(
        "iqn.2026-01.org.example:bench",
        0,
        Arc::new(LogicalUnit::new(dev, id)),
    );
    t
}

fn main() {
    let mem = target(Arc::new(MemDevice::new(512, 1 << 21)));
    for threads in [1, 2] {
        run(&mem, threads, 0x2A, "MemDevice WRITE(10) 4 KiB");
        run(&mem, threads, 0x28, "MemDevice READ(10) 4 KiB");
    }
    let dir = std::env::temp_dir().join(format!("scsi-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = FileDevice::create(&dir.join("lun.img"), 512, 1 << 21).expect("file");
    let ft = target(Arc::new(file));
    for threads in [1, 2] {
        run(&ft, threads, 0x2A, "FileDevice WRITE(10) 4 KiB");
        run(&ft, threads, 0x28, "FileDevice READ(10) 4 KiB");
    }
    std::fs::remove_dir_all(&dir).ok();

    let plain = target(Arc::new(MemDevice::new(512, 1 << 21)));
    let grouped = target(Arc::new(MemDevice::new(512, 1 << 21)));
    grouped
        .set_port_groups(vec![scsi::PortGroup {
            id: 1,
            ports: vec![1],
        }])
        .expect("groups");
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        a.push(run(&plain, 1, 0x28, ""));
        b.push(run(&grouped, 1, 0x28, ""));
    }
    let (pa, pb) = (stats(a), stats(b));
    println!(
        "READ(10) 4 KiB, no port groups      {:>9.0} commands/s (min {:.0}, max {:.0})",
        pa.0, pa.1, pa.2
    );
    println!(
        "READ(10) 4 KiB, port in group, A/O  {:>9.0} commands/s (min {:.0}, max {:.0})",
        pb.0, pb.1, pb.2
    );
    println!("ratio (group / none), medians: {:.3}", pb.0 / pa.0);
}
