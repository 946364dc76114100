//! Arbitrary bytes fed to the PDU and text-key decoders: they return values or typed errors,
//! never panic, and never accept a data segment above the limit.

use iscsi::pdu::{self, Digests};
use iscsi::text::{self, TextPairs};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn pdu_decoder_never_panics_and_respects_the_segment_limit(
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
        header in any::<bool>(),
        data in any::<bool>(),
        limit in 0usize..512,
    ) {
        let d = Digests { header, data };
        if let Ok(Some((p, used))) = pdu::decode(&bytes, d, limit) {
            prop_assert!(p.data.len() <= limit);
            prop_assert!(used <= bytes.len());
            prop_assert!(p.ahs.len() <= pdu::MAX_AHS_LEN);
            let _ = p.cdb();
        }
        let mut r: &[u8] = &bytes;
        if let Ok(p) = pdu::read_sync(&mut r, d, limit) {
            prop_assert!(p.data.len() <= limit);
        }
    }

    #[test]
    fn any_ahs_area_parses_or_fails_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(segs) = pdu::parse_ahs(&bytes) {
            for s in segs {
                prop_assert!(s.body.len() == s.length as usize);
            }
        }
    }

    #[test]
    fn text_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        if let Ok(t) = TextPairs::parse(&bytes) {
            prop_assert!(t.0.len() <= text::MAX_PAIRS);
            // Whatever parsed re-encodes and parses to the same pairs.
            prop_assert_eq!(TextPairs::parse(&t.encode()).unwrap(), t);
        }
    }

    #[test]
    fn binary_and_number_values_never_panic(s in "\\PC{0,80}") {
        let _ = text::decode_binary(&s);
        let _ = text::parse_number(&s);
    }

    #[test]
    fn encoded_pdus_decode_to_themselves(
        opcode in 0u8..0x40,
        itt in any::<u32>(),
        data in proptest::collection::vec(any::<u8>(), 0..300),
        header in any::<bool>(),
        dd in any::<bool>(),
    ) {
        let mut b = pdu::Bhs::new(opcode);
        b.set_itt(itt);
        let p = pdu::Pdu::with_data(b, data.clone());
        let d = Digests { header, data: dd };
        let wire = p.encode(d);
        let (q, used) = pdu::decode(&wire, d, 300).unwrap().unwrap();
        prop_assert_eq!(used, wire.len());
        prop_assert_eq!(pdu::wire_len(&q.bhs, d), wire.len());
        prop_assert_eq!(q.data, data);
        prop_assert_eq!(q.bhs.itt(), itt);
    }
}
