//! Persistent reservations shared by two targets serving one logical unit (two gateways):
//! one keeps the state and makes each change durable, the other hands every PERSISTENT
//! RESERVE IN/OUT to it; a third unit loads what was made durable, as a gateway taking over
//! does.

mod common;
use std::sync::{Arc, Mutex};

use common::*;
use scsi::sense::{Asc, key};
use scsi::{LogicalUnit, Nexus, Outcome, PrLink, PrState, Sense, Target, status};

/// The serving gateway's link: records every state it is asked to make durable, or fails.
#[derive(Debug, Default)]
struct Durable {
    states: Mutex<Vec<PrState>>,
    fail: Mutex<bool>,
}

impl PrLink for Durable {
    fn persist(&self, state: &PrState) -> Result<(), Sense> {
        if *self.fail.lock().unwrap() {
            return Err(Sense::new(
                key::NOT_READY,
                Asc::LUN_NOT_ACCESSIBLE_ASYMMETRIC_ACCESS_TRANSITION,
            ));
        }
        self.states.lock().unwrap().push(state.clone());
        Ok(())
    }
}

/// A standby gateway's link: runs each command on the serving gateway's unit.
#[derive(Debug)]
struct Relay(Arc<LogicalUnit>, Mutex<usize>);

impl PrLink for Relay {
    fn forward(&self, nexus: &Nexus, cdb: &[u8], data_out: &[u8]) -> Option<Outcome> {
        *self.1.lock().unwrap() += 1;
        Some(self.0.run_forwarded(nexus, TARGET, cdb, data_out))
    }
}

fn pr_out(t: &Target, n: &Nexus, sa: u8, kind: u8, key: u64, sa_key: u64) -> Outcome {
    let mut p = key.to_be_bytes().to_vec();
    p.extend_from_slice(&sa_key.to_be_bytes());
    p.extend_from_slice(&[0; 8]);
    exec(t, n, 0, &[0x5F, sa, kind, 0, 0, 0, 0, 0, 24, 0], &p)
}

fn read_keys(t: &Target, n: &Nexus) -> Vec<u64> {
    let d = good(&exec(t, n, 0, &[0x5E, 0, 0, 0, 0, 0, 0, 0x10, 0, 0], &[])).to_vec();
    d[8..]
        .chunks(8)
        .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
        .collect()
}

const WE_RO: u8 = 5;

struct Two {
    a: Target,
    b: Target,
    unit_a: Arc<LogicalUnit>,
    durable: Arc<Durable>,
    relay: Arc<Relay>,
    /// HOST1 through gateway A's port 1, HOST2 through gateway B's port 2.
    h1: Nexus,
    h2: Nexus,
}

fn two() -> Two {
    let (_, unit_a) = mem_lu(1, 512, 64);
    let (_, unit_b) = mem_lu(1, 512, 64);
    let durable = Arc::new(Durable::default());
    unit_a.set_pr_link(Some(durable.clone()));
    let relay = Arc::new(Relay(unit_a.clone(), Mutex::new(0)));
    unit_b.set_pr_link(Some(relay.clone()));
    let (a, b) = (Target::new(TARGET), Target::new(TARGET));
    for h in [HOST1, HOST2] {
        a.map(h, 0, unit_a.clone());
        b.map(h, 0, unit_b.clone());
    }
    let (h1, h2) = (nexus(HOST1, 1, 1), nexus(HOST2, 2, 2));
    clear_ua(&a, &h1, 0);
    clear_ua(&b, &h2, 0);
    Two {
        a,
        b,
        unit_a,
        durable,
        relay,
        h1,
        h2,
    }
}

#[test]
fn a_registration_through_either_target_lands_in_the_one_state_and_is_made_durable() {
    let t = two();
    good(&pr_out(&t.b, &t.h2, 0, 0, 0, 0xB));
    good(&pr_out(&t.a, &t.h1, 0, 0, 0, 0xA));
    good(&pr_out(&t.a, &t.h1, 1, WE_RO, 0xA, 0));
    // Both targets read the same keys: B's through its link.
    assert_eq!(read_keys(&t.a, &t.h1), vec![0xB, 0xA]);
    assert_eq!(read_keys(&t.b, &t.h2), vec![0xB, 0xA]);
    assert_eq!(*t.relay.1.lock().unwrap(), 2, "B ran nothing itself");
    // Every change was made durable, in order; reads were not.
    let states = t.durable.states.lock().unwrap().clone();
    assert_eq!(states.len(), 3);
    assert_eq!(states[0].keys(), vec![0xB]);
    assert_eq!(states[2].reservation(), Some((WE_RO, 0xA)));
    assert_eq!(states[2], t.unit_a.reservations());
    // HOST2 registered through B's port (2): as a registrant it may write through port 2
    // (WRITE EXCLUSIVE - REGISTRANTS ONLY), not through port 1 where it never registered.
    let h2_on_a = nexus(HOST2, 2, 1);
    clear_ua(&t.a, &h2_on_a, 0);
    let w = exec(&t.a, &h2_on_a, 0, &write10(0, 1, false), &[7; 512]);
    assert_eq!(w.status, status::RESERVATION_CONFLICT);
    let h2_port2_on_a = nexus(HOST2, 2, 2);
    clear_ua(&t.a, &h2_port2_on_a, 0);
    good(&exec(
        &t.a,
        &h2_port2_on_a,
        0,
        &write10(0, 1, false),
        &[7; 512],
    ));
}

#[test]
fn a_change_that_cannot_be_made_durable_is_undone_and_fails() {
    let t = two();
    good(&pr_out(&t.a, &t.h1, 0, 0, 0, 0xA));
    *t.durable.fail.lock().unwrap() = true;
    let o = pr_out(&t.b, &t.h2, 0, 0, 0, 0xB);
    assert_eq!(sense_of(&o), (key::NOT_READY, 0x04, 0x0A));
    let o = pr_out(&t.a, &t.h1, 1, WE_RO, 0xA, 0);
    assert_eq!(sense_of(&o), (key::NOT_READY, 0x04, 0x0A));
    *t.durable.fail.lock().unwrap() = false;
    assert_eq!(read_keys(&t.a, &t.h1), vec![0xA]);
    assert_eq!(t.unit_a.reservations().reservation(), None);
    // A command that changes nothing (RELEASE with no reservation) needs nothing made
    // durable.
    let before = t.durable.states.lock().unwrap().len();
    good(&pr_out(&t.a, &t.h1, 2, WE_RO, 0xA, 0));
    assert_eq!(t.durable.states.lock().unwrap().len(), before);
}

#[test]
fn a_unit_loading_the_durable_state_enforces_it_as_the_first_did() {
    let t = two();
    good(&pr_out(&t.b, &t.h2, 0, 0, 0, 0xB));
    good(&pr_out(&t.a, &t.h1, 0, 0, 0, 0xA));
    good(&pr_out(&t.a, &t.h1, 1, WE_RO, 0xA, 0));
    let kept = t.durable.states.lock().unwrap().last().cloned().unwrap();
    // Through the shared state's own encoding.
    let json = serde_json::to_string(&kept).unwrap();
    let back: PrState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, kept);
    // Gateway B takes over: its unit now keeps the state itself.
    let (_, unit_b) = mem_lu(1, 512, 64);
    unit_b.load_reservations(back);
    let b = Target::new(TARGET);
    let h3 = nexus("iqn.1991-05.com.microsoft:host3", 3, 2);
    for (h, n) in [(HOST2, &t.h2), (HOST1, &t.h1)] {
        b.map(h, 0, unit_b.clone());
        clear_ua(&b, n, 0);
    }
    b.map(&h3.initiator, 0, unit_b.clone());
    clear_ua(&b, &h3, 0);
    assert_eq!(read_keys(&b, &t.h2), vec![0xB, 0xA]);
    good(&exec(&b, &t.h2, 0, &write10(0, 1, false), &[2; 512]));
    let w = exec(&b, &h3, 0, &write10(0, 1, false), &[3; 512]);
    assert_eq!(w.status, status::RESERVATION_CONFLICT);
    // The registrant that survived preempts the holder, now through B itself.
    good(&pr_out(&b, &t.h2, 4, WE_RO, 0xB, 0xA));
    assert_eq!(read_keys(&b, &t.h2), vec![0xB]);
    assert_eq!(unit_b.reservations().reservation(), Some((WE_RO, 0xB)));
}

#[test]
fn only_reservation_commands_are_run_for_another_target() {
    let (_, unit) = mem_lu(1, 512, 64);
    let n = nexus(HOST1, 1, 2);
    let o = unit.run_forwarded(&n, TARGET, &write10(0, 1, false), &[0; 512]);
    assert_eq!(sense_of(&o), (key::ILLEGAL_REQUEST, 0x20, 0x00));
    let o = unit.run_forwarded(&n, TARGET, &[0x5E, 0, 0, 0, 0, 0, 0, 0x10, 0, 0], &[]);
    assert_eq!(o.status, status::GOOD);
}
