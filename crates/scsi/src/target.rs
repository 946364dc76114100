//! The target: LUN maps per initiator (masking), REPORT LUNS, unit attentions on map changes,
//! task management, and routing of every command to its logical unit.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use crate::alua::{AccessState, PortGroup, PortGroupError, PortGroups};
use crate::cdb::{self, Cdb};
use crate::exec::{alua as rtpg, inquiry};
use crate::lu::LogicalUnit;
use crate::sense::{Asc, Sense};
use crate::{Command, Nexus, Outcome, TaskManagement, TaskManagementResponse};

/// Highest LUN number: flat space addressing holds 14 bits.
pub const MAX_LUN: u64 = 0x3FFF;

/// Decodes the 8-byte LUN field (as a big-endian u64) into a LUN number: peripheral device
/// addressing (bus 0) for LUNs below 256, flat space addressing above (SAM-5 4.7). Anything
/// else (other methods, second-level LUNs) is `None`.
pub fn decode_lun(field: u64) -> Option<u64> {
    if field & 0x0000_FFFF_FFFF_FFFF != 0 {
        return None;
    }
    let hi = (field >> 48) as u16;
    match hi >> 14 {
        0 if hi >> 8 == 0 => Some(u64::from(hi & 0xFF)),
        1 => Some(u64::from(hi & 0x3FFF)),
        _ => None,
    }
}

/// Encodes a LUN number as the 8-byte LUN field (see [`decode_lun`]).
pub fn encode_lun(lun: u64) -> u64 {
    if lun < 256 {
        lun << 48
    } else {
        (0x4000 | (lun & 0x3FFF)) << 48
    }
}

/// A SCSI target device: what the iSCSI layer calls for every command.
/// How [`Target::execute_inner`] runs a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// To completion, data-in copied.
    Copy,
    /// To completion, a READ's data left in its file where the device offers a span.
    ZeroCopy,
    /// A READ only if the device has its data without waiting ([`Target::execute_now`]).
    Now,
}

#[derive(Debug)]
pub struct Target {
    name: String,
    /// initiator name -> LUN -> logical unit.
    maps: RwLock<HashMap<String, BTreeMap<u64, Arc<LogicalUnit>>>>,
    /// I_T nexuses currently known, to tell them about map changes.
    nexuses: RwLock<HashSet<Nexus>>,
    /// Nexuses owed REPORTED LUNS DATA HAS CHANGED on LUN 0 while no logical unit is mapped
    /// there (a host with no LUN 0 still polls it; otherwise it would never hear of a change).
    lun0_changed: Mutex<HashSet<Nexus>>,
    /// Target port groups (asymmetric access, `alua.rs`): read on every command, written
    /// when the groups are configured.
    port_groups: RwLock<PortGroups>,
}

impl Target {
    /// A target with no LUNs. `target_name` is the iSCSI target name, used in the target port
    /// designators of VPD page 0x83.
    pub fn new(target_name: &str) -> Self {
        Self {
            name: target_name.to_string(),
            maps: RwLock::new(HashMap::new()),
            nexuses: RwLock::new(HashSet::new()),
            lun0_changed: Mutex::new(HashSet::new()),
            port_groups: RwLock::new(PortGroups::default()),
        }
    }

    /// Configures the target port groups (none: asymmetric access off, as for a new
    /// target). Through a port in a group, standard INQUIRY reports TPGS 01b (implicit
    /// asymmetric access), VPD 0x83 carries the group, REPORT TARGET PORT GROUPS answers
    /// and each logical unit's state in the group decides which commands run. A port in no
    /// group sees none of this. If the groups change, every I_T nexus of every logical unit
    /// gets INQUIRY DATA HAS CHANGED (3F/03).
    pub fn set_port_groups(&self, groups: Vec<PortGroup>) -> Result<(), PortGroupError> {
        let new = PortGroups::new(groups)?;
        let changed = {
            let mut g = self.port_groups.write().expect("port groups lock");
            let changed = *g != new;
            *g = new;
            changed
        };
        if changed {
            tracing::info!(groups = ?self.port_groups(), "target port groups configured");
            for lu in self.all_units() {
                lu.lock().establish(Asc::INQUIRY_DATA_HAS_CHANGED, |_| true);
            }
        }
        Ok(())
    }

    /// The target port groups, ascending by id.
    pub fn port_groups(&self) -> Vec<PortGroup> {
        self.port_groups
            .read()
            .expect("port groups lock")
            .groups()
            .to_vec()
    }

    /// The target port group of relative target port `port`, if it is in one.
    pub fn port_group_of(&self, port: u16) -> Option<u16> {
        self.port_groups
            .read()
            .expect("port groups lock")
            .group_of(port)
    }

    /// Sets the asymmetric access state of every logical unit mapped here in `group`
    /// ([`LogicalUnit::set_access_state`] for each).
    pub fn set_access_state(&self, group: u16, state: AccessState) {
        for lu in self.all_units() {
            lu.set_access_state(group, state);
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn lu_for(&self, initiator: &str, lun: u64) -> Option<Arc<LogicalUnit>> {
        let maps = self.maps.read().expect("LUN maps lock");
        maps.get(initiator).and_then(|m| m.get(&lun)).cloned()
    }

    fn remember(&self, nexus: &Nexus) {
        if self.nexuses.read().expect("nexuses lock").contains(nexus) {
            return;
        }
        let mut n = self.nexuses.write().expect("nexuses lock");
        if !n.contains(nexus) {
            tracing::debug!(initiator = %nexus.initiator_port, port = nexus.target_port, "new I_T nexus");
            n.insert(nexus.clone());
        }
    }

    /// Executes one command to completion. Blocking; call from worker threads.
    pub fn execute(&self, cmd: &Command<'_>) -> Outcome {
        self.execute_inner(cmd, Mode::Copy)
            .expect("a command that may wait always completes")
            .0
    }

    /// Executes a READ (6/10/12/16) without FUA of a LUN whose device reads without
    /// waiting ([`crate::BlockDevice::reads_now`]), on the caller's thread, if that needs no
    /// wait for storage: `None` when it would (or for any other command), and the command
    /// must then be executed with [`Target::execute`] where it may wait. A unit attention,
    /// an access state or a reservation that refuses the READ completes it here, as
    /// `execute` would; nothing else is changed before the device answers, so `None` leaves
    /// the command as it was.
    pub fn execute_now(&self, cmd: &Command<'_>) -> Option<Outcome> {
        use cdb::opcode::*;
        let fua = cmd.cdb.get(1).is_some_and(|b| b & 0x08 != 0);
        match cmd.cdb.first() {
            Some(&READ_6) => {}
            Some(&(READ_10 | READ_12 | READ_16)) if !fua => {}
            _ => return None,
        }
        self.execute_inner(cmd, Mode::Now).map(|(o, _)| o)
    }

    /// As [`Target::execute`], but a READ of a LUN whose device offers
    /// [`crate::BlockDevice::file_span`] completes with GOOD, no data and the span: the
    /// transport sends those bytes from the file itself. Every check (unit attention,
    /// reservation, range) is made here, as for any READ.
    pub fn execute_zero_copy(&self, cmd: &Command<'_>) -> (Outcome, Option<crate::FileSpan>) {
        self.execute_inner(cmd, Mode::ZeroCopy)
            .expect("a command that may wait always completes")
    }

    /// `None` only in [`Mode::Now`], for a command that would wait.
    fn execute_inner(
        &self,
        cmd: &Command<'_>,
        mode: Mode,
    ) -> Option<(Outcome, Option<crate::FileSpan>)> {
        let o = |o: Outcome| Some((o, None));
        self.remember(cmd.nexus);
        let op = cmd.cdb.first().copied().unwrap_or(0xFF);
        let lun = decode_lun(cmd.lun);
        let lu = lun.and_then(|l| self.lu_for(&cmd.nexus.initiator, l));
        if let Some(lu) = &lu
            && let Some(ua) = lu.take_ua(cmd.nexus, op)
        {
            tracing::debug!(asc = ?ua.asc, "unit attention reported");
            return o(Outcome::check(&ua));
        }
        if lu.is_none()
            && lun == Some(0)
            && !matches!(op, cdb::opcode::INQUIRY | cdb::opcode::REPORT_LUNS)
            && self.take_lun0_changed(cmd.nexus)
        {
            let ua = Sense::unit_attention(Asc::REPORTED_LUNS_DATA_HAS_CHANGED);
            if op == cdb::opcode::REQUEST_SENSE {
                let mut d = ua.encode();
                d.truncate(cmd.cdb.get(4).copied().unwrap_or(0).into());
                return o(Outcome::good(d));
            }
            return o(Outcome::check(&ua));
        }
        let parsed = match cdb::parse(cmd.cdb) {
            Ok(c) => c,
            Err(s) => {
                tracing::debug!(op, sense = %s, "CDB rejected");
                return o(Outcome::check(&s));
            }
        };
        if let Cdb::ReportLuns { select, alloc } = parsed {
            // The initiator now knows the inventory: clear the condition on all its LUNs.
            for lu in self.units_of(&cmd.nexus.initiator) {
                lu.clear_reported_luns_changed(cmd.nexus);
            }
            self.take_lun0_changed(cmd.nexus);
            let mut data = self.report_luns(&cmd.nexus.initiator, select);
            data.truncate(alloc as usize);
            return o(Outcome::good(data));
        }
        let port_group = match &lu {
            Some(_) => self.port_group_of(cmd.nexus.target_port),
            None => None,
        };
        if let (Some(lu), Some(group)) = (&lu, port_group) {
            let state = lu.access_state(group);
            if !state.allows(&parsed)
                && let Some(s) = state.refusal()
            {
                tracing::debug!(
                    ?parsed,
                    group,
                    ?state,
                    "refused by the asymmetric access state"
                );
                return o(Outcome::check(&s));
            }
            if let Cdb::ReportTargetPortGroups { extended, alloc } = parsed {
                let groups = self.port_groups.read().expect("port groups lock");
                let mut data = rtpg::report_target_port_groups(&groups, lu.access(), extended);
                data.truncate(alloc as usize);
                return o(Outcome::good(data));
            }
        }
        if let Some(lu) = &lu
            && matches!(parsed, Cdb::PrIn { .. } | Cdb::PrOut { .. })
            && let Some(out) = lu.forward_pr(cmd.nexus, cmd.cdb, cmd.data_out)
        {
            return o(out);
        }
        o(match lu {
            Some(lu) => {
                if mode == Mode::Now {
                    return lu
                        .read_now(cmd.nexus, &self.name, port_group, &parsed)
                        .map(|outcome| (outcome, None));
                }
                if mode == Mode::ZeroCopy
                    && let Some(r) = lu.read_span(cmd.nexus, &self.name, port_group, &parsed)
                {
                    return match r {
                        Ok(span) => Some((Outcome::good(Vec::new()), Some(span))),
                        Err(outcome) => o(outcome),
                    };
                }
                lu.run(cmd.nexus, &self.name, port_group, &parsed, cmd.data_out)
            }
            None => match parsed {
                Cdb::Inquiry {
                    evpd: false, alloc, ..
                } => {
                    let mut d = inquiry::unmapped_standard();
                    d.truncate(alloc as usize);
                    Outcome::good(d)
                }
                Cdb::RequestSense { alloc } => {
                    let mut d = Sense::lun_not_supported().encode();
                    d.truncate(alloc as usize);
                    Outcome::good(d)
                }
                _ => Outcome::check(&Sense::lun_not_supported()),
            },
        })
    }

    /// True if `cmd` is a READ (6/10/12/16) without FUA whose blocks are at hand now
    /// ([`crate::BlockDevice::cached`]), or a WRITE without FUA or TEST UNIT READY for a LUN
    /// whose device does quick I/O ([`crate::BlockDevice::quick_io`]): the command
    /// finishes in microseconds and may run on the transport's own thread.
    pub fn is_quick(&self, cmd: &Command<'_>) -> bool {
        use cdb::opcode::*;
        let Some(&op) = cmd.cdb.first() else {
            return false;
        };
        let fua = cmd.cdb.get(1).is_some_and(|b| b & 0x08 != 0);
        let simple = match op {
            TEST_UNIT_READY | READ_6 | WRITE_6 => true,
            READ_10 | READ_12 | READ_16 | WRITE_10 | WRITE_12 | WRITE_16 => !fua,
            _ => false,
        };
        if !simple {
            return false;
        }
        let Some(lu) = decode_lun(cmd.lun).and_then(|l| self.lu_for(&cmd.nexus.initiator, l))
        else {
            return false;
        };
        let dev = lu.device();
        let quick_dev = dev.quick_io();
        // A READ asks the device about its blocks (a slow device may hold some in memory);
        // everything else is as quick as the device. Only a quick device is asked for its
        // size here: a slow one may answer that only behind a lock its I/O holds.
        match cdb::parse(cmd.cdb) {
            Ok(Cdb::Read { lba, blocks, .. }) => {
                let bs = u64::from(dev.block_size());
                match (lba.checked_mul(bs), (u64::from(blocks) * bs).try_into()) {
                    // Out of range on a quick device: quick, since it fails before
                    // touching the device.
                    (Some(off), Ok(len)) if quick_dev => {
                        lba.saturating_add(u64::from(blocks)) > dev.num_blocks()
                            || dev.cached(off, len)
                    }
                    // A device that reads without waiting is asked by the read itself
                    // (`execute_now`), not probed first.
                    (Some(off), Ok(len)) => !dev.reads_now() && dev.cached(off, len),
                    _ => quick_dev,
                }
            }
            _ => quick_dev,
        }
    }

    /// The SCSI data length in bytes the command's CDB calls for (see [`Cdb::data_length`]),
    /// using the block size of the logical unit it addresses; `None` if the CDB does not
    /// parse. The transport uses it to report residual overflow and underflow (RFC 7143
    /// 11.4.5): a WRITE whose Expected Data Transfer Length is smaller than this writes only
    /// the whole blocks that arrived.
    pub fn data_length(&self, cmd: &Command<'_>) -> Option<u64> {
        let parsed = cdb::parse(cmd.cdb).ok()?;
        let bs = decode_lun(cmd.lun)
            .and_then(|l| self.lu_for(&cmd.nexus.initiator, l))
            .map_or(512, |lu| lu.device().block_size());
        Some(parsed.data_length(bs))
    }

    fn report_luns(&self, initiator: &str, select: u8) -> Vec<u8> {
        let luns = if select == 1 {
            Vec::new() // no well-known logical units
        } else {
            self.luns_for(initiator)
        };
        let mut out = Vec::with_capacity(8 + 8 * luns.len());
        out.extend_from_slice(&((luns.len() * 8) as u32).to_be_bytes());
        out.extend_from_slice(&[0; 4]);
        for l in luns {
            out.extend_from_slice(&encode_lun(l).to_be_bytes());
        }
        out
    }

    /// A task management function. Commands run to completion inside [`Target::execute`], so
    /// there is never a queued task here to abort: ABORT TASK, ABORT TASK SET and CLEAR TASK
    /// SET complete (the transport drops commands it has not handed over yet).
    pub fn task_management(
        &self,
        nexus: &Nexus,
        lun: u64,
        f: TaskManagement,
    ) -> TaskManagementResponse {
        self.remember(nexus);
        let lu = decode_lun(lun).and_then(|l| self.lu_for(&nexus.initiator, l));
        match f {
            TaskManagement::TargetWarmReset | TaskManagement::TargetColdReset => {
                let cold = f == TaskManagement::TargetColdReset;
                tracing::info!(initiator = %nexus.initiator_port, cold, "target reset");
                for lu in self.all_units() {
                    lu.reset(Some(nexus), Asc::POWER_ON_RESET, cold);
                }
                TaskManagementResponse::Complete
            }
            _ => {
                let Some(lu) = lu else {
                    return TaskManagementResponse::LunDoesNotExist;
                };
                if f == TaskManagement::LogicalUnitReset {
                    tracing::info!(initiator = %nexus.initiator_port, lun, "logical unit reset");
                    // Every I_T nexus of the logical unit hears of it, the one that asked
                    // included (SAM-5 5.14): a host that reset a LU through one path learns
                    // of it on each of its paths, that one too.
                    lu.reset(None, Asc::BUS_DEVICE_RESET_FUNCTION_OCCURRED, false);
                }
                TaskManagementResponse::Complete
            }
        }
    }

    fn all_units(&self) -> Vec<Arc<LogicalUnit>> {
        let maps = self.maps.read().expect("LUN maps lock");
        let mut v: Vec<Arc<LogicalUnit>> = Vec::new();
        for m in maps.values() {
            for lu in m.values() {
                if !v.iter().any(|x| Arc::ptr_eq(x, lu)) {
                    v.push(lu.clone());
                }
            }
        }
        v
    }

    /// The session behind `nexus` ended: its unit attentions and RESERVE(6) reservations go;
    /// persistent reservations stay.
    pub fn nexus_lost(&self, nexus: &Nexus) {
        self.nexuses.write().expect("nexuses lock").remove(nexus);
        self.take_lun0_changed(nexus);
        for lu in self.all_units() {
            lu.nexus_lost(nexus);
        }
    }

    /// Maps `unit` at `lun` for `initiator` (replacing what was there). The initiator's other
    /// LUNs report REPORTED LUNS DATA HAS CHANGED; other initiators see nothing. Mapping the
    /// unit already mapped there changes nothing.
    pub fn map(&self, initiator: &str, lun: u64, unit: Arc<LogicalUnit>) {
        if lun > MAX_LUN {
            tracing::warn!(
                lun,
                "LUN number above {MAX_LUN} cannot be addressed; not mapped"
            );
            return;
        }
        {
            let mut maps = self.maps.write().expect("LUN maps lock");
            let m = maps.entry(initiator.to_string()).or_default();
            if m.get(&lun).is_some_and(|u| Arc::ptr_eq(u, &unit)) {
                // The same logical unit again: nothing changed.
                return;
            }
            m.insert(lun, unit);
        }
        tracing::info!(initiator, lun, "LUN mapped");
        self.inventory_changed(initiator);
    }

    /// Removes `lun` from `initiator`'s map; its remaining LUNs report REPORTED LUNS DATA HAS
    /// CHANGED.
    pub fn unmap(&self, initiator: &str, lun: u64) {
        let removed = {
            let mut maps = self.maps.write().expect("LUN maps lock");
            let r = maps.get_mut(initiator).and_then(|m| m.remove(&lun));
            if maps.get(initiator).is_some_and(|m| m.is_empty()) {
                maps.remove(initiator);
            }
            r
        };
        if let Some(lu) = removed {
            tracing::info!(initiator, lun, "LUN unmapped");
            // Its nexuses of this initiator start afresh if it is mapped again.
            let gone: Vec<Nexus> = self
                .nexuses
                .read()
                .expect("nexuses lock")
                .iter()
                .filter(|n| n.initiator == initiator)
                .cloned()
                .collect();
            for n in &gone {
                lu.nexus_lost_ua_only(n);
            }
            self.inventory_changed(initiator);
        }
    }

    fn units_of(&self, initiator: &str) -> Vec<Arc<LogicalUnit>> {
        let maps = self.maps.read().expect("LUN maps lock");
        maps.get(initiator)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    fn inventory_changed(&self, initiator: &str) {
        for lu in self.units_of(initiator) {
            lu.notify_initiator(initiator, Asc::REPORTED_LUNS_DATA_HAS_CHANGED);
        }
        let theirs: Vec<Nexus> = self
            .nexuses
            .read()
            .expect("nexuses lock")
            .iter()
            .filter(|n| n.initiator == initiator)
            .cloned()
            .collect();
        self.lun0_changed
            .lock()
            .expect("LUN 0 changes lock")
            .extend(theirs);
    }

    fn take_lun0_changed(&self, nexus: &Nexus) -> bool {
        self.lun0_changed
            .lock()
            .expect("LUN 0 changes lock")
            .remove(nexus)
    }

    /// The LUN numbers `initiator` sees, ascending.
    pub fn luns_for(&self, initiator: &str) -> Vec<u64> {
        let maps = self.maps.read().expect("LUN maps lock");
        maps.get(initiator)
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default()
    }
}
