//! What a standby gateway serves of the array's shared state, read without writing: every
//! host mapping with the LUN's identity and recorded size, and every host initiator with
//! its CHAP secret. The leader's rows are the only truth; a standby only mirrors them
//! (`crate::paths`), so that its paths are already logged in and Standby when it takes
//! office.

use vss::inquiry::Designator;

use super::ExportedLun;
use super::log;
use super::rows::Db;
use crate::error::ArrayError;

/// The array's mappings and host initiators as one read of the shared state saw them.
#[derive(Default)]
pub struct Followed {
    /// (initiator, LUN number, the LUN), every mapping of every host.
    pub mappings: Vec<(String, u64, ExportedLun)>,
    /// Every host initiator and the CHAP secret it logs in with.
    pub initiators: Vec<(String, Option<String>)>,
}

impl std::fmt::Debug for Followed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets.
        f.debug_struct("Followed")
            .field("mappings", &self.mappings.len())
            .field("initiators", &self.initiators.len())
            .finish()
    }
}

/// The mappings and initiators of the rows in `state` (read from object `object`); `ports`
/// are the target port designators the LUNs' identity pages carry.
pub fn follow(
    state: &gateways::State,
    object: &str,
    ports: &[Designator],
) -> Result<Followed, ArrayError> {
    let mut db = Db::default();
    for r in log::records(state, object)? {
        db.apply(r);
    }
    let mut out = Followed::default();
    for h in db.hosts.values() {
        for i in &h.initiators {
            out.initiators.push((i.clone(), h.chap_secret.clone()));
        }
        for (n, lun) in &h.luns {
            let Some(row) = db.luns.get(lun) else {
                continue;
            };
            for i in &h.initiators {
                out.mappings.push((
                    i.clone(),
                    *n,
                    ExportedLun {
                        id: row.id.clone(),
                        identity: row.identity(),
                        target_ports: ports.to_vec(),
                        volume: row.id.to_string(),
                        size_bytes: row.size_bytes,
                        // A standby's units hand reservation commands to the gateway in
                        // office; the one taking office reads them from the state.
                        reservations: None,
                    },
                ));
            }
        }
    }
    Ok(out)
}
