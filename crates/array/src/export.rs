//! Serving LUNs over iSCSI: the [`Exporter`] that maps LUNs into a `scsi::Target` per
//! initiator (masking), with the identity the array fixed for them, and keeps the iSCSI
//! target's CHAP secrets and login allow-list in step with the hosts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use api::LunId;

use scsi::{
    AccessState, BlockDevice, DeviceError, LogicalUnit, LuIdentity, PortGroup, PrLink, PrState,
};
use storage::{Backend, BackendError, LOGICAL_BLOCK_SIZE};

use crate::metrics::{IoStats, MeteredDevice};
use crate::state::{ExportedLun, Exporter, Fence, ReservationStore};

/// The target port group of this array's one gateway (asymmetric access, SPC-4 5.16): its
/// iSCSI target port is the group's one port, and every LUN is Active/Optimized in it, so
/// hosts see TPGS 01b and REPORT TARGET PORT GROUPS reports the one path as optimized.
/// With `[gateway]`, each gateway's group is its own relative target port identifier
/// instead (`crate::paths`).
pub const TARGET_PORT_GROUP: u16 = 1;

/// The device of a LUN a standby gateway serves (`crate::paths`): its identity and
/// recorded size, no volume. The LUN is Standby through this gateway's port, so nothing
/// reaches the medium (`scsi::AccessState::allows`); should anything, it is answered NOT
/// READY. When the gateway takes office, the volume's device is attached and the same
/// logical unit (its sessions, unit attentions and nexuses) serves it from then on.
pub(crate) struct Handover {
    volume: String,
    blocks: AtomicU64,
    device: OnceLock<scsi::Device>,
}

impl Handover {
    fn new(volume: &str, blocks: u64) -> Self {
        Self {
            volume: volume.to_string(),
            blocks: AtomicU64::new(blocks),
            device: OnceLock::new(),
        }
    }

    fn attached(&self) -> Option<&scsi::Device> {
        self.device.get()
    }

    fn unserved(&self) -> DeviceError {
        DeviceError::Gone(format!(
            "volume {} is served by another gateway",
            self.volume
        ))
    }
}

impl BlockDevice for Handover {
    fn block_size(&self) -> u32 {
        self.attached()
            .map_or(LOGICAL_BLOCK_SIZE, |d| d.block_size())
    }
    fn num_blocks(&self) -> u64 {
        match self.attached() {
            Some(d) => d.num_blocks(),
            None => self.blocks.load(Ordering::Relaxed),
        }
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        match self.attached() {
            Some(d) => d.read_at(offset, buf),
            None => Err(self.unserved()),
        }
    }
    fn read_to_vec(&self, offset: u64, len: usize, buf: &mut Vec<u8>) -> Result<(), DeviceError> {
        match self.attached() {
            Some(d) => d.read_to_vec(offset, len, buf),
            None => Err(self.unserved()),
        }
    }
    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), DeviceError> {
        match self.attached() {
            Some(d) => d.write_at(offset, data, fua),
            None => Err(self.unserved()),
        }
    }
    fn flush(&self) -> Result<(), DeviceError> {
        match self.attached() {
            Some(d) => d.flush(),
            None => Err(self.unserved()),
        }
    }
    fn ready(&self) -> Result<(), DeviceError> {
        match self.attached() {
            Some(d) => d.ready(),
            None => Err(self.unserved()),
        }
    }
    fn discard(&self, offset: u64, len: u64) -> Result<(), DeviceError> {
        match self.attached() {
            Some(d) => d.discard(offset, len),
            None => Err(self.unserved()),
        }
    }
    fn thin_provisioned(&self) -> bool {
        self.attached().is_none_or(|d| d.thin_provisioned())
    }
    fn quick_io(&self) -> bool {
        self.attached().is_some_and(|d| d.quick_io())
    }
    fn cached(&self, offset: u64, len: usize) -> bool {
        self.attached().is_some_and(|d| d.cached(offset, len))
    }
    fn reads_now(&self) -> bool {
        self.attached().is_some_and(|d| d.reads_now())
    }
    fn read_now(&self, offset: u64, len: usize, buf: &mut Vec<u8>) -> Result<bool, DeviceError> {
        match self.attached() {
            Some(d) => d.read_now(offset, len, buf),
            None => Ok(false),
        }
    }
    fn file_span(&self, offset: u64, len: usize) -> Option<scsi::FileSpan> {
        self.attached().and_then(|d| d.file_span(offset, len))
    }
    fn mapping_status(&self, offset: u64) -> Result<(bool, u64), DeviceError> {
        match self.attached() {
            Some(d) => d.mapping_status(offset),
            None => Err(self.unserved()),
        }
    }
}

/// Which target port group serves the LUNs (Active/Optimized); every other group is
/// Standby. `None`: no group serves (a standby gateway while no leader is in office).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Alua {
    active: Option<u16>,
}

impl Alua {
    fn state(&self, group: u16) -> AccessState {
        if self.active == Some(group) {
            AccessState::ActiveOptimized
        } else {
            AccessState::Standby
        }
    }
}

/// The device of a LUN whose volume is gone: its identity and recorded size are still
/// served (INQUIRY, READ CAPACITY, REPORT LUNS), and everything that reaches the medium
/// (TEST UNIT READY, reads, writes, flushes, unmaps) gets [`DeviceError::Gone`], NOT READY /
/// MANUAL INTERVENTION REQUIRED (`scsi::Sense::storage_gone` says why that sense).
struct GoneVolume {
    volume: String,
    blocks: u64,
}

impl GoneVolume {
    fn gone(&self) -> DeviceError {
        DeviceError::Gone(format!("volume {} is missing from the pool", self.volume))
    }
}

impl BlockDevice for GoneVolume {
    fn block_size(&self) -> u32 {
        LOGICAL_BLOCK_SIZE
    }
    fn num_blocks(&self) -> u64 {
        self.blocks
    }
    fn read_at(&self, _: u64, _: &mut [u8]) -> Result<(), DeviceError> {
        Err(self.gone())
    }
    fn write_at(&self, _: u64, _: &[u8], _: bool) -> Result<(), DeviceError> {
        Err(self.gone())
    }
    fn flush(&self) -> Result<(), DeviceError> {
        Err(self.gone())
    }
    fn ready(&self) -> Result<(), DeviceError> {
        Err(self.gone())
    }
    fn discard(&self, _: u64, _: u64) -> Result<(), DeviceError> {
        Err(self.gone())
    }
    fn thin_provisioned(&self) -> bool {
        true
    }
    fn mapping_status(&self, _: u64) -> Result<(bool, u64), DeviceError> {
        Err(self.gone())
    }
}

/// A served LUN's logical unit, and the handover device of one a standby made.
type Served = (Weak<LogicalUnit>, Option<Arc<Handover>>);

/// The link a standby gives each LUN's unit ([`ScsiExporter::forward_reservations`]).
pub(crate) type ForwardLinks = Arc<dyn Fn(&str) -> Arc<dyn PrLink> + Send + Sync>;

/// Where this exporter's units keep their persistent reservations.
#[derive(Clone, Default)]
enum Reservations {
    /// In each unit alone (one gateway).
    #[default]
    Local,
    /// A standby's: every reservation command goes to the gateway in office.
    Forwarded(ForwardLinks),
    /// The gateway in office's: each change made durable in the array's rows first.
    Kept(Arc<dyn ReservationStore>),
}

/// A unit of the gateway in office: its reservation changes are made durable in `store`.
#[derive(Debug)]
struct KeptLink {
    lun: LunId,
    store: Arc<dyn ReservationStore>,
}

impl PrLink for KeptLink {
    fn persist(&self, state: &PrState) -> Result<(), scsi::Sense> {
        self.store.persist(&self.lun, state).map_err(|e| {
            tracing::error!(lun = %self.lun, error = %e, "a reservation change could not be made durable");
            // The host tries again, maybe through another gateway.
            scsi::Sense::new(
                scsi::sense::key::NOT_READY,
                scsi::sense::Asc::LUN_NOT_ACCESSIBLE_ASYMMETRIC_ACCESS_TRANSITION,
            )
        })
    }
}

/// Maps LUNs into a SCSI target; one [`LogicalUnit`] per LUN is shared by every initiator it is
/// mapped to (so reservations and unit attentions are per LUN, not per mapping).
pub struct ScsiExporter {
    target: Arc<scsi::Target>,
    server: Option<Arc<iscsi::TargetServer>>,
    /// LUN id -> its logical unit, and the handover device of one a standby made.
    units: Mutex<HashMap<String, Served>>,
    io: Arc<IoStats>,
    alua: Mutex<Alua>,
    reservations: Mutex<Reservations>,
}

impl std::fmt::Debug for ScsiExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScsiExporter")
            .field("target", &self.target.name())
            .finish()
    }
}

impl ScsiExporter {
    /// Maps into `target`; with `server`, CHAP secrets and logins are managed there too.
    pub fn new(target: Arc<scsi::Target>, server: Option<Arc<iscsi::TargetServer>>) -> Self {
        let active = target.port_groups().first().map(|g| g.id);
        Self {
            target,
            server,
            units: Mutex::new(HashMap::new()),
            io: Arc::new(IoStats::default()),
            alua: Mutex::new(Alua { active }),
            reservations: Mutex::new(Reservations::Local),
        }
    }

    /// A standby's units hand every PERSISTENT RESERVE IN/OUT to the gateway in office
    /// through the link `links` makes for each LUN id (`crate::pr_share`), until
    /// [`Exporter::keep_reservations`].
    pub(crate) fn forward_reservations(&self, links: ForwardLinks) {
        *self.reservations.lock().expect("reservations lock") =
            Reservations::Forwarded(links.clone());
        let units = self.units.lock().expect("units lock");
        for (id, (w, _)) in units.iter() {
            if let Some(u) = w.upgrade() {
                u.set_pr_link(Some(links(id)));
            }
        }
    }

    /// The reservation link of LUN `id`'s unit, as things stand.
    fn pr_link(&self, id: &str) -> Option<Arc<dyn PrLink>> {
        match &*self.reservations.lock().expect("reservations lock") {
            Reservations::Local => None,
            Reservations::Forwarded(links) => Some(links(id)),
            Reservations::Kept(store) => Some(Arc::new(KeptLink {
                lun: id.to_string(),
                store: store.clone(),
            })),
        }
    }

    /// Makes `active` the group that serves every LUN (Active/Optimized), every other group
    /// Standby (`None`: every group). Each logical unit whose state changes in a group
    /// reports ASYMMETRIC ACCESS STATE CHANGED on all its nexuses.
    pub fn set_active_group(&self, active: Option<u16>) {
        let alua = {
            let mut a = self.alua.lock().expect("alua lock");
            if a.active == active {
                return;
            }
            a.active = active;
            *a
        };
        tracing::info!(?active, "the target port group serving the LUNs changed");
        self.apply_all(alua);
    }

    /// The target port groups: this gateway's and the others'. A group that joins is
    /// Standby for every LUN (unless it is the active one).
    pub fn set_port_groups(&self, groups: Vec<PortGroup>) -> Result<(), scsi::PortGroupError> {
        if groups == self.target.port_groups() {
            return Ok(());
        }
        // Units first learn the new group's state, then the target reports the group.
        let alua = *self.alua.lock().expect("alua lock");
        for u in self.live_units() {
            for g in &groups {
                u.set_access_state(g.id, alua.state(g.id));
            }
        }
        self.target.set_port_groups(groups)?;
        self.apply_all(alua);
        Ok(())
    }

    fn live_units(&self) -> Vec<Arc<LogicalUnit>> {
        let units = self.units.lock().expect("units lock");
        units.values().filter_map(|(w, _)| w.upgrade()).collect()
    }

    fn apply_all(&self, alua: Alua) {
        let groups = self.target.port_groups();
        for u in self.live_units() {
            apply(&u, &groups, alua);
        }
    }

    /// Serves `lun` to `initiator` at `lun_number` as a standby gateway does: its identity
    /// and recorded size, no volume opened ([`Handover`]).
    pub(crate) fn map_standby(&self, initiator: &str, lun_number: u64, lun: &ExportedLun) {
        if let Some(u) = self.unit_with(lun, None) {
            self.target.map(initiator, lun_number, u);
        }
    }

    /// Every served LUN's I/O counters.
    pub fn io_stats(&self) -> &Arc<IoStats> {
        &self.io
    }

    pub fn target(&self) -> &Arc<scsi::Target> {
        &self.target
    }

    /// The iSCSI portals LUNs are served on.
    pub fn portals(&self) -> Vec<std::net::SocketAddr> {
        self.server
            .as_ref()
            .map(|s| s.local_addrs().to_vec())
            .unwrap_or_default()
    }

    /// The logical unit serving `lun`, made if none does: with `storage`, on the LUN's
    /// volume (a standby's unit of it gets the volume attached); without, a standby's.
    fn unit_with(
        &self,
        lun: &ExportedLun,
        storage: Option<&dyn Backend>,
    ) -> Option<Arc<LogicalUnit>> {
        let mut units = self.units.lock().expect("units lock");
        units.retain(|_, (w, _)| w.strong_count() > 0);
        if let Some((w, handover)) = units.get(lun.id.as_str()) {
            if let Some(u) = w.upgrade() {
                if let (Some(h), Some(storage)) = (handover, storage) {
                    if h.attached().is_none() {
                        let device = self.open(lun, storage)?;
                        let _ = h.device.set(device);
                        // The reservations made durable count, not the standby's copy.
                        u.load_reservations(lun.reservations.clone().unwrap_or_default());
                        u.set_pr_link(self.pr_link(&lun.id));
                        tracing::info!(lun = %lun.id, "the LUN's volume is served from here now");
                    }
                } else if let Some(h) = handover.as_ref().filter(|h| h.attached().is_none()) {
                    // A standby follows the recorded size.
                    let blocks = lun.size_bytes / u64::from(LOGICAL_BLOCK_SIZE);
                    if h.blocks.swap(blocks, Ordering::Relaxed) != blocks {
                        u.capacity_changed();
                    }
                }
                return Some(u);
            }
        }
        let ident = &lun.identity;
        let identity = LuIdentity {
            vendor: ident.vendor.clone(),
            product: ident.product.clone(),
            revision: ident.revision.clone(),
            serial: ident.serial.clone(),
            designators: ident.designators.clone(),
        };
        if let Err(e) = identity.validate() {
            tracing::error!(lun = %lun.id, error = %e, "LUN identity cannot be served; not mapped");
            return None;
        }
        let (device, handover): (scsi::Device, _) = match storage {
            Some(storage) => (self.open(lun, storage)?, None),
            None => {
                let h = Arc::new(Handover::new(
                    &lun.volume,
                    lun.size_bytes / u64::from(LOGICAL_BLOCK_SIZE),
                ));
                (h.clone() as scsi::Device, Some(h))
            }
        };
        let device = Arc::new(MeteredDevice::new(device, self.io.lun(&lun.id)));
        let u = Arc::new(LogicalUnit::new(device, identity));
        if storage.is_some()
            && let Some(r) = &lun.reservations
        {
            u.load_reservations(r.clone());
        }
        u.set_pr_link(self.pr_link(&lun.id));
        let alua = *self.alua.lock().expect("alua lock");
        apply(&u, &self.target.port_groups(), alua);
        units.insert(lun.id.to_string(), (Arc::downgrade(&u), handover));
        Some(u)
    }

    /// The device of `lun`'s volume.
    fn open(&self, lun: &ExportedLun, storage: &dyn Backend) -> Option<scsi::Device> {
        let device: scsi::Device = match storage.device(&lun.volume) {
            Ok(d) => d,
            Err(BackendError::NoVolume(_)) => {
                tracing::error!(lun = %lun.id, volume = %lun.volume,
                    "the LUN's volume is gone from the pool (deleted outside the array); \
                     its I/O is answered NOT READY until the LUN is deleted");
                Arc::new(GoneVolume {
                    volume: lun.volume.clone(),
                    blocks: lun.size_bytes / u64::from(LOGICAL_BLOCK_SIZE),
                })
            }
            Err(e) => {
                tracing::error!(lun = %lun.id, volume = %lun.volume, error = %e,
                    "cannot open the LUN's volume; not mapped");
                return None;
            }
        };
        Some(device)
    }
}

/// Sets `u`'s state in every group as `alua` says.
fn apply(u: &LogicalUnit, groups: &[PortGroup], alua: Alua) {
    for g in groups {
        u.set_access_state(g.id, alua.state(g.id));
    }
}

impl Exporter for ScsiExporter {
    fn map(&self, initiator: &str, lun_number: u64, lun: &ExportedLun, storage: &dyn Backend) {
        if let Some(u) = self.unit_with(lun, Some(storage)) {
            self.target.map(initiator, lun_number, u);
        }
    }

    fn unmap(&self, initiator: &str, lun_number: u64) {
        self.target.unmap(initiator, lun_number);
    }

    fn resized(&self, lun: &str) {
        let units = self.units.lock().expect("units lock");
        if let Some(u) = units.get(lun).and_then(|(w, _)| w.upgrade()) {
            u.capacity_changed();
        }
    }

    fn fence_writes(&self, luns: &[LunId], drain: Duration) -> Result<Fence, scsi::FenceError> {
        let served: Vec<Arc<LogicalUnit>> = {
            let units = self.units.lock().expect("units lock");
            let mut ids: Vec<&LunId> = luns.iter().collect();
            ids.sort();
            ids.dedup();
            ids.iter()
                .filter_map(|id| units.get(id.as_str()).and_then(|(w, _)| w.upgrade()))
                .collect()
        };
        // One after another, in the order of the ids: each drain waits only for its own
        // LU's writes, and a failed one drops the fences already up.
        let mut fences = Vec::with_capacity(served.len());
        for u in &served {
            fences.push(u.fence_writes(drain)?);
        }
        Ok(Fence(fences))
    }

    fn keep_reservations(&self, store: Arc<dyn ReservationStore>) {
        // Units a standby made get their link when their volume is attached.
        *self.reservations.lock().expect("reservations lock") = Reservations::Kept(store);
    }

    fn run_reservation(
        &self,
        lun: &str,
        nexus: &scsi::Nexus,
        cdb: &[u8],
        data_out: &[u8],
    ) -> Option<scsi::Outcome> {
        let u = {
            let units = self.units.lock().expect("units lock");
            let (w, handover) = units.get(lun)?;
            // Only a unit on its volume keeps the reservations (not a standby's).
            if handover.as_ref().is_some_and(|h| h.attached().is_none()) {
                return None;
            }
            w.upgrade()?
        };
        Some(u.run_forwarded(nexus, self.target.name(), cdb, data_out))
    }

    fn forget_initiator(&self, initiator: &str) {
        let Some(server) = &self.server else { return };
        server.disallow_initiator(self.target.name(), initiator);
        server.clear_chap(initiator);
        let ended = server.end_sessions(initiator);
        if ended > 0 {
            tracing::info!(
                initiator,
                sessions = ended,
                "ended the sessions of a removed initiator"
            );
        }
    }

    fn set_chap(&self, initiator: &str, secret: Option<&str>) {
        let Some(server) = &self.server else { return };
        // A host's initiators may log in (and see an empty LUN list) before any mapping.
        server.allow_initiator(self.target.name(), initiator);
        match secret {
            // CHAP_N is the initiator name, the usual convention of Windows and open-iscsi.
            Some(s) => server.set_chap(initiator, initiator, s.as_bytes(), None),
            None => server.clear_chap(initiator),
        }
    }
}
