//! A logical unit: a [`BlockDevice`](crate::BlockDevice), its identity, and the state SCSI keeps
//! per logical unit (unit attentions per I_T nexus, reservations, the write cache switch).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use vss::inquiry::Designator;

use crate::alua::{AccessState, LuAccess};
use crate::cdb::{Access, Cdb};
use crate::exec::{self, Ctx, Fail, Res, pr::PrState};
use crate::fence::WriteGate;
use crate::sense::{Asc, FIXED_SENSE_LEN, Sense};
use crate::{Device, Nexus, Outcome, PrLink};

/// Why an identity cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("{field} {value:?} is longer than {max} characters")]
    TooLong {
        field: &'static str,
        value: String,
        max: usize,
    },
    #[error("{field} {value:?} must be printable ASCII")]
    NotAscii { field: &'static str, value: String },
    #[error("designator {index}: {source}")]
    Designator {
        index: usize,
        source: vss::inquiry::InquiryError,
    },
    #[error("designator {index} is not a logical unit designator (association {association})")]
    NotLogicalUnit { index: usize, association: u8 },
}

/// What a logical unit says about itself (INQUIRY, VPD 0x80 and 0x83). Set by the array and
/// fixed for the LUN's life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LuIdentity {
    /// T10 vendor identification (at most 8 ASCII characters).
    pub vendor: String,
    /// Product identification (at most 16).
    pub product: String,
    /// Product revision level (at most 4).
    pub revision: String,
    /// Unit serial number (VPD 0x80).
    pub serial: String,
    /// Association-0 designators of VPD 0x83; the target adds its port designators.
    pub designators: Vec<Designator>,
}

impl LuIdentity {
    /// Checks that the identity is served exactly as given: no field is cut, every
    /// designator is valid and has association 0 (the target adds its port designators).
    pub fn validate(&self) -> Result<(), IdentityError> {
        for (field, value, max) in [
            ("vendor", &self.vendor, 8),
            ("product", &self.product, 16),
            ("revision", &self.revision, 4),
            ("serial", &self.serial, 252),
        ] {
            if value.len() > max {
                return Err(IdentityError::TooLong {
                    field,
                    value: value.clone(),
                    max,
                });
            }
            if !value.bytes().all(|b| (0x20..0x7F).contains(&b)) {
                return Err(IdentityError::NotAscii {
                    field,
                    value: value.clone(),
                });
            }
        }
        for (index, d) in self.designators.iter().enumerate() {
            d.validate()
                .map_err(|source| IdentityError::Designator { index, source })?;
            if d.association != vss::inquiry::Association::LOGICAL_UNIT {
                return Err(IdentityError::NotLogicalUnit {
                    index,
                    association: d.association.0,
                });
            }
        }
        Ok(())
    }
}

/// Unit attention conditions of one I_T nexus, oldest first.
#[derive(Debug, Default)]
pub(crate) struct UaQueue(VecDeque<Asc>);

impl UaQueue {
    fn push(&mut self, asc: Asc) {
        if !self.0.contains(&asc) {
            self.0.push_back(asc);
        }
    }
}

/// Mutable SCSI state of a logical unit.
#[derive(Debug, Default)]
pub(crate) struct LuState {
    /// Every I_T nexus that has contacted this logical unit, with its pending unit attentions.
    ua: HashMap<Nexus, UaQueue>,
    pub pr: PrState,
    /// RESERVE(6) holder.
    pub spc2: Option<Nexus>,
}

impl LuState {
    /// Establishes a unit attention on every known I_T nexus for which `to` holds.
    pub fn establish(&mut self, asc: Asc, to: impl Fn(&Nexus) -> bool) {
        for (n, q) in self.ua.iter_mut() {
            if to(n) {
                q.push(asc);
            }
        }
    }
}

/// A logical unit, shared as `Arc<LogicalUnit>` between the LUN maps of several initiators.
#[derive(Debug)]
pub struct LogicalUnit {
    device: Device,
    identity: LuIdentity,
    state: Mutex<LuState>,
    /// Shared by ordinary I/O, exclusive for COMPARE AND WRITE.
    io_gate: RwLock<()>,
    /// A COMPARE AND WRITE has run: reads are no longer answered by reference, since the
    /// transport sends such data outside the gate above.
    compare_and_write_seen: AtomicBool,
    write_protect: AtomicBool,
    wce: AtomicBool,
    /// Every write passes it; a snapshot the array takes by itself fences it (`fence.rs`).
    write_gate: WriteGate,
    /// Asymmetric access state per target port group (`alua.rs`).
    access: LuAccess,
    /// Where reservations are kept besides this unit (`pr_link.rs`), if anywhere.
    pr_link: RwLock<Option<Arc<dyn PrLink>>>,
    /// Held by a PERSISTENT RESERVE OUT from its change until the change is durable, so
    /// changes are made durable in the order they were made.
    pr_gate: Mutex<()>,
}

impl std::fmt::Debug for dyn crate::BlockDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockDevice")
            .field("block_size", &self.block_size())
            .field("num_blocks", &self.num_blocks())
            .finish()
    }
}

impl LogicalUnit {
    pub fn new(device: Device, identity: LuIdentity) -> Self {
        Self {
            device,
            identity,
            state: Mutex::new(LuState::default()),
            io_gate: RwLock::new(()),
            compare_and_write_seen: AtomicBool::new(false),
            write_protect: AtomicBool::new(false),
            wce: AtomicBool::new(true),
            write_gate: WriteGate::default(),
            access: LuAccess::default(),
            pr_link: RwLock::new(None),
            pr_gate: Mutex::new(()),
        }
    }

    /// Links this unit's persistent reservations to state kept elsewhere (`None`: they live
    /// here alone). See [`PrLink`].
    pub fn set_pr_link(&self, link: Option<Arc<dyn PrLink>>) {
        *self.pr_link.write().expect("PR link lock") = link;
    }

    fn pr_link(&self) -> Option<Arc<dyn PrLink>> {
        self.pr_link.read().expect("PR link lock").clone()
    }

    /// The persistent reservation state (registrations, reservation, generation).
    pub fn reservations(&self) -> PrState {
        self.lock().pr.clone()
    }

    /// Replaces the persistent reservation state with `state` (read from where it was kept:
    /// a gateway taking over serves the reservations the previous one made durable).
    pub fn load_reservations(&self, state: PrState) {
        let _gate = self.pr_gate.lock().expect("PR gate lock");
        self.lock().pr = state;
    }

    /// Runs a PERSISTENT RESERVE IN or OUT another target received from `nexus` and handed
    /// here ([`PrLink::forward`]), as if it had come through that nexus's port. Unit
    /// attentions are the receiving target's: none is reported here. Any other command is
    /// refused (INVALID COMMAND OPERATION CODE).
    pub fn run_forwarded(
        &self,
        nexus: &Nexus,
        target_name: &str,
        cdb: &[u8],
        data_out: &[u8],
    ) -> Outcome {
        match crate::cdb::parse(cdb) {
            Ok(c @ (Cdb::PrIn { .. } | Cdb::PrOut { .. })) => {
                self.run(nexus, target_name, None, &c, data_out)
            }
            Ok(_) => Outcome::check(&Sense::invalid_opcode()),
            Err(s) => Outcome::check(&s),
        }
    }

    /// A PERSISTENT RESERVE IN/OUT handed to where the state is kept, if this unit's link
    /// does that.
    pub(crate) fn forward_pr(&self, nexus: &Nexus, cdb: &[u8], data_out: &[u8]) -> Option<Outcome> {
        self.pr_link()?.forward(nexus, cdb, data_out)
    }

    /// PERSISTENT RESERVE OUT, its change made durable through the link before it completes
    /// (undone if that fails).
    fn pr_out(&self, ctx: &Ctx<'_>, sa: u8, scope: u8, kind: u8, len: u32) -> Res {
        let Some(link) = self.pr_link() else {
            return exec::pr::pr_out(ctx, sa, scope, kind, len);
        };
        let _gate = self.pr_gate.lock().expect("PR gate lock");
        let before = self.lock().pr.clone();
        let res = exec::pr::pr_out(ctx, sa, scope, kind, len)?;
        let after = self.lock().pr.clone();
        if after != before
            && let Err(sense) = link.persist(&after)
        {
            tracing::warn!(serial = %self.identity.serial, "a reservation change could not be made durable: undone");
            let mut st = self.lock();
            if st.pr == after {
                st.pr = before;
            }
            return Err(sense.into());
        }
        Ok(res)
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn identity(&self) -> &LuIdentity {
        &self.identity
    }

    /// Tells the logical unit its device changed size: every I_T nexus that knows it gets
    /// CAPACITY DATA HAS CHANGED (2A/09).
    pub fn capacity_changed(&self) {
        tracing::info!(serial = %self.identity.serial, blocks = self.device.num_blocks(), "capacity changed");
        self.lock()
            .establish(Asc::CAPACITY_DATA_HAS_CHANGED, |_| true);
    }

    /// Sets this logical unit's asymmetric access state through the ports of target port
    /// group `group` (implicit transition). If the state changes, every I_T nexus that
    /// knows the logical unit, whatever its port, gets ASYMMETRIC ACCESS STATE CHANGED
    /// (2A/06) once, and REPORT TARGET PORT GROUPS reports the group's status as altered
    /// by implicit behaviour. Until set, a state is Active/Optimized.
    pub fn set_access_state(&self, group: u16, state: AccessState) {
        if self.access.set(group, state) {
            tracing::info!(serial = %self.identity.serial, group, ?state, "asymmetric access state changed");
            self.lock()
                .establish(Asc::ASYMMETRIC_ACCESS_STATE_CHANGED, |_| true);
        }
    }

    /// This logical unit's asymmetric access state through the ports of group `group`.
    pub fn access_state(&self, group: u16) -> AccessState {
        self.access.state(group)
    }

    pub(crate) fn access(&self) -> &LuAccess {
        &self.access
    }

    /// Write-protects (or unprotects) the logical unit: writes fail with DATA PROTECT /
    /// WRITE PROTECTED and MODE SENSE reports WP.
    pub fn set_write_protected(&self, on: bool) {
        self.write_protect.store(on, Ordering::SeqCst);
    }

    pub fn write_protected(&self) -> bool {
        self.write_protect.load(Ordering::SeqCst)
    }

    /// Whether the write cache is enabled (caching mode page WCE). When off, every write is
    /// made durable before it completes.
    pub fn write_cache_enabled(&self) -> bool {
        self.wce.load(Ordering::SeqCst)
    }

    pub(crate) fn set_write_cache(&self, on: bool) {
        self.wce.store(on, Ordering::SeqCst);
    }

    pub(crate) fn thin(&self) -> bool {
        self.device.thin_provisioned()
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, LuState> {
        self.state.lock().expect("LU state lock")
    }

    pub(crate) fn write_gate(&self) -> &WriteGate {
        &self.write_gate
    }

    pub(crate) fn io_shared(&self) -> RwLockReadGuard<'_, ()> {
        self.io_gate.read().expect("LU I/O gate lock")
    }

    pub(crate) fn io_exclusive(&self) -> RwLockWriteGuard<'_, ()> {
        self.compare_and_write_seen.store(true, Ordering::Release);
        self.io_gate.write().expect("LU I/O gate lock")
    }

    pub(crate) fn mode_parameters_changed(&self, by: &Nexus) {
        self.lock()
            .establish(Asc::MODE_PARAMETERS_CHANGED, |n| n != by);
    }

    /// Establishes a unit attention for the I_T nexuses of `initiator` (all of its ports).
    pub(crate) fn notify_initiator(&self, initiator: &str, asc: Asc) {
        self.lock().establish(asc, |n| n.initiator == initiator);
    }

    /// LOGICAL UNIT RESET: releases a RESERVE(6) reservation and tells every other I_T nexus.
    pub(crate) fn reset(&self, by: Option<&Nexus>, asc: Asc, cold: bool) {
        let cleared = {
            let mut st = self.lock();
            st.spc2 = None;
            let cleared = cold && st.pr != PrState::default();
            if cold {
                st.pr = PrState::default();
            }
            st.establish(asc, |n| Some(n) != by);
            cleared
        };
        if cleared && let Some(link) = self.pr_link() {
            let _gate = self.pr_gate.lock().expect("PR gate lock");
            if let Err(s) = link.persist(&PrState::default()) {
                tracing::warn!(serial = %self.identity.serial, sense = %s, "cleared reservations could not be made durable");
            }
        }
    }

    /// Forgets an I_T nexus: its unit attentions and its RESERVE(6) reservation. Persistent
    /// reservations survive, as SPC-4 requires.
    pub(crate) fn nexus_lost(&self, nexus: &Nexus) {
        let mut st = self.lock();
        st.ua.remove(nexus);
        if st.spc2.as_ref() == Some(nexus) {
            st.spc2 = None;
        }
    }

    /// Forgets the unit attentions of an I_T nexus (the LUN was unmapped from it).
    pub(crate) fn nexus_lost_ua_only(&self, nexus: &Nexus) {
        self.lock().ua.remove(nexus);
    }

    /// Handles unit attentions for an incoming command (SAM-5 5.14, SPC-4 5.10): returns the
    /// condition to report instead of running the command, if any. A nexus's first contact
    /// establishes POWER ON, RESET, OR BUS DEVICE RESET OCCURRED.
    pub(crate) fn take_ua(&self, nexus: &Nexus, op: u8) -> Option<Sense> {
        use crate::cdb::opcode::*;
        let mut st = self.lock();
        if !st.ua.contains_key(nexus) {
            let mut q = UaQueue::default();
            q.push(Asc::POWER_ON_RESET);
            st.ua.insert(nexus.clone(), q);
        }
        let q = st.ua.get_mut(nexus)?;
        match op {
            INQUIRY | REQUEST_SENSE => None,
            REPORT_LUNS => {
                q.0.retain(|a| *a != Asc::REPORTED_LUNS_DATA_HAS_CHANGED);
                None
            }
            _ => q.0.pop_front().map(Sense::unit_attention),
        }
    }

    /// Clears REPORTED LUNS DATA HAS CHANGED for `nexus` (it has just read the LUN list).
    pub(crate) fn clear_reported_luns_changed(&self, nexus: &Nexus) {
        if let Some(q) = self.lock().ua.get_mut(nexus) {
            q.0.retain(|a| *a != Asc::REPORTED_LUNS_DATA_HAS_CHANGED);
        }
    }

    /// REQUEST SENSE: the oldest unit attention (cleared), or NO SENSE.
    fn request_sense(&self, nexus: &Nexus) -> Vec<u8> {
        let mut st = self.lock();
        let s = st
            .ua
            .get_mut(nexus)
            .and_then(|q| q.0.pop_front())
            .map(Sense::unit_attention)
            .unwrap_or(Sense::new(
                crate::sense::key::NO_SENSE,
                Asc::NO_ADDITIONAL_SENSE,
            ));
        s.encode()
    }

    /// Reservation conflicts (SPC-2 RESERVE and SPC-4 persistent reservations).
    fn conflict(&self, nexus: &Nexus, cdb: &Cdb) -> bool {
        let st = self.lock();
        if let Some(h) = &st.spc2
            && h != nexus
            && !matches!(
                cdb,
                Cdb::Inquiry { .. }
                    | Cdb::ReportLuns { .. }
                    | Cdb::RequestSense { .. }
                    | Cdb::Release6
                    | Cdb::ReportOpcodes { .. }
                    | Cdb::ReportTmf { .. }
                    | Cdb::ReportTargetPortGroups { .. }
            )
        {
            return true;
        }
        match cdb.access() {
            Access::Always | Access::PrOut => false,
            a => st.pr.conflicts(nexus, a),
        }
    }

    /// Runs a parsed command against this logical unit. Unit attentions are handled by the
    /// caller ([`LogicalUnit::take_ua`]).
    /// A READ answered by reference ([`crate::Target::execute_zero_copy`]): `None` if this is
    /// not a READ or the device keeps no file span for it (run it as usual then), else the
    /// span or the failure (reservation conflict, range, transfer length).
    pub(crate) fn read_span(
        &self,
        nexus: &Nexus,
        target_name: &str,
        port_group: Option<u16>,
        cdb: &Cdb,
    ) -> Option<Result<crate::FileSpan, Outcome>> {
        let Cdb::Read {
            lba,
            blocks,
            len_at,
        } = *cdb
        else {
            return None;
        };
        if self.compare_and_write_seen.load(Ordering::Acquire) {
            return None;
        }
        if self.conflict(nexus, cdb) {
            tracing::debug!(?cdb, initiator = %nexus.initiator_port, "reservation conflict");
            return Some(Err(Fail::Conflict.outcome()));
        }
        let ctx = Ctx {
            lu: self,
            nexus,
            target_name,
            port_group,
            data_out: &[],
        };
        match exec::block::read_span(&ctx, lba, blocks, len_at) {
            Ok(span) => span.map(Ok),
            Err(f) => Some(Err(f.outcome())),
        }
    }

    /// A READ on the transport's own thread ([`crate::Target::execute_now`]): `None` if this
    /// is not a READ, the device does not read now ([`crate::BlockDevice::reads_now`]) or
    /// the read would wait; else its outcome.
    pub(crate) fn read_now(
        &self,
        nexus: &Nexus,
        target_name: &str,
        port_group: Option<u16>,
        cdb: &Cdb,
    ) -> Option<Outcome> {
        let Cdb::Read {
            lba,
            blocks,
            len_at,
        } = *cdb
        else {
            return None;
        };
        if !self.device.reads_now() {
            return None;
        }
        if self.conflict(nexus, cdb) {
            tracing::debug!(?cdb, initiator = %nexus.initiator_port, "reservation conflict");
            return Some(Fail::Conflict.outcome());
        }
        let ctx = Ctx {
            lu: self,
            nexus,
            target_name,
            port_group,
            data_out: &[],
        };
        match exec::block::read_now(&ctx, lba, blocks, len_at) {
            Ok(data) => data.map(Outcome::good),
            Err(f) => Some(f.outcome()),
        }
    }

    pub(crate) fn run(
        &self,
        nexus: &Nexus,
        target_name: &str,
        port_group: Option<u16>,
        cdb: &Cdb,
        data_out: &[u8],
    ) -> Outcome {
        if self.conflict(nexus, cdb) {
            tracing::debug!(?cdb, initiator = %nexus.initiator_port, "reservation conflict");
            return Fail::Conflict.outcome();
        }
        let ctx = Ctx {
            lu: self,
            nexus,
            target_name,
            port_group,
            data_out,
        };
        let (res, alloc): (Res, Option<u32>) = match *cdb {
            Cdb::TestUnitReady => (
                self.device
                    .ready()
                    .map(|()| Vec::new())
                    .map_err(|e| Sense::from_device(&e, self.device.block_size()).into()),
                None,
            ),
            Cdb::Inquiry { evpd, page, alloc } => {
                (exec::inquiry::inquiry(&ctx, evpd, page), Some(alloc))
            }
            Cdb::RequestSense { alloc } => (Ok(self.request_sense(nexus)), Some(alloc)),
            // Answered by the target; kept here for completeness of the match.
            Cdb::ReportLuns { .. } => (Err(Sense::invalid_opcode().into()), None),
            // Answered by the target through a port in a target port group; through any
            // other port, refused as an unknown service action, as before groups existed.
            Cdb::ReportTargetPortGroups { .. } => {
                (Err(Sense::invalid_cdb(1, Some(4)).into()), None)
            }
            Cdb::ModeSense {
                ten,
                dbd,
                llbaa,
                pc,
                page,
                subpage,
                alloc,
            } => (
                exec::mode::mode_sense(&ctx, ten, dbd, llbaa, pc, page, subpage),
                Some(alloc),
            ),
            Cdb::ModeSelect { ten, len } => (exec::mode::mode_select(&ctx, ten, len), None),
            Cdb::Read {
                lba,
                blocks,
                len_at,
            } => (exec::block::read(&ctx, lba, blocks, len_at), None),
            Cdb::Write {
                lba,
                blocks,
                fua,
                len_at,
            } => (exec::block::write(&ctx, lba, blocks, fua, len_at), None),
            Cdb::WriteAndVerify {
                lba,
                blocks,
                bytchk: _,
                len_at,
            } => (
                exec::block::write_and_verify(&ctx, lba, blocks, len_at),
                None,
            ),
            Cdb::Verify {
                lba,
                blocks,
                bytchk,
                len_at,
            } => (exec::block::verify(&ctx, lba, blocks, bytchk, len_at), None),
            Cdb::ReadCapacity10 => (exec::block::read_capacity_10(&ctx), None),
            Cdb::ReadCapacity16 { alloc } => (exec::block::read_capacity_16(&ctx), Some(alloc)),
            Cdb::SynchronizeCache { lba, blocks } => {
                (exec::block::synchronize_cache(&ctx, lba, blocks), None)
            }
            Cdb::WriteSame {
                lba,
                blocks,
                unmap,
                ndob,
                len_at,
            } => (
                exec::block::write_same(&ctx, lba, blocks, unmap, ndob, len_at),
                None,
            ),
            Cdb::Unmap { len } => (exec::block::unmap(&ctx, len), None),
            Cdb::CompareAndWrite { lba, blocks, fua } => {
                (exec::block::compare_and_write(&ctx, lba, blocks, fua), None)
            }
            Cdb::GetLbaStatus { lba, alloc } => {
                (exec::block::get_lba_status(&ctx, lba, alloc), Some(alloc))
            }
            Cdb::ReportOpcodes {
                rctd,
                options,
                opcode,
                sa,
                alloc,
            } => (
                exec::opcodes::report_opcodes(
                    exec::opcodes::Offer {
                        thin: self.thin(),
                        port_group: port_group.is_some(),
                    },
                    rctd,
                    options,
                    opcode,
                    sa,
                ),
                Some(alloc),
            ),
            Cdb::ReportTmf { repd, alloc } => (Ok(exec::opcodes::report_tmf(repd)), Some(alloc)),
            Cdb::PrIn { sa, alloc } => (exec::pr::pr_in(&ctx, sa, alloc), Some(alloc)),
            Cdb::PrOut {
                sa,
                scope,
                kind,
                len,
            } => (self.pr_out(&ctx, sa, scope, kind, len), None),
            Cdb::Reserve6 => (exec::pr::reserve6(&ctx), None),
            Cdb::Release6 => (exec::pr::release6(&ctx), None),
        };
        match res {
            Ok(mut data) => {
                if let Some(a) = alloc {
                    data.truncate(a as usize);
                }
                Outcome::good(data)
            }
            Err(f) => f.outcome(),
        }
    }
}

const _: () = assert!(FIXED_SENSE_LEN == 18);
