//! Serving LUNs over iSCSI: the [`Exporter`] that maps LUNs into a `scsi::Target` per
//! initiator (masking), with the identity the array fixed for them, and keeps the iSCSI
//! target's CHAP secrets and login allow-list in step with the hosts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use scsi::{LogicalUnit, LuIdentity};
use storage::Backend;

use crate::metrics::{IoStats, MeteredDevice};
use crate::state::{ExportedLun, Exporter};

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
        let device = match storage.device(&lun.volume) {
            Ok(d) => d,
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
