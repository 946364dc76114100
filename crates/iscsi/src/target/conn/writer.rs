//! The writer task: stamps StatSN, ExpCmdSN and MaxCmdSN on every PDU at send time and
//! turns a finished command into Data-In PDUs (from memory, or from the LUN's file with
//! `sendfile`) and its SCSI Response.

use super::*;

/// How the writer treats the StatSN field of an outgoing PDU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sn {
    /// A status-bearing PDU: gets the next StatSN, which then advances.
    Advance,
    /// Carries the current StatSN without advancing it (R2T, NOP-In ping).
    Current,
}

/// A finished SCSI command, turned into Data-In / SCSI Response PDUs by the writer.
pub(super) struct ScsiDone {
    pub(super) itt: u32,
    pub(super) lun: u64,
    pub(super) edtl: u32,
    pub(super) read: bool,
    pub(super) write: bool,
    /// For data-out commands: the data length the CDB calls for, when the handler knows it.
    pub(super) cdb_length: Option<u64>,
    pub(super) outcome: Outcome,
    /// Data-in still in a file (zero-copy read); `outcome.data_in` is empty then.
    pub(super) span: Option<FileSpan>,
}

impl ScsiDone {
    pub(super) fn data_in_len(&self) -> usize {
        self.span
            .as_ref()
            .map_or(self.outcome.data_in.len(), |s| s.len)
    }
}

pub(super) enum Out {
    Pdu(Pdu, Sn),
    Scsi(Box<ScsiDone>),
    Close,
}

/// Data segments at least this long go to the socket straight from the device's buffer
/// (one vectored write after flushing what is buffered) instead of being copied into the
/// write buffer.
pub(super) const DIRECT_DATA: usize = 32 * 1024;

/// `len` bytes of `span` from `off`, read into memory.
fn span_bytes(span: &FileSpan, off: usize, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    std::os::unix::fs::FileExt::read_exact_at(&*span.file, &mut buf, span.offset + off as u64)?;
    Ok(buf)
}

/// Writes `head` (a PDU header) then `len` bytes of `span` from `off` with sendfile(2).
/// The caller has flushed its write buffer.
async fn send_span(
    w: &OwnedWriteHalf,
    head: &[u8],
    span: &FileSpan,
    off: usize,
    len: usize,
) -> std::io::Result<()> {
    use rustix::net::SendFlags;
    use tokio::io::Interest;
    let sock: &TcpStream = w.as_ref();
    // The header with MSG_MORE, so that it leaves in the same segment as the data.
    let mut h = head;
    while !h.is_empty() {
        sock.writable().await?;
        match sock.try_io(Interest::WRITABLE, || {
            rustix::net::send(sock, h, SendFlags::MORE).map_err(std::io::Error::from)
        }) {
            Ok(n) => h = &h[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    let mut pos = span.offset + off as u64;
    let end = pos + len as u64;
    while pos < end {
        sock.writable().await?;
        let want = (end - pos) as usize;
        match sock.try_io(Interest::WRITABLE, || {
            rustix::fs::sendfile(sock, &*span.file, Some(&mut pos), want)
                .map_err(std::io::Error::from)
        }) {
            // The file is shorter than when the command ran (truncated meanwhile): the
            // PDU cannot be completed, so the connection ends.
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the LUN's file ended before the data was sent",
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The header of a PDU whose data segment is `len` bytes: the BHS and its digest.
fn encode_head(bhs: &Bhs, len: usize, d: Digests, head: &mut Vec<u8>) {
    head.clear();
    let mut b = bhs.clone();
    b.set_data_len(len);
    head.extend_from_slice(&b.0);
    if d.header {
        let crc = crc32c::crc32c(&b.0);
        head.extend_from_slice(&crc.to_le_bytes());
    }
}

/// Writes one PDU whose data segment is a borrowed slice.
async fn write_parts<W: AsyncWrite + Unpin>(
    w: &mut BufWriter<W>,
    bhs: &Bhs,
    data: &[u8],
    d: Digests,
    head: &mut Vec<u8>,
) -> std::io::Result<()> {
    encode_head(bhs, data.len(), d, head);
    if data.len() >= DIRECT_DATA {
        let header_len = head.len();
        pdu::write_data_trailer(data, d, head);
        let (header, trailer) = head.split_at(header_len);
        w.flush().await?;
        return write_all_vectored(w.get_mut(), [header, data, trailer]).await;
    }
    w.write_all(head).await?;
    if !data.is_empty() {
        w.write_all(data).await?;
        head.clear();
        pdu::write_data_trailer(data, d, head);
        w.write_all(head).await?;
    }
    Ok(())
}

/// Writes every byte of `parts`, in order, with as few vectored writes as the socket allows.
async fn write_all_vectored<W: AsyncWrite + Unpin>(
    w: &mut W,
    mut parts: [&[u8]; 3],
) -> std::io::Result<()> {
    loop {
        let slices = parts.map(std::io::IoSlice::new);
        if slices.iter().all(|s| s.is_empty()) {
            return Ok(());
        }
        let mut n = w.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        for p in parts.iter_mut() {
            let k = n.min(p.len());
            *p = &p[k..];
            n -= k;
        }
    }
}

pub(super) async fn writer_task(
    mut w: BufWriter<OwnedWriteHalf>,
    mut rx: mpsc::Receiver<Out>,
    seq: Arc<Seq>,
    mut stat_sn: u32,
    d: Digests,
    max_seg: usize,
    max_burst: usize,
) -> std::io::Result<()> {
    let max_seg = max_seg.max(512);
    let max_burst = max_burst.max(max_seg);
    let mut head = Vec::with_capacity(BHS_LEN + 8);
    let stamp = |b: &mut Bhs, stat_sn: &mut u32, sn: Option<Sn>| {
        match sn {
            Some(Sn::Advance) => {
                b.set_u32(24, *stat_sn);
                *stat_sn = stat_sn.wrapping_add(1);
            }
            Some(Sn::Current) => b.set_u32(24, *stat_sn),
            None => {}
        }
        b.set_u32(28, seq.exp_cmd_sn.load(Ordering::Acquire));
        b.set_u32(32, seq.max_cmd_sn.load(Ordering::Acquire));
    };
    while let Some(mut out) = rx.recv().await {
        loop {
            match out {
                Out::Close => {
                    w.flush().await?;
                    let _ = w.shutdown().await;
                    return Ok(());
                }
                Out::Pdu(mut p, sn) => {
                    stamp(&mut p.bhs, &mut stat_sn, Some(sn));
                    write_parts(&mut w, &p.bhs, &p.data, d, &mut head).await?;
                }
                Out::Scsi(done) => {
                    let have = done.data_in_len();
                    let ScsiDone {
                        itt,
                        lun,
                        edtl,
                        read,
                        write,
                        cdb_length,
                        outcome,
                        span,
                    } = *done;
                    let edtl_us = edtl as usize;
                    let send_len = have.min(edtl_us);
                    // Data-in residuals compare what the device model produced with the
                    // EDTL; data-out residuals compare the length the CDB calls for (when
                    // the handler reports it) with the EDTL.
                    let (res_flag, residual) = if let (true, Some(tl)) = (write, cdb_length) {
                        let e = u64::from(edtl);
                        match tl.cmp(&e) {
                            std::cmp::Ordering::Greater => {
                                (0x04u8, (tl - e).min(u64::from(u32::MAX)) as u32)
                            }
                            std::cmp::Ordering::Less => (0x02u8, (e - tl) as u32),
                            std::cmp::Ordering::Equal => (0, 0),
                        }
                    } else if have > edtl_us {
                        (0x04u8, (have - edtl_us) as u32)
                    } else if have < edtl_us && (read || !write) {
                        (0x02u8, (edtl_us - have) as u32)
                    } else {
                        (0, 0)
                    };
                    let collapse = send_len > 0
                        && outcome.status == scsi::status::GOOD
                        && outcome.sense.is_none();
                    let mut data_sn = 0u32;
                    let mut off = 0usize;
                    while off < send_len {
                        let n = (send_len - off).min(max_seg);
                        let last = off + n == send_len;
                        let burst_end = (off + n) % max_burst == 0;
                        let mut b = Bhs::new(op::DATA_IN);
                        let mut flags = 0u8;
                        if last || burst_end {
                            flags |= 0x80;
                        }
                        b.set_lun(lun);
                        b.set_itt(itt);
                        b.set_u32(20, RESERVED_TAG);
                        b.set_u32(36, data_sn);
                        b.set_u32(40, off as u32);
                        let sn = if last && collapse {
                            flags |= 0x01 | res_flag;
                            b.0[3] = outcome.status;
                            b.set_u32(44, residual);
                            Some(Sn::Advance)
                        } else {
                            None
                        };
                        b.set_flags(flags);
                        stamp(&mut b, &mut stat_sn, sn);
                        match &span {
                            // Segments of whole words need no padding (an odd
                            // MaxRecvDataSegmentLength can cut others).
                            Some(span) if !d.data && n % 4 == 0 => {
                                encode_head(&b, n, d, &mut head);
                                w.flush().await?;
                                send_span(w.get_ref(), &head, span, off, n).await?;
                            }
                            Some(span) => {
                                let buf = span_bytes(span, off, n)?;
                                write_parts(&mut w, &b, &buf, d, &mut head).await?;
                            }
                            None => {
                                write_parts(
                                    &mut w,
                                    &b,
                                    &outcome.data_in[off..off + n],
                                    d,
                                    &mut head,
                                )
                                .await?
                            }
                        }
                        data_sn += 1;
                        off += n;
                    }
                    if !collapse {
                        let mut b = Bhs::new(op::SCSI_RESP);
                        b.set_flags(0x80 | res_flag);
                        b.0[2] = 0; // command completed at target
                        b.0[3] = outcome.status;
                        b.set_itt(itt);
                        b.set_u32(36, data_sn);
                        b.set_u32(44, residual);
                        stamp(&mut b, &mut stat_sn, Some(Sn::Advance));
                        let sense = outcome.sense.unwrap_or_default();
                        let mut data = Vec::with_capacity(2 + sense.len());
                        if !sense.is_empty() {
                            data.extend_from_slice(&(sense.len() as u16).to_be_bytes());
                            data.extend_from_slice(&sense);
                        }
                        write_parts(&mut w, &b, &data, d, &mut head).await?;
                    }
                }
            }
            match rx.try_recv() {
                Ok(next) => out = next,
                Err(_) => break,
            }
        }
        w.flush().await?;
    }
    w.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most 1000 bytes per call, so vectored writes come back short.
    struct Dribble(Vec<u8>);

    impl AsyncWrite for Dribble {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let n = buf.len().min(1000);
            self.0.extend_from_slice(&buf[..n]);
            std::task::Poll::Ready(Ok(n))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn pdus_written_from_the_device_buffer_are_byte_for_byte_the_encoded_pdu() {
        for len in [
            0,
            1,
            100,
            DIRECT_DATA - 1,
            DIRECT_DATA,
            40_001,
            65_536,
            262_143,
        ] {
            for (header, data) in [(false, false), (true, false), (false, true), (true, true)] {
                let d = Digests { header, data };
                let payload: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
                let mut b = Bhs::new(op::DATA_IN);
                b.set_itt(0x1234);
                b.set_u32(40, 4096);
                // Something small buffered first: it must reach the wire before the PDU.
                let mut w = BufWriter::with_capacity(256 * 1024, Dribble(Vec::new()));
                w.write_all(b"prior").await.unwrap();
                let mut head = Vec::new();
                write_parts(&mut w, &b, &payload, d, &mut head)
                    .await
                    .unwrap();
                w.flush().await.unwrap();
                let mut want = b"prior".to_vec();
                want.extend(Pdu::with_data(b.clone(), payload.clone()).encode(d));
                assert!(
                    w.get_ref().0 == want,
                    "length {len}, digests {header}/{data}"
                );
            }
        }
    }
}
