//! Reservations: PERSISTENT RESERVE IN/OUT (SPC-4 5.12, 6.15, 6.16) and RESERVE(6) /
//! RELEASE(6) (SPC-2), with the conflict rules of SPC-4 table 63.
//!
//! Registrations are kept per I_T nexus (initiator port, relative target port), or per
//! initiator port on every target port when registered with ALL_TG_PT. Persist Through Power
//! Loss is not offered (PTPL_C = 0): the state lives as long as the logical unit object, or,
//! where several targets serve one logical unit, as long as the state they share
//! ([`crate::PrLink`]).

use serde::{Deserialize, Serialize};

use super::{Ctx, Fail, Res};
use crate::Nexus;
use crate::cdb::Access;
use crate::sense::{Asc, Sense, key};

/// Persistent reservation types (SPC-4 table 170).
pub mod kind {
    pub const WRITE_EXCLUSIVE: u8 = 0x1;
    pub const EXCLUSIVE_ACCESS: u8 = 0x3;
    pub const WRITE_EXCLUSIVE_RO: u8 = 0x5;
    pub const EXCLUSIVE_ACCESS_RO: u8 = 0x6;
    pub const WRITE_EXCLUSIVE_AR: u8 = 0x7;
    pub const EXCLUSIVE_ACCESS_AR: u8 = 0x8;
}

/// PERSISTENT RESERVE OUT service actions.
pub mod out_sa {
    pub const REGISTER: u8 = 0;
    pub const RESERVE: u8 = 1;
    pub const RELEASE: u8 = 2;
    pub const CLEAR: u8 = 3;
    pub const PREEMPT: u8 = 4;
    pub const PREEMPT_AND_ABORT: u8 = 5;
    pub const REGISTER_AND_IGNORE: u8 = 6;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Registration {
    initiator_port: String,
    target_port: u16,
    all_tg_pt: bool,
    key: u64,
}

impl Registration {
    fn matches(&self, n: &Nexus) -> bool {
        self.initiator_port == n.initiator_port
            && (self.all_tg_pt || self.target_port == n.target_port)
    }
    fn same(&self, o: &Registration) -> bool {
        self.initiator_port == o.initiator_port && self.target_port == o.target_port
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Reservation {
    /// The registration holding it (ignored for all-registrants types).
    holder: Registration,
    kind: u8,
}

/// Persistent reservation state of a logical unit: its generation, registrations and
/// reservation. Serializable, so targets serving one logical unit through several ports on
/// several machines can keep it in shared state ([`crate::PrLink`]).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrState {
    generation: u32,
    #[serde(rename = "registrations")]
    regs: Vec<Registration>,
    #[serde(rename = "reservation")]
    res: Option<Reservation>,
}

fn all_registrants(k: u8) -> bool {
    matches!(k, kind::WRITE_EXCLUSIVE_AR | kind::EXCLUSIVE_ACCESS_AR)
}

fn registrants_only_or_all(k: u8) -> bool {
    matches!(
        k,
        kind::WRITE_EXCLUSIVE_RO
            | kind::EXCLUSIVE_ACCESS_RO
            | kind::WRITE_EXCLUSIVE_AR
            | kind::EXCLUSIVE_ACCESS_AR
    )
}

impl PrState {
    /// The registered reservation keys, in registration order.
    pub fn keys(&self) -> Vec<u64> {
        self.regs.iter().map(|r| r.key).collect()
    }

    /// The reservation's type and its holder's key (0 for the all-registrants types).
    pub fn reservation(&self) -> Option<(u8, u64)> {
        self.res.as_ref().map(|r| {
            let key = if all_registrants(r.kind) {
                0
            } else {
                r.holder.key
            };
            (r.kind, key)
        })
    }

    fn reg(&self, n: &Nexus) -> Option<&Registration> {
        self.regs.iter().find(|r| r.matches(n))
    }

    /// True if `n` holds the reservation (SPC-4 5.12.10).
    fn is_holder(&self, n: &Nexus) -> bool {
        match &self.res {
            None => false,
            Some(r) if all_registrants(r.kind) => self.reg(n).is_some(),
            Some(r) => r.holder.matches(n),
        }
    }

    /// SPC-4 table 63: whether a command of `access` from `n` conflicts.
    pub fn conflicts(&self, n: &Nexus, access: Access) -> bool {
        let Some(r) = &self.res else { return false };
        let registered = self.reg(n).is_some();
        let allowed = if registrants_only_or_all(r.kind) {
            registered
        } else {
            r.holder.matches(n)
        };
        if allowed {
            return false;
        }
        match r.kind {
            kind::WRITE_EXCLUSIVE | kind::WRITE_EXCLUSIVE_RO | kind::WRITE_EXCLUSIVE_AR => {
                access == Access::Write
            }
            _ => matches!(access, Access::Read | Access::Write),
        }
    }

    /// Whether a RESERVE(6)/RELEASE(6) from `n` is ignored (it holds the persistent
    /// reservation), refused (another does), or proceeds (no persistent reservation).
    fn spc2_allowed(&self, n: &Nexus) -> Option<bool> {
        self.res.as_ref().map(|_| self.is_holder(n))
    }
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

fn header(generation: u32, body: &[u8]) -> Vec<u8> {
    let mut out = generation.to_be_bytes().to_vec();
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// iSCSI TransportID of an initiator port (SPC-4 7.6.4.6): format 01b with the
/// `name,i,0x<isid>` string when the port name has that form, format 00b otherwise.
fn transport_id(initiator_port: &str) -> Vec<u8> {
    let format = if initiator_port.contains(",i,0x") {
        0x40
    } else {
        0
    };
    let mut name = initiator_port.as_bytes().to_vec();
    name.push(0);
    while name.len() % 4 != 0 || name.len() < 20 {
        name.push(0);
    }
    let mut t = vec![format | vss::inquiry::PROTOCOL_ISCSI, 0];
    t.extend_from_slice(&(name.len() as u16).to_be_bytes());
    t.extend(name);
    t
}

/// The most a READ KEYS / READ FULL STATUS builds: registrations are bounded by nexuses, but
/// a response never exceeds what the CDB can ask for.
const MAX_PR_IN: usize = 0xFFFF;

pub(crate) fn pr_in(ctx: &Ctx<'_>, sa: u8, _alloc: u32) -> Res {
    let st = ctx.lu.lock();
    let pr = &st.pr;
    let out = match sa {
        0 => {
            let mut body = Vec::new();
            for r in &pr.regs {
                if body.len() + 8 > MAX_PR_IN {
                    break;
                }
                body.extend_from_slice(&r.key.to_be_bytes());
            }
            header(pr.generation, &body)
        }
        1 => {
            let mut body = Vec::new();
            if let Some(r) = &pr.res {
                let key = if all_registrants(r.kind) {
                    0
                } else {
                    r.holder.key
                };
                body.extend_from_slice(&key.to_be_bytes());
                body.extend_from_slice(&[0; 4]);
                body.push(0);
                body.push(r.kind);
                body.extend_from_slice(&[0; 2]);
            }
            header(pr.generation, &body)
        }
        2 => {
            // CRH, ATP_C; TMV with the six types; ALLOW COMMANDS 0.
            let mut b = vec![0u8; 8];
            b[1] = 8;
            b[2] = 0x10 | 0x04;
            b[3] = 0x80;
            b[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02;
            b[5] = 0x01;
            b
        }
        _ => {
            let mut body = Vec::new();
            for r in &pr.regs {
                let tid = transport_id(&r.initiator_port);
                if body.len() + 24 + tid.len() > MAX_PR_IN {
                    break;
                }
                body.extend_from_slice(&r.key.to_be_bytes());
                body.extend_from_slice(&[0; 4]);
                let holder = match &pr.res {
                    Some(res) if all_registrants(res.kind) => true,
                    Some(res) => res.holder.same(r),
                    None => false,
                };
                body.push((r.all_tg_pt as u8) << 1 | holder as u8);
                body.push(if holder {
                    pr.res.as_ref().map_or(0, |x| x.kind)
                } else {
                    0
                });
                body.extend_from_slice(&[0; 4]);
                body.extend_from_slice(&if r.all_tg_pt { 0 } else { r.target_port }.to_be_bytes());
                body.extend_from_slice(&(tid.len() as u32).to_be_bytes());
                body.extend(tid);
            }
            header(pr.generation, &body)
        }
    };
    Ok(out)
}

pub(crate) fn pr_out(ctx: &Ctx<'_>, sa: u8, scope: u8, k: u8, len: u32) -> Res {
    if len != 24 {
        return Err(Sense::parameter_list_length().into());
    }
    let p = ctx
        .data_out
        .get(..24)
        .ok_or(Sense::parameter_list_length())?;
    let key = be64(&p[0..8]);
    let sa_key = be64(&p[8..16]);
    let flags = p[20];
    if flags & 0x08 != 0 {
        // SPEC_I_PT: registering other I_T nexuses is not supported.
        return Err(Sense::invalid_param(20, Some(3)).into());
    }
    if flags & 0x01 != 0 {
        // APTPL without PTPL_C.
        return Err(Sense::invalid_param(20, Some(0)).into());
    }
    let all_tg_pt = flags & 0x04 != 0;
    let needs_type = matches!(
        sa,
        out_sa::RESERVE | out_sa::RELEASE | out_sa::PREEMPT | out_sa::PREEMPT_AND_ABORT
    );
    if needs_type {
        if scope != 0 {
            return Err(Sense::invalid_cdb(2, Some(7)).into());
        }
        if !matches!(k, 1 | 3 | 5 | 6 | 7 | 8) {
            return Err(Sense::invalid_cdb(2, Some(3)).into());
        }
    }
    let n = ctx.nexus;
    let mut st = ctx.lu.lock();
    let st = &mut *st;
    let mine = st.pr.reg(n).cloned();
    match sa {
        out_sa::REGISTER | out_sa::REGISTER_AND_IGNORE => {
            let ignore = sa == out_sa::REGISTER_AND_IGNORE;
            match mine {
                None => {
                    if !ignore && key != 0 {
                        return Err(Fail::Conflict);
                    }
                    if sa_key != 0 {
                        st.pr.regs.push(Registration {
                            initiator_port: n.initiator_port.clone(),
                            target_port: n.target_port,
                            all_tg_pt,
                            key: sa_key,
                        });
                    }
                }
                Some(r) => {
                    if !ignore && key != r.key {
                        return Err(Fail::Conflict);
                    }
                    if sa_key == 0 {
                        unregister(st, &r);
                    } else if let Some(x) = st.pr.regs.iter_mut().find(|x| x.same(&r)) {
                        x.key = sa_key;
                        if let Some(res) = st.pr.res.as_mut()
                            && res.holder.same(&r)
                        {
                            res.holder.key = sa_key;
                        }
                    }
                }
            }
            st.pr.generation = st.pr.generation.wrapping_add(1);
            Ok(Vec::new())
        }
        _ => {
            let Some(me) = mine else {
                return Err(Fail::Conflict);
            };
            if key != me.key {
                return Err(Fail::Conflict);
            }
            match sa {
                out_sa::RESERVE => {
                    if st.spc2.as_ref().is_some_and(|h| h != n) {
                        return Err(Fail::Conflict);
                    }
                    match &st.pr.res {
                        None => {
                            st.pr.res = Some(Reservation {
                                holder: me,
                                kind: k,
                            });
                            Ok(Vec::new())
                        }
                        Some(r) if st.pr.is_holder(n) && r.kind == k => Ok(Vec::new()),
                        Some(_) => Err(Fail::Conflict),
                    }
                }
                out_sa::RELEASE => {
                    let Some(r) = st.pr.res.clone() else {
                        return Ok(Vec::new());
                    };
                    if !st.pr.is_holder(n) {
                        return Ok(Vec::new());
                    }
                    if r.kind != k {
                        return Err(Sense::new(
                            key::ILLEGAL_REQUEST,
                            Asc::INVALID_RELEASE_OF_PERSISTENT_RESERVATION,
                        )
                        .into());
                    }
                    st.pr.res = None;
                    if registrants_only_or_all(r.kind) {
                        released_ua(st, n);
                    }
                    Ok(Vec::new())
                }
                out_sa::CLEAR => {
                    let regs = std::mem::take(&mut st.pr.regs);
                    st.pr.res = None;
                    st.pr.generation = st.pr.generation.wrapping_add(1);
                    st.establish(Asc::RESERVATIONS_PREEMPTED, |x| {
                        x != n && regs.iter().any(|r| r.matches(x))
                    });
                    Ok(Vec::new())
                }
                _ => preempt(st, n, &me, sa_key, k),
            }
        }
    }
}

/// Removes a registration; a holder's reservation goes with it (unless other registrants
/// still hold an all-registrants reservation).
fn unregister(st: &mut crate::lu::LuState, r: &Registration) {
    st.pr.regs.retain(|x| !x.same(r));
    let Some(res) = st.pr.res.clone() else { return };
    let released = if all_registrants(res.kind) {
        st.pr.regs.is_empty()
    } else {
        res.holder.same(r)
    };
    if released {
        st.pr.res = None;
        if registrants_only_or_all(res.kind) {
            let by = r.clone();
            let regs = st.pr.regs.clone();
            st.establish(Asc::RESERVATIONS_RELEASED, |x| {
                !by.matches(x) && regs.iter().any(|g| g.matches(x))
            });
        }
    }
}

fn released_ua(st: &mut crate::lu::LuState, by: &Nexus) {
    let regs = st.pr.regs.clone();
    st.establish(Asc::RESERVATIONS_RELEASED, |x| {
        x != by && regs.iter().any(|g| g.matches(x))
    });
}

/// PREEMPT and PREEMPT AND ABORT (SPC-4 5.12.11.4). Commands run to completion in this model,
/// so there is no task set to abort beyond what PREEMPT does.
fn preempt(st: &mut crate::lu::LuState, n: &Nexus, me: &Registration, sa_key: u64, k: u8) -> Res {
    let res = st.pr.res.clone();
    let removed: Vec<Registration>;
    match &res {
        Some(r) if all_registrants(r.kind) && sa_key == 0 => {
            removed = st.pr.regs.iter().filter(|x| !x.same(me)).cloned().collect();
            st.pr.regs.retain(|x| x.same(me));
            st.pr.res = Some(Reservation {
                holder: me.clone(),
                kind: k,
            });
        }
        Some(r) if !all_registrants(r.kind) && sa_key == r.holder.key => {
            removed = st
                .pr
                .regs
                .iter()
                .filter(|x| x.key == sa_key && !x.same(me))
                .cloned()
                .collect();
            st.pr.regs.retain(|x| x.key != sa_key || x.same(me));
            st.pr.res = Some(Reservation {
                holder: me.clone(),
                kind: k,
            });
            if r.kind != k {
                let regs = st.pr.regs.clone();
                st.establish(Asc::RESERVATIONS_RELEASED, |x| {
                    x != n && regs.iter().any(|g| g.matches(x))
                });
            }
        }
        _ => {
            if sa_key == 0 {
                return Err(Sense::invalid_param(8, None).into());
            }
            removed = st
                .pr
                .regs
                .iter()
                .filter(|x| x.key == sa_key)
                .cloned()
                .collect();
            if removed.is_empty() {
                return Err(Fail::Conflict);
            }
            st.pr.regs.retain(|x| x.key != sa_key);
            // An all-registrants reservation ends with its last registrant.
            if let Some(r) = &res
                && all_registrants(r.kind)
                && st.pr.regs.is_empty()
            {
                st.pr.res = None;
            }
        }
    }
    st.pr.generation = st.pr.generation.wrapping_add(1);
    st.establish(Asc::REGISTRATIONS_PREEMPTED, |x| {
        x != n && removed.iter().any(|r| r.matches(x))
    });
    Ok(Vec::new())
}

pub(crate) fn reserve6(ctx: &Ctx<'_>) -> Res {
    let n = ctx.nexus;
    let mut st = ctx.lu.lock();
    match st.pr.spc2_allowed(n) {
        Some(true) => return Ok(Vec::new()),
        Some(false) => return Err(Fail::Conflict),
        None => {}
    }
    match &st.spc2 {
        Some(h) if h != n => Err(Fail::Conflict),
        _ => {
            st.spc2 = Some(n.clone());
            Ok(Vec::new())
        }
    }
}

pub(crate) fn release6(ctx: &Ctx<'_>) -> Res {
    let n = ctx.nexus;
    let mut st = ctx.lu.lock();
    if st.pr.spc2_allowed(n).is_some() {
        // Conflicts were decided before; a holder's RELEASE(6) does nothing.
        return Ok(Vec::new());
    }
    if st.spc2.as_ref() == Some(n) {
        st.spc2 = None;
    }
    Ok(Vec::new())
}
