//! The provider relay's line protocol as its serving side reads it (`lab::relay::serve`, what
//! the Wine lab's COM client and `shadowlun vss` talk to): any bytes, split into lines, run as
//! calls on a real `ShadowlunProvider` over the real array on the memory engine. Nothing
//! panics, the relay ends cleanly at the end of its input, and every non-blank line gets
//! exactly one answer, a JSON object with the call's id (0 for a line that is not a call).
//!
//! Each input gets a fresh provider; the array (one host, one LUN) is rebuilt every
//! [`REBUILD`] inputs. Seeds, each call alone and a whole snapshot set:
//! `SHADOWLUN_FUZZ_SEEDS=<dir> cargo fuzz run relay -- -runs=0`.
#![no_main]

use std::cell::RefCell;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lab::memory_array::MemoryArray;
use lab::relay::{Call, serve};
use libfuzzer_sys::fuzz_target;
use provider::{HardwareProvider, ProviderConfig, ShadowlunProvider};
use shadowlun_fuzz::{seed_dir, write_seed};
use vss::{BusType, HardwareOptions, LunInfo, SnapshotContext, VssId};

const IQN: &str = "iqn.1991-05.com.microsoft:relay-fuzz";
const REBUILD: u64 = 1000;

struct Rig {
    array: MemoryArray,
    lun: LunInfo,
    served: u64,
}

impl Rig {
    fn new() -> Rig {
        let array = MemoryArray::new();
        let id = array.create_lun(1 << 20, &[IQN]);
        let identity = array.identity(&id).expect("the LUN's identity");
        let lun = LunInfo::from_identity(&identity, BusType::ISCSI).expect("a LUN info");
        Rig {
            array,
            lun,
            served: 0,
        }
    }
}

/// The relay's output, kept after `serve` consumed its writer.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The provider's defaults, but a resync job polled every millisecond rather than every 50:
/// the memory array finishes a resync at once, and a 50 ms sleep per `ResyncLuns` call would
/// hold the fuzzer to a few hundred inputs a second.
fn config() -> ProviderConfig {
    ProviderConfig {
        resync_poll: Duration::from_millis(1),
        ..ProviderConfig::default()
    }
}

thread_local! {
    static RIG: RefCell<Option<Rig>> = const { RefCell::new(None) };
}

fn run(input: &[u8]) {
    RIG.with_borrow_mut(|slot| {
        if slot.as_ref().is_none_or(|r| r.served >= REBUILD) {
            *slot = None;
            *slot = Some(Rig::new());
        }
        let rig = slot.as_mut().unwrap();
        rig.served += 1;
        let provider: Arc<dyn HardwareProvider> = Arc::new(ShadowlunProvider::with_config(
            rig.array.client(IQN),
            config(),
            Arc::new(provider::TracingEvents),
        ));
        let out = Sink::default();
        serve(provider, input, out.clone(), || {}).expect("the relay ends cleanly");
        let asked = input
            .split_inclusive(|&b| b == b'\n')
            .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
            .count();
        let out = out.0.lock().unwrap();
        let answers: Vec<&[u8]> = out.split_inclusive(|&b| b == b'\n').collect();
        assert_eq!(answers.len(), asked, "one answer per call line");
        for a in answers {
            assert_eq!(a.last(), Some(&b'\n'), "an answer is a whole line");
            let v: serde_json::Value =
                serde_json::from_slice(a).expect("an answer is one JSON value");
            assert!(v["id"].is_u64(), "an answer carries its call's id: {v}");
        }
    });
}

fn write_seeds() {
    let Some(dir) = seed_dir() else { return };
    let rig = Rig::new();
    let lun = rig.lun.clone();
    let ctx = SnapshotContext(0);
    let set = VssId::from_u128(0x5e7);
    let device = "\\\\?\\disk1".to_string();
    let devices = vec![device.clone()];
    let luns = vec![lun.clone()];
    let whole_set = [
        Call::AreLunsSupported {
            context: ctx,
            devices: devices.clone(),
            luns: luns.clone(),
        },
        Call::BeginPrepareSnapshot {
            set_id: set,
            snapshot_id: VssId::from_u128(1),
            context: ctx,
            devices: devices.clone(),
            luns: luns.clone(),
        },
        Call::EndPrepareSnapshots { set_id: set },
        Call::PreCommitSnapshots { set_id: set },
        Call::CommitSnapshots { set_id: set },
        Call::PostCommitSnapshots {
            set_id: set,
            snapshot_count: 1,
        },
        Call::PreFinalCommitSnapshots { set_id: set },
        Call::PostFinalCommitSnapshots { set_id: set },
        Call::GetTargetLuns {
            devices: devices.clone(),
            sources: luns.clone(),
            destinations: luns.clone(),
        },
    ];
    let others = [
        Call::FillInLunInfo {
            device: device.clone(),
            lun: lun.clone(),
        },
        Call::LocateLuns { luns: luns.clone() },
        Call::OnLunEmpty {
            device: device.clone(),
            lun: lun.clone(),
        },
        Call::GetProviderCapabilities,
        Call::OnLunStateChange {
            snapshot_luns: luns.clone(),
            original_luns: luns.clone(),
            flags: HardwareOptions::BREAKEX_FLAG_MASK_LUNS,
        },
        Call::ResyncLuns {
            sources: luns.clone(),
            targets: luns.clone(),
        },
        Call::OnReuseLuns {
            snapshot_luns: luns.clone(),
            original_luns: luns.clone(),
        },
        Call::AbortSnapshots { set_id: set },
        Call::OnLoad,
        Call::OnUnload { force: false },
        Call::AsyncWait {
            operation: 1,
            timeout_ms: Some(10),
        },
        Call::AsyncQueryStatus { operation: 1 },
        Call::AsyncCancel { operation: 1 },
        Call::AsyncRelease { operation: 1 },
    ];
    let line = |id: usize, call: &Call| {
        let mut l = serde_json::to_vec(&serde_json::json!({ "id": id, "call": call })).unwrap();
        l.push(b'\n');
        l
    };
    let mut all = Vec::new();
    for (i, call) in whole_set.iter().chain(others.iter()).enumerate() {
        let l = line(i + 1, call);
        write_seed(&dir, &format!("call-{i:02}"), &l);
        if i < whole_set.len() {
            all.extend_from_slice(&l);
        }
    }
    write_seed(&dir, "whole-set", &all);
    write_seed(
        &dir,
        "not-a-call",
        b"{\"id\":9,\"call\":{\"method\":\"Nope\"}}\n\n  \nnot json",
    );
}

fuzz_target!(init: write_seeds(), |input: &[u8]| run(input));
