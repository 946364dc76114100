//! MODE SENSE and MODE SELECT (6 and 10): caching (0x08), control (0x0A) and informational
//! exceptions control (0x1C) pages. Only WCE of the caching page is changeable.

use super::{Ctx, Res};
use crate::cdb::PageControl;
use crate::sense::Sense;

pub const PAGE_CACHING: u8 = 0x08;
pub const PAGE_CONTROL: u8 = 0x0A;
pub const PAGE_INFORMATIONAL_EXCEPTIONS: u8 = 0x1C;
const ALL_PAGES: u8 = 0x3F;

/// The pages in the order MODE SENSE returns them for "all pages".
const PAGES: [u8; 3] = [PAGE_CACHING, PAGE_CONTROL, PAGE_INFORMATIONAL_EXCEPTIONS];

/// One page's bytes for a page control (current values come from the logical unit).
fn page(code: u8, pc: PageControl, wce: bool) -> Vec<u8> {
    match code {
        PAGE_CACHING => {
            let mut p = vec![0u8; 20];
            p[0] = PAGE_CACHING;
            p[1] = 0x12;
            p[2] = match pc {
                PageControl::Changeable => 0x04,
                PageControl::Default => 0x04,
                PageControl::Current => {
                    if wce {
                        0x04
                    } else {
                        0
                    }
                }
            };
            p
        }
        PAGE_CONTROL => {
            let mut p = vec![0u8; 12];
            p[0] = PAGE_CONTROL;
            p[1] = 0x0A;
            if pc != PageControl::Changeable {
                p[3] = 0x10; // QUEUE ALGORITHM MODIFIER 1: unrestricted reordering.
                p[8..10].copy_from_slice(&0xFFFFu16.to_be_bytes()); // BUSY TIMEOUT: unlimited
            }
            p
        }
        _ => {
            let mut p = vec![0u8; 12];
            p[0] = PAGE_INFORMATIONAL_EXCEPTIONS;
            p[1] = 0x0A;
            p
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn mode_sense(
    ctx: &Ctx<'_>,
    ten: bool,
    dbd: bool,
    llbaa: bool,
    pc: PageControl,
    code: u8,
    subpage: u8,
) -> Res {
    let wce = ctx.lu.write_cache_enabled();
    let mut pages = Vec::new();
    if code == ALL_PAGES {
        if subpage != 0 && subpage != 0xFF {
            return Err(Sense::invalid_cdb(3, None).into());
        }
        for c in PAGES {
            pages.extend(page(c, pc, wce));
        }
    } else if PAGES.contains(&code) {
        if subpage != 0 && subpage != 0xFF {
            return Err(Sense::invalid_cdb(3, None).into());
        }
        pages.extend(page(code, pc, wce));
    } else {
        return Err(Sense::invalid_cdb(2, Some(5)).into());
    }
    let dev = ctx.lu.device();
    let mut bd = Vec::new();
    if !dbd {
        if llbaa {
            bd.extend_from_slice(&dev.num_blocks().to_be_bytes());
            bd.extend_from_slice(&[0; 4]);
            bd.extend_from_slice(&dev.block_size().to_be_bytes());
        } else {
            let n = u32::try_from(dev.num_blocks()).unwrap_or(u32::MAX);
            bd.extend_from_slice(&n.to_be_bytes());
            bd.push(0);
            bd.extend_from_slice(&dev.block_size().to_be_bytes()[1..]);
        }
    }
    // Device-specific parameter: WP and DPOFUA.
    let dsp = if ctx.lu.write_protected() { 0x80 } else { 0 } | 0x10;
    let mut out = Vec::with_capacity(8 + bd.len() + pages.len());
    if ten {
        let total = 8 + bd.len() + pages.len();
        out.extend_from_slice(&((total - 2) as u16).to_be_bytes());
        out.push(0);
        out.push(dsp);
        out.push(if llbaa && !dbd { 1 } else { 0 });
        out.push(0);
        out.extend_from_slice(&(bd.len() as u16).to_be_bytes());
    } else {
        let total = 4 + bd.len() + pages.len();
        out.push((total - 1) as u8);
        out.push(0);
        out.push(dsp);
        out.push(bd.len() as u8);
    }
    out.extend(bd);
    out.extend(pages);
    Ok(out)
}

pub(crate) fn mode_select(ctx: &Ctx<'_>, ten: bool, len: u32) -> Res {
    if len == 0 {
        return Ok(Vec::new());
    }
    let p = ctx
        .data_out
        .get(..len as usize)
        .ok_or(Sense::parameter_list_length())?;
    let hdr = if ten { 8 } else { 4 };
    if p.len() < hdr {
        return Err(Sense::parameter_list_length().into());
    }
    let (bdl, long) = if ten {
        (u16::from_be_bytes([p[6], p[7]]) as usize, p[4] & 1 != 0)
    } else {
        (p[3] as usize, false)
    };
    let bdl_at = if ten { 6 } else { 3 };
    if bdl != 0 && bdl != if long { 16 } else { 8 } {
        return Err(Sense::invalid_param(bdl_at, None).into());
    }
    if hdr + bdl > p.len() {
        return Err(Sense::parameter_list_length().into());
    }
    let bs = ctx.lu.device().block_size();
    if bdl != 0 {
        let d = &p[hdr..hdr + bdl];
        let got = if long {
            u32::from_be_bytes(d[12..16].try_into().expect("4 bytes"))
        } else {
            u32::from_be_bytes([0, d[5], d[6], d[7]])
        };
        if got != bs {
            let at = hdr + if long { 12 } else { 5 };
            return Err(Sense::invalid_param(at as u16, None).into());
        }
    }
    let mut off = hdr + bdl;
    let mut new_wce = ctx.lu.write_cache_enabled();
    while off < p.len() {
        if off + 2 > p.len() {
            return Err(Sense::parameter_list_length().into());
        }
        let code = p[off] & 0x3F;
        if p[off] & 0x40 != 0 || !PAGES.contains(&code) {
            return Err(Sense::invalid_param(off as u16, None).into());
        }
        let cur = page(code, PageControl::Current, new_wce);
        let chg = page(code, PageControl::Changeable, new_wce);
        if p[off + 1] as usize != cur.len() - 2 {
            return Err(Sense::invalid_param(off as u16 + 1, None).into());
        }
        if off + cur.len() > p.len() {
            return Err(Sense::parameter_list_length().into());
        }
        let sent = &p[off..off + cur.len()];
        for i in 2..cur.len() {
            if (sent[i] ^ cur[i]) & !chg[i] != 0 {
                return Err(Sense::invalid_param((off + i) as u16, None).into());
            }
        }
        if code == PAGE_CACHING {
            new_wce = sent[2] & 0x04 != 0;
        }
        off += cur.len();
    }
    if new_wce != ctx.lu.write_cache_enabled() {
        if !new_wce {
            // Turning the cache off makes what it holds durable first.
            ctx.lu
                .device()
                .flush()
                .map_err(|e| Sense::from_device(&e, bs))?;
        }
        ctx.lu.set_write_cache(new_wce);
        ctx.lu.mode_parameters_changed(ctx.nexus);
    }
    Ok(Vec::new())
}
