//! SBC-3 block commands: READ, WRITE, WRITE AND VERIFY, VERIFY, COMPARE AND WRITE, WRITE SAME,
//! UNMAP, SYNCHRONIZE CACHE, READ CAPACITY and GET LBA STATUS.

use super::{Ctx, Fail, Res, limits};
use crate::sense::Sense;

/// Checks the range and transfer limits; returns (byte offset, byte length).
fn range(ctx: &Ctx<'_>, lba: u64, blocks: u32, len_at: u16) -> Result<(u64, usize), Sense> {
    let dev = ctx.lu.device();
    let bs = dev.block_size();
    if blocks > limits::max_transfer_blocks(bs) {
        return Err(Sense::invalid_cdb(len_at, None));
    }
    match lba.checked_add(u64::from(blocks)) {
        Some(end) if end <= dev.num_blocks() => {}
        _ => return Err(Sense::lba_out_of_range()),
    }
    Ok((lba * u64::from(bs), blocks as usize * bs as usize))
}

fn dev_err(ctx: &Ctx<'_>, e: &crate::DeviceError) -> Fail {
    tracing::debug!(error = %e, "device error");
    Sense::from_device(e, ctx.lu.device().block_size()).into()
}

/// The data-out buffer of a command that needs at least `len` bytes of it.
fn data<'a>(ctx: &Ctx<'a>, len: usize, len_at: u16) -> Result<&'a [u8], Sense> {
    ctx.data_out
        .get(..len)
        .ok_or(Sense::invalid_cdb(len_at, None))
}

/// What a WRITE writes when the initiator sent less than the transfer length (an iSCSI
/// residual overflow): the whole blocks that arrived, and nothing past them (SAM-5 5.4.2,
/// as LIO and libiscsi's residual tests expect). Extra data beyond the transfer length is
/// ignored.
fn received<'a>(ctx: &Ctx<'a>, len: usize) -> &'a [u8] {
    let bs = ctx.lu.device().block_size() as usize;
    let n = len.min(ctx.data_out.len() / bs * bs);
    &ctx.data_out[..n]
}

/// The data-out buffer of a command whose data length is fixed by the CDB: anything else is
/// refused.
fn exact<'a>(ctx: &Ctx<'a>, len: usize, len_at: u16) -> Result<&'a [u8], Sense> {
    if ctx.data_out.len() != len {
        return Err(Sense::invalid_cdb(len_at, None));
    }
    Ok(ctx.data_out)
}

fn writable(ctx: &Ctx<'_>) -> Result<(), Sense> {
    if ctx.lu.write_protected() {
        return Err(Sense::write_protected());
    }
    Ok(())
}

pub(crate) fn read(ctx: &Ctx<'_>, lba: u64, blocks: u32, len_at: u16) -> Res {
    let (off, len) = range(ctx, lba, blocks, len_at)?;
    let mut buf = Vec::with_capacity(len);
    if len > 0 {
        let _g = ctx.lu.io_shared();
        ctx.lu
            .device()
            .read_to_vec(off, len, &mut buf)
            .map_err(|e| dev_err(ctx, &e))?;
    }
    Ok(buf)
}

/// READ on the transport's own thread ([`crate::BlockDevice::read_now`]): the checks of
/// [`read`], the range by the device; `Ok(None)` if the read would wait for storage.
pub(crate) fn read_now(
    ctx: &Ctx<'_>,
    lba: u64,
    blocks: u32,
    len_at: u16,
) -> Result<Option<Vec<u8>>, Fail> {
    let dev = ctx.lu.device();
    let bs = dev.block_size();
    if blocks > limits::max_transfer_blocks(bs) {
        return Err(Sense::invalid_cdb(len_at, None).into());
    }
    let Some(off) = lba.checked_mul(u64::from(bs)) else {
        return Err(Sense::lba_out_of_range().into());
    };
    let len = blocks as usize * bs as usize;
    let mut buf = Vec::with_capacity(len);
    if len > 0 {
        let _g = ctx.lu.io_shared();
        if !dev
            .read_now(off, len, &mut buf)
            .map_err(|e| dev_err(ctx, &e))?
        {
            return Ok(None);
        }
    }
    Ok(Some(buf))
}

/// READ by reference: the checks of [`read`], then the device's file span (`None`: no
/// span, or nothing to transfer).
pub(crate) fn read_span(
    ctx: &Ctx<'_>,
    lba: u64,
    blocks: u32,
    len_at: u16,
) -> Result<Option<crate::FileSpan>, Fail> {
    let (off, len) = range(ctx, lba, blocks, len_at)?;
    if len == 0 {
        return Ok(None);
    }
    Ok(ctx.lu.device().file_span(off, len))
}

pub(crate) fn write(ctx: &Ctx<'_>, lba: u64, blocks: u32, fua: bool, len_at: u16) -> Res {
    let (off, len) = range(ctx, lba, blocks, len_at)?;
    let d = received(ctx, len);
    writable(ctx)?;
    let _w = ctx.lu.write_gate().pass();
    if !d.is_empty() {
        let fua = fua || !ctx.lu.write_cache_enabled();
        let _g = ctx.lu.io_shared();
        ctx.lu
            .device()
            .write_at(off, d, fua)
            .map_err(|e| dev_err(ctx, &e))?;
    }
    Ok(Vec::new())
}

/// WRITE AND VERIFY: the write is made durable, then read back and compared.
pub(crate) fn write_and_verify(ctx: &Ctx<'_>, lba: u64, blocks: u32, len_at: u16) -> Res {
    let (off, len) = range(ctx, lba, blocks, len_at)?;
    let d = received(ctx, len);
    writable(ctx)?;
    let _w = ctx.lu.write_gate().pass();
    if d.is_empty() {
        return Ok(Vec::new());
    }
    let dev = ctx.lu.device();
    let _g = ctx.lu.io_shared();
    dev.write_at(off, d, true).map_err(|e| dev_err(ctx, &e))?;
    let mut back = vec![0u8; d.len()];
    dev.read_at(off, &mut back).map_err(|e| dev_err(ctx, &e))?;
    if let Some(i) = back.iter().zip(d).position(|(a, b)| a != b) {
        return Err(Sense::miscompare(i as u64).into());
    }
    Ok(Vec::new())
}

pub(crate) fn verify(ctx: &Ctx<'_>, lba: u64, blocks: u32, bytchk: u8, len_at: u16) -> Res {
    let (off, len) = range(ctx, lba, blocks, len_at)?;
    if len == 0 {
        return Ok(Vec::new());
    }
    let bs = ctx.lu.device().block_size() as usize;
    let expected: Option<&[u8]> = match bytchk {
        0 => None,
        1 => Some(data(ctx, len, len_at)?),
        _ => Some(data(ctx, bs, len_at)?),
    };
    let mut buf = vec![0u8; len];
    {
        let _g = ctx.lu.io_shared();
        ctx.lu
            .device()
            .read_at(off, &mut buf)
            .map_err(|e| dev_err(ctx, &e))?;
    }
    if let Some(exp) = expected {
        let diff = if bytchk == 1 {
            buf.iter().zip(exp).position(|(a, b)| a != b)
        } else {
            buf.iter().enumerate().position(|(i, a)| *a != exp[i % bs])
        };
        if let Some(i) = diff {
            return Err(Sense::miscompare(i as u64).into());
        }
    }
    Ok(Vec::new())
}

/// COMPARE AND WRITE: atomic against every other I/O of the logical unit.
pub(crate) fn compare_and_write(ctx: &Ctx<'_>, lba: u64, blocks: u32, fua: bool) -> Res {
    if blocks > limits::MAX_COMPARE_AND_WRITE {
        return Err(Sense::invalid_cdb(13, None).into());
    }
    let (off, len) = range(ctx, lba, blocks, 13)?;
    // Verify and write data, exactly: a mismatch means the CDB and the transfer disagree.
    let d = exact(ctx, 2 * len, 13)?;
    if len == 0 {
        return Ok(Vec::new());
    }
    writable(ctx)?;
    let _w = ctx.lu.write_gate().pass();
    let (verify, new) = d.split_at(len);
    let dev = ctx.lu.device();
    let _g = ctx.lu.io_exclusive();
    let mut cur = vec![0u8; len];
    dev.read_at(off, &mut cur).map_err(|e| dev_err(ctx, &e))?;
    if let Some(i) = cur.iter().zip(verify).position(|(a, b)| a != b) {
        return Err(Sense::miscompare(i as u64).into());
    }
    let fua = fua || !ctx.lu.write_cache_enabled();
    dev.write_at(off, new, fua).map_err(|e| dev_err(ctx, &e))?;
    Ok(Vec::new())
}

pub(crate) fn write_same(
    ctx: &Ctx<'_>,
    lba: u64,
    blocks: u32,
    unmap: bool,
    ndob: bool,
    len_at: u16,
) -> Res {
    let dev = ctx.lu.device();
    let bs = dev.block_size();
    if blocks == 0 {
        // WSNZ is set in the block limits page.
        return Err(Sense::invalid_cdb(len_at, None).into());
    }
    if u64::from(blocks) > limits::max_write_same_blocks(bs) {
        return Err(Sense::invalid_cdb(len_at, None).into());
    }
    if unmap && !ctx.lu.thin() {
        return Err(Sense::invalid_cdb(1, Some(3)).into());
    }
    match lba.checked_add(u64::from(blocks)) {
        Some(end) if end <= dev.num_blocks() => {}
        _ => return Err(Sense::lba_out_of_range().into()),
    }
    let zero_block = vec![0u8; bs as usize];
    let pattern: &[u8] = if ndob {
        exact(ctx, 0, 1)?;
        &zero_block
    } else {
        exact(ctx, bs as usize, len_at)?
    };
    writable(ctx)?;
    let _w = ctx.lu.write_gate().pass();
    let off = lba * u64::from(bs);
    let total = u64::from(blocks) * u64::from(bs);
    let _g = ctx.lu.io_shared();
    if unmap && pattern.iter().all(|&b| b == 0) {
        // LBPRZ: deallocated blocks read as zeros, so deallocating writes the pattern.
        return dev
            .discard(off, total)
            .map(|()| Vec::new())
            .map_err(|e| dev_err(ctx, &e));
    }
    let per_chunk = (limits::optimal_transfer_blocks(bs).max(1) as usize).min(blocks as usize);
    let chunk: Vec<u8> = pattern
        .iter()
        .copied()
        .cycle()
        .take(per_chunk * bs as usize)
        .collect();
    let fua = !ctx.lu.write_cache_enabled();
    let mut pos = off;
    while pos < off + total {
        let n = (off + total - pos).min(chunk.len() as u64) as usize;
        dev.write_at(pos, &chunk[..n], fua)
            .map_err(|e| dev_err(ctx, &e))?;
        pos += n as u64;
    }
    Ok(Vec::new())
}

pub(crate) fn unmap(ctx: &Ctx<'_>, len: u32) -> Res {
    if !ctx.lu.thin() {
        return Err(Sense::invalid_opcode().into());
    }
    if len == 0 {
        return Ok(Vec::new());
    }
    let p = ctx
        .data_out
        .get(..len as usize)
        .ok_or(Sense::parameter_list_length())?;
    if p.len() < 8 {
        return Err(Sense::parameter_list_length().into());
    }
    let bd_len = u16::from_be_bytes([p[2], p[3]]) as usize;
    if bd_len % 16 != 0 || 8 + bd_len > p.len() {
        return Err(Sense::parameter_list_length().into());
    }
    let count = bd_len / 16;
    if count as u32 > limits::MAX_UNMAP_DESCRIPTORS {
        return Err(Sense::invalid_param(2, None).into());
    }
    let dev = ctx.lu.device();
    let bs = dev.block_size();
    let mut ranges = Vec::with_capacity(count);
    let mut total = 0u64;
    for i in 0..count {
        let d = &p[8 + 16 * i..24 + 16 * i];
        let lba = u64::from_be_bytes(d[0..8].try_into().expect("8 bytes"));
        let n = u32::from_be_bytes(d[8..12].try_into().expect("4 bytes"));
        match lba.checked_add(u64::from(n)) {
            Some(end) if end <= dev.num_blocks() => {}
            _ => return Err(Sense::lba_out_of_range().into()),
        }
        total += u64::from(n);
        if n > limits::max_unmap_blocks(bs) || total > u64::from(limits::max_unmap_blocks(bs)) {
            return Err(Sense::invalid_param((8 + 16 * i + 8) as u16, None).into());
        }
        ranges.push((lba, n));
    }
    writable(ctx)?;
    let _w = ctx.lu.write_gate().pass();
    let _g = ctx.lu.io_shared();
    for (lba, n) in ranges {
        if n > 0 {
            dev.discard(lba * u64::from(bs), u64::from(n) * u64::from(bs))
                .map_err(|e| dev_err(ctx, &e))?;
        }
    }
    Ok(Vec::new())
}

pub(crate) fn synchronize_cache(ctx: &Ctx<'_>, lba: u64, blocks: u32) -> Res {
    let dev = ctx.lu.device();
    match lba.checked_add(u64::from(blocks)) {
        Some(end) if end <= dev.num_blocks() => {}
        _ => return Err(Sense::lba_out_of_range().into()),
    }
    dev.flush().map_err(|e| dev_err(ctx, &e))?;
    Ok(Vec::new())
}

pub(crate) fn read_capacity_10(ctx: &Ctx<'_>) -> Res {
    let dev = ctx.lu.device();
    let last = dev.num_blocks().saturating_sub(1).min(0xFFFF_FFFF) as u32;
    let mut b = last.to_be_bytes().to_vec();
    b.extend_from_slice(&dev.block_size().to_be_bytes());
    Ok(b)
}

pub(crate) fn read_capacity_16(ctx: &Ctx<'_>) -> Res {
    let dev = ctx.lu.device();
    let mut b = vec![0u8; 32];
    b[0..8].copy_from_slice(&dev.num_blocks().saturating_sub(1).to_be_bytes());
    b[8..12].copy_from_slice(&dev.block_size().to_be_bytes());
    // LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT stays 0: every logical block can be
    // deallocated and reported on its own (the unmap granularity in VPD 0xB0 says what is
    // efficient).
    if ctx.lu.thin() {
        b[14] = 0x80 | 0x40; // LBPME, LBPRZ
    }
    Ok(b)
}

/// Most descriptors one GET LBA STATUS returns.
const MAX_LBA_STATUS_DESCRIPTORS: usize = 64;

pub(crate) fn get_lba_status(ctx: &Ctx<'_>, lba: u64, alloc: u32) -> Res {
    let dev = ctx.lu.device();
    let n = dev.num_blocks();
    if lba >= n {
        return Err(Sense::lba_out_of_range().into());
    }
    let bs = u64::from(dev.block_size());
    let want = ((alloc as usize).saturating_sub(8) / 16).clamp(1, MAX_LBA_STATUS_DESCRIPTORS);
    let mut out = vec![0u8; 8];
    let mut cur = lba;
    let _g = ctx.lu.io_shared();
    while cur < n && (out.len() - 8) / 16 < want {
        let (mapped, bytes) = dev.mapping_status(cur * bs).map_err(|e| dev_err(ctx, &e))?;
        let blocks = bytes
            .div_ceil(bs)
            .clamp(1, n - cur)
            .min(u64::from(u32::MAX));
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&cur.to_be_bytes());
        d[8..12].copy_from_slice(&(blocks as u32).to_be_bytes());
        d[12] = if mapped { 0 } else { 1 };
        out.extend_from_slice(&d);
        cur += blocks;
    }
    let plen = (out.len() - 4) as u32;
    out[0..4].copy_from_slice(&plen.to_be_bytes());
    Ok(out)
}
