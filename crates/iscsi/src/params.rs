//! Operational parameters (RFC 7143 §13) and the target side of their negotiation.

use crate::text::{TextPairs, parse_number};

/// What one side of a connection has agreed to use. Defaults are the RFC defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionParams {
    pub header_digest: bool,
    pub data_digest: bool,
    /// The most data this side may put in one PDU to the peer (the peer's declared
    /// MaxRecvDataSegmentLength).
    pub max_send_data_segment: u32,
    /// What this side declared it can receive.
    pub max_recv_data_segment: u32,
    pub max_burst: u32,
    pub first_burst: u32,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub max_outstanding_r2t: u32,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub default_time2wait: u32,
    pub default_time2retain: u32,
    pub error_recovery_level: u32,
}

impl Default for SessionParams {
    fn default() -> Self {
        SessionParams {
            header_digest: false,
            data_digest: false,
            max_send_data_segment: 8192,
            max_recv_data_segment: 8192,
            max_burst: 262_144,
            first_burst: 65_536,
            immediate_data: true,
            initial_r2t: true,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            default_time2wait: 2,
            default_time2retain: 20,
            error_recovery_level: 0,
        }
    }
}

/// The target's own limits and preferences.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetLimits {
    /// Declared MaxRecvDataSegmentLength (what the target can receive in one PDU).
    pub max_recv_data_segment: u32,
    pub max_burst: u32,
    pub first_burst: u32,
    pub max_outstanding_r2t: u32,
    /// Whether the target accepts CRC32C digests when the initiator proposes them.
    pub allow_digests: bool,
    pub default_time2wait: u32,
    pub default_time2retain: u32,
}

impl Default for TargetLimits {
    fn default() -> Self {
        TargetLimits {
            max_recv_data_segment: 262_144,
            max_burst: 16 * 1024 * 1024,
            first_burst: 16 * 1024 * 1024,
            max_outstanding_r2t: 8,
            allow_digests: true,
            default_time2wait: 2,
            default_time2retain: 0,
        }
    }
}

/// Keys that are declarative or handled by the login state machine rather than here.
const LOGIN_KEYS: &[&str] = &[
    "InitiatorName",
    "InitiatorAlias",
    "TargetName",
    "SessionType",
    "AuthMethod",
    "CHAP_A",
    "CHAP_I",
    "CHAP_C",
    "CHAP_N",
    "CHAP_R",
    "TargetAlias",
    "TargetAddress",
    "TargetPortalGroupTag",
];

fn bool_value(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "Yes" } else { "No" }
}

/// The upper bound RFC 7143 allows for the byte-count keys.
const MAX_LEN_KEY: u64 = (1 << 24) - 1;

/// Negotiates the operational keys in `offer` and appends the target's answers to `reply`.
/// Keys the target does not know are answered `NotUnderstood`; out-of-range values `Reject`.
/// `discovery` restricts the answer to the keys valid in a discovery session.
pub fn negotiate(
    offer: &TextPairs,
    ours: &TargetLimits,
    p: &mut SessionParams,
    reply: &mut TextPairs,
    discovery: bool,
) {
    for (key, value) in &offer.0 {
        let k = key.as_str();
        if LOGIN_KEYS.contains(&k) {
            continue;
        }
        let num = || parse_number(value);
        match k {
            "HeaderDigest" | "DataDigest" => {
                let mut chosen = None;
                for opt in value.split(',') {
                    match opt {
                        "CRC32C" if ours.allow_digests => {
                            chosen = Some(true);
                            break;
                        }
                        "None" => {
                            chosen = Some(false);
                            break;
                        }
                        _ => {}
                    }
                }
                match chosen {
                    Some(on) => {
                        if k == "HeaderDigest" {
                            p.header_digest = on
                        } else {
                            p.data_digest = on
                        }
                        reply.push(k, if on { "CRC32C" } else { "None" });
                    }
                    None => reply.push(k, "Reject"),
                }
            }
            "MaxRecvDataSegmentLength" => match num() {
                Some(n) if (512..=MAX_LEN_KEY).contains(&n) => p.max_send_data_segment = n as u32,
                _ => reply.push(k, "Reject"),
            },
            "MaxConnections" => match num() {
                Some(n) if (1..=65535).contains(&n) => reply.push(k, "1"),
                _ => reply.push(k, "Reject"),
            },
            "MaxBurstLength" | "FirstBurstLength" if !discovery => match num() {
                Some(n) if (512..=MAX_LEN_KEY).contains(&n) => {
                    let ourv = if k == "MaxBurstLength" {
                        ours.max_burst
                    } else {
                        ours.first_burst
                    };
                    let v = (n as u32).min(ourv);
                    if k == "MaxBurstLength" {
                        p.max_burst = v
                    } else {
                        p.first_burst = v
                    }
                    reply.push(k, v.to_string());
                }
                _ => reply.push(k, "Reject"),
            },
            "MaxOutstandingR2T" if !discovery => match num() {
                Some(n) if (1..=65535).contains(&n) => {
                    let v = (n as u32).min(ours.max_outstanding_r2t);
                    p.max_outstanding_r2t = v;
                    reply.push(k, v.to_string());
                }
                _ => reply.push(k, "Reject"),
            },
            "DefaultTime2Wait" => match num() {
                Some(n) if n <= 3600 => {
                    let v = (n as u32).max(ours.default_time2wait);
                    p.default_time2wait = v;
                    reply.push(k, v.to_string());
                }
                _ => reply.push(k, "Reject"),
            },
            "DefaultTime2Retain" => match num() {
                Some(n) if n <= 3600 => {
                    let v = (n as u32).min(ours.default_time2retain);
                    p.default_time2retain = v;
                    reply.push(k, v.to_string());
                }
                _ => reply.push(k, "Reject"),
            },
            "ErrorRecoveryLevel" => match num() {
                Some(n) if n <= 2 => {
                    p.error_recovery_level = 0;
                    reply.push(k, "0");
                }
                _ => reply.push(k, "Reject"),
            },
            // Boolean keys with OR semantics: the result is Yes if either side says Yes.
            "InitialR2T" | "DataPDUInOrder" | "DataSequenceInOrder" if !discovery => {
                match bool_value(value) {
                    Some(b) => {
                        // The target says No to InitialR2T (it accepts unsolicited data) and
                        // Yes to in-order delivery, so the results are:
                        let v = match k {
                            "InitialR2T" => b,
                            _ => true,
                        };
                        match k {
                            "InitialR2T" => p.initial_r2t = v,
                            "DataPDUInOrder" => p.data_pdu_in_order = v,
                            _ => p.data_sequence_in_order = v,
                        }
                        reply.push(k, yes_no(v));
                    }
                    None => reply.push(k, "Reject"),
                }
            }
            // AND semantics: the target says Yes to ImmediateData, so the initiator decides.
            "ImmediateData" if !discovery => match bool_value(value) {
                Some(b) => {
                    p.immediate_data = b;
                    reply.push(k, yes_no(b));
                }
                None => reply.push(k, "Reject"),
            },
            // Markers were removed by RFC 7143; answer No (AND semantics) or Irrelevant.
            "IFMarker" | "OFMarker" => reply.push(k, "No"),
            "IFMarkInt" | "OFMarkInt" => reply.push(k, "Irrelevant"),
            "iSCSIProtocolLevel" => match num() {
                Some(n) if n <= 31 => reply.push(k, n.min(1).to_string()),
                _ => reply.push(k, "Reject"),
            },
            _ => reply.push(k, "NotUnderstood"),
        }
    }
    p.max_recv_data_segment = ours.max_recv_data_segment;
    if p.first_burst > p.max_burst {
        p.first_burst = p.max_burst;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(s: &str) -> TextPairs {
        TextPairs::parse(s.replace(';', "\0").as_bytes()).unwrap()
    }

    #[test]
    fn microsoft_initiator_proposal_is_accepted() {
        // What the Microsoft iSCSI initiator sends in the operational stage.
        let o = offer(
            "HeaderDigest=None;DataDigest=None;ErrorRecoveryLevel=0;InitialR2T=Yes;\
             ImmediateData=Yes;MaxBurstLength=262144;FirstBurstLength=65536;\
             MaxOutstandingR2T=1;MaxConnections=1;DataPDUInOrder=Yes;\
             DataSequenceInOrder=Yes;DefaultTime2Wait=2;DefaultTime2Retain=20;\
             IFMarker=No;OFMarker=No;MaxRecvDataSegmentLength=65536",
        );
        let mut p = SessionParams::default();
        let mut r = TextPairs::default();
        negotiate(&o, &TargetLimits::default(), &mut p, &mut r, false);
        assert_eq!(r.get("HeaderDigest"), Some("None"));
        assert_eq!(r.get("InitialR2T"), Some("Yes"));
        assert_eq!(r.get("ImmediateData"), Some("Yes"));
        assert_eq!(r.get("MaxBurstLength"), Some("262144"));
        assert_eq!(r.get("FirstBurstLength"), Some("65536"));
        assert_eq!(r.get("MaxOutstandingR2T"), Some("1"));
        assert_eq!(r.get("MaxConnections"), Some("1"));
        assert_eq!(r.get("DefaultTime2Retain"), Some("0"));
        assert_eq!(r.get("IFMarker"), Some("No"));
        assert!(
            !r.0.iter()
                .any(|(_, v)| v == "Reject" || v == "NotUnderstood")
        );
        assert_eq!(p.max_send_data_segment, 65536);
        assert!(p.initial_r2t && p.immediate_data);
    }

    #[test]
    fn digests_pick_the_first_supported_choice_and_unknown_keys_are_not_understood() {
        let o = offer(
            "HeaderDigest=CRC32C,None;DataDigest=Foo,None;X-com.example.Key=1;MaxBurstLength=1",
        );
        let mut p = SessionParams::default();
        let mut r = TextPairs::default();
        negotiate(&o, &TargetLimits::default(), &mut p, &mut r, false);
        assert_eq!(r.get("HeaderDigest"), Some("CRC32C"));
        assert_eq!(r.get("DataDigest"), Some("None"));
        assert_eq!(r.get("X-com.example.Key"), Some("NotUnderstood"));
        assert_eq!(r.get("MaxBurstLength"), Some("Reject"));
        assert!(p.header_digest && !p.data_digest);
    }

    #[test]
    fn first_burst_never_exceeds_max_burst() {
        let o = offer("MaxBurstLength=4096;FirstBurstLength=65536");
        let mut p = SessionParams::default();
        let mut r = TextPairs::default();
        negotiate(&o, &TargetLimits::default(), &mut p, &mut r, false);
        assert_eq!(p.max_burst, 4096);
        assert_eq!(p.first_burst, 4096);
    }
}
