//! Text requests in the full feature phase: SendTargets (answered in pieces when longer
//! than one PDU) and operational keys renegotiated after login.

use super::*;

/// A remaining SendTargets answer, sent in pieces when longer than one PDU.
pub(super) struct TextRemainder {
    pub(super) ttt: u32,
    pub(super) data: Vec<u8>,
}

impl Session {
    pub(super) fn send_targets(&self, which: &str) -> Vec<u8> {
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
            // Every portal of every port, each with its port's tag (RFC 7143 appendix C);
            // a wildcard portal is given as the address this connection reached.
            for port in &shared.ports {
                for a in &port.portals {
                    let ip = match self.local {
                        Some(l) if a.ip().is_unspecified() => l.ip(),
                        _ => a.ip(),
                    };
                    let host = match ip {
                        std::net::IpAddr::V4(v) => v.to_string(),
                        std::net::IpAddr::V6(v) => format!("[{v}]"),
                    };
                    pairs.push((
                        "TargetAddress".to_string(),
                        format!("{}:{},{}", host, a.port(), port.portal_group_tag),
                    ));
                }
            }
        }
        out.0 = pairs;
        out.encode()
    }

    pub(super) async fn on_text(&mut self, p: Pdu) -> Result<(), ConnError> {
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

    pub(super) async fn send_text_chunk(
        &mut self,
        mut b: Bhs,
        mut data: Vec<u8>,
    ) -> Result<(), ConnError> {
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
}
