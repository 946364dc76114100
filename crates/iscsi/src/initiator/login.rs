//! Connecting, login (security stage with CHAP, operational negotiation), logout and
//! session reinstatement.

use std::collections::{HashMap, VecDeque};
use std::io::{BufReader, BufWriter, Write};
use std::net::{SocketAddr, TcpStream};

use super::{InitiatorConfig, InitiatorError, Negotiated, Session};
use crate::chap;
use crate::pdu::{self, Bhs, Digests, Pdu, PduError, op};
use crate::text::{self, TextPairs};

impl Session {
    /// Connects and logs in to `target` (a normal session).
    pub fn login(
        addr: SocketAddr,
        target: &str,
        cfg: &InitiatorConfig,
    ) -> Result<Session, InitiatorError> {
        Session::connect(addr, Some(target), cfg)
    }

    pub(super) fn connect(
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
            portal_group_tag: None,
        };
        s.do_login()?;
        Ok(s)
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
        self.portal_group_tag = resp
            .get("TargetPortalGroupTag")
            .and_then(text::parse_number)
            .and_then(|t| u16::try_from(t).ok());
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
}
