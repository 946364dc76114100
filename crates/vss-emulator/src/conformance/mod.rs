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
use vss::{Hresult, SnapshotContext, VssId};

use crate::coordinator::{Config, Coordinator, VssError};
use crate::faults::{Fault, FaultyProvider};
use crate::host::Host;
use crate::storage::HostStorage;
use crate::trace::{ProviderHandle, Trace, TraceEntry};
use crate::writer::LedgerWriter;

/// `ensure!(condition, "format", args…)`: the scenario fails with that message unless the
/// condition holds.
macro_rules! ensure {
    ($c:expr, $($msg:tt)+) => {
        if !$c {
            return Err(format!($($msg)+));
        }
    };
}

mod create;
mod lifecycle;
mod misbehaving;
mod names;
mod plex;
mod requester;
mod rules;
mod transport;

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
    /// Deletes the original LUN whose NAA designator is `naa`, as the SAN's administrator
    /// would: unmapped from every host, then deleted. Waits (up to [`DELETE_WAIT`]) while
    /// the SAN still holds it for a plex copy being made independent.
    fn delete_lun(&self, naa: &[u8]) -> Result<(), String>;
}

/// How long [`Lab::delete_lun`] waits for a SAN to let a LUN go.
pub const DELETE_WAIT: Duration = Duration::from_secs(60);

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

/// Where the rig's `G:` is also mounted.
pub const RIG_MOUNT_POINT: &str = "C:\\Mounts\\Logs\\";

/// A host with three LUNs: `E:` and `F:` on the first, `G:` spanning the second and third
/// (also mounted at [`RIG_MOUNT_POINT`]).
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

    /// The standard host: `E:`, `F:` (two volumes on one LUN) and `G:` (spanned, also at
    /// [`RIG_MOUNT_POINT`]).
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
        rig.host.add_mount_point("G:", RIG_MOUNT_POINT).map_err(e)?;
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
        (
            "support.own_foreign_and_context",
            "§10.2",
            create::support_query,
        ),
        (
            "create.call_order_with_writers",
            "§10.3 §2.2",
            create::create_call_order,
        ),
        ("create.contexts", "§10.3", create::create_contexts),
        (
            "create.differential_and_plex",
            "§10.3",
            create::create_differential_plex,
        ),
        (
            "plex.independent_of_the_original",
            "§10.3 §6.6",
            plex::independent_of_original,
        ),
        (
            "plex.transportable_imported_without_originals",
            "§10.3 §10.10",
            plex::transportable_imported_without_originals,
        ),
        (
            "create.point_in_time_is_consistent",
            "§10.3 §10.4",
            create::point_in_time,
        ),
        ("create.max_64_volumes", "§10.3", create::max_volumes),
        ("timing.commit_within_budget", "§10.5", create::timing),
        (
            "abort.failure_at_each_step",
            "§10.6",
            create::abort_each_step,
        ),
        (
            "abort.abandoned_set_then_new_set",
            "§10.6",
            create::abandoned_set,
        ),
        (
            "autoimport.hidden_read_only",
            "§10.9",
            lifecycle::auto_import,
        ),
        (
            "transport.import_on_second_host",
            "§10.10",
            lifecycle::transport_import,
        ),
        (
            "delete.on_lun_empty_once_per_lun",
            "§10.11",
            lifecycle::delete_once,
        ),
        (
            "delete.auto_release_on_release",
            "§10.11",
            lifecycle::auto_release,
        ),
        (
            "break.read_only_and_writable",
            "§10.12",
            lifecycle::break_ro_rw,
        ),
        ("break.mask_luns", "§10.12", lifecycle::break_mask),
        ("break.revert_identity", "§10.12", lifecycle::break_revert),
        (
            "autorecover.notifications",
            "§10.13",
            lifecycle::autorecover,
        ),
        ("resync.original_destination", "§10.14", lifecycle::resync),
        (
            "identity.unique_and_target_equals_fill_in",
            "§10.8",
            create::identity,
        ),
        (
            "stress.cycles_and_concurrent_requester",
            "§10.15",
            create::stress,
        ),
        (
            "names.any_case_guid_path_and_mount_point",
            "§2.2",
            names::volume_names,
        ),
        (
            "names.delete_by_any_volume_name",
            "§10.11",
            names::delete_by_name,
        ),
        (
            "transport.not_stored_on_creating_host",
            "§10.10",
            transport::not_stored_on_creator,
        ),
        (
            "requester.expose_unexpose_delete_exposed",
            "§10.11",
            requester::expose,
        ),
        (
            "requester.revert_and_client_accessible_refused",
            "§10.3",
            requester::revert_and_client_accessible,
        ),
        (
            "writers.exclude_verify_full_and_copy",
            "§2.2",
            requester::writer_rules,
        ),
        (
            "create.one_snapshot_lun_for_volumes_sharing_a_lun",
            "§10.3",
            rules::one_lun_under_two_volumes,
        ),
        (
            "delete.persistent_outlives_its_requester",
            "§10.11",
            rules::persistent_outlives_requester,
        ),
        ("delete.oldest_of_a_volume", "§10.11", rules::delete_oldest),
        (
            "import.local_set_refused",
            "§10.10",
            rules::local_bcd_refused,
        ),
        (
            "resync.other_destination",
            "§10.14",
            rules::resync_other_destination,
        ),
        (
            "autorecover.transportable_recovered_then_masked",
            "§10.13",
            rules::transportable_autorecover,
        ),
        (
            "identity.never_reused",
            "§10.8",
            rules::identities_never_reused,
        ),
        ("misbehaving.veto", "§10.7", misbehaving::mis_veto),
        (
            "misbehaving.commit_overruns_hold",
            "§10.5 §10.7",
            misbehaving::mis_overrun,
        ),
        (
            "misbehaving.disallowed_code",
            "§10.7",
            misbehaving::mis_disallowed,
        ),
        (
            "misbehaving.loses_a_lun",
            "§10.10 §10.7",
            misbehaving::mis_lose_lun,
        ),
        (
            "misbehaving.touches_interconnects",
            "§10.2 §10.7",
            misbehaving::mis_interconnects,
        ),
    ]
}

/// Runs every scenario whose name contains `filter` (all with `""`).
pub fn run(factory: &dyn LabFactory, filter: &str) -> Report {
    run_part(factory, filter, None)
}

/// One part of the catalogue, for a run that samples it: of the scenarios in catalogue
/// order, those at positions `index`, `index + of`, `index + 2 * of`, ...; the `of` parts
/// together are the whole catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    pub index: usize,
    pub of: usize,
}

impl std::str::FromStr for Part {
    type Err = String;
    /// `K/N`: part K (0 to N-1) of N.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not a part: write K/N with 0 <= K < N, e.g. 0/2");
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, of): (usize, usize) = (
            k.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if of == 0 || index >= of {
            return Err(bad());
        }
        Ok(Part { index, of })
    }
}

/// How many scenarios of the catalogue a `filter` selects.
pub fn selected(filter: &str) -> usize {
    names(filter, None).len()
}

/// The names of the scenarios [`run_part`] runs, in order.
pub fn names(filter: &str, part: Option<Part>) -> Vec<&'static str> {
    in_part(filter, part).map(|(n, _, _)| n).collect()
}

fn in_part(
    filter: &str,
    part: Option<Part>,
) -> impl Iterator<Item = (&'static str, &'static str, Scenario)> + use<'_> {
    catalogue()
        .into_iter()
        .filter(move |(name, _, _)| name.contains(filter))
        .enumerate()
        .filter(move |(i, _)| part.is_none_or(|p| i % p.of == p.index))
        .map(|(_, s)| s)
}

/// [`run`], limited to one [`Part`] of the scenarios `filter` selects (`None`: all of them).
pub fn run_part(factory: &dyn LabFactory, filter: &str, part: Option<Part>) -> Report {
    let mut results = Vec::new();
    for (name, covers, f) in in_part(filter, part) {
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
