//! What the soak drives: emulated Windows hosts on the array (A writes ledgers and takes
//! shadow copies, B imports and breaks them, C gets LUNs an administrator creates, grows and
//! deletes), the operations, and how an operation a kill interrupted is finished.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use api::{CreateLun, HostRecord, LunRecord, MapLun, SetRecord, SetState, UpdateLun, routes};
use rand::Rng;
use rand::rngs::StdRng;
use vss::{Hresult, RecoveryOptions, SnapshotContext, VolumeSnapshotAttributes, VssId};
use vss_emulator::conformance::Lab;
use vss_emulator::coordinator::{Config, Coordinator, DeleteTarget};
use vss_emulator::iscsi_storage::IscsiStorage;
use vss_emulator::storage::{DiskAddress, HostStorage};
use vss_emulator::writer::{LedgerWriter, read_ledger, verify_ledgers};
use vss_emulator::{BackupComponents, Host};

use super::check::{self, Expected, Violation};
use crate::real_lab::RealLab;

pub const HOST_A: &str = "iqn.1991-05.com.microsoft:soak-a";
pub const HOST_B: &str = "iqn.1991-05.com.microsoft:soak-b";
pub const HOST_C: &str = "iqn.1991-05.com.microsoft:soak-c";
/// The ledger writer's id and volumes (E: on A's first LUN, G: on its second). Its
/// transactions are flushed before they are acknowledged (the array's LUNs have a write
/// cache, as SCSI allows), so every acknowledged one must survive a kill.
const WRITER_ID: u64 = 1;
const VOLUMES: [&str; 2] = ["E:", "G:"];
/// A's LUNs, and the partition each ledger lives on: 57 344 records of 512 bytes, about 20
/// minutes of transactions at the writer's pace.
const A_LUN_BYTES: u64 = 32 << 20;
const LEDGER_BYTES: u64 = 28 << 20;
const WRITER_INTERVAL: Duration = Duration::from_millis(15);
/// At most this many shadow copy sets are kept; past it the next operation deletes one.
const MAX_LIVE_SETS: usize = 6;
const CHUNK: u64 = 64 << 10;

/// Why an operation did not finish: a broken invariant (the soak stops), or a failure (a
/// kill explains it, or it is itself a violation).
#[derive(Debug)]
pub enum OpError {
    Violation(Violation),
    Failed(String),
}

impl From<Violation> for OpError {
    fn from(v: Violation) -> Self {
        OpError::Violation(v)
    }
}

macro_rules! failed_from {
    ($($t:ty),*) => {$(
        impl From<$t> for OpError {
            fn from(e: $t) -> Self {
                OpError::Failed(e.to_string())
            }
        }
    )*};
}
failed_from!(
    String,
    vss_emulator::coordinator::VssError,
    vss_emulator::host::HostError,
    vss_emulator::storage::StorageError,
    provider::https::ClientError
);

type OpResult<T = ()> = Result<T, OpError>;

fn fail<T>(msg: String) -> OpResult<T> {
    Err(OpError::Failed(msg))
}

/// The operations of the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    AutoRelease,
    Persistent,
    Transportable,
    Break,
    Resync,
    Delete,
    LunCreate,
    LunResize,
    LunDelete,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::AutoRelease => "set auto-release",
            Op::Persistent => "set persistent",
            Op::Transportable => "set transportable + import",
            Op::Break => "set break",
            Op::Resync => "set resync",
            Op::Delete => "set delete",
            Op::LunCreate => "lun create + map",
            Op::LunResize => "lun resize",
            Op::LunDelete => "lun unmap + delete",
        }
    }
}

/// One host as VSS sees it.
struct Side {
    host: Arc<Host>,
    coord: Arc<Coordinator>,
}

impl Side {
    fn new(lab: &RealLab, initiator: &str) -> Result<Self, String> {
        let host = Host::new(initiator, lab.storage(initiator)?);
        host.rescan().map_err(|e| e.to_string())?;
        let coord = Coordinator::new(Arc::clone(&host), Config::default());
        coord
            .register_provider(lab.provider_id(), "shadowlun", lab.provider(initiator)?)
            .map_err(|e| e.to_string())?;
        Ok(Self { host, coord })
    }

    fn knows(&self, set: VssId) -> bool {
        self.coord.query().iter().any(|p| p.snapshot_set_id == set)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holder {
    A,
    B,
}

/// A shadow copy set that exists, where it is held, and the point in time it holds.
#[derive(Debug, Clone)]
struct LiveSet {
    holder: Holder,
    luns: usize,
    frozen: u64,
    after: Option<u64>,
}

/// A LUN of host C.
#[derive(Debug, Clone)]
struct CLun {
    id: String,
    size: u64,
    lun_number: u64,
}

/// What an interrupted operation leaves to finish.
#[derive(Debug, Clone)]
enum CPending {
    Create { name: String, size: u64 },
    Resize { name: String, size: u64 },
    Delete { name: String },
}

/// Counts for the report.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Tally {
    /// Operations finished, by kind.
    pub ops: BTreeMap<String, u64>,
    /// Operations a kill interrupted (finished or undone afterwards).
    pub interrupted: u64,
    /// Ledger reads of original volumes after a kill (every acknowledged write present).
    pub durability_checks: u64,
    /// Snapshot sets whose ledgers were read back and found one point in time.
    pub snapshots_verified: u64,
    /// Ledger records read back and verified (every check, all volumes).
    pub records_verified: u64,
    /// Sets an interrupted operation left behind, removed by the administrator's verbs.
    pub sets_cleaned: u64,
    /// Stamps on C's LUNs read back after a kill.
    pub stamps_verified: u64,
    /// Partition tables of A's LUNs a kill left torn, written again after the restart.
    pub gpt_repairs: u64,
}

pub struct World {
    lab: Arc<RealLab>,
    a: Side,
    b: Side,
    writer: Arc<LedgerWriter>,
    a_luns: Vec<String>,
    /// A's two disks (its originals), as the host numbers them.
    a_devices: Vec<String>,
    c_host: String,
    c_luns: BTreeMap<String, CLun>,
    c_next: u64,
    live: BTreeMap<VssId, LiveSet>,
    /// Sets the operation in progress created or is removing.
    touched: Vec<VssId>,
    /// A resync of A's originals started and not yet verified: (set, frozen, after).
    restore: Option<(VssId, u64, Option<u64>)>,
    c_pending: Option<CPending>,
    pub tally: Tally,
}

fn admin_err(e: provider::https::ClientError) -> OpError {
    OpError::Failed(e.to_string())
}

impl World {
    /// Hosts A (two LUNs, E: and G:, a ledger writer on both), B (imports) and C (an
    /// administrator's LUNs).
    pub fn setup(lab: Arc<RealLab>) -> Result<Self, String> {
        let mut a_luns = Vec::new();
        for n in 1..=2 {
            let name = format!("soak-a-{n}");
            lab.create_mapped_lun(&name, A_LUN_BYTES, HOST_A)?;
            a_luns.push(name);
        }
        let b_host = lab.host(HOST_B)?.0;
        let c_host = lab.host(HOST_C)?.0;
        tracing::debug!(b_host, c_host, "soak hosts");
        let a = Side::new(&lab, HOST_A)?;
        let b = Side::new(&lab, HOST_B)?;
        let e = |x: vss_emulator::host::HostError| x.to_string();
        let disks = a.host.disks();
        if disks.len() != 2 {
            return Err(format!("host A sees {} disks, 2 expected", disks.len()));
        }
        let a_devices = disks.iter().map(|d| d.device.clone()).collect();
        for (d, v) in disks.iter().zip(VOLUMES) {
            a.host
                .partition_disk(&d.device, &[LEDGER_BYTES])
                .map_err(e)?;
            a.host.mount(v, &[(d.device.clone(), 1)]).map_err(e)?;
        }
        let writer = LedgerWriter::start_durable(
            "ledger",
            WRITER_ID,
            Arc::clone(&a.host),
            VOLUMES.iter().map(|v| v.to_string()).collect(),
            WRITER_INTERVAL,
        )
        .map_err(e)?;
        a.coord.add_writer(writer.clone());
        if !writer.wait_for(5, Duration::from_secs(10)) {
            return Err("the ledger writer made no progress".into());
        }
        Ok(Self {
            lab,
            a,
            b,
            writer,
            a_luns,
            a_devices,
            c_host,
            c_luns: BTreeMap::new(),
            c_next: 1,
            live: BTreeMap::new(),
            touched: Vec::new(),
            restore: None,
            c_pending: None,
            tally: Tally::default(),
        })
    }

    /// The next operation: any kind whose preconditions hold, by weight.
    pub fn pick(&self, rng: &mut StdRng) -> Op {
        if self.live.len() >= MAX_LIVE_SETS {
            return Op::Delete;
        }
        let imported = self.live.values().any(|s| s.holder == Holder::B);
        let mut menu: Vec<(Op, u32)> = vec![
            (Op::AutoRelease, 3),
            (Op::Persistent, 3),
            (Op::Transportable, 3),
            (Op::Resync, 1),
            (Op::LunCreate, 2),
        ];
        if imported {
            menu.push((Op::Break, 2));
        }
        if !self.live.is_empty() {
            menu.push((Op::Delete, 3));
        }
        if !self.c_luns.is_empty() {
            menu.push((Op::LunResize, 2));
            menu.push((Op::LunDelete, 2));
        }
        let total: u32 = menu.iter().map(|(_, w)| w).sum();
        let mut r = rng.random_range(0..total);
        for (op, w) in &menu {
            if r < *w {
                return *op;
            }
            r -= w;
        }
        Op::Persistent
    }

    /// Runs one operation. `rng` picks its sizes and targets.
    pub fn run(&mut self, op: Op, rng: &mut StdRng) -> OpResult {
        self.touched.clear();
        match op {
            Op::AutoRelease => self.auto_release(),
            Op::Persistent => self.persistent().map(|_| ()),
            Op::Transportable => self.transportable(),
            Op::Break => self.break_set(rng),
            Op::Resync => self.resync(),
            Op::Delete => self.delete(rng),
            Op::LunCreate => self.lun_create(rng),
            Op::LunResize => self.lun_resize(rng),
            Op::LunDelete => self.lun_delete(rng),
        }?;
        *self.tally.ops.entry(op.name().into()).or_default() += 1;
        self.touched.clear();
        Ok(())
    }

    // ------------------------------------------------------------ shadow copies

    /// A set of E: and G: on host A in `context`; the requester is returned (an auto-release
    /// set lives as long as it).
    fn create(&mut self, context: SnapshotContext) -> OpResult<(VssId, BackupComponents)> {
        let mut bc = self.a.coord.backup_components();
        bc.set_context(context)?;
        let set = bc.start_snapshot_set()?;
        self.touched.push(set);
        for v in VOLUMES {
            bc.add_to_snapshot_set(v, VssId::nil())?;
        }
        bc.do_snapshot_set()?;
        Ok((set, bc))
    }

    /// The writer's freeze and thaw around the set just taken.
    fn point(&self) -> OpResult<(u64, Option<u64>)> {
        let frozen = self
            .writer
            .frozen_at()
            .ok_or_else(|| OpError::Failed("the ledger writer never froze".into()))?;
        Ok((frozen, self.writer.first_after_thaw()))
    }

    /// Reads a set's snapshot volumes (`pairs`: original, snapshot volume) on `host` and
    /// checks they hold one point in time between `frozen` and `after`.
    fn verify(
        &mut self,
        what: &str,
        host: &Host,
        pairs: &[(String, String)],
        frozen: u64,
        after: Option<u64>,
    ) -> OpResult {
        let mut vols = Vec::new();
        for v in VOLUMES {
            match pairs.iter().find(|(o, _)| o.eq_ignore_ascii_case(v)) {
                Some((_, s)) => vols.push(s.clone()),
                None => return fail(format!("{what}: no snapshot volume of {v} surfaced")),
            }
        }
        let c = verify_ledgers(host, &vols, WRITER_ID, frozen, after)?;
        let last = check::one_point_in_time(what, &c)?;
        self.tally.snapshots_verified += 1;
        self.tally.records_verified += last * vols.len() as u64;
        Ok(())
    }

    fn auto_release(&mut self) -> OpResult {
        let (set, mut bc) = self.create(SnapshotContext::BACKUP)?;
        let (frozen, after) = self.point()?;
        let pairs = bc.snapshot_volumes(set);
        let host = Arc::clone(&self.a.host);
        self.verify(
            &format!("auto-release set {set}"),
            &host,
            &pairs,
            frozen,
            after,
        )?;
        let released = bc.release()?;
        if released != VOLUMES.len() {
            return fail(format!(
                "auto-release set {set}: {released} snapshot(s) released"
            ));
        }
        self.expect_gone(set)
    }

    fn persistent(&mut self) -> OpResult<VssId> {
        let (set, bc) = self.create(SnapshotContext::APP_ROLLBACK)?;
        let (frozen, after) = self.point()?;
        self.live.insert(
            set,
            LiveSet {
                holder: Holder::A,
                luns: VOLUMES.len(),
                frozen,
                after,
            },
        );
        let pairs = bc.snapshot_volumes(set);
        let host = Arc::clone(&self.a.host);
        self.verify(
            &format!("persistent set {set}"),
            &host,
            &pairs,
            frozen,
            after,
        )?;
        Ok(set)
    }

    fn transportable(&mut self) -> OpResult {
        let (set, bc) = self
            .create(SnapshotContext::APP_ROLLBACK.with(VolumeSnapshotAttributes::TRANSPORTABLE))?;
        let (frozen, after) = self.point()?;
        let bcd = bc.bcd(set)?;
        drop(bc);
        let mut ib = self.b.coord.backup_components();
        ib.load_bcd(bcd)?;
        let r = ib.import_snapshots()?;
        if r != Hresult::S_OK {
            return fail(format!("import of set {set} on host B returned {r}"));
        }
        self.live.insert(
            set,
            LiveSet {
                holder: Holder::B,
                luns: VOLUMES.len(),
                frozen,
                after,
            },
        );
        let pairs = ib.snapshot_volumes(set);
        let host = Arc::clone(&self.b.host);
        self.verify(
            &format!("transportable set {set} imported on B"),
            &host,
            &pairs,
            frozen,
            after,
        )
    }

    fn break_set(&mut self, rng: &mut StdRng) -> OpResult {
        let Some((set, s)) = self.pick_live(rng, Some(Holder::B)) else {
            return Ok(());
        };
        self.live.remove(&set);
        self.touched.push(set);
        let mut ib = self.b.coord.backup_components();
        let pairs = ib.snapshot_volumes(set);
        ib.break_snapshot_set(set, true)?;
        let host = Arc::clone(&self.b.host);
        // Broken off, the volumes are ordinary writable volumes still at the same instant.
        self.verify(
            &format!("broken set {set} on B"),
            &host,
            &pairs,
            s.frozen,
            s.after,
        )?;
        for (_, v) in &pairs {
            host.dismount(v)?;
        }
        self.admin_remove_set(set)?;
        host.rescan()?;
        self.expect_gone(set)
    }

    fn resync(&mut self) -> OpResult {
        let set = self.persistent()?;
        let s = self.live[&set].clone();
        self.writer.stop();
        self.restore = Some((set, s.frozen, s.after));
        self.finish_restore()
    }

    /// Resyncs A's originals from the restore's set, checks they hold its point in time,
    /// and restarts the application from there.
    fn finish_restore(&mut self) -> OpResult {
        let Some((set, frozen, after)) = self.restore else {
            return Ok(());
        };
        let bcd = self
            .a
            .coord
            .bcd(set)
            .ok_or_else(|| OpError::Failed(format!("host A does not hold set {set}")))?;
        let ids: Vec<VssId> = bcd.set.snapshots.iter().map(|s| s.snapshot_id).collect();
        let mut rb = self.a.coord.backup_components();
        rb.load_bcd(bcd)?;
        for id in ids {
            rb.add_snapshot_to_recovery_set(id, None)?;
        }
        rb.recover_set(RecoveryOptions::empty())?;
        let vols: Vec<String> = VOLUMES.iter().map(|v| v.to_string()).collect();
        let c = verify_ledgers(&self.a.host, &vols, WRITER_ID, frozen, after)?;
        let last = check::one_point_in_time(&format!("A's originals resynced from set {set}"), &c)?;
        self.tally.records_verified += last * vols.len() as u64;
        self.restore = None;
        self.writer.restart(frozen)?;
        Ok(())
    }

    fn delete(&mut self, rng: &mut StdRng) -> OpResult {
        let Some((set, s)) = self.pick_live(rng, None) else {
            return Ok(());
        };
        self.live.remove(&set);
        self.touched.push(set);
        let side = match s.holder {
            Holder::A => &self.a,
            Holder::B => &self.b,
        };
        let n = side
            .coord
            .backup_components()
            .delete_snapshots(DeleteTarget::Set(set))?;
        if n != s.luns {
            return fail(format!(
                "deleting set {set}: {n} of {} snapshots deleted",
                s.luns
            ));
        }
        self.expect_gone(set)
    }

    fn pick_live(&self, rng: &mut StdRng, holder: Option<Holder>) -> Option<(VssId, LiveSet)> {
        let c: Vec<(&VssId, &LiveSet)> = self
            .live
            .iter()
            .filter(|(_, s)| holder.is_none_or(|h| s.holder == h))
            .collect();
        if c.is_empty() {
            return None;
        }
        let (id, s) = c[rng.random_range(0..c.len())];
        Some((*id, s.clone()))
    }

    /// No snapshot LUN of `set` is left on the array.
    fn expect_gone(&self, set: VssId) -> OpResult {
        let left: Vec<String> = self
            .luns()?
            .into_iter()
            .filter(|l| l.snapshot_of.as_ref().is_some_and(|o| o.set_id == set))
            .map(|l| l.id)
            .collect();
        if !left.is_empty() {
            return Err(OpError::Violation(Violation(format!(
                "set {set} was deleted and its snapshot LUN(s) {} are still on the array",
                left.join(", ")
            ))));
        }
        Ok(())
    }

    // ------------------------------------------------------------ the administrator

    fn luns(&self) -> OpResult<Vec<LunRecord>> {
        self.lab.admin().get(routes::ADMIN_LUNS).map_err(admin_err)
    }

    fn sets(&self) -> OpResult<Vec<SetRecord>> {
        self.lab.admin().get(routes::ADMIN_SETS).map_err(admin_err)
    }

    /// Aborts a set left prepared or committed, and deletes whatever snapshot LUN of it is
    /// left: what an administrator does after a failed backup.
    fn admin_remove_set(&mut self, set: VssId) -> OpResult {
        let admin = self.lab.admin();
        if let Some(s) = self.sets()?.into_iter().find(|s| s.set_id == set)
            && matches!(s.state, SetState::Prepared | SetState::Committed)
        {
            admin
                .post_empty::<()>(
                    &routes::fill(routes::ADMIN_SET_ABORT, &[("set", &set.to_string())]),
                    None,
                    Duration::from_secs(30),
                )
                .map_err(admin_err)?;
        }
        for l in self.luns()? {
            if l.snapshot_of.as_ref().is_some_and(|o| o.set_id == set) {
                admin
                    .delete(&routes::fill(routes::ADMIN_SNAPSHOT, &[("lun", &l.id)]))
                    .map_err(admin_err)?;
            }
        }
        Ok(())
    }

    fn stamp(name: &str) -> Vec<u8> {
        let mut s = vec![0u8; 512];
        for (i, b) in s.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(7) ^ 0x5A;
        }
        s[..name.len()].copy_from_slice(name.as_bytes());
        s
    }

    /// A fresh iSCSI session of host C (a login per operation: the target's connection
    /// handling is part of what runs for hours).
    fn c_storage(&self) -> Arc<IscsiStorage> {
        IscsiStorage::new(self.lab.portal, &self.lab.target, HOST_C)
    }

    fn c_disk(&self, lun_number: u64) -> DiskAddress {
        DiskAddress {
            target: self.lab.target.clone(),
            lun: lun_number,
        }
    }

    /// Reads C's LUN back: its size and its stamp.
    fn c_check(&mut self, name: &str) -> OpResult {
        let l = self.c_luns[name].clone();
        let st = self.c_storage();
        let disk = self.c_disk(l.lun_number);
        let cap = st.read_capacity(&disk)?;
        if cap.bytes() != l.size {
            return Err(OpError::Violation(Violation(format!(
                "LUN {name} ({}) is {} bytes over iSCSI, {} were acknowledged",
                l.id,
                cap.bytes(),
                l.size
            ))));
        }
        let data = st.read(&disk, 0, 1)?;
        if data != Self::stamp(name) {
            return Err(OpError::Violation(Violation(format!(
                "acknowledged write lost: LUN {name} ({}) does not hold the block written to \
                 it at creation",
                l.id
            ))));
        }
        self.tally.stamps_verified += 1;
        Ok(())
    }

    fn c_map(&self, id: &str) -> OpResult<u64> {
        let h: HostRecord = self
            .lab
            .admin()
            .post_keyed(
                &routes::fill(routes::ADMIN_MAP, &[("host", &self.c_host)]),
                Some(&MapLun {
                    lun: id.into(),
                    lun_number: None,
                    shared: false,
                }),
                &uuid::Uuid::new_v4().to_string(),
            )
            .map_err(admin_err)?;
        h.luns
            .iter()
            .find(|m| m.lun == id)
            .map(|m| m.lun_number)
            .ok_or_else(|| OpError::Failed(format!("{id} is not mapped to C after mapping")))
    }

    fn c_stamp(&mut self, name: &str) -> OpResult {
        let l = self.c_luns[name].clone();
        let st = self.c_storage();
        let disk = self.c_disk(l.lun_number);
        st.write(&disk, 0, &Self::stamp(name))?;
        // Flushed: from here on the block must survive any kill.
        st.flush(&disk)?;
        self.c_check(name)
    }

    fn lun_create(&mut self, rng: &mut StdRng) -> OpResult {
        let name = format!("soak-c-{}", self.c_next);
        self.c_next += 1;
        let size = rng.random_range(16..=128u64) * CHUNK;
        self.c_pending = Some(CPending::Create {
            name: name.clone(),
            size,
        });
        let rec: LunRecord = self
            .lab
            .admin()
            .post_keyed(
                routes::ADMIN_LUNS,
                Some(&CreateLun {
                    name: name.clone(),
                    size_bytes: size,
                }),
                &uuid::Uuid::new_v4().to_string(),
            )
            .map_err(admin_err)?;
        let lun_number = self.c_map(&rec.id)?;
        self.c_luns.insert(
            name.clone(),
            CLun {
                id: rec.id,
                size,
                lun_number,
            },
        );
        self.c_stamp(&name)?;
        self.c_pending = None;
        Ok(())
    }

    fn pick_c(&self, rng: &mut StdRng) -> Option<String> {
        let names: Vec<&String> = self.c_luns.keys().collect();
        (!names.is_empty()).then(|| names[rng.random_range(0..names.len())].clone())
    }

    fn lun_resize(&mut self, rng: &mut StdRng) -> OpResult {
        let Some(name) = self.pick_c(rng) else {
            return Ok(());
        };
        let l = self.c_luns[&name].clone();
        let size = l.size + rng.random_range(1..=32u64) * CHUNK;
        self.c_pending = Some(CPending::Resize {
            name: name.clone(),
            size,
        });
        let rec: LunRecord = self
            .lab
            .admin()
            .patch(
                &routes::fill(routes::ADMIN_LUN, &[("lun", &l.id)]),
                &UpdateLun {
                    size_bytes: Some(size),
                    name: None,
                },
            )
            .map_err(admin_err)?;
        if rec.size_bytes != size {
            return fail(format!(
                "{name} grew to {} bytes, not {size}",
                rec.size_bytes
            ));
        }
        if let Some(c) = self.c_luns.get_mut(&name) {
            c.size = size;
        }
        self.c_check(&name)?;
        self.c_pending = None;
        Ok(())
    }

    fn lun_delete(&mut self, rng: &mut StdRng) -> OpResult {
        let Some(name) = self.pick_c(rng) else {
            return Ok(());
        };
        self.c_check(&name)?;
        self.c_pending = Some(CPending::Delete { name: name.clone() });
        self.c_remove(&name)?;
        self.c_pending = None;
        Ok(())
    }

    /// Unmaps and deletes C's LUN (either step may already be done).
    fn c_remove(&mut self, name: &str) -> OpResult {
        let admin = self.lab.admin();
        if let Some(rec) = self.luns()?.into_iter().find(|l| l.name == name) {
            if !rec.mapped_to.is_empty() {
                admin
                    .delete(&routes::fill(
                        routes::ADMIN_UNMAP,
                        &[("host", &self.c_host), ("lun", &rec.id)],
                    ))
                    .map_err(admin_err)?;
            }
            admin
                .delete(&routes::fill(routes::ADMIN_LUN, &[("lun", &rec.id)]))
                .map_err(admin_err)?;
        }
        self.c_luns.remove(name);
        Ok(())
    }

    // ------------------------------------------------------------ after a kill

    /// After the daemon was killed and started again: every acknowledged ledger transaction
    /// and C stamp is there, the interrupted operation is finished or undone, the writer runs
    /// again, and nothing on the array is unaccounted for.
    pub fn recover(&mut self, interrupted: bool) -> OpResult {
        if interrupted {
            self.tally.interrupted += 1;
        }
        // VSS rewrites the partition tables of the source LUNs around every shadow copy
        // (flags set, then cleared), and a resync those of its destinations; the table is
        // several writes, so a kill among them may leave it torn, as a power cut would on
        // Windows (which then rebuilds it). The host rebuilds it the same way: same
        // partition, same place, the data untouched.
        for d in self.a_devices.clone() {
            if self.a.host.layout(&d).is_err() {
                tracing::info!(device = %d, "rebuilding a torn partition table");
                self.a.host.partition_disk(&d, &[LEDGER_BYTES])?;
                self.tally.gpt_repairs += 1;
            }
        }
        // The application: its ledgers, unless a restore was under way (then they are
        // whatever the resync had copied, and the restore is done again).
        self.writer.stop();
        if self.restore.is_some() {
            self.finish_restore()?;
        } else {
            let acked = self.writer.acknowledged();
            for (i, v) in VOLUMES.iter().enumerate() {
                let l = read_ledger(&self.a.host, v, WRITER_ID, i as u32)?;
                check::durable(&l, acked)?;
                self.tally.durability_checks += 1;
                self.tally.records_verified += l.last;
            }
            self.writer.restart(acked)?;
        }
        // Sets the interrupted operation touched that no host holds now.
        for set in std::mem::take(&mut self.touched) {
            if self.live.contains_key(&set) {
                continue;
            }
            for side in [&self.a, &self.b] {
                if side.knows(set)
                    && let Err(e) = side
                        .coord
                        .backup_components()
                        .delete_snapshots(DeleteTarget::Set(set))
                {
                    tracing::info!(%set, error = %e, "deleting an interrupted set through VSS");
                }
            }
            self.admin_remove_set(set)?;
            self.tally.sets_cleaned += 1;
        }
        self.b.host.rescan()?;
        self.a.host.rescan()?;
        // Host C's interrupted administrator step.
        let luns = self.luns()?;
        match self.c_pending.take() {
            Some(CPending::Create { name, size }) => {
                if let Some(rec) = luns.iter().find(|l| l.name == name) {
                    let lun_number = match rec.mapped_to.first() {
                        Some(m) => m.lun_number,
                        None => self.c_map(&rec.id)?,
                    };
                    self.c_luns.insert(
                        name.clone(),
                        CLun {
                            id: rec.id.clone(),
                            size,
                            lun_number,
                        },
                    );
                    self.c_stamp(&name)?;
                }
            }
            Some(CPending::Resize { name, size }) => {
                let now = luns.iter().find(|l| l.name == name).map(|l| l.size_bytes);
                let old = self.c_luns.get(&name).map(|l| l.size);
                if now != Some(size) && now != old {
                    return Err(OpError::Violation(Violation(format!(
                        "LUN {name} is {now:?} bytes after an interrupted growth from {old:?} to \
                         {size}"
                    ))));
                }
                if let (Some(c), Some(n)) = (self.c_luns.get_mut(&name), now) {
                    c.size = n;
                }
            }
            Some(CPending::Delete { name }) => self.c_remove(&name)?,
            None => {}
        }
        let names: Vec<String> = self.c_luns.keys().cloned().collect();
        for n in names {
            self.c_check(&n)?;
        }
        self.check_orphans()
    }

    /// Every LUN and set on the array is accounted for.
    pub fn check_orphans(&self) -> OpResult {
        let mut exp = Expected::default();
        exp.originals.extend(self.a_luns.iter().cloned());
        exp.originals.extend(self.c_luns.keys().cloned());
        for (id, s) in &self.live {
            exp.sets.insert(*id, s.luns);
        }
        check::no_orphans(&exp, &self.luns()?, &self.sets()?)?;
        Ok(())
    }

    /// The writer stopped by an I/O error with no kill to explain it.
    pub fn writer_error(&self) -> Option<String> {
        self.writer.error()
    }

    /// The LUNs the array has now (for the offline volume check).
    pub fn array_luns(&self) -> OpResult<Vec<LunRecord>> {
        self.luns()
    }

    /// Stops the application, checks its ledgers one last time, and deletes everything the
    /// soak made: sets through VSS, LUNs, mappings and hosts through the administrator.
    pub fn teardown(&mut self) -> OpResult {
        self.writer.stop();
        if let Some(e) = self.writer.error() {
            return fail(format!("the ledger writer failed: {e}"));
        }
        let acked = self.writer.acknowledged();
        for (i, v) in VOLUMES.iter().enumerate() {
            let l = read_ledger(&self.a.host, v, WRITER_ID, i as u32)?;
            check::durable(&l, acked)?;
            if l.last != acked {
                return Err(OpError::Violation(Violation(format!(
                    "{v} ends at transaction {}, the stopped writer acknowledged {acked}",
                    l.last
                ))));
            }
            self.tally.durability_checks += 1;
            self.tally.records_verified += l.last;
        }
        let sets: Vec<(VssId, LiveSet)> = std::mem::take(&mut self.live).into_iter().collect();
        for (set, s) in sets {
            let side = match s.holder {
                Holder::A => &self.a,
                Holder::B => &self.b,
            };
            side.coord
                .backup_components()
                .delete_snapshots(DeleteTarget::Set(set))?;
            self.expect_gone(set)?;
        }
        let names: Vec<String> = self.c_luns.keys().cloned().collect();
        for n in names {
            self.c_check(&n)?;
            self.c_remove(&n)?;
        }
        let admin = self.lab.admin();
        for h in [HOST_A, HOST_B, HOST_C] {
            let name = self.lab.host(h)?.0;
            admin
                .delete(&format!(
                    "{}?force=true",
                    routes::fill(routes::ADMIN_HOST, &[("host", &name)])
                ))
                .map_err(admin_err)?;
        }
        for n in &self.a_luns {
            admin
                .delete(&routes::fill(routes::ADMIN_LUN, &[("lun", n)]))
                .map_err(admin_err)?;
        }
        let luns = self.luns()?;
        if !luns.is_empty() {
            return Err(OpError::Violation(Violation(format!(
                "after everything was deleted the array still has LUN(s) {}",
                luns.iter()
                    .map(|l| format!("{} ({})", l.id, l.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))));
        }
        check::no_orphans(&Expected::default(), &luns, &self.sets()?)?;
        Ok(())
    }
}
