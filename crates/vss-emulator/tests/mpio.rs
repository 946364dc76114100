//! MPIO over real loopback sockets: one target name served by two gateways, each its own
//! target port in its own target port group, sharing one memory logical unit. The LU is
//! Active/Optimized in group 1 and Standby in group 2 unless a test changes it. Every medium
//! command the target executes is recorded with its port and the sense it ended with.

use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iscsi::initiator::{DataDir, InitiatorConfig, Session, rw16};
use iscsi::{AuthPolicy, ScsiHandler, TargetConfig, TargetServer};
use scsi::{
    AccessState, Command, FileSpan, LogicalUnit, LuIdentity, MemDevice, Nexus, Outcome, PortGroup,
    TaskManagement, TaskManagementResponse,
};
use vss::identity::LunIdentity;
use vss_emulator::HostStorage;
use vss_emulator::host::Host;
use vss_emulator::mpio::{MpioPolicy, MpioStorage, PathInfo};
use vss_emulator::storage::{DiskAddress, StorageError};
use vss_emulator::writer::{LedgerWriter, read_ledger};

const TARGET: &str = "iqn.2026-01.org.shadowlun:mpio";
const HOST: &str = "iqn.1991-05.com.microsoft:host-a";
/// (relative target port, portal group tag, target port group) of each gateway.
const GW1: (u16, u16, u16) = (1, 1, 1);
const GW2: (u16, u16, u16) = (2, 2, 2);
const BLOCKS: u64 = 8192;

/// What the target ran: (relative port, opcode, LBA, sense key/ASC/ASCQ or GOOD as zeros).
type Entry = (u16, u8, u64, (u8, u8, u8));

/// The device model, with every READ (16), WRITE (16) and SYNCHRONIZE CACHE recorded.
struct Recorder {
    inner: Arc<scsi::Target>,
    log: Mutex<Vec<Entry>>,
    /// WRITEs through this relative port wait (at most 10 s) until it is cleared.
    stall: Mutex<Option<u16>>,
}

impl Recorder {
    fn new(inner: Arc<scsi::Target>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            log: Mutex::default(),
            stall: Mutex::default(),
        })
    }

    fn maybe_stall(&self, cmd: &Command<'_>) {
        if cmd.cdb[0] != 0x8A {
            return;
        }
        let until = Instant::now() + Duration::from_secs(10);
        while *self.stall.lock().unwrap() == Some(cmd.nexus.target_port) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn note(&self, cmd: &Command<'_>, o: &Outcome) {
        if !matches!(cmd.cdb[0], 0x88 | 0x8A | 0x91) {
            return;
        }
        let lba = cmd
            .cdb
            .get(2..10)
            .map_or(0, |b| u64::from_be_bytes(b.try_into().expect("8")));
        let sense = o
            .sense
            .as_ref()
            .map_or((0, 0, 0), |s| (s[2] & 0x0F, s[12], s[13]));
        self.log
            .lock()
            .unwrap()
            .push((cmd.nexus.target_port, cmd.cdb[0], lba, sense));
    }

    fn take(&self) -> Vec<Entry> {
        std::mem::take(&mut self.log.lock().unwrap())
    }
}

impl ScsiHandler for Recorder {
    fn execute(&self, cmd: &Command<'_>) -> Outcome {
        self.maybe_stall(cmd);
        let o = self.inner.execute(cmd);
        self.note(cmd, &o);
        o
    }
    fn execute_zero_copy(&self, cmd: &Command<'_>) -> (Outcome, Option<FileSpan>) {
        self.maybe_stall(cmd);
        let (o, span) = self.inner.execute_zero_copy(cmd);
        self.note(cmd, &o);
        (o, span)
    }
    fn task_management(
        &self,
        nexus: &Nexus,
        lun: u64,
        f: TaskManagement,
    ) -> TaskManagementResponse {
        self.inner.task_management(nexus, lun, f)
    }
    fn nexus_lost(&self, nexus: &Nexus) {
        self.inner.nexus_lost(nexus)
    }
    fn luns_for(&self, initiator: &str) -> Vec<u64> {
        self.inner.luns_for(initiator)
    }
    fn data_length(&self, cmd: &Command<'_>) -> Option<u64> {
        self.inner.data_length(cmd)
    }
}

fn unit(number: u64) -> Arc<LogicalUnit> {
    let id = LunIdentity::for_number(number);
    Arc::new(LogicalUnit::new(
        Arc::new(MemDevice::new(512, BLOCKS)),
        LuIdentity {
            vendor: id.vendor,
            product: id.product,
            revision: id.revision,
            serial: id.serial,
            designators: id.designators,
        },
    ))
}

fn target_with_groups() -> Arc<scsi::Target> {
    let t = Arc::new(scsi::Target::new(TARGET));
    t.set_port_groups(vec![
        PortGroup {
            id: GW1.2,
            ports: vec![GW1.0],
        },
        PortGroup {
            id: GW2.2,
            ports: vec![GW2.0],
        },
    ])
    .unwrap();
    t
}

/// One gateway: a target server with one target port, serving `handler` under TARGET.
fn gateway(
    (port, tag, _): (u16, u16, u16),
    at: SocketAddr,
    handler: Arc<dyn ScsiHandler>,
) -> TargetServer {
    let s = TargetServer::spawn(TargetConfig {
        portals: vec![at],
        relative_port: port,
        portal_group_tag: tag,
        logout_grace: Duration::from_millis(100),
        ..TargetConfig::default()
    })
    .unwrap();
    s.add_target(TARGET, None, handler, AuthPolicy::None)
        .unwrap();
    s
}

struct Rig {
    target: Arc<scsi::Target>,
    rec: Arc<Recorder>,
    gw1: Option<TargetServer>,
    gw2: TargetServer,
    p1: SocketAddr,
    p2: SocketAddr,
}

impl Rig {
    /// LUN 0 mapped to HOST, Active/Optimized in group 1, Standby in group 2.
    fn new() -> Rig {
        let target = target_with_groups();
        target.map(HOST, 0, unit(0x301));
        target.set_access_state(GW2.2, AccessState::Standby);
        let rec = Recorder::new(target.clone());
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let gw1 = gateway(GW1, any, rec.clone());
        let gw2 = gateway(GW2, any, rec.clone());
        let (p1, p2) = (gw1.local_addrs()[0], gw2.local_addrs()[0]);
        Rig {
            target,
            rec,
            gw1: Some(gw1),
            gw2,
            p1,
            p2,
        }
    }

    fn mpio(&self, failover: Duration) -> Arc<MpioStorage> {
        self.mpio_to(&[self.p1, self.p2], failover)
    }

    fn mpio_to(&self, portals: &[SocketAddr], failover: Duration) -> Arc<MpioStorage> {
        MpioStorage::with_config(
            portals,
            TARGET,
            InitiatorConfig {
                timeout: Duration::from_secs(5),
                ..InitiatorConfig::new(HOST)
            },
            MpioPolicy {
                transition_wait: Duration::from_millis(20),
                failover_timeout: failover,
                reconnect_interval: Duration::from_millis(100),
            },
        )
    }

    /// Group 1 in `g1`, group 2 in `g2`.
    fn states(&self, g1: AccessState, g2: AccessState) {
        self.target.set_access_state(GW1.2, g1);
        self.target.set_access_state(GW2.2, g2);
    }
}

fn disk0() -> DiskAddress {
    DiskAddress {
        target: TARGET.into(),
        lun: 0,
    }
}

fn pattern(seed: u8, blocks: usize) -> Vec<u8> {
    (0..blocks * 512)
        .map(|i| seed.wrapping_mul(37).wrapping_add((i % 251) as u8))
        .collect()
}

/// (portal, relative port, group, state, failed?, current?) of one path.
type Row = (
    SocketAddr,
    Option<u16>,
    Option<u16>,
    Option<AccessState>,
    bool,
    bool,
);

/// Each path to LUN 0, as [`Row`]s.
fn view(m: &MpioStorage) -> Vec<Row> {
    m.paths()
        .into_iter()
        .filter(|p: &PathInfo| p.lun == 0)
        .map(|p| {
            assert_eq!(p.mismatch, None, "{p:?}");
            (
                p.portal,
                p.relative_port,
                p.group,
                p.state,
                p.failed.is_some(),
                p.current,
            )
        })
        .collect()
}

const GOOD: (u8, u8, u8) = (0, 0, 0);
const UA_STATE_CHANGED: (u8, u8, u8) = (0x6, 0x2A, 0x06);
const STANDBY: (u8, u8, u8) = (0x2, 0x04, 0x0B);

#[test]
fn discovery_makes_one_disk_of_both_paths_and_io_uses_the_optimized_one() {
    let rig = Rig::new();
    let m = rig.mpio(Duration::from_secs(5));
    assert_eq!(m.report_luns().unwrap(), vec![disk0()], "one disk, not two");
    assert_eq!(
        view(&m),
        vec![
            (
                rig.p1,
                Some(GW1.0),
                Some(GW1.2),
                Some(AccessState::ActiveOptimized),
                false,
                false
            ),
            (
                rig.p2,
                Some(GW2.0),
                Some(GW2.2),
                Some(AccessState::Standby),
                false,
                false
            ),
        ]
    );
    let data = pattern(1, 16);
    m.write(&disk0(), 100, &data).unwrap();
    assert_eq!(m.read(&disk0(), 100, 16).unwrap(), data);
    m.flush(&disk0()).unwrap();
    assert_eq!(
        rig.rec.take(),
        vec![
            (GW1.0, 0x8A, 100, GOOD),
            (GW1.0, 0x88, 100, GOOD),
            (GW1.0, 0x91, 0, GOOD)
        ],
        "every medium command went through gateway 1, none tried gateway 2"
    );
    assert!(view(&m)[0].5, "the optimized path is the current one");
    // The Standby port alone refuses the medium, so the reads above cannot have used it.
    let mut s = Session::login(rig.p2, TARGET, &InitiatorConfig::new(HOST)).unwrap();
    let _ = s.execute(0, &[0; 6], DataDir::None).unwrap();
    let r = s
        .execute(0, &rw16(0x88, 100, 1, false), DataDir::Read(512))
        .unwrap();
    let x = r.sense.expect("sense");
    assert_eq!((r.status, (x.key, x.asc, x.ascq)), (2, STANDBY));
}

#[test]
fn a_state_change_moves_io_to_the_other_group_after_its_unit_attention() {
    let rig = Rig::new();
    let m = rig.mpio(Duration::from_secs(5));
    m.report_luns().unwrap();
    let before = pattern(2, 8);
    m.write(&disk0(), 0, &before).unwrap();
    rig.rec.take();
    rig.states(AccessState::Standby, AccessState::ActiveOptimized);
    let after = pattern(3, 8);
    m.write(&disk0(), 8, &after).unwrap();
    assert_eq!(
        rig.rec.take(),
        vec![
            // Gateway 1 reports the change once, then refuses the medium.
            (GW1.0, 0x8A, 8, UA_STATE_CHANGED),
            (GW1.0, 0x8A, 8, STANDBY),
            // Gateway 2's nexus: its first medium command, so it first reports the power on
            // (29/00), then the same state change, then writes.
            (GW2.0, 0x8A, 8, (0x6, 0x29, 0x00)),
            (GW2.0, 0x8A, 8, UA_STATE_CHANGED),
            (GW2.0, 0x8A, 8, GOOD),
        ]
    );
    assert_eq!(
        view(&m),
        vec![
            (
                rig.p1,
                Some(GW1.0),
                Some(GW1.2),
                Some(AccessState::Standby),
                false,
                false
            ),
            (
                rig.p2,
                Some(GW2.0),
                Some(GW2.2),
                Some(AccessState::ActiveOptimized),
                false,
                true
            ),
        ]
    );
    let mut both = before.clone();
    both.extend_from_slice(&after);
    assert_eq!(m.read(&disk0(), 0, 16).unwrap(), both);
    assert_eq!(rig.rec.take(), vec![(GW2.0, 0x88, 0, GOOD)]);
    // Back again: group 1 optimized, group 2 non-optimized. Gateway 2 still serves, so the
    // command that saw the unit attention runs there, and MPIO moves to group 1 after it.
    rig.states(
        AccessState::ActiveOptimized,
        AccessState::ActiveNonOptimized,
    );
    assert_eq!(m.read(&disk0(), 8, 8).unwrap(), after);
    assert_eq!(m.read(&disk0(), 0, 8).unwrap(), before);
    assert_eq!(
        rig.rec.take(),
        vec![
            (GW2.0, 0x88, 8, UA_STATE_CHANGED),
            (GW2.0, 0x88, 8, GOOD),
            (GW1.0, 0x88, 0, UA_STATE_CHANGED),
            (GW1.0, 0x88, 0, GOOD),
        ]
    );
}

#[test]
fn a_non_optimized_path_serves_only_while_no_optimized_one_does() {
    let rig = Rig::new();
    let m = rig.mpio(Duration::from_secs(5));
    m.report_luns().unwrap();
    m.read(&disk0(), 0, 1).unwrap();
    rig.rec.take();
    rig.states(AccessState::Unavailable, AccessState::ActiveNonOptimized);
    let data = pattern(9, 2);
    m.write(&disk0(), 60, &data).unwrap();
    assert_eq!(
        rig.rec.take(),
        vec![
            (GW1.0, 0x8A, 60, UA_STATE_CHANGED),
            (GW1.0, 0x8A, 60, (0x2, 0x04, 0x0C)),
            (GW2.0, 0x8A, 60, (0x6, 0x29, 0x00)),
            (GW2.0, 0x8A, 60, UA_STATE_CHANGED),
            (GW2.0, 0x8A, 60, GOOD),
        ],
        "unavailable on gateway 1, then the non-optimized gateway 2"
    );
    // Group 1 optimized again: the unit attention on gateway 2 tells MPIO, which moves back.
    rig.states(
        AccessState::ActiveOptimized,
        AccessState::ActiveNonOptimized,
    );
    assert_eq!(m.read(&disk0(), 60, 2).unwrap(), data);
    assert_eq!(m.read(&disk0(), 60, 2).unwrap(), data);
    assert_eq!(
        rig.rec.take(),
        vec![
            (GW2.0, 0x88, 60, UA_STATE_CHANGED),
            (GW2.0, 0x88, 60, GOOD),
            (GW1.0, 0x88, 60, UA_STATE_CHANGED),
            (GW1.0, 0x88, 60, GOOD),
        ]
    );
}

#[test]
fn a_transitioning_lu_is_waited_for_then_served() {
    let rig = Rig::new();
    let m = rig.mpio(Duration::from_secs(5));
    m.report_luns().unwrap();
    m.read(&disk0(), 40, 4).unwrap();
    rig.rec.take();
    rig.states(AccessState::Transitioning, AccessState::Standby);
    let t = rig.target.clone();
    let flip = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        t.set_access_state(GW2.2, AccessState::ActiveOptimized);
        t.set_access_state(GW1.2, AccessState::Standby);
    });
    let data = pattern(4, 4);
    let started = Instant::now();
    m.write(&disk0(), 40, &data).unwrap();
    assert!(started.elapsed() >= Duration::from_millis(250), "it waited");
    flip.join().unwrap();
    let log = rig.rec.take();
    assert_eq!(log.last(), Some(&(GW2.0, 0x8A, 40, GOOD)), "{log:?}");
    assert!(
        log.contains(&(GW1.0, 0x8A, 40, (0x2, 0x04, 0x0A))),
        "gateway 1 answered transitioning: {log:?}"
    );
    assert!(
        !log.iter().any(|e| e.0 == GW2.0 && e.3 == STANDBY),
        "never sent to the standby group: {log:?}"
    );
    assert_eq!(m.read(&disk0(), 40, 4).unwrap(), data);
}

#[test]
fn a_lun_number_given_to_another_disk_is_that_disk_on_every_path_after_a_rescan() {
    let rig = Rig::new();
    let m = rig.mpio(Duration::from_secs(5));
    m.report_luns().unwrap();
    m.write(&disk0(), 0, &pattern(8, 1)).unwrap();
    rig.target.unmap(HOST, 0);
    rig.target.map(HOST, 0, unit(0x302));
    assert_eq!(m.report_luns().unwrap(), vec![disk0()]);
    // Both paths show the new disk (`view` asserts no mismatch), and it reads as new.
    assert_eq!(
        view(&m),
        vec![
            (
                rig.p1,
                Some(GW1.0),
                Some(GW1.2),
                Some(AccessState::ActiveOptimized),
                false,
                false
            ),
            (
                rig.p2,
                Some(GW2.0),
                Some(GW2.2),
                Some(AccessState::ActiveOptimized),
                false,
                false
            ),
        ]
    );
    assert_eq!(m.read(&disk0(), 0, 1).unwrap(), vec![0; 512]);
}

#[test]
fn a_lun_that_is_another_disk_through_one_path_is_not_used_there() {
    // Gateway 2 serves the same target name but another logical unit as LUN 0.
    let t1 = target_with_groups();
    t1.map(HOST, 0, unit(0x401));
    let t2 = target_with_groups();
    t2.map(HOST, 0, unit(0x402));
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let gw1 = gateway(GW1, any, t1.clone());
    let gw2 = gateway(GW2, any, t2);
    let (p1, p2) = (gw1.local_addrs()[0], gw2.local_addrs()[0]);
    let m = MpioStorage::with_config(
        &[p1, p2],
        TARGET,
        InitiatorConfig::new(HOST),
        MpioPolicy {
            failover_timeout: Duration::from_millis(500),
            ..MpioPolicy::default()
        },
    );
    assert_eq!(m.report_luns().unwrap(), vec![disk0()]);
    let paths = m.paths();
    assert_eq!(paths.len(), 2);
    assert_eq!(paths[0].mismatch, None);
    let why = paths[1]
        .mismatch
        .clone()
        .expect("path 2 shows another disk");
    assert!(why.contains("another disk"), "{why}");
    // I/O goes to the LU of the first path even when the second is the only optimized one.
    t1.set_access_state(GW1.2, AccessState::Standby);
    let err = m.read(&disk0(), 0, 1).unwrap_err();
    let StorageError::NoPath { paths, .. } = &err else {
        panic!("{err}");
    };
    assert_eq!(
        paths.iter().map(|p| p.portal).collect::<Vec<_>>(),
        vec![p1, p2]
    );
    assert!(paths[1].why.contains("another disk"), "{err}");
    assert!(paths[0].why.contains("Standby"), "{err}");
}

#[test]
fn a_ledger_writer_keeps_writing_when_a_gateway_goes_away() {
    let mut rig = Rig::new();
    let m = rig.mpio(Duration::from_secs(10));
    let host = Host::new("host-a", m.clone());
    host.rescan().unwrap();
    let d = "\\\\.\\PHYSICALDRIVE0".to_string();
    // 600 records of 512 bytes: a bounded run.
    host.partition_disk(&d, &[600 * 512]).unwrap();
    host.mount("E:", &[(d, 1)]).unwrap();
    let w = LedgerWriter::start(
        "ledger",
        9,
        host.clone(),
        vec!["E:".into()],
        Duration::from_millis(2),
    )
    .unwrap();
    assert!(w.wait_for(50, Duration::from_secs(10)), "{:?}", w.error());
    // Gateway 1 goes away (listener closed, connections dropped); then the array moves the
    // LU to gateway 2's group, as it would once it noticed.
    rig.gw1.take().unwrap().shutdown();
    let at_loss = w.acknowledged();
    std::thread::sleep(Duration::from_millis(200));
    rig.states(AccessState::Unavailable, AccessState::ActiveOptimized);
    assert!(
        w.wait_for(at_loss + 100, Duration::from_secs(20)),
        "writes continue through gateway 2: {:?}",
        w.error()
    );
    assert!(w.wait_for(600, Duration::from_secs(20)), "{:?}", w.error());
    w.stop();
    let acknowledged = w.acknowledged();
    assert_eq!(w.error(), None);
    let ledger = read_ledger(&host, "E:", 9, 0).unwrap();
    assert_eq!(ledger.defects, Vec::<String>::new());
    assert_eq!(
        ledger.last, acknowledged,
        "every acknowledged write reads back"
    );
    let log = rig.rec.take();
    let on = |port: u16| {
        log.iter()
            .filter(|e| e.0 == port && e.1 == 0x8A && e.3 == GOOD)
            .count()
    };
    assert!(
        on(GW1.0) >= 50 && on(GW2.0) >= 100,
        "{} {}",
        on(GW1.0),
        on(GW2.0)
    );
    let v = view(&m);
    assert!(v[0].4 && !v[0].5, "path 1 failed: {v:?}");
    assert!(!v[1].4 && v[1].5, "path 2 current: {v:?}");
    // Gateway 1 comes back on its address, and the array makes its group optimized again.
    // No rescan: the unit attention on gateway 2 makes MPIO read the states again, which
    // logs in to the failed path first, and the next command goes there.
    let gw1 = gateway(GW1, rig.p1, rig.rec.clone());
    std::thread::sleep(Duration::from_millis(150));
    rig.states(AccessState::ActiveOptimized, AccessState::Standby);
    let record = read_ledger(&host, "E:", 9, 0).unwrap();
    assert_eq!(record.last, acknowledged);
    let log = rig.rec.take();
    let reads_on = |port: u16| log.iter().filter(|e| e.0 == port && e.1 == 0x88).count();
    assert!(reads_on(GW1.0) > 0, "back on gateway 1: {log:?}");
    assert_eq!(log.last().map(|e| (e.0, e.3)), Some((GW1.0, GOOD)));
    let v = view(&m);
    assert!(!v[0].4 && v[0].5, "path 1 is back and current: {v:?}");
    assert_eq!(v[0].3, Some(AccessState::ActiveOptimized));
    // A rescan keeps both paths.
    m.report_luns().unwrap();
    assert_eq!(view(&m).iter().filter(|r| !r.4).count(), 2);
    gw1.shutdown();
}

#[test]
fn with_every_path_gone_a_command_fails_in_bounded_time_naming_each_path() {
    let rig = Rig::new();
    let m = rig.mpio(Duration::from_secs(2));
    m.report_luns().unwrap();
    m.write(&disk0(), 0, &pattern(5, 1)).unwrap();
    let Rig {
        gw1, gw2, p1, p2, ..
    } = rig;
    gw1.unwrap().shutdown();
    gw2.shutdown();
    let started = Instant::now();
    let err = m.read(&disk0(), 0, 1).unwrap_err();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(6), "bounded: {took:?}");
    let StorageError::NoPath { what, paths } = &err else {
        panic!("{err}");
    };
    assert_eq!(what, &disk0().to_string());
    assert_eq!(
        paths.iter().map(|p| p.portal).collect::<Vec<_>>(),
        vec![p1, p2]
    );
    for p in paths {
        assert!(p.why.contains("failed"), "{err}");
    }
    let text = err.to_string();
    assert!(
        text.contains(&p1.to_string()) && text.contains(&p2.to_string()),
        "{text}"
    );
}

/// A TCP relay in front of a portal that can be cut: its listener closed and every
/// connection through it shut, as when a gateway's network goes away mid-command.
struct Relay {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    fn new(upstream: SocketAddr) -> Relay {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (stop2, conns2) = (stop.clone(), conns.clone());
        let accept = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                let Ok((down, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                down.set_nonblocking(false).unwrap();
                let up = TcpStream::connect(upstream).unwrap();
                for (mut from, mut to) in [
                    (down.try_clone().unwrap(), up.try_clone().unwrap()),
                    (up.try_clone().unwrap(), down.try_clone().unwrap()),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
                conns2.lock().unwrap().extend([down, up]);
            }
        });
        Relay {
            addr,
            stop,
            conns,
            accept: Some(accept),
        }
    }

    fn cut(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            t.join().unwrap();
        }
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
    }
}

#[test]
fn a_write_in_flight_when_its_connection_drops_is_sent_again_on_the_other_path() {
    let rig = Rig::new();
    let mut relay = Relay::new(rig.p1);
    let m = rig.mpio_to(&[relay.addr, rig.p2], Duration::from_secs(10));
    m.report_luns().unwrap();
    let first = pattern(6, 4);
    m.write(&disk0(), 200, &first).unwrap();
    assert_eq!(rig.rec.take(), vec![(GW1.0, 0x8A, 200, GOOD)]);
    *rig.rec.stall.lock().unwrap() = Some(GW1.0);
    let second = pattern(7, 4);
    let writer = {
        let (m, data) = (m.clone(), second.clone());
        std::thread::spawn(move || m.write(&disk0(), 300, &data))
    };
    // The WRITE is at gateway 1 when its connection goes; gateway 2 is still Standby, so
    // MPIO waits for the array to move the LU there.
    std::thread::sleep(Duration::from_millis(150));
    relay.cut();
    std::thread::sleep(Duration::from_millis(150));
    rig.states(AccessState::Unavailable, AccessState::ActiveOptimized);
    writer.join().unwrap().unwrap();
    let failed = m.portals();
    assert_eq!(failed[0].0, relay.addr);
    assert!(failed[0].1.is_some(), "path 1 is failed: {failed:?}");
    assert_eq!(failed[1], (rig.p2, None));
    assert_eq!(rig.rec.take(), vec![(GW2.0, 0x8A, 300, GOOD)]);
    assert_eq!(m.read(&disk0(), 300, 4).unwrap(), second);
    assert_eq!(rig.rec.take(), vec![(GW2.0, 0x88, 300, GOOD)]);
    // The WRITE stalled at gateway 1 runs now, after the LU left its group: the state
    // change is what it gets, so nothing stale lands after the write through gateway 2.
    *rig.rec.stall.lock().unwrap() = None;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut log = Vec::new();
    while log.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        log.extend(rig.rec.take());
    }
    assert_eq!(log, vec![(GW1.0, 0x8A, 300, UA_STATE_CHANGED)]);
    assert_eq!(m.read(&disk0(), 200, 4).unwrap(), first);
    assert_eq!(m.read(&disk0(), 300, 4).unwrap(), second);
}
