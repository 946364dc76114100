//! Bytes from the network, as the target and the initiator decode them: a PDU (header,
//! AHS, digests, data segment) under a negotiated segment limit, its CDB, the text keys of
//! its data segment and their negotiation. Nothing may panic; no data segment above the
//! limit is accepted (and none is allocated: the run's malloc limit catches any allocation
//! sized by an unchecked length).
#![no_main]

use iscsi::params::{SessionParams, TargetLimits, negotiate};
use iscsi::pdu::{self, Digests};
use iscsi::text::TextPairs;
use libfuzzer_sys::fuzz_target;

/// The largest MaxRecvDataSegmentLength RFC 7143 allows.
const MAX_SEGMENT: usize = (1 << 24) - 1;

fuzz_target!(|input: &[u8]| {
    let Some((&[flags, l0, l1, l2], bytes)) = input.split_first_chunk::<4>() else {
        return;
    };
    let d = Digests {
        header: flags & 1 != 0,
        data: flags & 2 != 0,
    };
    let limit = (usize::from(l0) | usize::from(l1) << 8 | usize::from(l2) << 16).min(MAX_SEGMENT);

    if let Ok(Some((p, used))) = pdu::decode(bytes, d, limit) {
        assert!(p.data.len() <= limit);
        assert!(p.ahs.len() <= pdu::MAX_AHS_LEN);
        assert_eq!(used, pdu::wire_len(&p.bhs, d));
        assert!(used <= bytes.len());
        if let Ok(cdb) = p.cdb() {
            assert!(cdb.len() >= 16);
        }
        // What decoded re-encodes to a PDU that decodes to itself (padding bytes, which
        // carry nothing, are zero in the re-encoding).
        let again = p.encode(d);
        assert_eq!(again.len(), used);
        let (q, n) = pdu::decode(&again, d, limit)
            .expect("re-encoded PDU decodes")
            .expect("re-encoded PDU is whole");
        assert_eq!(n, used);
        assert_eq!((q.bhs.0, q.ahs, q.data), (p.bhs.0, p.ahs, p.data));
    }
    let mut r: &[u8] = bytes;
    if let Ok(p) = pdu::read_sync(&mut r, d, limit) {
        assert!(p.data.len() <= limit);
    }

    // The data segment as login/text keys, negotiated as a normal and a discovery session.
    if let Ok(offer) = TextPairs::parse(bytes) {
        assert_eq!(TextPairs::parse(&offer.encode()).as_ref(), Ok(&offer));
        for discovery in [false, true] {
            let ours = TargetLimits::default();
            let mut params = SessionParams::default();
            let mut reply = TextPairs::default();
            negotiate(&offer, &ours, &mut params, &mut reply, discovery);
            assert!(params.max_send_data_segment as usize <= MAX_SEGMENT);
            assert!(params.max_burst as usize <= MAX_SEGMENT);
            assert!(params.first_burst <= params.max_burst);
            assert!(params.max_recv_data_segment <= ours.max_recv_data_segment);
            assert_eq!(params.error_recovery_level, 0);
        }
    }
});
