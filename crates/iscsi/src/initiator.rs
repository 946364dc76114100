//! A blocking iSCSI initiator: discovery, login (None, CHAP one-way and mutual), SCSI
//! commands with queueing (submit / wait), unit attention handling, reconnect.
//!
//! It is blocking because its users (the VSS emulator's hosts, tests, the benchmark) are
//! synchronous. One [`Session`] is one TCP connection; it is not shared between threads.

use std::collections::{HashMap, VecDeque};
use std::io::{BufReader, BufWriter, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::chap;
use crate::pdu::{self, Bhs, Digests, Pdu, PduError, RESERVED_TAG, op, sn_le, sn_lt};
use crate::text::{self, TextPairs};

/// Sense key UNIT ATTENTION.
pub const SENSE_UNIT_ATTENTION: u8 = 0x06;

#[derive(Debug, thiserror::Error)]
pub enum InitiatorError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Pdu(#[from] PduError),
    #[error("login refused with status {class:#04x}/{detail:#04x} ({})", login_status_text(*.class, *.detail))]
    LoginRefused { class: u8, detail: u8 },
    #[error("authentication failed: {0}")]
    Auth(&'static str),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("the target rejected the PDU (reason {reason:#04x})")]
    Rejected { reason: u8 },
    #[error("CHECK CONDITION: {0}")]
    Check(Sense),
    #[error("SCSI status {0:#04x}")]
    Status(u8),
    #[error("task management function answered {0}")]
    TaskManagement(u8),
    #[error("text: {0}")]
    Text(#[from] text::TextError),
    #[error("the connection was lost and commands in flight were dropped")]
    ConnectionLost,
}

fn login_status_text(class: u8, detail: u8) -> &'static str {
    match (class, detail) {
        (2, 1) => "authentication failure",
        (2, 2) => "authorization failure",
        (2, 3) => "target not found",
        (2, 7) => "missing parameter",
        (3, _) => "target error",
        (1, _) => "redirection",
        _ => "initiator error",
    }
}

/// Decoded sense data (fixed or descriptor format).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sense {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
    pub raw: Vec<u8>,
}

impl std::fmt::Display for Sense {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sense key {:#x}, ASC/ASCQ {:02x}/{:02x}",
            self.key, self.asc, self.ascq
        )
    }
}

impl Sense {
    pub fn parse(raw: &[u8]) -> Option<Sense> {
        let code = raw.first()? & 0x7f;
        let (key, asc, ascq) = match code {
            0x70 | 0x71 => (
                raw.get(2)? & 0x0f,
                *raw.get(12).unwrap_or(&0),
                *raw.get(13).unwrap_or(&0),
            ),
            0x72 | 0x73 => (raw.get(1)? & 0x0f, *raw.get(2)?, *raw.get(3)?),
            _ => return None,
        };
        Some(Sense {
            key,
            asc,
            ascq,
            raw: raw.to_vec(),
        })
    }
}

/// CHAP credentials of the initiator.
#[derive(Clone)]
pub struct ChapCredentials {
    pub user: String,
    pub secret: Vec<u8>,
    /// For mutual CHAP: the name the target must answer with and its secret.
    pub mutual: Option<(String, Vec<u8>)>,
}

impl std::fmt::Debug for ChapCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChapCredentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct InitiatorConfig {
    pub initiator_name: String,
    /// 48-bit ISID; the same ISID on reconnect reinstates the session.
    pub isid: u64,
    pub chap: Option<ChapCredentials>,
    pub header_digest: bool,
    pub data_digest: bool,
    pub max_recv_data_segment: u32,
    /// Socket read/write timeout.
    pub timeout: Duration,
    /// How many times a command is retried after a UNIT ATTENTION.
    pub ua_retries: u32,
}

impl InitiatorConfig {
    pub fn new(initiator_name: &str) -> Self {
        InitiatorConfig {
            initiator_name: initiator_name.to_string(),
            isid: 0x8000_0000_0001 | (u64::from(chap::random_bytes::<2>()[0]) << 8),
            chap: None,
            header_digest: false,
            data_digest: false,
            max_recv_data_segment: 262_144,
            timeout: Duration::from_secs(30),
            ua_retries: 8,
        }
    }
}

/// A target found by SendTargets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredTarget {
    pub name: String,
    /// `address:port,tpgt` entries.
    pub addresses: Vec<String>,
}

/// Data phase of a command.
#[derive(Debug, Clone)]
pub enum DataDir {
    None,
    /// Read up to this many bytes.
    Read(u32),
    Write(Vec<u8>),
}

/// The answer to one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScsiResponse {
    pub status: u8,
    pub sense: Option<Sense>,
    pub data: Vec<u8>,
    /// Positive: underflow (bytes not transferred); negative: overflow.
    pub residual: i64,
}

impl ScsiResponse {
    fn into_result(self) -> Result<ScsiResponse, InitiatorError> {
        match self.status {
            scsi::status::GOOD | scsi::status::CONDITION_MET => Ok(self),
            scsi::status::CHECK_CONDITION => {
                Err(InitiatorError::Check(self.sense.unwrap_or(Sense {
                    key: 0,
                    asc: 0,
                    ascq: 0,
                    raw: Vec::new(),
                })))
            }
            s => Err(InitiatorError::Status(s)),
        }
    }
}

/// Capacity from READ CAPACITY (16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub blocks: u64,
    pub block_size: u32,
}

/// The 8-byte SAM LUN field of a LUN number: the target's own encoding.
pub use scsi::encode_lun;

struct Pending {
    read_len: u32,
    data_in: Vec<u8>,
    data_out: Vec<u8>,
    lun: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Negotiated {
    max_send: u32,
    max_burst: u32,
    first_burst: u32,
    immediate_data: bool,
    initial_r2t: bool,
}

/// A logged-in session (one connection).
pub struct Session {
    addr: SocketAddr,
    target: Option<String>,
    cfg: InitiatorConfig,
    rd: BufReader<TcpStream>,
    wr: BufWriter<TcpStream>,
    digests: Digests,
    neg: Negotiated,
    cmd_sn: u32,
    exp_stat_sn: u32,
    max_cmd_sn: u32,
    next_itt: u32,
    tsih: u16,
    pending: HashMap<u32, Pending>,
    completed: HashMap<u32, Result<ScsiResponse, InitiatorError>>,
    order: VecDeque<u32>,
    others: HashMap<u32, Pdu>,
    unit_attentions: Vec<Sense>,
    logout_requested: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("addr", &self.addr)
            .field("target", &self.target)
            .finish()
    }
}

/// Asks a portal which targets this initiator may see (SendTargets=All).
pub fn discover(
    addr: SocketAddr,
    cfg: &InitiatorConfig,
) -> Result<Vec<DiscoveredTarget>, InitiatorError> {
    let mut s = Session::connect(addr, None, cfg)?;
    let text = s.text_request("SendTargets=All")?;
    let _ = s.logout();
    let mut out: Vec<DiscoveredTarget> = Vec::new();
    for (k, v) in text.0 {
        match k.as_str() {
            "TargetName" => out.push(DiscoveredTarget {
                name: v,
                addresses: Vec::new(),
            }),
            "TargetAddress" => {
                if let Some(t) = out.last_mut() {
                    t.addresses.push(v)
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

impl Session {
    /// Connects and logs in to `target` (a normal session).
    pub fn login(
        addr: SocketAddr,
        target: &str,
        cfg: &InitiatorConfig,
    ) -> Result<Session, InitiatorError> {
        Session::connect(addr, Some(target), cfg)
    }

    fn connect(
        addr: SocketAddr,
        target: Option<&str>,
        cfg: &InitiatorConfig,
    ) -> Result<Session, InitiatorError> {
        let stream = TcpStream::connect_timeout(&addr, cfg.timeout)
            .map_err(|source| InitiatorError::Connect { addr, source })?;
        let _ = stream.set_nodelay(true);
        let _ = stream.set_read_timeout(Some(cfg.timeout));
        let _ = stream.set_write_timeout(Some(cfg.timeout));
        let rd =
            BufReader::with_capacity(pdu::READ_BUFFER, stream.try_clone().map_err(PduError::Io)?);
        let wr = BufWriter::with_capacity(256 * 1024, stream);
        let mut s = Session {
            addr,
            target: target.map(str::to_string),
            cfg: cfg.clone(),
            rd,
            wr,
            digests: Digests::default(),
            neg: Negotiated {
                max_send: 8192,
                max_burst: 262_144,
                first_burst: 65_536,
                immediate_data: true,
                initial_r2t: true,
            },
            cmd_sn: 1,
            exp_stat_sn: 0,
            max_cmd_sn: 1,
            next_itt: 1,
            tsih: 0,
            pending: HashMap::new(),
            completed: HashMap::new(),
            order: VecDeque::new(),
            others: HashMap::new(),
            unit_attentions: Vec::new(),
            logout_requested: false,
        };
        s.do_login()?;
        Ok(s)
    }

    fn alloc_itt(&mut self) -> u32 {
        let t = self.next_itt;
        self.next_itt = self.next_itt.wrapping_add(1);
        if self.next_itt == RESERVED_TAG {
            self.next_itt = 1;
        }
        t
    }

    fn login_pdu(&mut self, transit: bool, csg: u8, nsg: u8, keys: &TextPairs, itt: u32) -> Pdu {
        let mut b = Bhs::new(op::LOGIN_REQ);
        b.set_immediate(true);
        let mut flags = (csg & 3) << 2;
        if transit {
            flags |= 0x80 | (nsg & 3);
        }
        b.set_flags(flags);
        b.0[8..14].copy_from_slice(&self.cfg.isid.to_be_bytes()[2..8]);
        b.set_u16(14, self.tsih);
        b.set_itt(itt);
        b.set_u32(24, self.cmd_sn);
        b.set_u32(28, self.exp_stat_sn);
        Pdu::with_data(b, keys.encode())
    }

    /// One login request/response exchange. Returns the response keys and whether the
    /// target agreed to the transition.
    fn login_step(
        &mut self,
        transit: bool,
        csg: u8,
        nsg: u8,
        keys: &TextPairs,
    ) -> Result<(TextPairs, bool), InitiatorError> {
        let itt = self.alloc_itt();
        let pdu = self.login_pdu(transit, csg, nsg, keys, itt);
        pdu.write_to(&mut self.wr, Digests::default())
            .map_err(PduError::Io)?;
        self.wr.flush().map_err(PduError::Io)?;
        let mut data = Vec::new();
        loop {
            let r = pdu::read_sync(&mut self.rd, Digests::default(), 65536)?;
            if r.bhs.opcode() != op::LOGIN_RESP {
                return Err(InitiatorError::Protocol(format!(
                    "opcode {:#x} during login",
                    r.bhs.opcode()
                )));
            }
            let (class, detail) = (r.bhs.0[36], r.bhs.0[37]);
            if class != 0 {
                return Err(InitiatorError::LoginRefused { class, detail });
            }
            self.exp_stat_sn = r.bhs.u32_at(24).wrapping_add(1);
            self.max_cmd_sn = r.bhs.u32_at(32);
            self.tsih = r.bhs.u16_at(14);
            if data.len() + r.data.len() > text::MAX_TEXT_LEN {
                return Err(InitiatorError::Protocol("login text too long".into()));
            }
            data.extend_from_slice(&r.data);
            if r.bhs.flags() & 0x40 != 0 {
                // The target continues its text: ask for the rest.
                let p = self.login_pdu(false, csg, nsg, &TextPairs::default(), itt);
                p.write_to(&mut self.wr, Digests::default())
                    .map_err(PduError::Io)?;
                self.wr.flush().map_err(PduError::Io)?;
                continue;
            }
            let agreed = r.bhs.flags() & 0x80 != 0;
            return Ok((TextPairs::parse(&data)?, agreed));
        }
    }

    fn do_login(&mut self) -> Result<(), InitiatorError> {
        let mut first = TextPairs::default();
        first.push("InitiatorName", self.cfg.initiator_name.clone());
        match &self.target {
            Some(t) => {
                first.push("SessionType", "Normal");
                first.push("TargetName", t.clone());
            }
            None => first.push("SessionType", "Discovery"),
        }
        let chap = self.cfg.chap.clone();
        first.push(
            "AuthMethod",
            if chap.is_some() { "CHAP,None" } else { "None" },
        );
        let (resp, mut agreed) = self.login_step(chap.is_none(), 0, 1, &first)?;
        if let Some(c) = chap.filter(|_| resp.get("AuthMethod") == Some("CHAP")) {
            let mut k = TextPairs::default();
            k.push("CHAP_A", "5");
            let (resp, _) = self.login_step(false, 0, 1, &k)?;
            if resp.get("CHAP_A") != Some("5") {
                return Err(InitiatorError::Auth("target did not accept CHAP_A=5"));
            }
            let id = resp
                .get("CHAP_I")
                .and_then(text::parse_number)
                .filter(|i| *i < 256);
            let challenge = resp.get("CHAP_C").map(text::decode_binary);
            let (Some(id), Some(Ok(challenge))) = (id, challenge) else {
                return Err(InitiatorError::Auth("target sent no usable CHAP challenge"));
            };
            let mut k = TextPairs::default();
            k.push("CHAP_N", c.user.clone());
            k.push(
                "CHAP_R",
                text::encode_hex(&chap::response(id as u8, &c.secret, &challenge)),
            );
            let my = (chap::random_bytes::<1>()[0], chap::random_bytes::<16>());
            if c.mutual.is_some() {
                k.push("CHAP_I", my.0.to_string());
                k.push("CHAP_C", text::encode_hex(&my.1));
            }
            let (resp, ok) = self.login_step(true, 0, 1, &k)?;
            if let Some((name, secret)) = &c.mutual {
                let r = resp.get("CHAP_R").map(text::decode_binary);
                let Some(Ok(r)) = r else {
                    return Err(InitiatorError::Auth(
                        "target did not answer the mutual challenge",
                    ));
                };
                if resp.get("CHAP_N") != Some(name.as_str())
                    || !chap::digest_eq(&r, &chap::response(my.0, secret, &my.1))
                {
                    return Err(InitiatorError::Auth("target failed mutual CHAP"));
                }
            }
            agreed = ok;
        }
        if !agreed {
            // The target wants another round in the security stage before moving on.
            let (_, ok) = self.login_step(true, 0, 1, &TextPairs::default())?;
            if !ok {
                return Err(InitiatorError::Protocol(
                    "target did not leave the security stage".into(),
                ));
            }
        }
        let mut k = TextPairs::default();
        let dig = |on: bool| if on { "CRC32C,None" } else { "None" };
        k.push("HeaderDigest", dig(self.cfg.header_digest));
        k.push("DataDigest", dig(self.cfg.data_digest));
        k.push(
            "MaxRecvDataSegmentLength",
            self.cfg.max_recv_data_segment.to_string(),
        );
        k.push("DefaultTime2Wait", "2");
        k.push("DefaultTime2Retain", "0");
        k.push("ErrorRecoveryLevel", "0");
        if self.target.is_some() {
            k.push("InitialR2T", "No");
            k.push("ImmediateData", "Yes");
            k.push("MaxBurstLength", "16776192");
            k.push("FirstBurstLength", "262144");
            k.push("MaxOutstandingR2T", "1");
            k.push("MaxConnections", "1");
            k.push("DataPDUInOrder", "Yes");
            k.push("DataSequenceInOrder", "Yes");
        }
        let mut all = TextPairs::default();
        let mut rounds = 0;
        loop {
            let (resp, ok) = self.login_step(true, 1, 3, &k)?;
            all.0.extend(resp.0);
            if ok {
                break;
            }
            rounds += 1;
            if rounds > 8 {
                return Err(InitiatorError::Protocol(
                    "operational negotiation did not finish".into(),
                ));
            }
            k = TextPairs::default();
        }
        let num = |key: &str, d: u32| {
            all.get(key)
                .and_then(text::parse_number)
                .map(|v| v as u32)
                .unwrap_or(d)
        };
        self.digests = Digests {
            header: all.get("HeaderDigest") == Some("CRC32C"),
            data: all.get("DataDigest") == Some("CRC32C"),
        };
        self.neg = Negotiated {
            max_send: num("MaxRecvDataSegmentLength", 8192).max(512),
            max_burst: num("MaxBurstLength", 262_144).max(512),
            first_burst: num("FirstBurstLength", 65_536),
            immediate_data: all.get("ImmediateData").is_none_or(|v| v == "Yes"),
            initial_r2t: all.get("InitialR2T").is_none_or(|v| v == "Yes"),
        };
        tracing::debug!(neg = ?self.neg, digests = ?self.digests, "initiator login complete");
        Ok(())
    }

    /// Whether the target asked for a logout (Async Message event 1).
    pub fn logout_requested(&self) -> bool {
        self.logout_requested
    }

    /// Unit attentions seen (and retried past) since the last call.
    pub fn take_unit_attentions(&mut self) -> Vec<Sense> {
        std::mem::take(&mut self.unit_attentions)
    }

    fn send(&mut self, p: &Pdu) -> Result<(), InitiatorError> {
        p.write_to(&mut self.wr, self.digests)
            .map_err(PduError::Io)?;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), InitiatorError> {
        self.wr.flush().map_err(PduError::Io)?;
        Ok(())
    }

    /// Commands submitted and not yet collected.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Queues a SCSI command without waiting; returns its task tag for [`Session::wait`].
    /// Queued commands go to the target together, at the latest when the session next has
    /// to wait for the target ([`Session::wait`], [`Session::wait_any`] or any call that
    /// expects an answer), so that a burst of submissions costs one system call.
    pub fn submit(&mut self, lun: u64, cdb: &[u8], dir: DataDir) -> Result<u32, InitiatorError> {
        if self.target.is_none() {
            return Err(InitiatorError::Protocol(
                "SCSI commands need a normal session".into(),
            ));
        }
        if cdb.is_empty() || cdb.len() > 16 {
            return Err(InitiatorError::Protocol(format!(
                "CDB of {} bytes not supported",
                cdb.len()
            )));
        }
        // Respect the command window.
        while sn_lt(self.max_cmd_sn, self.cmd_sn) {
            self.flush()?;
            self.pump()?;
        }
        let itt = self.alloc_itt();
        let lun_field = encode_lun(lun);
        let mut b = Bhs::new(op::SCSI_CMD);
        let (read_len, data_out) = match dir {
            DataDir::None => (0, Vec::new()),
            DataDir::Read(n) => (n, Vec::new()),
            DataDir::Write(d) => (0, d),
        };
        let edtl = if data_out.is_empty() {
            read_len
        } else {
            data_out.len() as u32
        };
        let mut flags = 0x01u8; // SIMPLE
        if read_len > 0 {
            flags |= 0x40;
        }
        if !data_out.is_empty() {
            flags |= 0x20;
        }
        b.set_lun(lun_field);
        b.set_itt(itt);
        b.set_u32(20, edtl);
        b.set_u32(24, self.cmd_sn);
        b.set_u32(28, self.exp_stat_sn);
        b.0[32..32 + cdb.len()].copy_from_slice(cdb);
        let n = &self.neg;
        let imm = if n.immediate_data {
            data_out
                .len()
                .min(n.first_burst as usize)
                .min(n.max_send as usize)
        } else {
            0
        };
        let unsol_end = if n.initial_r2t {
            imm
        } else {
            data_out.len().min(n.first_burst as usize)
        };
        if unsol_end <= imm {
            flags |= 0x80;
        }
        b.set_flags(flags);
        // All the data as immediate data (the usual small write): it moves into the
        // command, and no R2T can ask for any of it again.
        let all_immediate = imm == data_out.len();
        let (immediate, data_out) = if all_immediate {
            (data_out, Vec::new())
        } else {
            (data_out[..imm].to_vec(), data_out)
        };
        let cmd = Pdu {
            bhs: b,
            ahs: Vec::new(),
            data: immediate,
        };
        self.send(&cmd)?;
        // Unsolicited Data-Out up to FirstBurstLength.
        let mut off = imm;
        let mut data_sn = 0;
        while off < unsol_end {
            let len = (unsol_end - off).min(self.neg.max_send as usize);
            let mut d = Bhs::new(op::DATA_OUT);
            if off + len == unsol_end {
                d.set_flags(0x80);
            }
            d.set_lun(lun_field);
            d.set_itt(itt);
            d.set_u32(20, RESERVED_TAG);
            d.set_u32(28, self.exp_stat_sn);
            d.set_u32(36, data_sn);
            d.set_u32(40, off as u32);
            let p = Pdu::with_data(d, data_out[off..off + len].to_vec());
            self.send(&p)?;
            data_sn += 1;
            off += len;
        }
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        self.pending.insert(
            itt,
            Pending {
                read_len,
                data_in: Vec::new(),
                data_out,
                lun: lun_field,
            },
        );
        Ok(itt)
    }

    /// Waits for the command with this tag.
    pub fn wait(&mut self, itt: u32) -> Result<ScsiResponse, InitiatorError> {
        loop {
            if let Some(r) = self.completed.remove(&itt) {
                self.order.retain(|t| *t != itt);
                return r;
            }
            if !self.pending.contains_key(&itt) {
                return Err(InitiatorError::Protocol(format!(
                    "no command with tag {itt}"
                )));
            }
            self.flush()?;
            self.pump()?;
            self.pump_buffered()?;
        }
    }

    /// Waits for whichever command finishes first.
    pub fn wait_any(
        &mut self,
    ) -> Result<(u32, Result<ScsiResponse, InitiatorError>), InitiatorError> {
        loop {
            if let Some(itt) = self.order.pop_front() {
                if let Some(r) = self.completed.remove(&itt) {
                    return Ok((itt, r));
                }
                continue;
            }
            if self.pending.is_empty() {
                return Err(InitiatorError::Protocol("no command in flight".into()));
            }
            // Only about to block: send what is queued first.
            self.flush()?;
            self.pump()?;
            self.pump_buffered()?;
        }
    }

    /// Handles every PDU that is already whole in the read buffer (no system call), so
    /// that answers which arrived together complete together.
    fn pump_buffered(&mut self) -> Result<(), InitiatorError> {
        loop {
            let buf = self.rd.buffer();
            let Some(head) = buf.get(..pdu::BHS_LEN) else {
                return Ok(());
            };
            let bhs = Bhs(head.try_into().expect("48 bytes"));
            if buf.len() < pdu::wire_len(&bhs, self.digests) {
                return Ok(());
            }
            self.pump()?;
        }
    }

    fn complete(&mut self, itt: u32, r: Result<ScsiResponse, InitiatorError>) {
        self.pending.remove(&itt);
        self.completed.insert(itt, r);
        self.order.push_back(itt);
    }

    fn note_sn(&mut self, b: &Bhs, status: bool) {
        if status {
            self.exp_stat_sn = b.u32_at(24).wrapping_add(1);
        }
        let exp = b.u32_at(28);
        let max = b.u32_at(32);
        if sn_le(exp, max.wrapping_add(1)) && sn_lt(self.max_cmd_sn, max) {
            self.max_cmd_sn = max;
        }
    }

    /// Reads and handles one PDU from the target.
    fn pump(&mut self) -> Result<(), InitiatorError> {
        let max = self.cfg.max_recv_data_segment as usize;
        let p = match pdu::read_sync(&mut self.rd, self.digests, max) {
            Ok(p) => p,
            Err(e) => {
                let tags: Vec<u32> = self.pending.keys().copied().collect();
                for t in tags {
                    self.complete(t, Err(InitiatorError::ConnectionLost));
                }
                return Err(e.into());
            }
        };
        let b = &p.bhs;
        match b.opcode() {
            op::DATA_IN => {
                let itt = b.itt();
                let status = b.flags() & 0x01 != 0;
                self.note_sn(b, status);
                let Some(pd) = self.pending.get_mut(&itt) else {
                    return Err(InitiatorError::Protocol(format!(
                        "Data-In for unknown tag {itt}"
                    )));
                };
                let off = b.u32_at(40) as usize;
                if off != pd.data_in.len() || off + p.data.len() > pd.read_len as usize {
                    return Err(InitiatorError::Protocol(
                        "Data-In out of order or too long".into(),
                    ));
                }
                if pd.data_in.is_empty() {
                    // The common case: the whole read in one Data-In; keep its buffer.
                    pd.data_in = p.data;
                } else {
                    pd.data_in.extend_from_slice(&p.data);
                }
                if status {
                    let data = std::mem::take(&mut pd.data_in);
                    let r = ScsiResponse {
                        status: b.0[3],
                        sense: None,
                        data,
                        residual: residual(b),
                    };
                    self.complete(itt, Ok(r));
                }
            }
            op::SCSI_RESP => {
                let itt = b.itt();
                self.note_sn(b, true);
                let Some(pd) = self.pending.get_mut(&itt) else {
                    return Err(InitiatorError::Protocol(format!(
                        "SCSI Response for unknown tag {itt}"
                    )));
                };
                let sense = if p.data.len() >= 2 {
                    let n = u16::from_be_bytes([p.data[0], p.data[1]]) as usize;
                    p.data.get(2..2 + n).and_then(Sense::parse)
                } else {
                    None
                };
                let data = std::mem::take(&mut pd.data_in);
                let r = if b.0[2] != 0 {
                    Err(InitiatorError::Protocol(format!(
                        "iSCSI response code {:#x}",
                        b.0[2]
                    )))
                } else {
                    Ok(ScsiResponse {
                        status: b.0[3],
                        sense,
                        data,
                        residual: residual(b),
                    })
                };
                self.complete(itt, r);
            }
            op::R2T => {
                self.note_sn(b, false);
                let itt = b.itt();
                let ttt = b.u32_at(20);
                let off = b.u32_at(40) as usize;
                let len = b.u32_at(44) as usize;
                let exp_stat_sn = self.exp_stat_sn;
                let max_send = self.neg.max_send as usize;
                let Some(pd) = self.pending.get(&itt) else {
                    return Err(InitiatorError::Protocol(format!(
                        "R2T for unknown tag {itt}"
                    )));
                };
                if off + len > pd.data_out.len() {
                    return Err(InitiatorError::Protocol("R2T beyond the data".into()));
                }
                let lun = pd.lun;
                let mut pos = off;
                let mut data_sn = 0u32;
                let mut out = Vec::new();
                while pos < off + len {
                    let n = (off + len - pos).min(max_send);
                    let mut d = Bhs::new(op::DATA_OUT);
                    if pos + n == off + len {
                        d.set_flags(0x80);
                    }
                    d.set_lun(lun);
                    d.set_itt(itt);
                    d.set_u32(20, ttt);
                    d.set_u32(28, exp_stat_sn);
                    d.set_u32(36, data_sn);
                    d.set_u32(40, pos as u32);
                    out.push(Pdu::with_data(d, pd.data_out[pos..pos + n].to_vec()));
                    data_sn += 1;
                    pos += n;
                }
                for p in &out {
                    self.send(p)?;
                }
                self.flush()?;
            }
            op::NOP_IN => {
                let itt = b.itt();
                self.note_sn(b, itt != RESERVED_TAG);
                let ttt = b.u32_at(20);
                if ttt != RESERVED_TAG {
                    let mut r = Bhs::new(op::NOP_OUT);
                    r.set_immediate(true);
                    r.set_flags(0x80);
                    r.set_lun(b.lun());
                    r.set_itt(RESERVED_TAG);
                    r.set_u32(20, ttt);
                    r.set_u32(24, self.cmd_sn);
                    r.set_u32(28, self.exp_stat_sn);
                    self.send(&Pdu::new(r))?;
                    self.flush()?;
                } else if itt != RESERVED_TAG {
                    self.others.insert(itt, p);
                }
            }
            op::ASYNC => {
                self.note_sn(b, true);
                match b.0[36] {
                    1 => self.logout_requested = true,
                    0 => {
                        if let Some(s) = p.data.get(2..).and_then(Sense::parse) {
                            self.unit_attentions.push(s);
                        }
                    }
                    _ => {}
                }
            }
            op::REJECT => {
                self.note_sn(b, true);
                let reason = b.0[2];
                if p.data.len() >= 48 {
                    let rejected = Bhs(p.data[..48].try_into().expect("48"));
                    let itt = rejected.itt();
                    if self.pending.contains_key(&itt) {
                        self.complete(itt, Err(InitiatorError::Rejected { reason }));
                        return Ok(());
                    }
                    if itt != RESERVED_TAG {
                        self.others.insert(itt, p);
                        return Ok(());
                    }
                }
                return Err(InitiatorError::Rejected { reason });
            }
            op::TMF_RESP | op::TEXT_RESP | op::LOGOUT_RESP => {
                self.note_sn(b, true);
                self.others.insert(b.itt(), p);
            }
            other => {
                return Err(InitiatorError::Protocol(format!(
                    "unexpected opcode {other:#x} from target"
                )));
            }
        }
        Ok(())
    }

    fn wait_other(&mut self, itt: u32) -> Result<Pdu, InitiatorError> {
        self.flush()?;
        loop {
            if let Some(p) = self.others.remove(&itt) {
                if p.bhs.opcode() == op::REJECT {
                    return Err(InitiatorError::Rejected { reason: p.bhs.0[2] });
                }
                return Ok(p);
            }
            self.pump()?;
        }
    }

    /// Sends a text request and collects the whole answer (following continuations).
    pub fn text_request(&mut self, keys: &str) -> Result<TextPairs, InitiatorError> {
        let itt = self.alloc_itt();
        let mut ttt = RESERVED_TAG;
        let mut data = keys.replace(';', "\0").into_bytes();
        data.push(0);
        let mut all = Vec::new();
        loop {
            let mut b = Bhs::new(op::TEXT_REQ);
            b.set_immediate(true);
            b.set_flags(0x80);
            b.set_itt(itt);
            b.set_u32(20, ttt);
            b.set_u32(24, self.cmd_sn);
            b.set_u32(28, self.exp_stat_sn);
            self.send(&Pdu::with_data(b, std::mem::take(&mut data)))?;
            let r = self.wait_other(itt)?;
            if all.len() + r.data.len() > text::MAX_TEXT_LEN {
                return Err(InitiatorError::Protocol("text answer too long".into()));
            }
            all.extend_from_slice(&r.data);
            if r.bhs.flags() & 0x40 == 0 {
                break;
            }
            ttt = r.bhs.u32_at(20);
        }
        Ok(TextPairs::parse_list(&all)?)
    }

    /// Sends a NOP-Out ping and waits for the echo.
    pub fn ping(&mut self, payload: &[u8]) -> Result<Vec<u8>, InitiatorError> {
        let itt = self.alloc_itt();
        let mut b = Bhs::new(op::NOP_OUT);
        b.set_immediate(true);
        b.set_flags(0x80);
        b.set_itt(itt);
        b.set_u32(20, RESERVED_TAG);
        b.set_u32(24, self.cmd_sn);
        b.set_u32(28, self.exp_stat_sn);
        self.send(&Pdu::with_data(b, payload.to_vec()))?;
        Ok(self.wait_other(itt)?.data)
    }

    /// Sends a task management request; returns the response code (0 = complete).
    pub fn task_management(
        &mut self,
        lun: u64,
        function: u8,
        ref_tag: u32,
    ) -> Result<u8, InitiatorError> {
        let itt = self.alloc_itt();
        let mut b = Bhs::new(op::TMF_REQ);
        b.set_immediate(true);
        b.set_flags(0x80 | (function & 0x7f));
        b.set_lun(encode_lun(lun));
        b.set_itt(itt);
        b.set_u32(20, ref_tag);
        b.set_u32(24, self.cmd_sn);
        b.set_u32(28, self.exp_stat_sn);
        // RefCmdSN: the last command sent (ABORT TASK refers to an earlier command).
        b.set_u32(32, self.cmd_sn.wrapping_sub(1));
        self.send(&Pdu::new(b))?;
        Ok(self.wait_other(itt)?.bhs.0[2])
    }

    /// Logs out (closing the session) and waits for the answer.
    pub fn logout(&mut self) -> Result<(), InitiatorError> {
        let itt = self.alloc_itt();
        let mut b = Bhs::new(op::LOGOUT_REQ);
        b.set_immediate(true);
        b.set_flags(0x80);
        b.set_itt(itt);
        b.set_u32(24, self.cmd_sn);
        b.set_u32(28, self.exp_stat_sn);
        self.send(&Pdu::new(b))?;
        let r = self.wait_other(itt)?;
        match r.bhs.0[2] {
            0 => Ok(()),
            c => Err(InitiatorError::Protocol(format!("logout response {c}"))),
        }
    }

    /// Drops the connection and logs in again with the same ISID (session reinstatement).
    /// Commands in flight are failed with [`InitiatorError::ConnectionLost`].
    pub fn reconnect(&mut self) -> Result<(), InitiatorError> {
        let target = self.target.clone();
        let fresh = Session::connect(self.addr, target.as_deref(), &self.cfg)?;
        let lost: Vec<u32> = self.pending.keys().copied().collect();
        let mut completed = std::mem::take(&mut self.completed);
        let mut order = std::mem::take(&mut self.order);
        for t in lost {
            completed.insert(t, Err(InitiatorError::ConnectionLost));
            order.push_back(t);
        }
        let uas = std::mem::take(&mut self.unit_attentions);
        *self = fresh;
        self.completed = completed;
        self.order = order;
        self.unit_attentions = uas;
        Ok(())
    }

    /// Runs one command to completion without any retry.
    pub fn execute(
        &mut self,
        lun: u64,
        cdb: &[u8],
        dir: DataDir,
    ) -> Result<ScsiResponse, InitiatorError> {
        let itt = self.submit(lun, cdb, dir)?;
        self.wait(itt)
    }

    /// Runs a command; a UNIT ATTENTION is recorded (see [`Session::take_unit_attentions`])
    /// and the command retried. Any other CHECK CONDITION becomes [`InitiatorError::Check`].
    pub fn command(
        &mut self,
        lun: u64,
        cdb: &[u8],
        dir: DataDir,
    ) -> Result<ScsiResponse, InitiatorError> {
        let mut tries = 0;
        loop {
            let r = self.execute(lun, cdb, dir.clone())?;
            if r.status == scsi::status::CHECK_CONDITION
                && r.sense
                    .as_ref()
                    .is_some_and(|s| s.key == SENSE_UNIT_ATTENTION)
                && tries < self.cfg.ua_retries
            {
                let s = r.sense.clone().expect("sense");
                tracing::debug!(%s, "unit attention; retrying");
                self.unit_attentions.push(s);
                tries += 1;
                continue;
            }
            return r.into_result();
        }
    }

    pub fn test_unit_ready(&mut self, lun: u64) -> Result<(), InitiatorError> {
        self.command(lun, &[0; 6], DataDir::None).map(|_| ())
    }

    /// REPORT LUNS; returns the LUN numbers.
    pub fn report_luns(&mut self) -> Result<Vec<u64>, InitiatorError> {
        let alloc: u32 = 16 + 8 * 1024;
        let mut cdb = [0u8; 12];
        cdb[0] = 0xa0;
        cdb[6..10].copy_from_slice(&alloc.to_be_bytes());
        let r = self.command(0, &cdb, DataDir::Read(alloc))?;
        if r.data.len() < 8 {
            return Err(InitiatorError::Protocol("short REPORT LUNS data".into()));
        }
        let n = u32::from_be_bytes(r.data[0..4].try_into().expect("4")) as usize / 8;
        // LUNs in an addressing method this initiator does not speak are left out.
        Ok(r.data[8..]
            .chunks_exact(8)
            .take(n)
            .filter_map(|c| scsi::decode_lun(u64::from_be_bytes(c.try_into().expect("8"))))
            .collect())
    }

    /// INQUIRY: standard data (`page = None`) or a VPD page.
    pub fn inquiry(&mut self, lun: u64, page: Option<u8>) -> Result<Vec<u8>, InitiatorError> {
        let alloc: u16 = 4096;
        let mut cdb = [0u8; 6];
        cdb[0] = 0x12;
        if let Some(p) = page {
            cdb[1] = 1;
            cdb[2] = p;
        }
        cdb[3..5].copy_from_slice(&alloc.to_be_bytes());
        Ok(self.command(lun, &cdb, DataDir::Read(alloc as u32))?.data)
    }

    pub fn read_capacity16(&mut self, lun: u64) -> Result<Capacity, InitiatorError> {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x9e;
        cdb[1] = 0x10;
        cdb[13] = 32;
        let r = self.command(lun, &cdb, DataDir::Read(32))?;
        if r.data.len() < 12 {
            return Err(InitiatorError::Protocol("short READ CAPACITY data".into()));
        }
        Ok(Capacity {
            blocks: u64::from_be_bytes(r.data[0..8].try_into().expect("8")) + 1,
            block_size: u32::from_be_bytes(r.data[8..12].try_into().expect("4")),
        })
    }

    /// READ (16) of `blocks` blocks of `block_size` bytes.
    pub fn read16(
        &mut self,
        lun: u64,
        lba: u64,
        blocks: u32,
        block_size: u32,
    ) -> Result<Vec<u8>, InitiatorError> {
        let cdb = rw16(0x88, lba, blocks, false);
        let len = blocks
            .checked_mul(block_size)
            .ok_or(InitiatorError::Protocol("read too long".into()))?;
        Ok(self.command(lun, &cdb, DataDir::Read(len))?.data)
    }

    /// WRITE (16); `data` must be a whole number of blocks.
    pub fn write16(
        &mut self,
        lun: u64,
        lba: u64,
        data: &[u8],
        block_size: u32,
        fua: bool,
    ) -> Result<(), InitiatorError> {
        if block_size == 0 || data.len() % block_size as usize != 0 {
            return Err(InitiatorError::Protocol(
                "write length is not a multiple of the block size".into(),
            ));
        }
        let cdb = rw16(0x8a, lba, (data.len() / block_size as usize) as u32, fua);
        self.command(lun, &cdb, DataDir::Write(data.to_vec()))
            .map(|_| ())
    }

    pub fn synchronize_cache(&mut self, lun: u64) -> Result<(), InitiatorError> {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x91;
        self.command(lun, &cdb, DataDir::None).map(|_| ())
    }
}

/// Builds a READ (16) / WRITE (16) CDB.
pub fn rw16(opcode: u8, lba: u64, blocks: u32, fua: bool) -> [u8; 16] {
    let mut cdb = [0u8; 16];
    cdb[0] = opcode;
    if fua {
        cdb[1] = 0x08;
    }
    cdb[2..10].copy_from_slice(&lba.to_be_bytes());
    cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
    cdb
}

fn residual(b: &Bhs) -> i64 {
    let count = i64::from(b.u32_at(44));
    let flags = b.flags();
    if flags & 0x02 != 0 {
        count
    } else if flags & 0x04 != 0 {
        -count
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_and_descriptor_sense_decode() {
        let mut fixed = vec![0u8; 18];
        fixed[0] = 0x70;
        fixed[2] = 0x06;
        fixed[12] = 0x3f;
        fixed[13] = 0x0e;
        let s = Sense::parse(&fixed).unwrap();
        assert_eq!((s.key, s.asc, s.ascq), (6, 0x3f, 0x0e));
        let s = Sense::parse(&[0x72, 0x05, 0x24, 0x00]).unwrap();
        assert_eq!((s.key, s.asc, s.ascq), (5, 0x24, 0));
        assert_eq!(Sense::parse(&[0x00]), None);
    }
}
