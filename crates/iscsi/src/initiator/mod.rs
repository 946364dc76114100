//! A blocking iSCSI initiator: discovery, login (None, CHAP one-way and mutual), SCSI
//! commands with queueing (submit / wait), unit attention handling, reconnect.
//!
//! It is blocking because its users (the VSS emulator's hosts, tests, the benchmark) are
//! synchronous. One [`Session`] is one TCP connection; it is not shared between threads.
//!
//! The code is split by job below; what is public is a method of [`Session`] or is
//! re-exported here, so every path stays `iscsi::initiator::...`:
//!
//! * this file: the session's state, its configuration, the error and answer types;
//! * `login.rs`: connecting, login (security and operational negotiation), logout and
//!   reinstatement ([`Session::reconnect`]);
//! * `discovery.rs`: SendTargets discovery ([`discover`]);
//! * `queue.rs`: command submission with unsolicited data, the completion queue
//!   ([`Session::wait`], [`Session::wait_any`]) and the UNIT ATTENTION retry;
//! * `receive.rs`: reading and handling what the target sends (Data-In, responses, R2T,
//!   NOP-In, async messages, rejects);
//! * `requests.rs`: requests outside the command queue (Text, NOP-Out ping, task management);
//! * `commands.rs`: SCSI command helpers (REPORT LUNS, INQUIRY, READ CAPACITY (16),
//!   READ (16), WRITE (16), REPORT TARGET PORT GROUPS, ...);
//! * `sense.rs`: sense data decoding.

use std::collections::{HashMap, VecDeque};
use std::io::{BufReader, BufWriter, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::chap;
use crate::pdu::{Digests, Pdu, PduError, RESERVED_TAG};
use crate::text;

mod commands;
mod discovery;
mod login;
mod queue;
mod receive;
mod requests;
mod sense;

pub use commands::{Capacity, TargetPortGroupState, decode_target_port_groups, rw16};
pub use discovery::{DiscoveredTarget, discover};
pub use sense::{SENSE_UNIT_ATTENTION, Sense};

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
    /// TargetPortalGroupTag the target answered at login (a normal session only).
    portal_group_tag: Option<u16>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("addr", &self.addr)
            .field("target", &self.target)
            .finish()
    }
}

impl Session {
    pub(super) fn alloc_itt(&mut self) -> u32 {
        let t = self.next_itt;
        self.next_itt = self.next_itt.wrapping_add(1);
        if self.next_itt == RESERVED_TAG {
            self.next_itt = 1;
        }
        t
    }

    pub(super) fn send(&mut self, p: &Pdu) -> Result<(), InitiatorError> {
        p.write_to(&mut self.wr, self.digests)
            .map_err(PduError::Io)?;
        Ok(())
    }

    pub(super) fn flush(&mut self) -> Result<(), InitiatorError> {
        self.wr.flush().map_err(PduError::Io)?;
        Ok(())
    }

    /// Whether the target asked for a logout (Async Message event 1).
    pub fn logout_requested(&self) -> bool {
        self.logout_requested
    }

    /// The target portal group tag the target reported at login (RFC 7143
    /// TargetPortalGroupTag): which of the target's ports this session came through.
    pub fn portal_group_tag(&self) -> Option<u16> {
        self.portal_group_tag
    }

    /// Unit attentions seen (and retried past) since the last call.
    pub fn take_unit_attentions(&mut self) -> Vec<Sense> {
        std::mem::take(&mut self.unit_attentions)
    }
}
