//! The login phase of one connection (RFC 7143 §6.3): stages, AuthMethod None and CHAP,
//! operational negotiation, session reinstatement.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::{AuthPolicy, ServedPort, SessionKey, Shared, TargetEntry};
use crate::chap;
use crate::params::{SessionParams, negotiate};
use crate::pdu::{self, Bhs, Digests, Pdu, PduError, op};
use crate::text::{self, TextPairs};

/// Login data segments are limited to the default MaxRecvDataSegmentLength.
const LOGIN_MAX_DATA: usize = 8192;

/// Login status (class, detail), RFC 7143 §11.13.5.
pub(crate) mod status {
    pub const SUCCESS: (u8, u8) = (0, 0);
    pub const INITIATOR_ERROR: (u8, u8) = (2, 0);
    pub const AUTH_FAILURE: (u8, u8) = (2, 1);
    pub const AUTHORIZATION_FAILURE: (u8, u8) = (2, 2);
    pub const NOT_FOUND: (u8, u8) = (2, 3);
    pub const UNSUPPORTED_VERSION: (u8, u8) = (2, 5);
    pub const TOO_MANY_CONNECTIONS: (u8, u8) = (2, 6);
    pub const MISSING_PARAMETER: (u8, u8) = (2, 7);
    pub const SESSION_TYPE_NOT_SUPPORTED: (u8, u8) = (2, 9);
    pub const SESSION_DOES_NOT_EXIST: (u8, u8) = (2, 0x0a);
    pub const INVALID_DURING_LOGIN: (u8, u8) = (2, 0x0b);
    pub const SERVICE_UNAVAILABLE: (u8, u8) = (3, 1);

    /// A refusal in an administrator's words.
    pub fn describe(code: (u8, u8)) -> &'static str {
        match code {
            AUTH_FAILURE => "authentication failed (CHAP)",
            AUTHORIZATION_FAILURE => "no LUN is mapped to this initiator",
            NOT_FOUND => "no such target",
            INITIATOR_ERROR => "initiator error",
            UNSUPPORTED_VERSION => "unsupported iSCSI version",
            TOO_MANY_CONNECTIONS => "too many connections",
            MISSING_PARAMETER => "a login parameter is missing",
            SESSION_TYPE_NOT_SUPPORTED => "session type not supported",
            SESSION_DOES_NOT_EXIST => "no such session",
            INVALID_DURING_LOGIN => "request not valid during login",
            SERVICE_UNAVAILABLE => "the target is stopping",
            _ => "refused",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum LoginError {
    #[error(transparent)]
    Pdu(#[from] PduError),
    #[error("login refused: {}", status::describe((*class, *detail)))]
    Refused {
        class: u8,
        detail: u8,
        /// The initiator name, when it got that far.
        initiator: Option<String>,
    },
    #[error("non-login PDU (opcode {0:#04x}) during login")]
    NotLogin(u8),
}

/// What a successful login established.
pub(crate) struct LoginResult {
    pub discovery: bool,
    pub target: Option<Arc<TargetEntry>>,
    pub initiator: String,
    pub isid: u64,
    pub tsih: u16,
    /// The initiator proved a CHAP secret.
    pub chap: bool,
    pub params: SessionParams,
    /// The next StatSN to send.
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
}

enum AuthStep {
    Start,
    WaitChapA,
    WaitChapR { id: u8, challenge: [u8; 16] },
    Done,
}

struct State {
    isid: u64,
    cmd_sn: u32,
    stat_sn: u32,
    initiator: Option<String>,
    discovery: bool,
    target: Option<Arc<TargetEntry>>,
    auth: AuthStep,
    /// CHAP succeeded.
    chap: bool,
    params: SessionParams,
    declared: bool,
    first_response: bool,
}

fn response(
    req: &Bhs,
    transit: bool,
    csg: u8,
    nsg: u8,
    tsih: u16,
    (class, detail): (u8, u8),
    data: Vec<u8>,
) -> Pdu {
    let mut b = Bhs::new(op::LOGIN_RESP);
    let mut flags = (csg & 3) << 2;
    if transit {
        flags |= 0x80 | (nsg & 3);
    }
    b.set_flags(flags);
    b.0[2] = 0; // version-max
    b.0[3] = 0; // version-active
    b.0[8..14].copy_from_slice(&req.0[8..14]);
    b.set_u16(14, tsih);
    b.set_itt(req.itt());
    b.0[36] = class;
    b.0[37] = detail;
    Pdu::with_data(b, data)
}

async fn send<W: AsyncWrite + Unpin>(
    w: &mut W,
    st: &mut State,
    mut pdu: Pdu,
    queue_depth: u32,
) -> Result<(), PduError> {
    pdu.bhs.set_u32(24, st.stat_sn);
    st.stat_sn = st.stat_sn.wrapping_add(1);
    pdu.bhs.set_u32(28, st.cmd_sn);
    pdu.bhs
        .set_u32(32, st.cmd_sn.wrapping_add(queue_depth.max(1) - 1));
    pdu.write_async(w, Digests::default()).await?;
    w.flush().await?;
    Ok(())
}

/// Runs the login phase. On refusal the error response has been sent.
pub(crate) async fn run<R, W>(
    shared: &Arc<Shared>,
    port: ServedPort,
    rd: &mut R,
    wr: &mut W,
) -> Result<LoginResult, LoginError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let cfg = &shared.config;
    let mut st: Option<State> = None;
    let mut text_acc: Vec<u8> = Vec::new();
    loop {
        let req = pdu::read_async(rd, Digests::default(), LOGIN_MAX_DATA).await?;
        if req.bhs.opcode() != op::LOGIN_REQ {
            return Err(LoginError::NotLogin(req.bhs.opcode()));
        }
        let flags = req.bhs.flags();
        let transit = flags & 0x80 != 0;
        let cont = flags & 0x40 != 0;
        let csg = (flags >> 2) & 3;
        let nsg = flags & 3;
        let s = st.get_or_insert_with(|| State {
            isid: u64::from_be_bytes([
                0,
                0,
                req.bhs.0[8],
                req.bhs.0[9],
                req.bhs.0[10],
                req.bhs.0[11],
                req.bhs.0[12],
                req.bhs.0[13],
            ]),
            cmd_sn: req.bhs.u32_at(24),
            stat_sn: req.bhs.u32_at(28),
            initiator: None,
            discovery: false,
            target: None,
            auth: AuthStep::Start,
            chap: false,
            params: SessionParams::default(),
            declared: false,
            first_response: true,
        });
        macro_rules! fail {
            ($code:expr) => {{
                let code: (u8, u8) = $code;
                let pdu = response(&req.bhs, false, csg, 0, 0, code, Vec::new());
                send(wr, s, pdu, cfg.queue_depth).await?;
                return Err(LoginError::Refused {
                    class: code.0,
                    detail: code.1,
                    initiator: s.initiator.clone(),
                });
            }};
        }
        if req.bhs.0[3] > 0 {
            fail!(status::UNSUPPORTED_VERSION);
        }
        if text_acc.len() + req.data.len() > text::MAX_TEXT_LEN {
            fail!(status::INITIATOR_ERROR);
        }
        text_acc.extend_from_slice(&req.data);
        if cont {
            // More text follows: acknowledge with an empty response in the same stage.
            let pdu = response(&req.bhs, false, csg, 0, 0, status::SUCCESS, Vec::new());
            send(wr, s, pdu, cfg.queue_depth).await?;
            continue;
        }
        let keys = match TextPairs::parse(&text_acc) {
            Ok(k) => k,
            Err(e) => {
                tracing::debug!(error = %e, "malformed login text");
                fail!(status::INITIATOR_ERROR)
            }
        };
        text_acc.clear();
        let tsih_req = req.bhs.u16_at(14);
        if tsih_req != 0 {
            // Adding a connection to an existing session (MC/S) is not supported.
            let exists = shared
                .sessions
                .lock()
                .expect("sessions lock")
                .values()
                .any(|v| v.tsih == tsih_req);
            fail!(if exists {
                status::TOO_MANY_CONNECTIONS
            } else {
                status::SESSION_DOES_NOT_EXIST
            });
        }
        let mut reply = TextPairs::default();
        if s.initiator.is_none() {
            let Some(name) = keys.get("InitiatorName") else {
                fail!(status::MISSING_PARAMETER)
            };
            if !super::valid_iscsi_name(name) {
                fail!(status::INITIATOR_ERROR);
            }
            s.initiator = Some(name.to_string());
            match keys.get("SessionType").unwrap_or("Normal") {
                "Discovery" => s.discovery = true,
                "Normal" => {
                    let Some(tn) = keys.get("TargetName") else {
                        fail!(status::MISSING_PARAMETER)
                    };
                    let Some(t) = shared.target(tn) else {
                        fail!(status::NOT_FOUND)
                    };
                    if !t.admits(name) {
                        tracing::info!(
                            initiator = name,
                            target = tn,
                            "login refused: no LUN mapped"
                        );
                        fail!(status::AUTHORIZATION_FAILURE);
                    }
                    s.target = Some(t);
                }
                _ => fail!(status::SESSION_TYPE_NOT_SUPPORTED),
            }
            if *shared.shutdown.borrow() {
                fail!(status::SERVICE_UNAVAILABLE);
            }
        }
        let initiator = s.initiator.clone().unwrap_or_default();
        let secret = shared
            .chap
            .read()
            .expect("chap lock")
            .get(&initiator)
            .cloned();
        // An initiator with a CHAP secret must prove it on every normal session, whatever
        // the target's policy: initiator names are not secret, so accepting AuthMethod=None
        // from it would let anyone who knows the name log in as that host.
        let policy = match &s.target {
            Some(_) if secret.is_some() => AuthPolicy::Chap,
            Some(t) => t.auth,
            None => cfg.discovery_auth,
        };
        match csg {
            0 => {
                if let Some(methods) = keys.get("AuthMethod") {
                    let offered: Vec<&str> = methods.split(',').collect();
                    let choice = match policy {
                        AuthPolicy::Chap if offered.contains(&"CHAP") && secret.is_some() => "CHAP",
                        AuthPolicy::Chap => fail!(status::AUTH_FAILURE),
                        AuthPolicy::None if offered.contains(&"None") => "None",
                        AuthPolicy::None if offered.contains(&"CHAP") && secret.is_some() => "CHAP",
                        AuthPolicy::None => fail!(status::AUTH_FAILURE),
                    };
                    reply.push("AuthMethod", choice);
                    s.auth = if choice == "CHAP" {
                        AuthStep::WaitChapA
                    } else {
                        AuthStep::Done
                    };
                }
                if let Some(algs) = keys.get("CHAP_A") {
                    if !matches!(s.auth, AuthStep::WaitChapA) {
                        fail!(status::INITIATOR_ERROR);
                    }
                    if !algs.split(',').any(|a| a == "5") {
                        reply.push("CHAP_A", "Reject");
                        fail!(status::AUTH_FAILURE);
                    }
                    let id = chap::random_bytes::<1>()[0];
                    let challenge = chap::random_bytes::<16>();
                    reply.push("CHAP_A", "5");
                    reply.push("CHAP_I", id.to_string());
                    reply.push("CHAP_C", text::encode_hex(&challenge));
                    s.auth = AuthStep::WaitChapR { id, challenge };
                } else if keys.contains("CHAP_R") || keys.contains("CHAP_N") {
                    let AuthStep::WaitChapR { id, challenge } = s.auth else {
                        fail!(status::INITIATOR_ERROR)
                    };
                    let Some(sec) = secret.as_ref() else {
                        fail!(status::AUTH_FAILURE)
                    };
                    let (Some(n), Some(r)) = (keys.get("CHAP_N"), keys.get("CHAP_R")) else {
                        fail!(status::AUTH_FAILURE)
                    };
                    let Ok(r) = text::decode_binary(r) else {
                        fail!(status::AUTH_FAILURE)
                    };
                    let want = chap::response(id, &sec.secret, &challenge);
                    if n != sec.user || !chap::digest_eq(&r, &want) {
                        tracing::info!(initiator = %initiator, "CHAP authentication failed");
                        fail!(status::AUTH_FAILURE);
                    }
                    match (keys.get("CHAP_I"), keys.get("CHAP_C")) {
                        (Some(i), Some(c)) => {
                            let Some((mname, msecret)) = sec.mutual.as_ref() else {
                                fail!(status::AUTH_FAILURE)
                            };
                            let (Some(i), Ok(c)) = (text::parse_number(i), text::decode_binary(c))
                            else {
                                fail!(status::AUTH_FAILURE)
                            };
                            // A challenge equal to ours would be a reflection attack.
                            if i > 255 || c == challenge || c.is_empty() || c.len() > 1024 {
                                fail!(status::AUTH_FAILURE);
                            }
                            reply.push("CHAP_N", mname.clone());
                            reply.push(
                                "CHAP_R",
                                text::encode_hex(&chap::response(i as u8, msecret, &c)),
                            );
                        }
                        (None, None) => {
                            if sec.mutual.is_some() && policy == AuthPolicy::Chap {
                                // A configured mutual secret is optional for the initiator.
                                tracing::debug!(initiator = %initiator, "initiator did not ask for mutual CHAP");
                            }
                        }
                        _ => fail!(status::AUTH_FAILURE),
                    }
                    s.auth = AuthStep::Done;
                    s.chap = true;
                }
                // Operational keys in the security stage are negotiated as well.
                negotiate(&keys, &cfg.limits, &mut s.params, &mut reply, s.discovery);
            }
            1 => {
                if !matches!(s.auth, AuthStep::Done) {
                    if policy == AuthPolicy::Chap || !matches!(s.auth, AuthStep::Start) {
                        fail!(status::AUTH_FAILURE);
                    }
                    s.auth = AuthStep::Done;
                }
                negotiate(&keys, &cfg.limits, &mut s.params, &mut reply, s.discovery);
            }
            _ => fail!(status::INVALID_DURING_LOGIN),
        }
        if s.first_response {
            if let Some(t) = &s.target {
                reply.push("TargetPortalGroupTag", port.portal_group_tag.to_string());
                if let Some(a) = &t.alias {
                    reply.push("TargetAlias", a.clone());
                }
            }
            s.first_response = false;
        }
        let mut go = transit;
        if transit {
            if nsg <= csg || nsg == 2 {
                fail!(status::INITIATOR_ERROR);
            }
            if csg == 0 && !matches!(s.auth, AuthStep::Done) {
                if matches!(s.auth, AuthStep::Start) && policy == AuthPolicy::None {
                    s.auth = AuthStep::Done;
                } else if matches!(s.auth, AuthStep::Start) {
                    fail!(status::AUTH_FAILURE);
                } else {
                    go = false; // CHAP exchange still running
                }
            }
        }
        let finishing = go && nsg == 3;
        if (csg == 1 || finishing) && !s.declared {
            reply.push(
                "MaxRecvDataSegmentLength",
                cfg.limits.max_recv_data_segment.to_string(),
            );
            s.declared = true;
        }
        if s.params.max_recv_data_segment != cfg.limits.max_recv_data_segment {
            s.params.max_recv_data_segment = cfg.limits.max_recv_data_segment;
        }
        if !finishing {
            let pdu = response(&req.bhs, go, csg, nsg, 0, status::SUCCESS, reply.encode());
            send(wr, s, pdu, cfg.queue_depth).await?;
            continue;
        }
        // Entering the full feature phase.
        let tsih = shared.alloc_tsih();
        if let Some(t) = &s.target {
            let key = SessionKey {
                initiator: initiator.clone(),
                isid: s.isid,
                target: t.name.clone(),
                portal_group_tag: port.portal_group_tag,
            };
            let old = shared.sessions.lock().expect("sessions lock").remove(&key);
            if let Some(old) = old {
                tracing::info!(initiator = %initiator, isid = s.isid, "session reinstatement");
                old.kill.notify_one();
                let mut ended = old.ended.clone();
                let _ = tokio::time::timeout(Duration::from_secs(10), ended.wait_for(|v| *v)).await;
            }
        }
        let pdu = response(
            &req.bhs,
            true,
            csg,
            3,
            tsih,
            status::SUCCESS,
            reply.encode(),
        );
        send(wr, s, pdu, cfg.queue_depth).await?;
        let s = st.take().expect("state");
        return Ok(LoginResult {
            discovery: s.discovery,
            target: s.target,
            initiator,
            isid: s.isid,
            tsih,
            chap: s.chap,
            params: s.params,
            stat_sn: s.stat_sn,
            exp_cmd_sn: s.cmd_sn,
        });
    }
}
