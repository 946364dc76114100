//! One connection after login: the full feature phase.
//!
//! Three parts: a reader task that only frames PDUs, the session loop below that owns all
//! protocol state (CmdSN window, pending writes and their R2Ts, text continuation,
//! keep-alive), and a writer task that stamps StatSN/ExpCmdSN/MaxCmdSN at send time and
//! splits read data into Data-In PDUs. Commands run on tokio's blocking pool.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use scsi::{
    Command, FileSpan, Nexus, Outcome, TaskAttribute, TaskManagement, TaskManagementResponse,
};
use tokio::io::{AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, mpsc, watch};

use super::login::{self, LoginResult};
use super::{SessionKey, SessionSlot, Shared, TargetEntry};
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

/// How the writer treats the StatSN field of an outgoing PDU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sn {
    /// A status-bearing PDU: gets the next StatSN, which then advances.
    Advance,
    /// Carries the current StatSN without advancing it (R2T, NOP-In ping).
    Current,
}

/// A finished SCSI command, turned into Data-In / SCSI Response PDUs by the writer.
struct ScsiDone {
    itt: u32,
    lun: u64,
    edtl: u32,
    read: bool,
    write: bool,
    /// For data-out commands: the data length the CDB calls for, when the handler knows it.
    cdb_length: Option<u64>,
    outcome: Outcome,
    /// Data-in still in a file (zero-copy read); `outcome.data_in` is empty then.
    span: Option<FileSpan>,
}

impl ScsiDone {
    fn data_in_len(&self) -> usize {
        self.span
            .as_ref()
            .map_or(self.outcome.data_in.len(), |s| s.len)
    }
}

enum Out {
    Pdu(Pdu, Sn),
    Scsi(Box<ScsiDone>),
    Close,
}

/// Command sequence numbers shared by the session loop, the command tasks and the writer.
struct Seq {
    exp_cmd_sn: AtomicU32,
    max_cmd_sn: AtomicU32,
}

struct TaskInfo {
    lun: u64,
    aborted: Arc<AtomicBool>,
}

/// Commands that are executing. Shared by the session and every command it started, so
/// that it outlives the connection while commands still run on the blocking pool: the
/// last owner to let go ends the session ([`SessionEnd`]).
struct Running {
    tasks: Mutex<HashMap<u32, TaskInfo>>,
    done: Notify,
    end: Option<SessionEnd>,
}

/// What is left to do once the connection and every command it started have ended:
/// release the I_T nexus (after its last command, never before), free the session's slot
/// and tell a reinstating login that the old session is gone.
struct SessionEnd {
    shared: Arc<Shared>,
    handler: Option<Arc<dyn ScsiHandler>>,
    nexus: Arc<Nexus>,
    key: Option<SessionKey>,
    tsih: u16,
    ended: watch::Sender<bool>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let Some(end) = self.end.take() else { return };
        if let Some(h) = &end.handler
            && std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h.nexus_lost(&end.nexus)))
                .is_err()
        {
            tracing::error!(initiator = %end.nexus.initiator, "SCSI handler panicked releasing the nexus");
        }
        if let Some(k) = end.key {
            let mut sessions = end.shared.sessions.lock().expect("sessions lock");
            if sessions.get(&k).is_some_and(|v| v.tsih == end.tsih) {
                sessions.remove(&k);
            }
        }
        let _ = end.ended.send(true);
    }
}

impl Running {
    async fn wait_until_gone(&self, tags: &[u32]) {
        loop {
            let n = self.done.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            {
                let t = self.tasks.lock().expect("tasks lock");
                if !tags.iter().any(|k| t.contains_key(k)) {
                    return;
                }
            }
            n.await;
        }
    }
    async fn wait_empty(&self) {
        loop {
            let n = self.done.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.tasks.lock().expect("tasks lock").is_empty() {
                return;
            }
            n.await;
        }
    }
}

struct R2tState {
    ttt: u32,
    offset: u32,
    len: u32,
    /// DataSN expected next in this R2T's sequence.
    data_sn: u32,
}

/// A write command waiting for its data.
struct WriteTask {
    lun: u64,
    cdb: Vec<u8>,
    edtl: u32,
    buf: Vec<u8>,
    /// Data received so far (equals `buf.len()` unless the command is being discarded).
    received: u32,
    /// End of the unsolicited burst (immediate + unsolicited Data-Out).
    unsol_end: u32,
    unsol_done: bool,
    /// DataSN expected next in the unsolicited sequence.
    unsol_data_sn: u32,
    next_offset: u32,
    r2t_sn: u32,
    outstanding: Vec<R2tState>,
    attr: TaskAttribute,
    immediate: bool,
    /// The command is refused (e.g. too long): its data is counted and dropped.
    refuse: Option<Outcome>,
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

/// A remaining SendTargets answer, sent in pieces when longer than one PDU.
struct TextRemainder {
    ttt: u32,
    data: Vec<u8>,
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
}

fn sense_fixed(key: u8, asc: u8, ascq: u8) -> Vec<u8> {
    let mut s = vec![0u8; 18];
    s[0] = 0x70;
    s[2] = key;
    s[7] = 10;
    s[12] = asc;
    s[13] = ascq;
    s
}

fn check_condition(key: u8, asc: u8, ascq: u8) -> Outcome {
    Outcome {
        status: scsi::status::CHECK_CONDITION,
        sense: Some(sense_fixed(key, asc, ascq)),
        data_in: Vec::new(),
    }
}

/// State shared by the session loop and the keeper task.
struct Keep {
    epoch: Instant,
    /// Milliseconds after `epoch` when the last PDU arrived.
    last_rx_ms: AtomicU64,
    /// Target Transfer Tag of the unanswered keep-alive ping, 0 when none.
    ping_ttt: AtomicU32,
    /// Why the keeper ended the connection.
    reason: Mutex<Option<String>>,
}

/// Sends keep-alive pings and, on server shutdown, the Async logout request; ends the
/// connection (through `kill`) when a ping goes unanswered or the logout grace runs out.
async fn keeper_task(
    shared: Arc<Shared>,
    keep: Arc<Keep>,
    kill: Arc<Notify>,
    tx: mpsc::Sender<Out>,
    normal: bool,
) {
    let cfg = &shared.config;
    let end = |why: &str| {
        *keep.reason.lock().expect("reason lock") = Some(why.to_string());
        kill.notify_one();
    };
    let mut shutdown = shared.shutdown.clone();
    let tick = cfg
        .nop_interval
        .unwrap_or(Duration::from_secs(3600))
        .min(Duration::from_secs(1));
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_ttt = 0x8000_0000u32;
    let mut ping_sent: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = super::stopped(&mut shutdown) => {
                if !normal {
                    return end("server shutdown");
                }
                let grace = cfg.logout_grace;
                let mut b = Bhs::new(op::ASYNC);
                b.set_flags(0x80);
                b.set_itt(RESERVED_TAG);
                b.0[36] = 1; // the target requests a logout
                b.set_u16(42, grace.as_secs().clamp(1, 3600) as u16);
                let _ = tx.send(Out::Pdu(Pdu::new(b), Sn::Advance)).await;
                tokio::time::sleep(grace).await;
                return end("server shutdown");
            }
            _ = ticker.tick() => {
                let Some(iv) = cfg.nop_interval else { continue };
                if keep.ping_ttt.load(Ordering::Acquire) == 0 {
                    ping_sent = None;
                }
                match ping_sent {
                    Some(since) if since.elapsed() > cfg.nop_timeout => {
                        return end("keep-alive NOP-In not answered");
                    }
                    Some(_) => {}
                    None => {
                        let idle_ms = keep.epoch.elapsed().as_millis() as u64
                            - keep.last_rx_ms.load(Ordering::Relaxed).min(keep.epoch.elapsed().as_millis() as u64);
                        if idle_ms >= iv.as_millis() as u64 {
                            next_ttt = next_ttt.wrapping_add(1) | 0x8000_0000;
                            if next_ttt == RESERVED_TAG {
                                next_ttt = 0x8000_0000;
                            }
                            let mut b = Bhs::new(op::NOP_IN);
                            b.set_flags(0x80);
                            b.set_itt(RESERVED_TAG);
                            b.set_u32(20, next_ttt);
                            keep.ping_ttt.store(next_ttt, Ordering::Release);
                            ping_sent = Some(Instant::now());
                            if tx.send(Out::Pdu(Pdu::new(b), Sn::Current)).await.is_err() {
                                return end("writer closed");
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Entry point for an accepted TCP connection.
pub(crate) async fn run(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    let local = stream.local_addr().ok();
    let (rd, wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(pdu::READ_BUFFER, rd);
    let mut wr = BufWriter::with_capacity(256 * 1024, wr);
    let login =
        match tokio::time::timeout(LOGIN_TIMEOUT, login::run(&shared, &mut rd, &mut wr)).await {
            Ok(Ok(l)) => l,
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
        discovery = login.discovery,
        "login complete"
    );
    full_feature(shared, login, rd, wr, local).await;
}

async fn full_feature(
    shared: Arc<Shared>,
    login: LoginResult,
    rd: BufReader<OwnedReadHalf>,
    wr: BufWriter<OwnedWriteHalf>,
    local: Option<SocketAddr>,
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
        target_port: cfg.portal_group_tag,
    });
    let kill = Arc::new(Notify::new());
    let (ended_tx, ended_rx) = watch::channel(false);
    let key = login.target.as_ref().map(|t| SessionKey {
        initiator: login.initiator.clone(),
        isid: login.isid,
        target: t.name.clone(),
    });
    if let Some(k) = &key {
        shared.sessions.lock().expect("sessions lock").insert(
            k.clone(),
            SessionSlot {
                tsih: login.tsih,
                kill: kill.clone(),
                ended: ended_rx,
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
    tracing::info!(initiator = %login.initiator, tsih = login.tsih, %reason, "connection closing");
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

/// A SCSI command as the session received it, with all its data-out.
struct Request {
    itt: u32,
    lun: u64,
    cdb: Vec<u8>,
    data_out: Vec<u8>,
    edtl: u32,
    read: bool,
    write: bool,
    attr: TaskAttribute,
    immediate: bool,
}

/// One SCSI command handed to the device model.
struct Job {
    req: Request,
    handler: Arc<dyn ScsiHandler>,
    nexus: Arc<Nexus>,
    aborted: Arc<AtomicBool>,
    seq: Arc<Seq>,
    running: Arc<Running>,
    zero_copy: bool,
}

impl Job {
    fn command(&self) -> Command<'_> {
        Command {
            nexus: &self.nexus,
            lun: self.req.lun,
            cdb: &self.req.cdb,
            data_out: &self.req.data_out,
            expected_length: self.req.edtl,
            task_tag: self.req.itt,
            attribute: self.req.attr,
        }
    }

    /// Executes the command (blocking) and leaves the task table; `None` if it was aborted
    /// meanwhile (no response is sent then).
    fn run(self) -> Option<ScsiDone> {
        let cmd = self.command();
        let (outcome, span) = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // Small reads are cheaper copied: their answers are batched in the write
            // buffer, where a file span costs two system calls of its own.
            if self.zero_copy
                && self.req.read
                && !self.req.write
                && self.req.edtl as usize >= DIRECT_DATA
            {
                self.handler.execute_zero_copy(&cmd)
            } else {
                (self.handler.execute(&cmd), None)
            }
        })) {
            Ok(r) => r,
            Err(_) => {
                tracing::error!(
                    itt = self.req.itt,
                    "SCSI handler panicked; answering HARDWARE ERROR"
                );
                (check_condition(0x04, 0x44, 0x00), None)
            }
        };
        let cdb_length = if self.req.write {
            self.handler.data_length(&cmd)
        } else {
            None
        };
        if !self.req.immediate {
            self.seq.max_cmd_sn.fetch_add(1, Ordering::AcqRel);
        }
        // Leave the task table and read the abort flag under one lock, so that an ABORT
        // TASK either finds the task (and no response is sent) or does not.
        let was_aborted = {
            let mut t = self.running.tasks.lock().expect("tasks lock");
            t.remove(&self.req.itt);
            self.aborted.load(Ordering::Acquire)
        };
        self.running.done.notify_waiters();
        (!was_aborted).then_some(ScsiDone {
            itt: self.req.itt,
            lun: self.req.lun,
            edtl: self.req.edtl,
            read: self.req.read,
            write: self.req.write,
            cdb_length,
            outcome,
            span,
        })
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

    async fn on_scsi_command(&mut self, p: Pdu) -> Result<(), ConnError> {
        let bhs = &p.bhs;
        let immediate = bhs.immediate();
        if self.handler.is_none() {
            self.send_reject(bhs, reject::PROTOCOL_ERROR).await;
            return Ok(());
        }
        if !self.accept_cmd_sn(bhs) {
            return Ok(());
        }
        let flags = bhs.flags();
        let (final_bit, read, write) = (flags & 0x80 != 0, flags & 0x40 != 0, flags & 0x20 != 0);
        let attr = match flags & 7 {
            2 => TaskAttribute::Ordered,
            3 => TaskAttribute::HeadOfQueue,
            4 => TaskAttribute::Aca,
            _ => TaskAttribute::Simple,
        };
        let itt = bhs.itt();
        let edtl = bhs.u32_at(20);
        let lun = bhs.lun();
        let cdb = match p.cdb() {
            Ok(c) => c,
            Err(_) => {
                self.release_slot(immediate);
                self.send_reject(bhs, reject::INVALID_PDU_FIELD).await;
                return Ok(());
            }
        };
        let busy = self.writes.contains_key(&itt)
            || self
                .running
                .tasks
                .lock()
                .expect("tasks lock")
                .contains_key(&itt);
        if itt == RESERVED_TAG || busy {
            self.release_slot(immediate);
            self.send_reject(
                bhs,
                if busy {
                    reject::TASK_IN_PROGRESS
                } else {
                    reject::INVALID_PDU_FIELD
                },
            )
            .await;
            return Ok(());
        }
        let imm_len = p.data.len() as u32;
        if !write {
            if imm_len > 0 || !final_bit {
                self.release_slot(immediate);
                self.send_reject(bhs, reject::PROTOCOL_ERROR).await;
                return Ok(());
            }
            self.dispatch(Request {
                itt,
                lun,
                cdb,
                data_out: Vec::new(),
                edtl,
                read,
                write: false,
                attr,
                immediate,
            })
            .await;
            return Ok(());
        }
        if (imm_len > 0 && !self.params.immediate_data)
            || imm_len > edtl
            || imm_len > self.params.first_burst
            || (!final_bit && self.params.initial_r2t)
        {
            self.release_slot(immediate);
            self.send_reject(bhs, reject::PROTOCOL_ERROR).await;
            return Err(ConnError::Protocol(
                "unsolicited data not allowed by the negotiated keys",
            ));
        }
        let refuse = (edtl > self.shared.config.max_transfer).then(|| {
            tracing::warn!(
                edtl,
                "write longer than the target's maximum transfer; refused"
            );
            check_condition(0x05, 0x24, 0x00)
        });
        let unsol_end = if final_bit {
            imm_len
        } else {
            edtl.min(self.params.first_burst)
        };
        let mut w = WriteTask {
            lun,
            cdb,
            edtl,
            buf: if refuse.is_some() { Vec::new() } else { p.data },
            received: imm_len,
            unsol_end,
            unsol_done: final_bit,
            unsol_data_sn: 0,
            next_offset: imm_len,
            r2t_sn: 0,
            outstanding: Vec::new(),
            attr,
            immediate,
            refuse,
        };
        if w.received == w.edtl && w.unsol_done {
            self.finish_write(itt, w).await;
            return Ok(());
        }
        if w.unsol_done && w.refuse.is_some() && w.outstanding.is_empty() {
            // A refused command solicits nothing: answer once the unsolicited data is in.
            self.finish_write(itt, w).await;
            return Ok(());
        }
        if w.unsol_done {
            self.issue_r2ts(itt, &mut w).await?;
        }
        self.writes.insert(itt, w);
        Ok(())
    }

    async fn issue_r2ts(&mut self, itt: u32, w: &mut WriteTask) -> Result<(), ConnError> {
        while (w.outstanding.len() as u32) < self.params.max_outstanding_r2t
            && w.next_offset < w.edtl
        {
            let len = (w.edtl - w.next_offset).min(self.params.max_burst);
            let ttt = self.alloc_ttt();
            let mut b = Bhs::new(op::R2T);
            b.set_flags(0x80);
            b.set_lun(w.lun);
            b.set_itt(itt);
            b.set_u32(20, ttt);
            b.set_u32(36, w.r2t_sn);
            b.set_u32(40, w.next_offset);
            b.set_u32(44, len);
            w.outstanding.push(R2tState {
                ttt,
                offset: w.next_offset,
                len,
                data_sn: 0,
            });
            w.r2t_sn = w.r2t_sn.wrapping_add(1);
            w.next_offset += len;
            self.send(Pdu::new(b), Sn::Current).await?;
        }
        Ok(())
    }

    async fn on_data_out(&mut self, p: Pdu) -> Result<(), ConnError> {
        let itt = p.bhs.itt();
        let ttt = p.bhs.u32_at(20);
        let offset = p.bhs.u32_at(40);
        let len = p.data.len() as u32;
        let final_bit = p.bhs.final_bit();
        let Some(mut w) = self.writes.remove(&itt) else {
            // Data for a task that was aborted or never existed: ignored (RFC 7143 §11.7).
            tracing::debug!(itt, "Data-Out for an unknown task ignored");
            return Ok(());
        };
        if offset != w.received || offset.checked_add(len).is_none_or(|e| e > w.edtl) {
            self.send_reject(&p.bhs, reject::PROTOCOL_ERROR).await;
            return Err(ConnError::Protocol(
                "Data-Out offset out of order or beyond the transfer length",
            ));
        }
        let data_sn = p.bhs.u32_at(36);
        if ttt == RESERVED_TAG {
            if w.unsol_done || offset + len > w.unsol_end {
                self.send_reject(&p.bhs, reject::PROTOCOL_ERROR).await;
                return Err(ConnError::Protocol(
                    "unsolicited data beyond FirstBurstLength",
                ));
            }
            if data_sn != w.unsol_data_sn {
                return self.fail_data_sn(itt, w, &p.bhs).await;
            }
            w.unsol_data_sn += 1;
        } else {
            let Some(i) = w.outstanding.iter().position(|r| r.ttt == ttt) else {
                self.send_reject(&p.bhs, reject::INVALID_PDU_FIELD).await;
                return Err(ConnError::Protocol(
                    "Data-Out with an unknown Target Transfer Tag",
                ));
            };
            let r = &mut w.outstanding[i];
            if offset < r.offset || offset + len > r.offset + r.len {
                self.send_reject(&p.bhs, reject::PROTOCOL_ERROR).await;
                return Err(ConnError::Protocol("Data-Out outside its R2T"));
            }
            if data_sn != r.data_sn {
                return self.fail_data_sn(itt, w, &p.bhs).await;
            }
            r.data_sn += 1;
        }
        if w.refuse.is_none() {
            if w.buf.capacity() == w.buf.len() {
                // Grow with the data actually received, never from the announced length alone.
                w.buf.reserve(
                    (w.edtl as usize - w.buf.len())
                        .min(4 * 1024 * 1024)
                        .max(len as usize),
                );
            }
            w.buf.extend_from_slice(&p.data);
        }
        w.received += len;
        if final_bit {
            if ttt == RESERVED_TAG {
                w.unsol_done = true;
                w.next_offset = w.received;
            } else if let Some(i) = w.outstanding.iter().position(|r| r.ttt == ttt) {
                let r = w.outstanding.remove(i);
                if w.received < r.offset + r.len {
                    self.send_reject(&p.bhs, reject::PROTOCOL_ERROR).await;
                    return Err(ConnError::Protocol("R2T sequence ended early"));
                }
            }
        } else if ttt == RESERVED_TAG && w.received == w.unsol_end {
            // Some initiators leave F clear; the burst is complete anyway.
            w.unsol_done = true;
            w.next_offset = w.received;
        }
        if w.received == w.edtl && w.outstanding.is_empty() {
            self.finish_write(itt, w).await;
            return Ok(());
        }
        if w.unsol_done && w.refuse.is_some() && w.outstanding.is_empty() {
            // A refused command solicits nothing: answer once the unsolicited data is in.
            self.finish_write(itt, w).await;
            return Ok(());
        }
        if w.unsol_done {
            self.issue_r2ts(itt, &mut w).await?;
        }
        self.writes.insert(itt, w);
        Ok(())
    }

    /// A Data-Out with the wrong DataSN (a lost or reordered PDU): at ERL 0 the data cannot
    /// be recovered, so the PDU is rejected and the command ends with ABORTED COMMAND / DATA
    /// PHASE ERROR; the connection stays up. Later Data-Out for the task is ignored.
    async fn fail_data_sn(&mut self, itt: u32, w: WriteTask, bad: &Bhs) -> Result<(), ConnError> {
        tracing::warn!(
            itt,
            data_sn = bad.u32_at(36),
            "Data-Out with an unexpected DataSN"
        );
        self.send_reject(bad, reject::PROTOCOL_ERROR).await;
        self.release_slot(w.immediate);
        let done = ScsiDone {
            itt,
            lun: w.lun,
            edtl: w.edtl,
            read: false,
            write: true,
            cdb_length: None,
            outcome: check_condition(0x0b, 0x4b, 0x00),
            span: None,
        };
        self.tx
            .send(Out::Scsi(Box::new(done)))
            .await
            .map_err(|_| ConnError::WriterGone)
    }

    async fn finish_write(&mut self, itt: u32, w: WriteTask) {
        if let Some(outcome) = w.refuse {
            self.release_slot(w.immediate);
            let done = ScsiDone {
                itt,
                lun: w.lun,
                edtl: w.edtl,
                read: false,
                write: true,
                cdb_length: None,
                outcome,
                span: None,
            };
            let tx = self.tx.clone();
            tokio::spawn(async move { tx.send(Out::Scsi(Box::new(done))).await });
            return;
        }
        self.dispatch(Request {
            itt,
            lun: w.lun,
            cdb: w.cdb,
            data_out: w.buf,
            edtl: w.edtl,
            read: false,
            write: true,
            attr: w.attr,
            immediate: w.immediate,
        })
        .await;
    }

    /// Runs one command: on this thread when the handler calls it quick (for a file LUN: a
    /// plain read or write whose blocks are in the page cache), else on the blocking
    /// pool. Its answer goes to the writer either way.
    async fn dispatch(&mut self, req: Request) {
        let Some(handler) = self.handler.clone() else {
            return;
        };
        let aborted = Arc::new(AtomicBool::new(false));
        self.running.tasks.lock().expect("tasks lock").insert(
            req.itt,
            TaskInfo {
                lun: req.lun,
                aborted: aborted.clone(),
            },
        );
        let mut job = Job {
            req,
            handler,
            nexus: self.nexus.clone(),
            aborted,
            seq: self.seq.clone(),
            running: self.running.clone(),
            zero_copy: self.zero_copy,
        };
        if job.handler.is_quick(&job.command()) {
            if let Some(done) = job.run() {
                let large = done.data_in_len() >= DIRECT_DATA;
                let _ = self.tx.send(Out::Scsi(Box::new(done))).await;
                if large {
                    // Let the writer send a large answer now, so the initiator takes it in
                    // while the next command executes; small answers go out in batches.
                    tokio::task::yield_now().await;
                }
            }
            return;
        }
        // Off this thread the data is read into memory: a file span would leave the wait
        // for the storage to this thread's sendfile.
        job.zero_copy = false;
        let tx = self.tx.clone();
        self.shared.pool.spawn_blocking(move || {
            if let Some(done) = job.run() {
                let _ = tx.blocking_send(Out::Scsi(Box::new(done)));
            }
        });
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

    async fn on_tmf(&mut self, p: Pdu) -> Result<(), ConnError> {
        let immediate = p.bhs.immediate();
        if !self.accept_cmd_sn(&p.bhs) {
            return Ok(());
        }
        let function = p.bhs.flags() & 0x7f;
        let lun = p.bhs.lun();
        let rtt = p.bhs.u32_at(20);
        let f = match function {
            1 => Some(TaskManagement::AbortTask { tag: rtt }),
            2 => Some(TaskManagement::AbortTaskSet),
            4 => Some(TaskManagement::ClearTaskSet),
            5 => Some(TaskManagement::LogicalUnitReset),
            6 => Some(TaskManagement::TargetWarmReset),
            7 => Some(TaskManagement::TargetColdReset),
            _ => None,
        };
        let code = match (f, &self.handler) {
            (Some(f), Some(h)) => {
                // Abort the affected tasks in this session: writes still waiting for data
                // are dropped, executing commands finish without sending a response.
                let selects = |t_lun: u64, tag: u32| match f {
                    TaskManagement::AbortTask { tag: want } => tag == want,
                    TaskManagement::AbortTaskSet
                    | TaskManagement::ClearTaskSet
                    | TaskManagement::LogicalUnitReset => t_lun == lun,
                    TaskManagement::TargetWarmReset | TaskManagement::TargetColdReset => true,
                };
                let mut found = false;
                let dropped: Vec<u32> = self
                    .writes
                    .iter()
                    .filter(|(k, w)| selects(w.lun, **k))
                    .map(|(k, _)| *k)
                    .collect();
                for k in dropped {
                    if let Some(w) = self.writes.remove(&k) {
                        self.release_slot(w.immediate);
                        found = true;
                    }
                }
                let mut waiting = Vec::new();
                for (k, t) in self.running.tasks.lock().expect("tasks lock").iter() {
                    if selects(t.lun, *k) {
                        t.aborted.store(true, Ordering::Release);
                        waiting.push(*k);
                    }
                }
                found |= !waiting.is_empty();
                self.running.wait_until_gone(&waiting).await;
                let h = h.clone();
                let nexus = self.nexus.clone();
                let r = self
                    .shared
                    .pool
                    .spawn_blocking(move || h.task_management(&nexus, lun, f))
                    .await
                    .unwrap_or(TaskManagementResponse::Rejected);
                match (f, r) {
                    // The transport knows whether the task is still here; the device model
                    // runs commands to completion and cannot tell.
                    (TaskManagement::AbortTask { .. }, TaskManagementResponse::LunDoesNotExist) => {
                        2
                    }
                    (TaskManagement::AbortTask { .. }, _) if found => 0,
                    (TaskManagement::AbortTask { .. }, _) => {
                        // RFC 7143 §11.5.1: a task not yet received (RefCmdSN inside the window)
                        // counts as aborted; one already answered does not exist.
                        let ref_sn = p.bhs.u32_at(32);
                        let exp = self.seq.exp_cmd_sn.load(Ordering::Acquire);
                        if sn_lt(ref_sn, exp) { 1 } else { 0 }
                    }
                    (_, TaskManagementResponse::Complete) => 0,
                    (_, TaskManagementResponse::TaskDoesNotExist) => 1,
                    (_, TaskManagementResponse::LunDoesNotExist) => 2,
                    (_, TaskManagementResponse::NotSupported) => 5,
                    (_, TaskManagementResponse::Rejected) => 255,
                }
            }
            (None, _) if function == 8 => 4, // TASK REASSIGN needs ERL 2
            (None, _) => 5,
            (Some(_), None) => 255,
        };
        self.release_slot(immediate);
        let mut b = Bhs::new(op::TMF_RESP);
        b.set_flags(0x80);
        b.0[2] = code;
        b.set_itt(p.bhs.itt());
        self.send(Pdu::new(b), Sn::Advance).await?;
        if f == Some(TaskManagement::TargetColdReset) && code == 0 {
            return Err(ConnError::Protocol(
                "target cold reset closes the connection",
            ));
        }
        Ok(())
    }

    fn send_targets(&self, which: &str) -> Vec<u8> {
        let shared = &self.shared;
        let targets = shared.targets.read().expect("targets lock");
        let mut out = TextPairs::default();
        let mut pairs = Vec::new();
        for (name, t) in targets.iter() {
            let wanted = match which {
                "All" => true,
                "" => self.target.as_ref().is_some_and(|c| &c.name == name),
                other => other == name,
            };
            if !wanted || !t.admits(&self.nexus.initiator) {
                continue;
            }
            pairs.push(("TargetName".to_string(), name.clone()));
            for a in &shared.local_addrs {
                let addr = if a.ip().is_unspecified() {
                    self.local.unwrap_or(*a)
                } else {
                    *a
                };
                let host = match addr {
                    SocketAddr::V4(v) => v.ip().to_string(),
                    SocketAddr::V6(v) => format!("[{}]", v.ip()),
                };
                pairs.push((
                    "TargetAddress".to_string(),
                    format!(
                        "{}:{},{}",
                        host,
                        addr.port(),
                        shared.config.portal_group_tag
                    ),
                ));
            }
        }
        out.0 = pairs;
        out.encode()
    }

    async fn on_text(&mut self, p: Pdu) -> Result<(), ConnError> {
        let immediate = p.bhs.immediate();
        if !self.accept_cmd_sn(&p.bhs) {
            return Ok(());
        }
        self.release_slot(immediate);
        let itt = p.bhs.itt();
        let ttt = p.bhs.u32_at(20);
        let cont = p.bhs.flags() & 0x40 != 0;
        let mut b = Bhs::new(op::TEXT_RESP);
        b.set_itt(itt);
        b.set_lun(p.bhs.lun());
        // Continuation of our own long answer.
        if ttt != RESERVED_TAG {
            let Some(rem) = self.text_out.take().filter(|r| r.ttt == ttt) else {
                self.send_reject(&p.bhs, reject::INVALID_PDU_FIELD).await;
                return Ok(());
            };
            return self.send_text_chunk(b, rem.data).await;
        }
        self.text_out = None;
        if self.text_in.len() + p.data.len() > text::MAX_TEXT_LEN {
            self.text_in.clear();
            self.send_reject(&p.bhs, reject::PROTOCOL_ERROR).await;
            return Ok(());
        }
        self.text_in.extend_from_slice(&p.data);
        if cont {
            b.set_u32(20, RESERVED_TAG);
            return self.send(Pdu::new(b), Sn::Advance).await;
        }
        let data = std::mem::take(&mut self.text_in);
        let keys = match TextPairs::parse(&data) {
            Ok(k) => k,
            Err(e) => {
                tracing::debug!(error = %e, "malformed text request");
                self.send_reject(&p.bhs, reject::PROTOCOL_ERROR).await;
                return Ok(());
            }
        };
        let mut reply = Vec::new();
        if let Some(which) = keys.get("SendTargets") {
            reply = self.send_targets(which);
        }
        let rest = TextPairs(
            keys.0
                .into_iter()
                .filter(|(k, _)| k != "SendTargets")
                .collect(),
        );
        if !rest.0.is_empty() {
            // Renegotiation in the full feature phase is answered but not applied.
            let mut p2 = self.params.clone();
            let mut r = TextPairs::default();
            negotiate(
                &rest,
                &self.shared.config.limits,
                &mut p2,
                &mut r,
                self.target.is_none(),
            );
            reply.extend_from_slice(&r.encode());
        }
        self.send_text_chunk(b, reply).await
    }

    async fn send_text_chunk(&mut self, mut b: Bhs, mut data: Vec<u8>) -> Result<(), ConnError> {
        let max = self.params.max_send_data_segment as usize;
        if data.len() > max {
            let rest = data.split_off(max);
            let ttt = self.alloc_ttt();
            b.set_flags(0x40);
            b.set_u32(20, ttt);
            self.text_out = Some(TextRemainder { ttt, data: rest });
        } else {
            b.set_flags(0x80);
            b.set_u32(20, RESERVED_TAG);
        }
        self.send(Pdu::with_data(b, data), Sn::Advance).await
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

/// Data segments at least this long go to the socket straight from the device's buffer
/// (one vectored write after flushing what is buffered) instead of being copied into the
/// write buffer.
const DIRECT_DATA: usize = 32 * 1024;

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

async fn writer_task(
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
