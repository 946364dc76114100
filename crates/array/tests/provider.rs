//! The provider's own HTTPS client (`provider::https::HttpsArray`) driving this server: the
//! two sides of the wire contract, compiled separately, agree verb by verb.

mod common;

use api::*;
use common::*;
use provider::ArrayControl;
use provider::array::ControlError as PErr;
use provider::https::{ClientConfig, HttpsArray};

const IQN_A: &str = "iqn.1991-05.com.microsoft:host-a";
const IQN_B: &str = "iqn.1991-05.com.microsoft:host-b";

fn provider_for(t: &TestArray, token: &str) -> HttpsArray {
    let url = format!("https://{}", t.running().api_addr);
    HttpsArray::new(ClientConfig::new(&url, token, &t.running().fingerprint)).unwrap()
}

fn key(t: &TestArray, lun: &str) -> LunKey {
    let ident = t.identity(lun);
    LunKey {
        identifiers: ident.designators.iter().map(Into::into).collect(),
    }
}

#[test]
fn provider_client_runs_a_whole_set_against_the_server() {
    let t = TestArray::start();
    let mut admin = t.admin();
    let (lun, tok) = lun_for_host(&mut admin, "data", "a", IQN_A);
    let p = provider_for(&t, &tok);
    let found = p.lookup(&[key(&t, &lun)]).unwrap();
    assert_eq!(found[0].as_ref().unwrap().id, lun);
    let set = uuid::Uuid::new_v4();
    let plan = vec![PlannedSnapshot {
        snapshot_id: uuid::Uuid::new_v4(),
        source: lun.clone(),
    }];
    p.prepare(set, vss::SnapshotContext(0), &plan).unwrap();
    p.prepare(set, vss::SnapshotContext(0), &plan).unwrap();
    p.end_prepare(set).unwrap();
    p.commit(set).unwrap();
    p.commit(set).unwrap();
    let d = p.describe(set, std::slice::from_ref(&lun)).unwrap();
    let snap = d[0].lun.clone();
    let origin = p.lookup(&[key(&t, &snap)]).unwrap()[0]
        .clone()
        .unwrap()
        .snapshot_of
        .unwrap();
    assert_eq!((origin.source, origin.set_id), (lun.clone(), set));
    p.complete(set).unwrap();
    assert!(matches!(p.abort(set), Err(PErr::Conflict(_))));
    p.expose(std::slice::from_ref(&snap)).unwrap();
    p.mask(std::slice::from_ref(&snap)).unwrap();
    let job = p
        .start_resync(&[ResyncPair {
            snapshot: snap.clone(),
            destination: lun.clone(),
        }])
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while p.resync_status(&job).unwrap().state == JobState::Running {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(p.resync_status(&job).unwrap().state, JobState::Finished);
    p.cancel_resync(&job).unwrap();
    let sets = p.list_sets().unwrap();
    assert_eq!((sets.len(), sets[0].state), (1, SetState::Completed));
    p.release(&snap).unwrap();
    assert!(matches!(p.release(&snap), Err(PErr::NotFound(_))));
    assert!(matches!(p.release(&lun), Err(PErr::Conflict(_))));
}

#[test]
fn provider_client_sees_scope_and_auth_errors_as_typed_errors() {
    let t = TestArray::start();
    let mut admin = t.admin();
    let (lun_a, tok_a) = lun_for_host(&mut admin, "la", "a", IQN_A);
    let (_, tok_b) = lun_for_host(&mut admin, "lb", "b", IQN_B);
    let (a, b) = (provider_for(&t, &tok_a), provider_for(&t, &tok_b));
    assert_eq!(b.lookup(&[key(&t, &lun_a)]).unwrap(), vec![None]);
    let set = uuid::Uuid::new_v4();
    let plan = vec![PlannedSnapshot {
        snapshot_id: uuid::Uuid::new_v4(),
        source: lun_a.clone(),
    }];
    assert!(matches!(
        b.prepare(set, vss::SnapshotContext(0), &plan),
        Err(PErr::NotFound(_))
    ));
    a.prepare(set, vss::SnapshotContext(0), &plan).unwrap();
    assert!(matches!(b.commit(set), Err(PErr::Unauthorized(_))));
    assert!(matches!(
        a.commit(uuid::Uuid::new_v4()),
        Err(PErr::NotFound(_))
    ));
    let stranger = provider_for(&t, "not-a-token");
    assert!(matches!(stranger.list_sets(), Err(PErr::Unauthorized(_))));
}
