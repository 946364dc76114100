//! Serving LUNs over iSCSI: the [`Exporter`] that maps LUNs into a `scsi::Target` per
//! initiator (masking), with the identity the array fixed for them, and keeps the iSCSI
//! target's CHAP secrets and login allow-list in step with the hosts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use api::LunId;

use scsi::{BlockDevice, DeviceError, LogicalUnit, LuIdentity};
use storage::{Backend, BackendError, LOGICAL_BLOCK_SIZE};

use crate::metrics::{IoStats, MeteredDevice};
use crate::state::{ExportedLun, Exporter, Fence};

/// The target port group of this array's one gateway (asymmetric access, SPC-4 5.16): its
/// iSCSI target port is the group's one port, and every LUN is Active/Optimized in it, so
/// hosts see TPGS 01b and REPORT TARGET PORT GROUPS reports the one path as optimized.
pub const TARGET_PORT_GROUP: u16 = 1;

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

/// Maps LUNs into a SCSI target; one [`LogicalUnit`] per LUN is shared by every initiator it is
/// mapped to (so reservations and unit attentions are per LUN, not per mapping).
pub struct ScsiExporter {
    target: Arc<scsi::Target>,
    server: Option<Arc<iscsi::TargetServer>>,
    units: Mutex<HashMap<String, Weak<LogicalUnit>>>,
    io: Arc<IoStats>,
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
        Self {
            target,
            server,
            units: Mutex::new(HashMap::new()),
            io: Arc::new(IoStats::default()),
        }
    }

    /// Every served LUN's I/O counters.
    pub fn io_stats(&self) -> &Arc<IoStats> {
        &self.io
    }

    pub fn target(&self) -> &Arc<scsi::Target> {
        &self.target
    }

    fn unit(&self, lun: &ExportedLun, storage: &dyn Backend) -> Option<Arc<LogicalUnit>> {
        let mut units = self.units.lock().expect("units lock");
        units.retain(|_, w| w.strong_count() > 0);
        if let Some(u) = units.get(&lun.id).and_then(Weak::upgrade) {
            return Some(u);
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
        let device = Arc::new(MeteredDevice::new(device, self.io.lun(&lun.id)));
        let u = Arc::new(LogicalUnit::new(device, identity));
        units.insert(lun.id.clone(), Arc::downgrade(&u));
        Some(u)
    }
}

impl Exporter for ScsiExporter {
    fn map(&self, initiator: &str, lun_number: u64, lun: &ExportedLun, storage: &dyn Backend) {
        if let Some(u) = self.unit(lun, storage) {
            self.target.map(initiator, lun_number, u);
        }
    }

    fn unmap(&self, initiator: &str, lun_number: u64) {
        self.target.unmap(initiator, lun_number);
    }

    fn resized(&self, lun: &str) {
        let units = self.units.lock().expect("units lock");
        if let Some(u) = units.get(lun).and_then(Weak::upgrade) {
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
                .filter_map(|id| units.get(id.as_str()).and_then(Weak::upgrade))
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
