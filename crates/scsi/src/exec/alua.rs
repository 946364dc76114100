//! REPORT TARGET PORT GROUPS (SPC-4 6.37): the parameter data for a logical unit. The model
//! it reports (groups, states) is `alua.rs`; SET TARGET PORT GROUPS is not implemented
//! (implicit asymmetric access only), so its opcode is refused as unknown.

use crate::alua::{LuAccess, PortGroups, SUPPORTED_STATES};

/// REPORT TARGET PORT GROUPS parameter data (SPC-4 6.37) for a logical unit, untruncated:
/// the length-only header (PARAMETER DATA FORMAT 000b) or the extended header (001b, format
/// type 1, implicit transition time 0: not specified), then one descriptor per group
/// (PREF 0, the state, [`SUPPORTED_STATES`], the group id, the status code, the port
/// count) with its relative target port identifiers. RETURN DATA LENGTH counts the
/// descriptors only, not the header.
pub(crate) fn report_target_port_groups(
    groups: &PortGroups,
    access: &LuAccess,
    extended: bool,
) -> Vec<u8> {
    let header = if extended { 8 } else { 4 };
    let mut out = vec![0u8; header];
    for g in groups.groups() {
        let (state, status) = access.status(g.id);
        out.push(state.code());
        out.push(SUPPORTED_STATES);
        out.extend_from_slice(&g.id.to_be_bytes());
        out.push(0);
        out.push(status);
        out.push(0);
        out.push(g.ports.len() as u8);
        for &p in &g.ports {
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&p.to_be_bytes());
        }
    }
    let len = (out.len() - header) as u32;
    out[0..4].copy_from_slice(&len.to_be_bytes());
    if extended {
        out[4] = 0x10; // FORMAT TYPE 001b
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alua::AccessState;
    use crate::alua::tests::groups;

    #[test]
    fn report_lists_each_group_with_its_state_status_and_ports() {
        let g = groups();
        let a = LuAccess::default();
        assert!(a.set(2, AccessState::Standby));
        assert!(!a.set(2, AccessState::Standby));
        let d = report_target_port_groups(&g, &a, false);
        assert_eq!(
            d,
            vec![
                0, 0, 0, 28, // RETURN DATA LENGTH: 8 + 4 and 8 + 2 * 4
                0x00, 0x8F, 0, 1, 0, 0x00, 0, 1, // group 1: A/O, never altered, 1 port
                0, 0, 0, 1, // port 1
                0x02, 0x8F, 0, 2, 0, 0x02, 0, 2, // group 2: standby, altered implicitly
                0, 0, 0, 3, 0, 0, 0, 5,
            ]
        );
        let e = report_target_port_groups(&g, &a, true);
        assert_eq!(&e[..8], &[0, 0, 0, 28, 0x10, 0, 0, 0]);
        assert_eq!(&e[8..], &d[4..]);
    }
}
