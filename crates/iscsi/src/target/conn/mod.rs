//! One connection after login: the full feature phase.
//!
//! Laid out by job: this file holds the session loop, which owns all protocol state and
//! reads PDUs in order (CmdSN window, dispatch by opcode, NOP-Out, logout, and the end of
//! the connection); `command.rs` runs SCSI commands and tracks them until they are done;
//! `write.rs` gathers write data (immediate, unsolicited, R2T and Data-Out); `tmf.rs` is
//! task management; `text_request.rs` answers Text requests; `keepalive.rs` pings an idle
//! initiator and asks it to log out on shutdown; `writer.rs` is the task that stamps
//! sequence numbers and sends every PDU, Data-In included.

mod command;
mod keepalive;
mod text_request;
mod tmf;
mod write;
mod writer;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use scsi::{
    Command, FileSpan, Nexus, Outcome, Sense, TaskAttribute, TaskManagement, TaskManagementResponse,
};
use tokio::io::{AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, mpsc, watch};

use self::command::{Request, Running, SessionEnd};
use self::keepalive::{Keep, keeper_task};
use self::text_request::TextRemainder;
use self::write::WriteTask;
use self::writer::{DIRECT_DATA, Out, ScsiDone, Sn, writer_task};
use super::login::{self, LoginResult};
use super::{ServedPort, SessionKey, SessionSlot, Shared, TargetEntry};
use crate::handler::ScsiHandler;
use crate::params::{SessionParams, negotiate};
use crate::pdu::{self, BHS_LEN, Bhs, Digests, Pdu, PduError, RESERVED_TAG, op, reject, sn_lt};
use crate::text::{self, TextPairs};

const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a logout or a server shutdown waits for executing commands.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the answers already queued get to reach a peer that closed, broke the
/// protocol or stopped answering, before the connection is cut.
const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// How long a logout response (and what is queued before it) gets to reach the peer.
const LOGOUT_FLUSH: Duration = Duration::from_secs(5);

/// How often a PDU's handling that waits (task management, logout, a full send queue)
/// looks whether the peer has closed while there is unread input.
const PEER_CHECK: Duration = Duration::from_millis(50);

/// Command sequence numbers shared by the session loop, the command tasks and the writer.
struct Seq {
    exp_cmd_sn: AtomicU32,
    max_cmd_sn: AtomicU32,
}

/// Why a connection ends.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error(transparent)]
    Pdu(#[from] PduError),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("writer gone")]
    WriterGone,
}

struct Session {
    shared: Arc<Shared>,
    target: Option<Arc<TargetEntry>>,
    handler: Option<Arc<dyn ScsiHandler>>,
    nexus: Arc<Nexus>,
    params: SessionParams,
    seq: Arc<Seq>,
    ahead: BTreeSet<u32>,
    tx: mpsc::Sender<Out>,
    writes: HashMap<u32, WriteTask>,
    running: Arc<Running>,
    next_ttt: u32,
    text_in: Vec<u8>,
    text_out: Option<TextRemainder>,
    local: Option<SocketAddr>,
    /// READ data may be sent straight from the device's file (no data digest to compute).
    zero_copy: bool,
    /// A large answer was just queued: the session loop lets the writer run before it reads
    /// the next PDU.
    yield_to_writer: bool,
}

/// Entry point for an accepted TCP connection.
pub(crate) async fn run(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    port: ServedPort,
) {
    let local = stream.local_addr().ok();
    let (rd, wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(pdu::READ_BUFFER, rd);
    let mut wr = BufWriter::with_capacity(256 * 1024, wr);
    let login = match tokio::time::timeout(
        LOGIN_TIMEOUT,
        login::run(&shared, port, &mut rd, &mut wr),
    )
    .await
    {
        Ok(Ok(l)) => l,
        Ok(Err(login::LoginError::Refused {
            class,
            detail,
            initiator,
        })) => {
            shared.refused.count(class, detail);
            tracing::warn!(
                %peer,
                initiator = initiator.as_deref().unwrap_or("(not given)"),
                reason = login::status::describe((class, detail)),
                "iSCSI login refused"
            );
            let _ = wr.shutdown().await;
            return;
        }
        Ok(Err(e)) => {
            tracing::info!(%peer, error = %e, "login failed");
            let _ = wr.shutdown().await;
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "login timed out");
            return;
        }
    };
    tracing::info!(
        %peer,
        initiator = %login.initiator,
        target = login.target.as_ref().map(|t| t.name.as_str()).unwrap_or("(discovery)"),
        tsih = login.tsih,
        relative_port = port.relative_port,
        portal_group_tag = port.portal_group_tag,
        discovery = login.discovery,
        chap = login.chap,
        "iSCSI login"
    );
    full_feature(shared, login, rd, wr, local, peer, port).await;
}

async fn full_feature(
    shared: Arc<Shared>,
    login: LoginResult,
    rd: BufReader<OwnedReadHalf>,
    wr: BufWriter<OwnedWriteHalf>,
    local: Option<SocketAddr>,
    peer: SocketAddr,
    port: ServedPort,
) {
    let cfg = &shared.config;
    let depth = cfg.queue_depth.max(1);
    let seq = Arc::new(Seq {
        exp_cmd_sn: AtomicU32::new(login.exp_cmd_sn),
        max_cmd_sn: AtomicU32::new(login.exp_cmd_sn.wrapping_add(depth - 1)),
    });
    let digests = Digests {
        header: login.params.header_digest,
        data: login.params.data_digest,
    };
    let (tx, rx) = mpsc::channel::<Out>(4096);
    let writer = tokio::spawn(writer_task(
        wr,
        rx,
        seq.clone(),
        login.stat_sn,
        digests,
        login.params.max_send_data_segment as usize,
        login.params.max_burst as usize,
    ));
    let max_recv = login.params.max_recv_data_segment as usize;
    let mut rd = rd;

    let nexus = Arc::new(Nexus {
        initiator_port: format!("{},i,0x{:012x}", login.initiator, login.isid),
        initiator: login.initiator.clone(),
        target_port: port.relative_port,
        portal_group_tag: port.portal_group_tag,
    });
    let kill = Arc::new(Notify::new());
    let (ended_tx, ended_rx) = watch::channel(false);
    let key = login.target.as_ref().map(|t| SessionKey {
        initiator: login.initiator.clone(),
        isid: login.isid,
        target: t.name.clone(),
        portal_group_tag: port.portal_group_tag,
    });
    if let Some(k) = &key {
        shared.sessions.lock().expect("sessions lock").insert(
            k.clone(),
            SessionSlot {
                tsih: login.tsih,
                kill: kill.clone(),
                ended: ended_rx,
                peer,
                portal: local,
                port,
                since: std::time::SystemTime::now(),
                chap: login.chap,
            },
        );
    }
    let handler = login.target.as_ref().map(|t| t.handler.clone());
    let running = Arc::new(Running {
        tasks: Mutex::new(HashMap::new()),
        done: Notify::new(),
        end: Some(SessionEnd {
            shared: shared.clone(),
            handler: handler.clone(),
            nexus: nexus.clone(),
            key,
            tsih: login.tsih,
            ended: ended_tx,
        }),
    });
    let mut s = Session {
        shared: shared.clone(),
        handler,
        target: login.target.clone(),
        nexus,
        params: login.params.clone(),
        seq,
        ahead: BTreeSet::new(),
        tx,
        writes: HashMap::new(),
        running,
        next_ttt: 1,
        text_in: Vec::new(),
        text_out: None,
        local,
        zero_copy: !digests.data,
        yield_to_writer: false,
    };

    // Keep-alive pings and the shutdown logout request run beside the session loop, so
    // that the loop itself only waits on the socket (a half-read PDU is never abandoned
    // except when the connection ends).
    let keep = Arc::new(Keep {
        epoch: Instant::now(),
        last_rx_ms: AtomicU64::new(0),
        ping_ttt: AtomicU32::new(0),
        reason: Mutex::new(None),
    });
    let keeper = tokio::spawn(keeper_task(
        shared.clone(),
        keep.clone(),
        kill.clone(),
        s.tx.clone(),
        s.target.is_some(),
    ));
    // Whatever a PDU's handling waits for (executing commands, room in the send queue),
    // the connection ends as soon as the server ends it or the peer closes.
    let killed = || {
        keep.reason
            .lock()
            .expect("reason lock")
            .take()
            .unwrap_or_else(|| "ended by the server (reinstatement or target removal)".into())
    };
    let (reason, logout): (String, bool) = loop {
        let r = tokio::select! {
            biased;
            _ = kill.notified() => break (killed(), false),
            r = pdu::read_async(&mut rd, digests, max_recv) => r,
        };
        keep.last_rx_ms
            .store(keep.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        match r {
            Ok(p) => {
                if p.bhs.opcode() == op::NOP_OUT && p.bhs.itt() == RESERVED_TAG {
                    let t = p.bhs.u32_at(20);
                    let _ =
                        keep.ping_ttt
                            .compare_exchange(t, 0, Ordering::AcqRel, Ordering::Relaxed);
                }
                let step = tokio::select! {
                    biased;
                    r = s.on_pdu(p) => r,
                    _ = kill.notified() => break (killed(), false),
                    _ = peer_closed(rd.get_ref()) => {
                        break ("the initiator closed the connection while a request waited".into(), false)
                    }
                };
                match step {
                    Ok(true) => {}
                    Ok(false) => break ("logout".into(), true),
                    Err(e) => break (e.to_string(), false),
                }
                if std::mem::take(&mut s.yield_to_writer) {
                    // Outside the race above, so that the common case, a PDU handled without
                    // waiting, never starts watching the socket for the peer's close.
                    tokio::task::yield_now().await;
                }
            }
            Err(PduError::DataDigest { bhs }) => {
                s.send_reject(&bhs, reject::DATA_DIGEST).await;
                break ("data digest error (ERL 0)".into(), false);
            }
            Err(e @ (PduError::DataTooLong { .. } | PduError::AhsTooLong { .. })) => {
                let b = Bhs::default();
                s.send_reject(&b, reject::PROTOCOL_ERROR).await;
                break (e.to_string(), false);
            }
            Err(e) => break (e.to_string(), false),
        }
    };
    keeper.abort();
    let _ = keeper.await;
    tracing::info!(
        %peer,
        initiator = %login.initiator,
        tsih = login.tsih,
        %reason,
        "iSCSI logout or connection closed"
    );
    // A logout has drained its commands already. On server shutdown, commands that are
    // executing finish and are answered before the connection closes (device I/O cannot be
    // interrupted). Otherwise (the peer closed, broke the protocol or stopped answering, or
    // the session was reinstated) nobody waits for their answers: they finish on the
    // blocking pool, and the nexus is released after the last of them (`SessionEnd`).
    let shutdown = *shared.shutdown.borrow();
    if shutdown && !logout {
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, s.running.wait_empty()).await;
    }
    let grace = if logout || shutdown {
        LOGOUT_FLUSH
    } else {
        CLOSE_GRACE
    };
    let mut writer = writer;
    let tx = s.tx.clone();
    drop(s);
    let flushed = tokio::time::timeout(grace, async {
        let _ = tx.send(Out::Close).await;
        drop(tx);
        let _ = (&mut writer).await;
    })
    .await;
    if flushed.is_err() {
        // The peer does not take what is queued: cut the connection.
        writer.abort();
        let _ = writer.await;
    }
}

/// Resolves once the peer has closed its side of the connection (or the socket failed),
/// even with input still unread. Only polled while the handling of a PDU waits.
async fn peer_closed(r: &OwnedReadHalf) {
    loop {
        match r.ready(tokio::io::Interest::READABLE).await {
            Ok(ready) if !ready.is_read_closed() => {}
            _ => return,
        }
        // Readable because input is waiting: look again later.
        tokio::time::sleep(PEER_CHECK).await;
    }
}

impl Session {
    fn alloc_ttt(&mut self) -> u32 {
        let t = self.next_ttt;
        self.next_ttt = self.next_ttt.wrapping_add(1);
        if self.next_ttt == RESERVED_TAG {
            self.next_ttt = 1;
        }
        t
    }

    async fn send(&self, pdu: Pdu, sn: Sn) -> Result<(), ConnError> {
        self.tx
            .send(Out::Pdu(pdu, sn))
            .await
            .map_err(|_| ConnError::WriterGone)
    }

    async fn send_reject(&self, bad: &Bhs, reason: u8) {
        let mut b = Bhs::new(op::REJECT);
        b.set_flags(0x80);
        b.0[2] = reason;
        b.set_itt(RESERVED_TAG);
        tracing::debug!(reason, rejected = ?bad, "sending Reject");
        let _ = self
            .send(Pdu::with_data(b, bad.0.to_vec()), Sn::Advance)
            .await;
    }

    /// Checks a non-immediate PDU's CmdSN against the window and advances ExpCmdSN.
    /// Returns false when the PDU must be ignored.
    fn accept_cmd_sn(&mut self, bhs: &Bhs) -> bool {
        if bhs.immediate() {
            return true;
        }
        let sn = bhs.u32_at(24);
        let exp = self.seq.exp_cmd_sn.load(Ordering::Acquire);
        let max = self.seq.max_cmd_sn.load(Ordering::Acquire);
        if sn_lt(sn, exp) || sn_lt(max, sn) {
            tracing::warn!(
                cmd_sn = sn,
                exp,
                max,
                "CmdSN outside the window; PDU ignored"
            );
            return false;
        }
        if sn == exp {
            let mut next = exp.wrapping_add(1);
            while self.ahead.remove(&next) {
                next = next.wrapping_add(1);
            }
            self.seq.exp_cmd_sn.store(next, Ordering::Release);
        } else if !self.ahead.insert(sn) {
            tracing::warn!(cmd_sn = sn, "duplicate CmdSN; PDU ignored");
            return false;
        }
        true
    }

    /// A non-immediate PDU has been dealt with: its slot in the window is free again.
    fn release_slot(&self, immediate: bool) {
        if !immediate {
            self.seq.max_cmd_sn.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Handles one PDU. `Ok(false)` ends the connection cleanly (logout).
    async fn on_pdu(&mut self, p: Pdu) -> Result<bool, ConnError> {
        match p.bhs.opcode() {
            op::SCSI_CMD => self.on_scsi_command(p).await.map(|_| true),
            op::DATA_OUT => self.on_data_out(p).await.map(|_| true),
            op::NOP_OUT => self.on_nop_out(p).await.map(|_| true),
            op::TMF_REQ => self.on_tmf(p).await.map(|_| true),
            op::TEXT_REQ => self.on_text(p).await.map(|_| true),
            op::LOGOUT_REQ => self.on_logout(p).await,
            op::SNACK => {
                self.send_reject(&p.bhs, reject::SNACK_REJECT).await;
                Ok(true)
            }
            op::LOGIN_REQ => {
                self.send_reject(&p.bhs, reject::PROTOCOL_ERROR).await;
                Err(ConnError::Protocol("login request in full feature phase"))
            }
            _ => {
                self.send_reject(&p.bhs, reject::COMMAND_NOT_SUPPORTED)
                    .await;
                Ok(true)
            }
        }
    }

    async fn on_nop_out(&mut self, p: Pdu) -> Result<(), ConnError> {
        let itt = p.bhs.itt();
        let immediate = p.bhs.immediate();
        if itt == RESERVED_TAG {
            // An answer to our ping (or a bare ping of its own): nothing to send.
            return Ok(());
        }
        if !self.accept_cmd_sn(&p.bhs) {
            return Ok(());
        }
        self.release_slot(immediate);
        let mut b = Bhs::new(op::NOP_IN);
        b.set_flags(0x80);
        b.set_lun(p.bhs.lun());
        b.set_itt(itt);
        b.set_u32(20, RESERVED_TAG);
        self.send(Pdu::with_data(b, p.data), Sn::Advance).await
    }

    async fn on_logout(&mut self, p: Pdu) -> Result<bool, ConnError> {
        let immediate = p.bhs.immediate();
        if !self.accept_cmd_sn(&p.bhs) {
            return Ok(true);
        }
        self.release_slot(immediate);
        let reason = p.bhs.flags() & 0x7f;
        let mut b = Bhs::new(op::LOGOUT_RESP);
        b.set_flags(0x80);
        b.set_itt(p.bhs.itt());
        let close = match reason {
            0 | 1 => {
                let _ = tokio::time::timeout(DRAIN_TIMEOUT, self.running.wait_empty()).await;
                b.0[2] = 0;
                b.set_u16(40, self.params.default_time2wait as u16);
                b.set_u16(42, self.params.default_time2retain as u16);
                true
            }
            _ => {
                b.0[2] = 2; // connection recovery is not supported
                false
            }
        };
        self.send(Pdu::new(b), Sn::Advance).await?;
        Ok(!close)
    }
}
