//! INQUIRY: standard data and the VPD pages 0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2.

use vss::inquiry::{
    Designator, StandardInquiry, encode_device_identification, encode_supported_pages,
    encode_unit_serial,
};

use super::{Ctx, Res, limits};

/// The designators VPD 0x83 carries after a logical unit's own (association 0): the
/// target port (its relative target port identifier, its target port group if the port is
/// in one, and its SCSI name with the iSCSI portal group tag) and the target device name.
/// Whoever predicts the page a host will read (the array's `describe`) calls this too, so
/// the two cannot drift.
pub fn target_designators(
    target_name: &str,
    relative_port: u16,
    portal_group_tag: u16,
    port_group: Option<u16>,
) -> Vec<Designator> {
    let [relative, name] =
        Designator::iscsi_target_port(target_name, relative_port, portal_group_tag);
    let mut ds = vec![relative];
    ds.extend(port_group.map(Designator::iscsi_target_port_group));
    ds.push(name);
    ds.push(Designator::iscsi_target_device(target_name));
    ds
}
use crate::sense::{Asc, Sense, key};

/// VPD pages served, ascending.
pub const SUPPORTED_VPD: [u8; 6] = [0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2];

/// Standard INQUIRY data; TPGS 01b (implicit asymmetric access only) through a port in a
/// target port group.
pub(crate) fn standard(ctx: &Ctx<'_>) -> StandardInquiry {
    let id = ctx.lu.identity();
    let mut inq = StandardInquiry::block_device(&id.vendor, &id.product, &id.revision);
    if ctx.port_group.is_some() {
        inq.tpgs = 0b01;
    }
    inq
}

/// Standard INQUIRY data for a LUN that has no logical unit: peripheral qualifier 3,
/// device type 0x1F (SPC-4 6.6.2).
pub fn unmapped_standard() -> Vec<u8> {
    let mut inq = StandardInquiry::block_device("", "", "");
    inq.peripheral_qualifier = 3;
    inq.device_type = 0x1F;
    inq.cmdque = false;
    inq.encode()
}

pub(crate) fn inquiry(ctx: &Ctx<'_>, evpd: bool, page: u8) -> Res {
    let std = standard(ctx);
    if !evpd {
        return Ok(std.encode());
    }
    let p = std.peripheral();
    let lu = ctx.lu;
    let bs = lu.device().block_size();
    Ok(match page {
        0x00 => encode_supported_pages(p, &SUPPORTED_VPD),
        0x80 => encode_unit_serial(p, &lu.identity().serial),
        0x83 => {
            let mut ds: Vec<Designator> = lu.identity().designators.clone();
            ds.extend(target_designators(
                ctx.target_name,
                ctx.nexus.target_port,
                ctx.nexus.portal_group_tag,
                ctx.port_group,
            ));
            encode_device_identification(p, &ds).map_err(|e| {
                tracing::error!(error = %e, "logical unit identity cannot be encoded");
                Sense::new(key::HARDWARE_ERROR, Asc::INTERNAL_TARGET_FAILURE)
            })?
        }
        0xB0 => {
            let mut b = vec![0u8; 64];
            b[0] = p;
            b[1] = 0xB0;
            b[3] = 0x3C;
            b[4] = 0x01; // WSNZ: WRITE SAME with zero blocks is refused.
            b[5] = limits::MAX_COMPARE_AND_WRITE as u8;
            b[8..12].copy_from_slice(&limits::max_transfer_blocks(bs).to_be_bytes());
            b[12..16].copy_from_slice(&limits::optimal_transfer_blocks(bs).to_be_bytes());
            if lu.thin() {
                b[20..24].copy_from_slice(&limits::max_unmap_blocks(bs).to_be_bytes());
                b[24..28].copy_from_slice(&limits::MAX_UNMAP_DESCRIPTORS.to_be_bytes());
                b[28..32].copy_from_slice(&(4096 / bs).max(1).to_be_bytes());
            }
            b[36..44].copy_from_slice(&limits::max_write_same_blocks(bs).to_be_bytes());
            b
        }
        0xB1 => {
            let mut b = vec![0u8; 64];
            b[0] = p;
            b[1] = 0xB1;
            b[3] = 0x3C;
            b[5] = 0x01; // MEDIUM ROTATION RATE: non-rotating medium.
            b
        }
        0xB2 => {
            let mut b = vec![0u8; 8];
            b[0] = p;
            b[1] = 0xB2;
            b[3] = 4;
            if lu.thin() {
                // LBPU, LBPWS, LBPWS10, LBPRZ; provisioning type 2 (thin).
                b[5] = 0x80 | 0x40 | 0x20 | 0x04;
                b[6] = 0x02;
            }
            b
        }
        _ => return Err(Sense::invalid_cdb(2, None).into()),
    })
}
