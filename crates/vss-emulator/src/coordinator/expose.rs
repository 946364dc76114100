//! Exposing a surfaced shadow copy at a drive letter or mount point (`ExposeSnapshot`),
//! taking it back, and revert (which hardware shadow copies do not support).

use vss::{Hresult, VolumeSnapshotAttributes as Attr, VssId};

use super::{BackupComponents, VssError, lock};
use crate::host::normalize_volume_name;

impl BackupComponents {
    /// `ExposeSnapshot` locally: the snapshot's volume becomes reachable at `at` (a drive
    /// letter or a folder), read-only. Only persistent shadow copies surfaced on this host
    /// can be exposed.
    pub fn expose_snapshot(&mut self, snapshot: VssId, at: &str) -> Result<String, VssError> {
        let c = &self.coord;
        let mut sets = lock(&c.sets);
        let set = sets
            .values_mut()
            .find(|s| s.record.snapshots.iter().any(|x| x.snapshot_id == snapshot))
            .ok_or_else(|| {
                VssError::refused(
                    Hresult::VSS_E_OBJECT_NOT_FOUND,
                    format!("no shadow copy {snapshot} on this host"),
                )
            })?;
        if !set.record.context.contains(Attr::NO_AUTO_RELEASE) {
            return Err(VssError::refused(
                Hresult::VSS_E_BAD_STATE,
                "only persistent (no auto-release) shadow copies can be exposed",
            ));
        }
        if set.exposed.contains_key(&snapshot) {
            return Err(VssError::refused(
                Hresult::VSS_E_OBJECT_ALREADY_EXISTS,
                format!("shadow copy {snapshot} is already exposed"),
            ));
        }
        let volume = set.volumes.get(&snapshot).cloned().ok_or_else(|| {
            VssError::refused(
                Hresult::VSS_E_BAD_STATE,
                format!("shadow copy {snapshot} is not surfaced on this host"),
            )
        })?;
        let name = at.trim().to_string();
        c.host.add_mount_point(&volume, &name).map_err(|e| {
            VssError::refused(
                Hresult::VSS_E_OBJECT_ALREADY_EXISTS,
                format!("{name} is in use: {e}"),
            )
        })?;
        set.exposed.insert(snapshot, name.clone());
        c.trace.step(format!("ExposeSnapshot {snapshot} at {name}"));
        Ok(name)
    }

    /// Takes an exposed shadow copy back from a drive letter or folder; returns its id.
    pub fn unexpose_snapshot(&mut self, at: &str) -> Result<VssId, VssError> {
        let c = &self.coord;
        let n = normalize_volume_name(at);
        let mut sets = lock(&c.sets);
        for set in sets.values_mut() {
            let found = set
                .exposed
                .iter()
                .find(|(_, e)| normalize_volume_name(e) == n)
                .map(|(id, _)| *id);
            if let Some(id) = found {
                let _ = c.host.remove_mount_point(at);
                set.exposed.remove(&id);
                c.trace.step(format!("unexpose {id} from {at}"));
                return Ok(id);
            }
        }
        Err(VssError::refused(
            Hresult::VSS_E_OBJECT_NOT_FOUND,
            format!("no shadow copy is exposed at {at}"),
        ))
    }

    /// `RevertToSnapshot`: hardware providers do not revert (`E_NOTIMPL`, "the provider for
    /// the volume does not support revert operations"); a LUN resync is their way back.
    pub fn revert_to_snapshot(&mut self, snapshot: VssId) -> Result<(), VssError> {
        let known = self.coord.query().iter().any(|p| p.snapshot_id == snapshot);
        if !known {
            return Err(VssError::refused(
                Hresult::VSS_E_OBJECT_NOT_FOUND,
                format!("no shadow copy {snapshot} on this host"),
            ));
        }
        self.coord
            .trace
            .step(format!("RevertToSnapshot {snapshot}: hardware provider"));
        Err(VssError::refused(
            Hresult::E_NOTIMPL,
            "the provider of this shadow copy does not support revert; use a LUN resync (`add shadow`, `resync`)",
        ))
    }
}
