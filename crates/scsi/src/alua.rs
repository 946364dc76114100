//! Asymmetric logical unit access (SPC-4 5.16): target port groups, each logical unit's
//! access state in each group, which commands each state lets through, and the REPORT
//! TARGET PORT GROUPS parameter data.
//!
//! The target holds the groups ([`PortGroup`]: a group id and the relative target port
//! identifiers in it); a command's I_T nexus names the port it came through
//! ([`crate::Nexus::target_port`]), hence its group. Each [`crate::LogicalUnit`] holds its
//! [`AccessState`] per group (Active/Optimized where none was set). Transitions are implicit
//! only: the array sets states, SET TARGET PORT GROUPS is not supported (standard INQUIRY
//! TPGS = 01b). A port in no group sees the device as before groups existed: TPGS 00b, no
//! target port group designator, no REPORT TARGET PORT GROUPS, no access checks.

use std::collections::BTreeMap;
use std::sync::RwLock;

use crate::cdb::Cdb;
use crate::sense::{Asc, Sense, key};

/// A primary target port asymmetric access state (SPC-4 5.16.2.4), with its code in the
/// ASYMMETRIC ACCESS STATE field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AccessState {
    /// Every command, at full speed.
    #[default]
    ActiveOptimized,
    /// Every command; the path is usable but not the preferred one.
    ActiveNonOptimized,
    /// Only commands that do not reach the medium (see [`AccessState::allows`]).
    Standby,
    /// Only commands that report on the device.
    Unavailable,
    /// Between two states: only commands that report on the device.
    Transitioning,
}

impl AccessState {
    /// Every state implemented, in the order of their codes.
    pub const ALL: [AccessState; 5] = [
        AccessState::ActiveOptimized,
        AccessState::ActiveNonOptimized,
        AccessState::Standby,
        AccessState::Unavailable,
        AccessState::Transitioning,
    ];

    /// The ASYMMETRIC ACCESS STATE code (SPC-4 table "Asymmetric access state").
    pub const fn code(self) -> u8 {
        match self {
            AccessState::ActiveOptimized => 0x0,
            AccessState::ActiveNonOptimized => 0x1,
            AccessState::Standby => 0x2,
            AccessState::Unavailable => 0x3,
            AccessState::Transitioning => 0xF,
        }
    }

    /// The state with ASYMMETRIC ACCESS STATE code `code`, if it is one implemented here.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.code() == code)
    }

    /// Whether a command may run through a port in this state; a command that may not ends
    /// with [`AccessState::refusal`].
    ///
    /// - Active/Optimized, Active/Non-optimized: everything.
    /// - Standby (SPC-4 5.16.2.4.4): INQUIRY, MODE SENSE, MODE SELECT, REPORT LUNS, REPORT
    ///   TARGET PORT GROUPS, REQUEST SENSE, PERSISTENT RESERVE IN and OUT; and READ CAPACITY
    ///   (10 and 16), which SPC-4 leaves out but hosts send when they probe a path (Linux's
    ///   LIO lets it through for that reason). TEST UNIT READY is not among them: it answers
    ///   the standby sense, which is how a host learns the path's state.
    /// - Unavailable (5.16.2.4.5) and Transitioning (5.16.2.5): INQUIRY, REPORT LUNS,
    ///   REPORT TARGET PORT GROUPS, REQUEST SENSE.
    pub fn allows(self, cdb: &Cdb) -> bool {
        let reports = matches!(
            cdb,
            Cdb::Inquiry { .. }
                | Cdb::ReportLuns { .. }
                | Cdb::ReportTargetPortGroups { .. }
                | Cdb::RequestSense { .. }
        );
        match self {
            AccessState::ActiveOptimized | AccessState::ActiveNonOptimized => true,
            AccessState::Standby => {
                reports
                    || matches!(
                        cdb,
                        Cdb::ModeSense { .. }
                            | Cdb::ModeSelect { .. }
                            | Cdb::PrIn { .. }
                            | Cdb::PrOut { .. }
                            | Cdb::ReadCapacity10
                            | Cdb::ReadCapacity16 { .. }
                    )
            }
            AccessState::Unavailable | AccessState::Transitioning => reports,
        }
    }

    /// The sense a command this state does not allow ends with: NOT READY / LOGICAL UNIT
    /// NOT ACCESSIBLE with the state's qualifier (04/0B standby, 04/0C unavailable, 04/0A
    /// asymmetric access state transition). `None` for the active states.
    pub const fn refusal(self) -> Option<Sense> {
        let asc = match self {
            AccessState::ActiveOptimized | AccessState::ActiveNonOptimized => return None,
            AccessState::Standby => Asc::LUN_NOT_ACCESSIBLE_TARGET_PORT_IN_STANDBY,
            AccessState::Unavailable => Asc::LUN_NOT_ACCESSIBLE_TARGET_PORT_UNAVAILABLE,
            AccessState::Transitioning => Asc::LUN_NOT_ACCESSIBLE_ASYMMETRIC_ACCESS_TRANSITION,
        };
        Some(Sense::new(key::NOT_READY, asc))
    }
}

/// The supported-states byte of every target port group descriptor: T_SUP, U_SUP, S_SUP,
/// AN_SUP, AO_SUP (the states of [`AccessState::ALL`]); not O_SUP (offline) nor LBD_SUP
/// (logical block dependent).
pub const SUPPORTED_STATES: u8 = 0x80 | 0x08 | 0x04 | 0x02 | 0x01;

/// STATUS CODE of a target port group descriptor: no status available.
const STATUS_NONE: u8 = 0x00;
/// STATUS CODE: the state was altered by implicit asymmetric logical unit access behaviour.
const STATUS_ALTERED_IMPLICITLY: u8 = 0x02;

/// One target port group: its id and the relative target port identifiers in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortGroup {
    pub id: u16,
    pub ports: Vec<u16>,
}

/// Why a set of target port groups cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortGroupError {
    #[error("target port group {0} appears twice")]
    DuplicateGroup(u16),
    #[error("target port group {0} has no port")]
    EmptyGroup(u16),
    #[error("relative target port 0 is reserved")]
    ReservedPort,
    #[error("relative target port {port} is in groups {first} and {second}")]
    PortInTwoGroups { port: u16, first: u16, second: u16 },
    #[error("{0} ports do not fit one target port group descriptor (at most 255)")]
    TooManyPorts(usize),
}

/// The target's port groups, validated: ascending by group id, each port in one group.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct PortGroups {
    groups: Vec<PortGroup>,
}

impl PortGroups {
    pub fn new(mut groups: Vec<PortGroup>) -> Result<Self, PortGroupError> {
        groups.sort_by_key(|g| g.id);
        if let Some(w) = groups.windows(2).find(|w| w[0].id == w[1].id) {
            return Err(PortGroupError::DuplicateGroup(w[0].id));
        }
        let mut owner: BTreeMap<u16, u16> = BTreeMap::new();
        for g in groups.iter_mut() {
            g.ports.sort_unstable();
            g.ports.dedup();
            if g.ports.is_empty() {
                return Err(PortGroupError::EmptyGroup(g.id));
            }
            if g.ports.len() > 255 {
                return Err(PortGroupError::TooManyPorts(g.ports.len()));
            }
            for &p in &g.ports {
                if p == 0 {
                    return Err(PortGroupError::ReservedPort);
                }
                if let Some(first) = owner.insert(p, g.id) {
                    return Err(PortGroupError::PortInTwoGroups {
                        port: p,
                        first,
                        second: g.id,
                    });
                }
            }
        }
        Ok(Self { groups })
    }

    /// The group of relative target port `port`, if it is in one.
    pub fn group_of(&self, port: u16) -> Option<u16> {
        self.groups
            .iter()
            .find(|g| g.ports.contains(&port))
            .map(|g| g.id)
    }

    pub fn groups(&self) -> &[PortGroup] {
        &self.groups
    }
}

/// One logical unit's access state per target port group: read on every command through a
/// port in a group, written only when the array changes a state.
#[derive(Debug, Default)]
pub(crate) struct LuAccess {
    /// group id -> (state, whether it was altered implicitly). A group missing here is
    /// Active/Optimized and never altered.
    states: RwLock<BTreeMap<u16, (AccessState, bool)>>,
}

impl LuAccess {
    pub fn state(&self, group: u16) -> AccessState {
        self.states
            .read()
            .expect("access states lock")
            .get(&group)
            .map_or(AccessState::ActiveOptimized, |s| s.0)
    }

    /// Sets the state in `group`; true if it changed.
    pub fn set(&self, group: u16, state: AccessState) -> bool {
        let mut m = self.states.write().expect("access states lock");
        let old = m.get(&group).map_or(AccessState::ActiveOptimized, |s| s.0);
        if old == state {
            return false;
        }
        m.insert(group, (state, true));
        true
    }

    /// The state in `group` and the STATUS CODE that goes with it.
    pub fn status(&self, group: u16) -> (AccessState, u8) {
        match self.states.read().expect("access states lock").get(&group) {
            Some(&(s, true)) => (s, STATUS_ALTERED_IMPLICITLY),
            Some(&(s, false)) => (s, STATUS_NONE),
            None => (AccessState::ActiveOptimized, STATUS_NONE),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn groups() -> PortGroups {
        PortGroups::new(vec![
            PortGroup {
                id: 2,
                ports: vec![5, 3],
            },
            PortGroup {
                id: 1,
                ports: vec![1],
            },
        ])
        .unwrap()
    }

    #[test]
    fn groups_are_sorted_and_a_port_belongs_to_one() {
        let g = groups();
        assert_eq!(g.groups()[0].id, 1);
        assert_eq!(g.groups()[1].ports, vec![3, 5]);
        assert_eq!(
            (g.group_of(1), g.group_of(5), g.group_of(4)),
            (Some(1), Some(2), None)
        );
        let two = |a: u16, b: u16| {
            PortGroups::new(vec![
                PortGroup {
                    id: a,
                    ports: vec![1],
                },
                PortGroup {
                    id: b,
                    ports: vec![2],
                },
            ])
        };
        assert_eq!(two(7, 7), Err(PortGroupError::DuplicateGroup(7)));
        assert_eq!(
            PortGroups::new(vec![
                PortGroup {
                    id: 1,
                    ports: vec![4]
                },
                PortGroup {
                    id: 2,
                    ports: vec![4]
                },
            ]),
            Err(PortGroupError::PortInTwoGroups {
                port: 4,
                first: 1,
                second: 2
            })
        );
        assert_eq!(
            PortGroups::new(vec![PortGroup {
                id: 1,
                ports: vec![]
            }]),
            Err(PortGroupError::EmptyGroup(1))
        );
        assert_eq!(
            PortGroups::new(vec![PortGroup {
                id: 1,
                ports: vec![0]
            }]),
            Err(PortGroupError::ReservedPort)
        );
    }

    #[test]
    fn state_codes_and_refusals_follow_spc4() {
        use AccessState::*;
        let codes: Vec<u8> = AccessState::ALL.iter().map(|s| s.code()).collect();
        assert_eq!(codes, vec![0, 1, 2, 3, 0xF]);
        assert_eq!(AccessState::from_code(0xF), Some(Transitioning));
        assert_eq!(AccessState::from_code(0xE), None);
        let asc = |s: AccessState| s.refusal().map(|r| (r.key, r.asc.0, r.asc.1));
        assert_eq!(asc(ActiveOptimized), None);
        assert_eq!(asc(ActiveNonOptimized), None);
        assert_eq!(asc(Standby), Some((2, 0x04, 0x0B)));
        assert_eq!(asc(Unavailable), Some((2, 0x04, 0x0C)));
        assert_eq!(asc(Transitioning), Some((2, 0x04, 0x0A)));
    }

    #[test]
    fn standby_lets_through_what_does_not_reach_the_medium() {
        use AccessState::*;
        let read = Cdb::Read {
            lba: 0,
            blocks: 1,
            len_at: 7,
        };
        let cap = Cdb::ReadCapacity16 { alloc: 32 };
        let pr = Cdb::PrIn { sa: 0, alloc: 8 };
        let inq = Cdb::Inquiry {
            evpd: false,
            page: 0,
            alloc: 36,
        };
        let rtpg = Cdb::ReportTargetPortGroups {
            extended: false,
            alloc: 64,
        };
        for (cdb, standby, unavailable) in [
            (&read, false, false),
            (&Cdb::TestUnitReady, false, false),
            (&Cdb::SynchronizeCache { lba: 0, blocks: 0 }, false, false),
            (&Cdb::Unmap { len: 24 }, false, false),
            (&cap, true, false),
            (&pr, true, false),
            (&inq, true, true),
            (&rtpg, true, true),
            (&Cdb::RequestSense { alloc: 18 }, true, true),
        ] {
            assert!(ActiveOptimized.allows(cdb) && ActiveNonOptimized.allows(cdb));
            assert_eq!(Standby.allows(cdb), standby, "{cdb:?}");
            assert_eq!(Unavailable.allows(cdb), unavailable, "{cdb:?}");
            assert_eq!(Transitioning.allows(cdb), unavailable, "{cdb:?}");
        }
    }
}
