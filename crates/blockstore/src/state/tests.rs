use super::*;
use proptest::prelude::*;

/// A state with shared trees: a volume, a snapshot, a clone with its own changes.
fn sample() -> State {
    let mut st = State::new(1000);
    st.apply(Record::CreateVolume {
        id: 1,
        size: 300 * CHUNK_SIZE,
        created: 1,
        name: "v".into(),
    })
    .unwrap();
    for idx in [0u32, 1, 255, 256, 299] {
        let phys = st.alloc_chunk().unwrap();
        st.apply(Record::SetEntry {
            vol: 1,
            idx,
            entry: Entry {
                phys,
                under: 0,
                mask: FULL_MASK,
            },
        })
        .unwrap();
        st.unreserve_chunk(phys);
    }
    st.apply(Record::Snapshot {
        src: 1,
        id: 2,
        kind: VolumeKind::Snapshot,
        created: 2,
        name: "s".into(),
    })
    .unwrap();
    let phys = st.alloc_chunk().unwrap();
    let under = st.lookup(st.vols[&1].root, 1).0.phys;
    st.apply(Record::SetEntry {
        vol: 1,
        idx: 1,
        entry: Entry {
            phys,
            under,
            mask: 1,
        },
    })
    .unwrap();
    st.unreserve_chunk(phys);
    let (_, rel) = st.take_pending();
    st.apply_releases(rel);
    st
}

/// A record naming the last volume id is refused, not an overflow of the next id (found
/// by the `engine_metadata` fuzz target, from a log record).
#[test]
fn the_last_volume_id_is_refused() {
    let mut st = sample();
    let err = st
        .replay(vec![Record::CreateVolume {
            id: u64::MAX,
            size: CHUNK_SIZE,
            created: 3,
            name: "last".into(),
        }])
        .unwrap_err();
    assert!(err.reason.contains("out of range"), "{}", err.reason);
    let err = st
        .replay(vec![Record::Snapshot {
            src: 1,
            id: u64::MAX,
            kind: VolumeKind::Snapshot,
            created: 3,
            name: "last".into(),
        }])
        .unwrap_err();
    assert!(err.reason.contains("out of range"), "{}", err.reason);
    assert_eq!(st.vols.len(), 2);
    assert_eq!(st.next_vol_id, 3);
}

fn mapping(st: &State, id: u64) -> Vec<(u32, Entry)> {
    let mut out = Vec::new();
    st.walk(st.vols[&id].root, 0, 0, &mut |i, e, _| out.push((i, e)));
    out
}

#[test]
fn a_checkpoint_round_trips_mappings_sharing_and_counts() {
    let st = sample();
    let back = State::decode_checkpoint(&st.encode_checkpoint(), MAX_CHUNK).unwrap();
    for id in [1, 2] {
        assert_eq!(mapping(&st, id), mapping(&back, id));
        assert_eq!(
            st.accounting(st.vols[&id].root),
            back.accounting(back.vols[&id].root)
        );
    }
    assert_eq!(back.node_count(), st.node_count());
    assert_eq!(back.used_chunks, st.used_chunks);
    assert_eq!(back.next_vol_id, 3);
}

#[test]
fn a_checkpoint_naming_chunks_beyond_the_data_file_is_refused() {
    let st = sample();
    assert!(State::decode_checkpoint(&st.encode_checkpoint(), 3).is_err());
}

proptest! {
    #[test]
    fn the_checkpoint_decoder_never_panics_on_garbage(
        bytes in proptest::collection::vec(any::<u8>(), 0..512)
    ) {
        let _ = State::decode_checkpoint(&bytes, 4096);
    }

    #[test]
    fn the_checkpoint_decoder_never_panics_on_damaged_checkpoints(
        edits in proptest::collection::vec((any::<u16>(), any::<u8>()), 1..6),
        cut in proptest::option::of(any::<u16>()),
    ) {
        let mut b = sample().encode_checkpoint();
        for (at, v) in edits {
            let i = at as usize % b.len();
            b[i] = v;
        }
        if let Some(c) = cut {
            b.truncate(c as usize % (b.len() + 1));
        }
        if let Ok(mut st) = State::decode_checkpoint(&b, 4096) {
            // A decoded state is internally consistent enough to use and to delete.
            let ids: Vec<u64> = st.vols.keys().copied().collect();
            for id in ids {
                let _ = st.accounting(st.vols[&id].root);
                st.apply(Record::Delete { id }).unwrap();
            }
            let (_, rel) = st.take_pending();
            st.apply_releases(rel);
            prop_assert_eq!(st.node_count(), 0);
        }
    }

    #[test]
    fn replaying_damaged_records_never_panics(
        edits in proptest::collection::vec((any::<u16>(), any::<u8>()), 1..6),
    ) {
        let mut e = Enc::default();
        let recs = [
            Record::CreateVolume { id: 5, size: 8 * CHUNK_SIZE, created: 0, name: "x".into() },
            Record::SetEntry { vol: 5, idx: 3, entry: Entry { phys: 9, under: 0, mask: 3 } },
            Record::Snapshot { src: 5, id: 6, kind: VolumeKind::Clone, created: 0, name: "y".into() },
            Record::SetEntry { vol: 6, idx: 3, entry: Entry { phys: 10, under: 9, mask: 1 } },
            Record::Resize { id: 6, size: CHUNK_SIZE },
            Record::Delete { id: 5 },
        ];
        for r in &recs {
            r.encode(&mut e);
        }
        let mut b = e.buf;
        for (at, v) in edits {
            let i = at as usize % b.len();
            b[i] = v;
        }
        let mut st = sample();
        st.chunk_bound = 64;
        if let Ok(recs) = crate::format::decode_records(&b) {
            let _ = st.replay(recs);
            let (_, rel) = st.take_pending();
            st.apply_releases(rel);
        }
    }
}
