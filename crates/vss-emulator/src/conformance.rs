//! A named catalogue of conformance scenarios covering the items of `docs/vss-contract.md` §10
//! (all but 10.1, registration), each run on a fresh lab and reported with a verdict and its
//! call trace.
//!
//! The catalogue is generic over how the SAN and the provider are built ([`LabFactory`]), so
//! the same scenarios run against every lab of the `lab` crate: an in-process SAN with a
//! reference provider, shadowlun's provider over the array in memory, and the array daemon
//! reached over the network. Scenarios whose name starts with
//! `misbehaving.` wrap the provider in a [`FaultyProvider`] and pass when the emulator catches
//! the fault.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use provider::HardwareProvider;
use vss::{
    HardwareOptions, Hresult, LunInfo, Method, RecoveryOptions, SnapshotContext,
    VolumeSnapshotAttributes as Attr, VssId,
};

use crate::coordinator::{Config, Coordinator, DeleteTarget, VssError};
use crate::faults::{Fault, FaultyProvider};
use crate::host::Host;
use crate::storage::HostStorage;
use crate::trace::{ProviderHandle, Trace, TraceEntry};
use crate::writer::{LedgerWriter, verify_ledgers};

/// A SAN with a provider: what a scenario runs against.
pub trait Lab {
    /// Creates a LUN of `bytes` visible to `initiator`.
    fn create_lun(&self, bytes: u64, initiator: &str) -> Result<(), String>;
    /// How many LUNs the array holds (originals and snapshots): leak detection.
    fn lun_count(&self) -> Result<usize, String>;
    /// What a host with this initiator sees.
    fn storage(&self, initiator: &str) -> Result<Arc<dyn HostStorage>, String>;
    /// The provider as loaded on the host with this initiator.
    fn provider(&self, initiator: &str) -> Result<Arc<dyn HardwareProvider>, String>;
    fn provider_id(&self) -> VssId;
}

/// Builds a fresh lab for each scenario.
pub trait LabFactory {
    fn name(&self) -> String;
    fn build(&self) -> Result<Box<dyn Lab>, String>;
}

/// A scenario's outcome.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ScenarioResult {
    pub name: String,
    /// The `docs/vss-contract.md` §10 items it covers (and, for the call order, §2.2).
    pub covers: String,
    pub passed: bool,
    pub detail: String,
    /// Wall time of the scenario, lab set-up included.
    pub duration_ms: u64,
    pub trace: Vec<TraceEntry>,
}

/// The whole run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub lab: String,
    pub results: Vec<ScenarioResult>,
}

impl Report {
    /// True if every scenario passed.
    pub fn passed(&self) -> bool {
        self.results.iter().all(|r| r.passed)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// One line per scenario.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        for r in &self.results {
            s += &format!(
                "{} {:<44} {:>6} ms  {}\n",
                if r.passed { "PASS" } else { "FAIL" },
                r.name,
                r.duration_ms,
                r.detail
            );
        }
        s
    }
}

/// What a scenario gets: the lab and the traces of every coordinator it creates.
pub struct Ctx {
    lab: Box<dyn Lab>,
    traces: RefCell<Vec<Trace>>,
}

/// LUN size the rigs use.
pub const RIG_LUN_BYTES: u64 = 8 << 20;

/// A host with three LUNs: `E:` and `F:` on the first, `G:` spanning the second and third.
pub struct Rig {
    pub host: Arc<Host>,
    pub coord: Arc<Coordinator>,
    pub provider_id: VssId,
}

impl Ctx {
    /// A context over a lab (scenarios get one from [`run`]).
    pub fn new(lab: Box<dyn Lab>) -> Self {
        Self {
            lab,
            traces: RefCell::new(Vec::new()),
        }
    }

    pub fn lab(&self) -> &dyn Lab {
        self.lab.as_ref()
    }

    /// The provider of `initiator`'s host, called directly (as VSS would) with a trace.
    pub fn traced_provider(&self, initiator: &str) -> Result<ProviderHandle, String> {
        let trace = Trace::new();
        self.traces.borrow_mut().push(trace.clone());
        Ok(ProviderHandle::new(
            self.lab.provider_id(),
            "provider under test",
            self.lab.provider(initiator)?,
            trace,
        ))
    }

    /// A host with no LUNs of its own (an import host).
    pub fn bare_rig(
        &self,
        initiator: &str,
        config: Config,
        faults: Vec<Fault>,
    ) -> Result<Rig, String> {
        let host = Host::new(initiator, self.lab.storage(initiator)?);
        host.rescan().map_err(|e| e.to_string())?;
        let coord = Coordinator::new(Arc::clone(&host), config);
        let mut p = self.lab.provider(initiator)?;
        if !faults.is_empty() {
            p = FaultyProvider::new(p, faults);
        }
        let provider_id = self.lab.provider_id();
        coord
            .register_provider(provider_id, "provider under test", p)
            .map_err(|e| e.to_string())?;
        self.traces.borrow_mut().push(coord.trace().clone());
        Ok(Rig {
            host,
            coord,
            provider_id,
        })
    }

    /// The standard host: `E:`, `F:` (two volumes on one LUN) and `G:` (spanned).
    pub fn rig(&self, initiator: &str, config: Config, faults: Vec<Fault>) -> Result<Rig, String> {
        for _ in 0..3 {
            self.lab.create_lun(RIG_LUN_BYTES, initiator)?;
        }
        let rig = self.bare_rig(initiator, config, faults)?;
        let e = |x: crate::host::HostError| x.to_string();
        let disks = rig.host.disks();
        if disks.len() < 3 {
            return Err(format!("host sees {} disks, 3 expected", disks.len()));
        }
        let n = disks.len();
        let (d0, d1, d2) = (
            disks[n - 3].device.clone(),
            disks[n - 2].device.clone(),
            disks[n - 1].device.clone(),
        );
        rig.host
            .partition_disk(&d0, &[2 << 20, 2 << 20])
            .map_err(e)?;
        rig.host.partition_disk(&d1, &[2 << 20]).map_err(e)?;
        rig.host.partition_disk(&d2, &[2 << 20]).map_err(e)?;
        rig.host.mount("E:", &[(d0.clone(), 1)]).map_err(e)?;
        rig.host.mount("F:", &[(d0, 2)]).map_err(e)?;
        rig.host.mount("G:", &[(d1, 1), (d2, 1)]).map_err(e)?;
        Ok(rig)
    }
}

impl Rig {
    /// Creates a set of `volumes` in `context` with a fresh requester; returns the set id and
    /// the requester (keep it alive for auto-release sets).
    pub fn create(
        &self,
        context: SnapshotContext,
        volumes: &[&str],
    ) -> Result<(VssId, crate::BackupComponents), VssError> {
        let mut bc = self.coord.backup_components();
        bc.set_context(context)?;
        let set = bc.start_snapshot_set()?;
        for v in volumes {
            bc.add_to_snapshot_set(v, VssId::nil())?;
        }
        bc.do_snapshot_set()?;
        Ok((set, bc))
    }

    /// Starts a ledger writer over `volumes`, subscribed to the coordinator.
    pub fn writer(&self, id: u64, volumes: &[&str]) -> Result<Arc<LedgerWriter>, String> {
        let w = LedgerWriter::start(
            "ledger",
            id,
            Arc::clone(&self.host),
            volumes.iter().map(|s| s.to_string()).collect(),
            Duration::from_micros(200),
        )
        .map_err(|e| e.to_string())?;
        self.coord.add_writer(w.clone());
        if !w.wait_for(10, Duration::from_secs(10)) {
            return Err("writer made no progress".into());
        }
        Ok(w)
    }
}

macro_rules! ensure {
    ($c:expr, $($msg:tt)+) => {
        if !$c {
            return Err(format!($($msg)+));
        }
    };
}

fn expect_code<T>(r: Result<T, VssError>, code: Hresult) -> Result<(), String> {
    match r {
        Ok(_) => Err(format!("expected {code}, the call succeeded")),
        Err(e) if e.code() == code => Ok(()),
        Err(e) => Err(format!("expected {code}, got {e}")),
    }
}

fn s<T, E: std::fmt::Display>(r: Result<T, E>) -> Result<T, String> {
    r.map_err(|e| e.to_string())
}

fn fast() -> Config {
    Config::default()
}

/// Position of the first entry with this label at or after `from`.
fn pos(labels: &[String], what: &str) -> Option<usize> {
    labels.iter().position(|l| l.starts_with(what))
}

fn in_order(labels: &[String], order: &[&str]) -> Result<(), String> {
    let mut last = 0;
    for w in order {
        let Some(p) = labels[last..].iter().position(|l| l.starts_with(w)) else {
            return Err(format!("{w} missing or out of order in {labels:?}"));
        };
        last += p + 1;
    }
    Ok(())
}

type Scenario = fn(&Ctx) -> Result<String, String>;

/// The catalogue: (name, `docs/vss-contract.md` items covered, scenario).
pub fn catalogue() -> Vec<(&'static str, &'static str, Scenario)> {
    vec![
        ("support.own_foreign_and_context", "§10.2", support_query),
        (
            "create.call_order_with_writers",
            "§10.3 §2.2",
            create_call_order,
        ),
        ("create.contexts", "§10.3", create_contexts),
        (
            "create.differential_and_plex",
            "§10.3",
            create_differential_plex,
        ),
        (
            "create.point_in_time_is_consistent",
            "§10.3 §10.4",
            point_in_time,
        ),
        ("create.max_64_volumes", "§10.3", max_volumes),
        ("timing.commit_within_budget", "§10.5", timing),
        ("abort.failure_at_each_step", "§10.6", abort_each_step),
        ("abort.abandoned_set_then_new_set", "§10.6", abandoned_set),
        ("autoimport.hidden_read_only", "§10.9", auto_import),
        (
            "transport.import_on_second_host",
            "§10.10",
            transport_import,
        ),
        ("delete.on_lun_empty_once_per_lun", "§10.11", delete_once),
        ("delete.auto_release_on_release", "§10.11", auto_release),
        ("break.read_only_and_writable", "§10.12", break_ro_rw),
        ("break.mask_luns", "§10.12", break_mask),
        ("break.revert_identity", "§10.12", break_revert),
        ("autorecover.notifications", "§10.13", autorecover),
        ("resync.original_destination", "§10.14", resync),
        (
            "identity.unique_and_target_equals_fill_in",
            "§10.8",
            identity,
        ),
        ("stress.cycles_and_concurrent_requester", "§10.15", stress),
        ("misbehaving.veto", "§10.7", mis_veto),
        (
            "misbehaving.commit_overruns_hold",
            "§10.5 §10.7",
            mis_overrun,
        ),
        ("misbehaving.disallowed_code", "§10.7", mis_disallowed),
        ("misbehaving.loses_a_lun", "§10.10 §10.7", mis_lose_lun),
        (
            "misbehaving.touches_interconnects",
            "§10.2 §10.7",
            mis_interconnects,
        ),
    ]
}

/// Runs every scenario whose name contains `filter` (all with `""`).
pub fn run(factory: &dyn LabFactory, filter: &str) -> Report {
    let mut results = Vec::new();
    for (name, covers, f) in catalogue() {
        if !name.contains(filter) {
            continue;
        }
        let started = std::time::Instant::now();
        let (passed, detail, trace) = match factory.build() {
            Err(e) => (false, format!("lab: {e}"), Vec::new()),
            Ok(lab) => {
                let ctx = Ctx {
                    lab,
                    traces: RefCell::new(Vec::new()),
                };
                let r = f(&ctx);
                let mut trace = Vec::new();
                for t in ctx.traces.borrow().iter() {
                    trace.extend(t.entries());
                }
                match r {
                    Ok(d) => (true, d, trace),
                    Err(d) => (false, d, trace),
                }
            }
        };
        tracing::info!(scenario = name, passed, %detail);
        results.push(ScenarioResult {
            name: name.into(),
            covers: covers.into(),
            passed,
            detail,
            duration_ms: started.elapsed().as_millis() as u64,
            trace,
        });
    }
    Report {
        lab: factory.name(),
        results,
    }
}

fn support_query(ctx: &Ctx) -> Result<String, String> {
    let rig = ctx.rig("iqn.test:a", fast(), vec![])?;
    let p = ctx.traced_provider("iqn.test:a")?;
    let disk = rig.host.disks()[0].clone();
    let devs = vec![disk.device.clone()];
    let mut luns = vec![disk.lun_info.clone()];
    ensure!(
        s(p.are_luns_supported(SnapshotContext::BACKUP, &devs, &mut luns))?,
        "own LUN not supported"
    );
    ensure!(
        luns[0].interconnects == disk.lun_info.interconnects,
        "interconnects changed"
    );
    let again = s(p.are_luns_supported(SnapshotContext::BACKUP, &devs, &mut luns))?;
    ensure!(again, "second identical call answered differently");
    let bad = SnapshotContext::BACKUP.with(Attr::PLEX | Attr::DIFFERENTIAL);
    ensure!(
        !s(p.are_luns_supported(bad, &devs, &mut luns))?,
        "PLEX|DIFFERENTIAL accepted"
    );
    let mut foreign = disk.lun_info.clone();
    foreign.vendor_id = Some("OTHERVND".into());
    for i in &mut foreign.identifiers {
        i.identifier.iter_mut().for_each(|b| *b ^= 0x5A);
    }
    ensure!(
        !s(p.are_luns_supported(
            SnapshotContext::BACKUP,
            &devs,
            std::slice::from_mut(&mut foreign)
        ))?,
        "foreign LUN claimed"
    );
    // Spanned volume: all or nothing.
    let g = rig.host.volume("G:").map_err(|e| e.to_string())?;
    let gd = g.devices();
    let mut gl: Vec<LunInfo> = gd
        .iter()
        .map(|d| rig.host.disk(d).unwrap().lun_info)
        .collect();
    gl.push(foreign);
    let gd2: Vec<String> = gd.iter().cloned().chain(["x".into()]).collect();
    ensure!(
        !s(p.are_luns_supported(SnapshotContext::BACKUP, &gd2, &mut gl))?,
        "a spanned volume with one foreign LUN was claimed"
    );
    Ok("own TRUE, foreign FALSE, bad context FALSE, idempotent".into())
}

fn create_call_order(ctx: &Ctx) -> Result<String, String> {
    let rig = ctx.rig("iqn.test:a", fast(), vec![])?;
    let w = rig.writer(1, &["E:"])?;
    let t0 = rig.coord.trace().len();
    let (_set, _bc) = s(rig.create(SnapshotContext::BACKUP, &["E:"]))?;
    w.stop();
    let labels = rig.coord.trace().labels_since(t0);
    in_order(
        &labels,
        &[
            "AreLunsSupported",
            "BeginPrepareSnapshot",
            "DoSnapshotSet",
            "EndPrepareSnapshots",
            "set VSS flags",
            "W: OnFreeze",
            "PreCommitSnapshots",
            "K: flush and hold",
            "CommitSnapshots",
            "K: release writes",
            "clear VSS flags",
            "PostCommitSnapshots",
            "W: OnThaw",
            "GetTargetLuns",
            "LocateLuns",
            "rescan",
            "FillInLunInfo",
            "PreFinalCommitSnapshots",
            "W: OnPostSnapshot",
            "PostFinalCommitSnapshots",
        ],
    )?;
    ensure!(
        pos(&labels, "AbortSnapshots").is_none(),
        "AbortSnapshots on a successful set"
    );
    Ok(format!("{} steps in diagram order", labels.len()))
}

fn create_contexts(ctx: &Ctx) -> Result<String, String> {
    let rig = ctx.rig("iqn.test:a", fast(), vec![])?;
    let mut n = 0;
    for base in [
        SnapshotContext::BACKUP,
        SnapshotContext::APP_ROLLBACK,
        SnapshotContext::NAS_ROLLBACK,
        SnapshotContext::FILE_SHARE_BACKUP,
    ] {
        for transportable in [false, true] {
            let c = if transportable {
                base.with(Attr::TRANSPORTABLE)
            } else {
                base
            };
            let before = rig.coord.trace().len();
            let (set, mut bc) = rig
                .create(c, &["E:", "G:"])
                .map_err(|e| format!("{c}: {e}"))?;
            let methods = rig.coord.trace().methods_since(before);
            let located = methods.contains(&Method::LocateLuns);
            ensure!(
                located != transportable,
                "{c}: LocateLuns called = {located}"
            );
            let bcd = s(bc.bcd(set))?;
            ensure!(
                bcd.set.luns.len() == 3,
                "{c}: {} LUNs in the BCD",
                bcd.set.luns.len()
            );
            s(bc.delete_snapshots(DeleteTarget::Set(set)))?;
            n += 1;
        }
    }
    let left = ctx.lab().lun_count()?;
    ensure!(
        left == 3,
        "{left} LUNs left after deleting every set (3 originals)"
    );
    Ok(format!("{n} contexts created and deleted, no LUN leaked"))
}

fn create_differential_plex(ctx: &Ctx) -> Result<String, String> {
    let rig = ctx.rig("iqn.test:a", fast(), vec![])?;
    let mut made = Vec::new();
    for (a, name) in [(Attr::DIFFERENTIAL, "DIFFERENTIAL"), (Attr::PLEX, "PLEX")] {
        match rig.create(SnapshotContext::APP_ROLLBACK.with(a), &["F:"]) {
            Ok((set, mut bc)) => {
                s(bc.delete_snapshots(DeleteTarget::Set(set)))?;
                made.push(name);
            }
            // A provider that cannot do this method must say FALSE in AreLunsSupported.
            Err(e) if e.code() == Hresult::VSS_E_VOLUME_NOT_SUPPORTED => {}
            Err(e) => return Err(format!("{name}: {e}")),
        }
    }
    ensure!(
        !made.is_empty(),
        "neither DIFFERENTIAL nor PLEX is supported"
    );
    let mut bc = rig.coord.backup_components();
    expect_code(
        bc.set_context(SnapshotContext::BACKUP.with(Attr::PLEX | Attr::DIFFERENTIAL)),
        Hresult::VSS_E_UNSUPPORTED_CONTEXT,
    )?;
    Ok(format!(
        "created: {}; the other declined in AreLunsSupported; both together refused",
        made.join(", ")
    ))
}

fn point_in_time(ctx: &Ctx) -> Result<String, String> {
    let rig = ctx.rig("iqn.test:a", fast(), vec![])?;
    let w = rig.writer(42, &["E:", "G:"])?;
    let (set, bc) = s(rig.create(SnapshotContext::APP_ROLLBACK, &["E:", "G:"]))?;
    let frozen = w.frozen_at().ok_or("writer never froze")?;
    let after = w.first_after_thaw();
    ensure!(
        w.wait_for(frozen + 5, Duration::from_secs(10)),
        "writer did not resume"
    );
    w.stop();
    let vols: Vec<String> = bc
        .snapshot_volumes(set)
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    ensure!(vols.len() == 2, "{} snapshot volumes surfaced", vols.len());
    let c = s(verify_ledgers(&rig.host, &vols, 42, frozen, after))?;
    ensure!(c.consistent, "inconsistent: {:?}", c.problems);
    ensure!(frozen > 0, "nothing was written before the freeze");
    Ok(format!(
        "both volumes end at transaction {frozen}; {} written on the source since",
        w.acknowledged() - frozen
    ))
}

fn max_volumes(ctx: &Ctx) -> Result<String, String> {
    let init = "iqn.test:many";
    ctx.lab().create_lun(70 << 20, init)?;
    let rig = ctx.bare_rig(init, fast(), vec![])?;
    let dev = rig.host.disks()[0].device.clone();
    s(rig.host.partition_disk(&dev, &[1 << 20; 65]))?;
    for i in 1..=65u32 {
        s(rig.host.mount(&format!("V{i}"), &[(dev.clone(), i)]))?;
    }
    let mut bc = rig.coord.backup_components();
    s(bc.set_context(SnapshotContext::APP_ROLLBACK))?;
    s(bc.start_snapshot_set())?;
    for i in 1..=64 {
        s(bc.add_to_snapshot_set(&format!("V{i}"), VssId::nil()))?;
    }
    expect_code(
        bc.add_to_snapshot_set("V65", VssId::nil()),
        Hresult::VSS_E_MAXIMUM_NUMBER_OF_VOLUMES_REACHED,
    )?;
    let set = s(bc.do_snapshot_set())?;
    let n = rig
        .coord
        .query()
        .iter()
        .filter(|p| p.snapshot_set_id == set)
        .count();
    ensure!(n == 64, "{n} snapshots in the set");
    Ok("64 volumes on one LUN in one set; the 65th refused".into())
}

fn call_duration(entries: &[TraceEntry], m: Method) -> Option<u64> {
    entries.iter().find_map(|e| match e {
        TraceEntry::Call {
            method,
            duration_us,
            ..
        } if *method == m => Some(*duration_us),
        _ => None,
    })
}

fn timing(ctx: &Ctx) -> Result<String, String> {
    let rig = ctx.rig("iqn.test:a", fast(), vec![])?;
    let t0 = rig.coord.trace().len();
    let (_set, _bc) = s(rig.create(SnapshotContext::BACKUP, &["E:", "G:"]))?;
    let entries = rig.coord.trace().since(t0);
    let commit = call_duration(&entries, Method::CommitSnapshots).ok_or("no commit")?;
    ensure!(commit < 1_000_000, "CommitSnapshots took {commit} µs");
    let at = |m: Method| {
        entries.iter().find_map(|e| match e {
            TraceEntry::Call { method, at_us, .. } if *method == m => Some(*at_us),
            _ => None,
        })
    };
    let pre = at(Method::PreCommitSnapshots).ok_or("no PreCommit")?;
    let post = at(Method::PostCommitSnapshots).ok_or("no PostCommit")?;
    ensure!(
        post - pre < 20_000_000,
        "PreCommit→PostCommit {} µs",
        post - pre
    );
    Ok(format!(
        "CommitSnapshots {commit} µs, PreCommit→PostCommit {} µs",
        post - pre
    ))
}

fn abort_each_step(ctx: &Ctx) -> Result<String, String> {
    let steps = [
        Method::EndPrepareSnapshots,
        Method::PreCommitSnapshots,
        Method::CommitSnapshots,
        Method::PostCommitSnapshots,
        Method::GetTargetLuns,
        Method::LocateLuns,
        Method::PreFinalCommitSnapshots,
        Method::PostFinalCommitSnapshots,
    ];
    for (i, m) in steps.iter().enumerate() {
        let init = format!("iqn.test:abort{i}");
        let rig = ctx.rig(
            &init,
            fast(),
            vec![Fault::Fail(*m, Hresult::VSS_E_PROVIDER_VETO)],
        )?;
        let w = rig.writer(7, &["E:"])?;
        let before = ctx.lab().lun_count()?;
        let t0 = rig.coord.trace().len();
        let r = rig.create(SnapshotContext::BACKUP, &["E:", "G:"]);
        expect_code(r, Hresult::VSS_E_PROVIDER_VETO).map_err(|e| format!("{m}: {e}"))?;
        let methods = rig.coord.trace().methods_since(t0);
        ensure!(
            methods.contains(&Method::AbortSnapshots),
            "{m}: no AbortSnapshots after the failure"
        );
        let after = ctx.lab().lun_count()?;
        ensure!(after == before, "{m}: {} LUNs leaked", after - before);
        let flags: u64 = rig
            .host
            .disks()
            .iter()
            .flat_map(|d| {
                rig.host
                    .layout(&d.device)
                    .map(|l| l.partitions)
                    .unwrap_or_default()
            })
            .fold(0, |a, p| a | p.flags);
        ensure!(flags == 0, "{m}: source partitions keep flags {flags:#x}");
        let a = w.acknowledged();
        ensure!(
            w.wait_for(a + 3, Duration::from_secs(10)),
            "{m}: writer stuck frozen"
        );
        w.stop();
        // The in-flight slot is free again.
        let mut next = rig.coord.backup_components();
        next.start_snapshot_set().map_err(|e| format!("{m}: {e}"))?;
        next.abort_backup();
    }
    Ok(format!(
        "{} failure points: abort called, nothing leaked",
        steps.len()
    ))
}

fn abandoned_set(ctx: &Ctx) -> Result<String, String> {
    let rig = ctx.rig("iqn.test:a", fast(), vec![])?;
    let mut bc = rig.coord.backup_components();
    s(bc.set_context(SnapshotContext::APP_ROLLBACK))?;
    s(bc.start_snapshot_set())?;
    s(bc.add_to_snapshot_set("E:", VssId::nil()))?;
    let t0 = rig.coord.trace().len();
    bc.abort_backup();
    ensure!(
        !rig.coord
            .trace()
            .methods_since(t0)
            .contains(&Method::AbortSnapshots),
        "AbortSnapshots before DoSnapshotSet"
    );
    let (set, _bc2) = s(rig.create(SnapshotContext::APP_ROLLBACK, &["E:"]))?;
    ensure!(!set.is_nil(), "no set");
    Ok("abandoned set: no abort sent; the next set succeeds".into())
}

fn auto_import(ctx: &Ctx) -> Result<String, String> {
    let rig = ctx.rig("iqn.test:a", fast(), vec![])?;
    let (set, bc) = s(rig.create(SnapshotContext::APP_ROLLBACK, &["E:", "G:"]))?;
    let vols = bc.snapshot_volumes(set);
    ensure!(vols.len() == 2, "{} volumes surfaced", vols.len());
    for (_, v) in &vols {
        let vol = s(rig.host.volume(v))?;
        ensure!(vol.read_only, "{v} is writable");
        for e in &vol.extents {
            let l = s(rig.host.layout(&e.device))?;
            ensure!(
                l.partitions
                    .iter()
                    .all(|p| p.flags & crate::gpt_flags::VSS_FLAGS == crate::gpt_flags::VSS_FLAGS),
                "{v}: snapshot partitions lack the VSS flags"
            );
        }
        expect_code(
            rig.host
                .write_volume(v, 0, &[0; 512])
                .map_err(VssError::Host),
            Hresult::VSS_E_UNEXPECTED,
        )?;
    }
    for d in ["E:", "G:"] {
        let vol = s(rig.host.volume(d))?;
        for e in &vol.extents {
            let l = s(rig.host.layout(&e.device))?;
            ensure!(
                l.partitions.iter().all(|p| p.flags == 0),
                "{d}: source keeps flags"
            );
        }
    }
    let q = rig.coord.query();
    ensure!(
        q.iter().all(|p| p.attributes & Attr::IMPORTED.bits() != 0),
        "auto-imported snapshots not marked IMPORTED"
    );
    Ok("snapshot volumes surfaced hidden+read-only; sources clean".into())
}

fn transport_import(ctx: &Ctx) -> Result<String, String> {
    let a = ctx.rig("iqn.test:a", fast(), vec![])?;
    let b = ctx.bare_rig("iqn.test:b", fast(), vec![])?;
    let w = a.writer(9, &["E:", "G:"])?;
    let (set, bc) = s(a.create(
        SnapshotContext::APP_ROLLBACK.with(Attr::TRANSPORTABLE),
        &["E:", "G:"],
    ))?;
    let frozen = w.frozen_at().ok_or("writer never froze")?;
    let after = w.first_after_thaw();
    w.stop();
    ensure!(
        bc.snapshot_volumes(set).is_empty(),
        "transportable set surfaced on the creating host"
    );
    let dir = tempfile_dir()?;
    let path = dir.join("set.bcd.json");
    s(bc.save_bcd(set, &path))?;
    let bcd = s(crate::bcd::Bcd::load(&path))?;
    let mut ib = b.coord.backup_components();
    s(ib.load_bcd(bcd.clone()))?;
    let r = s(ib.import_snapshots())?;
    ensure!(r == Hresult::S_OK, "import returned {r}");
    let vols: Vec<String> = ib
        .snapshot_volumes(set)
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    ensure!(vols.len() == 2, "{} volumes imported", vols.len());
    let c = s(verify_ledgers(&b.host, &vols, 9, frozen, after))?;
    ensure!(c.consistent, "imported data inconsistent: {:?}", c.problems);
    let mut again = b.coord.backup_components();
    s(again.load_bcd(bcd))?;
    expect_code(
        again.import_snapshots(),
        Hresult::VSS_E_OBJECT_ALREADY_EXISTS,
    )?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(format!(
        "BCD file imported on a second host; ledgers at {frozen}"
    ))
}

fn tempfile_dir() -> Result<std::path::PathBuf, String> {
    let d = std::env::temp_dir().join(format!("vss-emulator-{}", uuid::Uuid::new_v4()));
    s(std::fs::create_dir_all(&d))?;
    Ok(d)
}

fn delete_once(ctx: &Ctx) -> Result<String, String> {
    let rig = ctx.rig("iqn.test:a", fast(), vec![])?;
    let (set, mut bc) = s(rig.create(SnapshotContext::APP_ROLLBACK, &["E:", "F:"]))?;
    let before = ctx.lab().lun_count()?;
    let q = rig.coord.query();
    let e = q
        .iter()
        .find(|p| p.original_volume == "E:")
        .ok_or("no E:")?
        .snapshot_id;
    let t0 = rig.coord.trace().len();
    s(bc.delete_snapshots(DeleteTarget::Snapshot(e)))?;
    let m = rig.coord.trace().methods_since(t0);
    ensure!(
        !m.contains(&Method::OnLunEmpty),
        "OnLunEmpty while F:'s snapshot still uses the LUN"
    );
    let t1 = rig.coord.trace().len();
    s(bc.delete_snapshots(DeleteTarget::Set(set)))?;
    let m = rig.coord.trace().methods_since(t1);
    let empties = m.iter().filter(|x| **x == Method::OnLunEmpty).count();
    ensure!(empties == 1, "{empties} OnLunEmpty calls for one LUN");
    let fi = m.iter().position(|x| *x == Method::FillInLunInfo);
    let oe = m.iter().position(|x| *x == Method::OnLunEmpty);
    ensure!(
        fi < oe && fi.is_some(),
        "FillInLunInfo must precede OnLunEmpty: {m:?}"
    );
    let after = ctx.lab().lun_count()?;
    ensure!(
        after + 1 == before,
        "snapshot LUN not reclaimed ({before} -> {after})"
    );
    Ok("two volumes on one LUN: OnLunEmpty once, after the last snapshot".into())
}

fn auto_release(ctx: &Ctx) -> Result<String, String> {
    let rig = ctx.rig("iqn.test:a", fast(), vec![])?;
    let base = ctx.lab().lun_count()?;
    let (_set, mut bc) = s(rig.create(SnapshotContext::BACKUP, &["G:"]))?;
    ensure!(
        ctx.lab().lun_count()? == base + 2,
        "expected two snapshot LUNs"
    );
    let n = s(bc.release())?;
    ensure!(n == 1, "{n} snapshots released");
    ensure!(ctx.lab().lun_count()? == base, "auto-release left LUNs");
    let (_set, _bc) = s(rig.create(SnapshotContext::APP_ROLLBACK, &["G:"]))?;
    drop(_bc);
    ensure!(
        ctx.lab().lun_count()? == base + 2,
        "persistent set deleted on release"
    );
    Ok("auto-release deleted on release; persistent kept".into())
}

fn break_ro_rw(ctx: &Ctx) -> Result<String, String> {
    let rig = ctx.rig("iqn.test:a", fast(), vec![])?;
    for writable in [false, true] {
        let (set, mut bc) = s(rig.create(SnapshotContext::APP_ROLLBACK, &["E:"]))?;
        let vols = bc.snapshot_volumes(set);
        let t0 = rig.coord.trace().len();
        s(bc.break_snapshot_set(set, writable))?;
        let v = s(rig.host.volume(&vols[0].1))?;
        ensure!(
            v.read_only != writable,
            "writable={writable}: volume read_only={}",
            v.read_only
        );
        let l = s(rig.host.layout(&v.extents[0].device))?;
        let want = if writable {
            0
        } else {
            crate::gpt_flags::READ_ONLY
        };
        ensure!(
            l.partitions.iter().all(|p| p.flags == want),
            "writable={writable}: flags {:#x}",
            l.partitions[0].flags
        );
        let entries = rig.coord.trace().since(t0);
        let rw_notified = entries.iter().any(|e| matches!(e, TraceEntry::Call { method: Method::OnLunStateChange, args, .. } if args.contains("NOTIFY_READ_WRITE")));
        ensure!(
            rw_notified == writable,
            "NOTIFY_READ_WRITE sent = {rw_notified}"
        );
        ensure!(
            rig.coord.query().iter().all(|q| q.snapshot_set_id != set),
            "broken set still tracked"
        );
        if writable {
            s(rig.host.write_volume(&vols[0].1, 0, &[1; 512]))?;
        }
    }
    Ok("break keeps read-only; break writable clears flags and notifies".into())
}

fn break_mask(ctx: &Ctx) -> Result<String, String> {
    let rig = ctx.rig("iqn.test:a", fast(), vec![])?;
    let (set, mut bc) = s(rig.create(SnapshotContext::APP_ROLLBACK, &["G:"]))?;
    let disks = rig.host.disks().len();
    let luns = ctx.lab().lun_count()?;
    expect_code(
        bc.break_snapshot_set_ex(
            set,
            HardwareOptions::BREAKEX_FLAG_MASK_LUNS | HardwareOptions::BREAKEX_FLAG_MAKE_READ_WRITE,
        ),
        Hresult::E_INVALIDARG,
    )?;
    s(bc.break_snapshot_set_ex(set, HardwareOptions::BREAKEX_FLAG_MASK_LUNS))?;
    ensure!(
        rig.host.disks().len() == disks - 2,
        "snapshot disks still visible"
    );
    ensure!(ctx.lab().lun_count()? == luns, "masking deleted LUNs");
    Ok("MASK_LUNS: DO_MASK_LUNS sent, disks gone, LUNs kept".into())
}

fn break_revert(ctx: &Ctx) -> Result<String, String> {
    let a = ctx.rig("iqn.test:a", fast(), vec![])?;
    let (set, mut bc) = s(a.create(SnapshotContext::APP_ROLLBACK, &["E:"]))?;
    expect_code(
        bc.break_snapshot_set_ex(set, HardwareOptions::BREAKEX_FLAG_REVERT_IDENTITY_ALL),
        Hresult::VSS_E_BREAK_REVERT_ID_FAILED,
    )?;
    // Transport to a host without the original and revert there.
    let (tset, tbc) = s(a.create(
        SnapshotContext::APP_ROLLBACK.with(Attr::TRANSPORTABLE),
        &["E:"],
    ))?;
    let bcd = s(tbc.bcd(tset))?;
    let b = ctx.bare_rig("iqn.test:b", fast(), vec![])?;
    let mut ib = b.coord.backup_components();
    s(ib.load_bcd(bcd.clone()))?;
    s(ib.import_snapshots())?;
    let vol = ib.snapshot_volumes(tset)[0].1.clone();
    let dev = s(b.host.volume(&vol))?.extents[0].device.clone();
    s(ib.break_snapshot_set_ex(
        tset,
        HardwareOptions::BREAKEX_FLAG_REVERT_IDENTITY_ALL
            | HardwareOptions::BREAKEX_FLAG_MAKE_READ_WRITE,
    ))?;
    let guid = s(b.host.layout(&dev))?.disk_guid;
    ensure!(
        guid == bcd.set.luns[0].original_disk_guid,
        "disk GUID {guid} is not the original's"
    );
    Ok("revert refused with the original present; applied on another host".into())
}

fn autorecover(ctx: &Ctx) -> Result<String, String> {
    let rig = ctx.rig("iqn.test:a", fast(), vec![])?;
    let w = rig.writer(3, &["E:"])?;
    let t0 = rig.coord.trace().len();
    let (_set, _bc) = s(rig.create(
        SnapshotContext::APP_ROLLBACK.with(Attr::AUTORECOVER),
        &["E:"],
    ))?;
    w.stop();
    let entries = rig.coord.trace().since(t0);
    let labels: Vec<String> = entries
        .iter()
        .map(|e| match e {
            TraceEntry::Call {
                method: Method::OnLunStateChange,
                args,
                ..
            } => {
                if args.contains("PRE_RECOVERY") {
                    "PRE_RECOVERY".to_string()
                } else if args.contains("POST_RECOVERY") {
                    "POST_RECOVERY".to_string()
                } else {
                    "OnLunStateChange".to_string()
                }
            }
            other => other.label(),
        })
        .collect();
    in_order(
        &labels,
        &[
            "GetTargetLuns",
            "LocateLuns",
            "PreFinalCommitSnapshots",
            "PRE_RECOVERY",
            "W: OnPostSnapshot",
            "POST_RECOVERY",
            "PostFinalCommitSnapshots",
        ],
    )?;
    Ok("PRE/POST_RECOVERY around OnPostSnapshot, between PreFinal and PostFinal".into())
}

fn resync(ctx: &Ctx) -> Result<String, String> {
    let rig = ctx.rig("iqn.test:a", fast(), vec![])?;
    s(rig.host.write_volume("E:", 0, &[0xAA; 512]))?;
    let (set, mut bc) = s(rig.create(SnapshotContext::APP_ROLLBACK, &["E:"]))?;
    s(rig.host.write_volume("E:", 0, &[0xBB; 512]))?;
    let snap = rig
        .coord
        .query()
        .iter()
        .find(|p| p.snapshot_set_id == set)
        .ok_or("no snapshot")?
        .snapshot_id;
    let guid_before = s(rig
        .host
        .layout(&s(rig.host.volume("E:"))?.extents[0].device))?
    .disk_guid;
    s(bc.add_snapshot_to_recovery_set(snap, None))?;
    // F: shares E:'s LUN and is not in the recovery set.
    expect_code(
        bc.recover_set(RecoveryOptions::empty()),
        Hresult::VSS_E_UNSELECTED_VOLUME,
    )?;
    ensure!(
        s(rig.host.read_volume("E:", 0, 512))? == vec![0xBB; 512],
        "refused resync changed E:"
    );
    s(bc.recover_set(RecoveryOptions::NO_VOLUME_CHECK))?;
    let data = s(rig.host.read_volume("E:", 0, 512))?;
    ensure!(
        data == vec![0xAA; 512],
        "E: does not hold the snapshot's data"
    );
    let v = s(rig.host.volume("E:"))?;
    let l = s(rig.host.layout(&v.extents[0].device))?;
    ensure!(l.disk_guid == guid_before, "destination lost its signature");
    ensure!(
        l.partitions.iter().all(|p| p.flags == 0),
        "destination keeps VSS flags"
    );
    s(rig.host.write_volume("E:", 0, &[0xCC; 512]))?;
    Ok("resync onto the original; unselected volume refused without NO_VOLUME_CHECK".into())
}

fn identity(ctx: &Ctx) -> Result<String, String> {
    let rig = ctx.rig("iqn.test:a", fast(), vec![])?;
    let (set, bc) = s(rig.create(SnapshotContext::APP_ROLLBACK, &["E:", "G:"]))?;
    let bcd = s(bc.bcd(set))?;
    for l in &bcd.set.luns {
        ensure!(
            l.source.has_unique_identifier(),
            "original without a unique id"
        );
        ensure!(
            l.target.has_unique_identifier(),
            "snapshot without a unique id"
        );
        ensure!(
            !l.source
                .identifiers
                .iter()
                .any(|i| l.target.identifiers.contains(i)),
            "snapshot shares an identifier with its original"
        );
        ensure!(
            l.target.version == 1 && l.target.disk_signature.is_nil(),
            "GetTargetLuns version/signature"
        );
        ensure!(
            l.target.interconnects.is_empty(),
            "GetTargetLuns filled interconnects"
        );
        // As on import: VSS lets the provider fill in each arriving disk's information,
        // then compares it with what GetTargetLuns said.
        let p = ctx.traced_provider("iqn.test:a")?;
        let mut found = None;
        for d in rig.host.disks() {
            let mut info = d.lun_info.clone();
            if s(p.fill_in_lun_info(&d.device, &mut info))? && info.matches_for_import(&l.target) {
                found = Some((d, info));
                break;
            }
        }
        let (disk, info) =
            found.ok_or("no disk matches GetTargetLuns once FillInLunInfo has run")?;
        ensure!(
            info.interconnects == disk.lun_info.interconnects,
            "FillInLunInfo touched interconnects"
        );
    }
    Ok(format!(
        "{} LUNs: unique ids, GetTargetLuns ≡ FillInLunInfo",
        bcd.set.luns.len()
    ))
}

fn stress(ctx: &Ctx) -> Result<String, String> {
    let rig = ctx.rig("iqn.test:a", fast(), vec![])?;
    let base = ctx.lab().lun_count()?;
    for i in 0..5 {
        let (set, mut bc) = rig
            .create(SnapshotContext::APP_ROLLBACK, &["E:", "F:", "G:"])
            .map_err(|e| format!("cycle {i}: {e}"))?;
        s(bc.delete_snapshots(DeleteTarget::Set(set)))?;
    }
    ensure!(ctx.lab().lun_count()? == base, "cycles leaked LUNs");
    let mut first = rig.coord.backup_components();
    s(first.start_snapshot_set())?;
    let mut second = rig.coord.backup_components();
    expect_code(
        second.start_snapshot_set(),
        Hresult::VSS_E_SNAPSHOT_SET_IN_PROGRESS,
    )?;
    first.abort_backup();
    s(second.start_snapshot_set())?;
    Ok(
        "5 create/delete cycles without leaks; second requester refused while one is in flight"
            .into(),
    )
}

fn mis_veto(ctx: &Ctx) -> Result<String, String> {
    let rig = ctx.rig(
        "iqn.test:a",
        fast(),
        vec![Fault::Fail(
            Method::BeginPrepareSnapshot,
            Hresult::VSS_E_PROVIDER_VETO,
        )],
    )?;
    let mut bc = rig.coord.backup_components();
    s(bc.start_snapshot_set())?;
    expect_code(
        bc.add_to_snapshot_set("E:", VssId::nil()),
        Hresult::VSS_E_PROVIDER_VETO,
    )?;
    Ok("a veto in BeginPrepareSnapshot reaches the requester as VSS_E_PROVIDER_VETO".into())
}

fn mis_overrun(ctx: &Ctx) -> Result<String, String> {
    let cfg = Config {
        hold_window: Duration::from_millis(150),
        ..Config::default()
    };
    let rig = ctx.rig(
        "iqn.test:a",
        cfg,
        vec![Fault::Delay(
            Method::CommitSnapshots,
            Duration::from_millis(400),
        )],
    )?;
    let base = ctx.lab().lun_count()?;
    let t0 = rig.coord.trace().len();
    expect_code(
        rig.create(SnapshotContext::BACKUP, &["E:"]),
        Hresult::VSS_E_HOLD_WRITES_TIMEOUT,
    )?;
    ensure!(
        rig.coord
            .trace()
            .methods_since(t0)
            .contains(&Method::AbortSnapshots),
        "no abort after the overrun"
    );
    ensure!(ctx.lab().lun_count()? == base, "overrun set leaked LUNs");
    Ok("a 400 ms commit in a 150 ms hold fails the set and aborts it".into())
}

fn mis_disallowed(ctx: &Ctx) -> Result<String, String> {
    let rig = ctx.rig(
        "iqn.test:a",
        fast(),
        vec![Fault::Fail(Method::PreCommitSnapshots, Hresult::E_FAIL)],
    )?;
    let t0 = rig.coord.trace().len();
    expect_code(
        rig.create(SnapshotContext::BACKUP, &["E:"]),
        Hresult::VSS_E_UNEXPECTED_PROVIDER_ERROR,
    )?;
    let translated = rig.coord.trace().since(t0).iter().any(|e| {
        matches!(
            e,
            TraceEntry::Call {
                method: Method::PreCommitSnapshots,
                returned: Some(Hresult::E_FAIL),
                translated: Some(Hresult::VSS_E_UNEXPECTED_PROVIDER_ERROR),
                ..
            }
        )
    });
    ensure!(translated, "trace does not show the translation");
    // Abort's own result is never translated.
    let rig2 = ctx.rig(
        "iqn.test:b",
        fast(),
        vec![
            Fault::Fail(Method::CommitSnapshots, Hresult::VSS_E_PROVIDER_VETO),
            Fault::Fail(Method::AbortSnapshots, Hresult::E_FAIL),
        ],
    )?;
    let t1 = rig2.coord.trace().len();
    expect_code(
        rig2.create(SnapshotContext::BACKUP, &["E:"]),
        Hresult::VSS_E_PROVIDER_VETO,
    )?;
    let abort_untranslated = rig2.coord.trace().since(t1).iter().any(|e| {
        matches!(
            e,
            TraceEntry::Call {
                method: Method::AbortSnapshots,
                returned: Some(Hresult::E_FAIL),
                translated: None,
                ..
            }
        )
    });
    ensure!(abort_untranslated, "AbortSnapshots result was translated");
    Ok("E_FAIL from PreCommit becomes VSS_E_UNEXPECTED_PROVIDER_ERROR; Abort untranslated".into())
}

fn mis_lose_lun(ctx: &Ctx) -> Result<String, String> {
    // Auto-import: the set fails and is aborted.
    let rig = ctx.rig("iqn.test:a", fast(), vec![Fault::LoseLastLun])?;
    expect_code(
        rig.create(SnapshotContext::APP_ROLLBACK, &["E:", "G:"]),
        Hresult::VSS_E_MISSING_DISK,
    )?;
    // This host is done (a lab may hold only two live providers at once).
    drop(rig);
    // Import: partial.
    let a = ctx.rig("iqn.test:c", fast(), vec![])?;
    let b = ctx.bare_rig("iqn.test:d", fast(), vec![Fault::LoseLastLun])?;
    let (set, bc) = s(a.create(
        SnapshotContext::APP_ROLLBACK.with(Attr::TRANSPORTABLE),
        &["E:", "G:"],
    ))?;
    let mut ib = b.coord.backup_components();
    s(ib.load_bcd(s(bc.bcd(set))?))?;
    let r = s(ib.import_snapshots())?;
    ensure!(
        r == Hresult::VSS_S_SOME_SNAPSHOTS_NOT_IMPORTED,
        "import returned {r}"
    );
    Ok("lost LUN: auto-import fails with VSS_E_MISSING_DISK; import is partial".into())
}

fn mis_interconnects(ctx: &Ctx) -> Result<String, String> {
    let rig = ctx.rig("iqn.test:a", fast(), vec![Fault::TouchInterconnects])?;
    let mut bc = rig.coord.backup_components();
    s(bc.start_snapshot_set())?;
    expect_code(
        bc.add_to_snapshot_set("E:", VssId::nil()),
        Hresult::VSS_E_UNEXPECTED_PROVIDER_ERROR,
    )?;
    Ok("a provider rewriting m_rgInterconnects is caught".into())
}
