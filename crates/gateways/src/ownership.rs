//! Which gateway serves each unit (a LUN, for the array): one owner per unit, decided by the
//! leader alone from the gateways' leases, never by where I/O arrives.
//!
//! The state holds, beside the caller's rows:
//! - `owner.<unit>`: the owning gateway's id (a JSON string);
//! - `gateway.<id>`: the Ceph client a gateway had when the leader last saw it live
//!   (`{"client": "client.N", "addr": "..."}`), so that any leader, even one that never saw
//!   it, can fence it before handing its units to another;
//! - `drain.<id>`: `true` while a gateway is drained: it keeps serving until its units have
//!   moved, and gets none until the mark is removed.
//!
//! The rules ([`plan`]): a unit whose owner is live and not draining stays where it is; a
//! unit without an owner, or whose owner's lease is gone or which is draining, goes to the
//! eligible gateway with the fewest units (ties by id); then units move one by one from the
//! busiest gateway to the least busy until no two differ by more than one, so a gateway
//! that joins takes its share. Nothing else moves a unit: not where I/O arrives, not a
//! gateway's opinion. Before a commit takes units from a
//! gateway whose lease is gone, or records a gateway under a new client, the steward
//! blocklists the client recorded for it ([`Steward`]): a gateway that was only paused or cut
//! off can then no longer reach the cluster, so it cannot write behind its successor.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Change, Error, Leader, MemberInfo, Membership, Result, State};

/// Prefix of the owner rows: `owner.<unit>`.
pub const OWNER: &str = "owner.";
/// Prefix of the gateway rows: `gateway.<id>`.
pub const GATEWAY: &str = "gateway.";
/// Prefix of the drain marks: `drain.<id>`.
pub const DRAIN: &str = "drain.";

/// A gateway's Ceph client as the leader recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRecord {
    pub client: String,
    pub addr: String,
}

/// Ownership as recorded in the state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owners {
    /// Each unit's owner.
    pub owners: BTreeMap<String, String>,
    /// Each gateway's client, as last recorded.
    pub clients: BTreeMap<String, ClientRecord>,
    /// Gateways being drained.
    pub draining: BTreeSet<String>,
}

fn corrupt(key: &str, detail: impl Into<String>) -> Error {
    Error::Corrupt {
        object: "state".into(),
        what: format!("row {key}"),
        detail: detail.into(),
    }
}

impl Owners {
    /// Reads the ownership rows of `state`; other rows are ignored.
    pub fn from_state(state: &State) -> Result<Owners> {
        let mut o = Owners::default();
        for (key, value) in &state.rows {
            if let Some(unit) = key.strip_prefix(OWNER) {
                let gw = value
                    .as_str()
                    .ok_or_else(|| corrupt(key, "an owner is not a string"))?;
                o.owners.insert(unit.to_string(), gw.to_string());
            } else if let Some(gw) = key.strip_prefix(GATEWAY) {
                let rec: ClientRecord = serde_json::from_value(value.clone())
                    .map_err(|e| corrupt(key, e.to_string()))?;
                o.clients.insert(gw.to_string(), rec);
            } else if let Some(gw) = key.strip_prefix(DRAIN) {
                if value == &Value::Bool(true) {
                    o.draining.insert(gw.to_string());
                }
            }
        }
        Ok(o)
    }

    /// The owner of `unit`, if it has one.
    pub fn owner(&self, unit: &str) -> Option<&str> {
        self.owners.get(unit).map(String::as_str)
    }

    /// The units `gateway` owns, sorted.
    pub fn owned_by(&self, gateway: &str) -> Vec<String> {
        self.owners
            .iter()
            .filter(|(_, g)| g.as_str() == gateway)
            .map(|(u, _)| u.clone())
            .collect()
    }
}

/// What the leader must do to give every unit a live owner.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Clients to blocklist before `changes` are committed: gateways whose lease is gone
    /// and that own units, and gateways live under another client than the one recorded.
    pub fence: Vec<(String, ClientRecord)>,
    /// The rows to commit.
    pub changes: Vec<Change>,
    /// Units that move, with their old owner (none for a new unit) and new one.
    pub moves: Vec<(String, Option<String>, String)>,
}

/// The plan for `units`, given the live gateways and what the state records (pure; see the
/// module docs for the rules). With no eligible gateway, units keep their owner; if every
/// live gateway is draining, the draining ones stay eligible, so that no unit is stranded.
pub fn plan(units: &BTreeSet<String>, live: &[MemberInfo], owners: &Owners) -> Plan {
    let mut p = Plan::default();
    let live_ids: BTreeSet<&str> = live.iter().map(|m| m.gateway.as_str()).collect();
    let mut eligible: BTreeSet<&str> = live_ids
        .iter()
        .copied()
        .filter(|g| !owners.draining.contains(*g))
        .collect();
    if eligible.is_empty() {
        eligible = live_ids.clone();
    }
    // A live gateway under a new client: its previous client is fenced, the new one recorded.
    for m in live {
        let now = ClientRecord {
            client: m.client.clone(),
            addr: m.addr.clone(),
        };
        match owners.clients.get(&m.gateway) {
            Some(rec) if rec == &now => {}
            Some(rec) => {
                p.fence.push((m.gateway.clone(), rec.clone()));
                p.changes.push(record(&m.gateway, &now));
            }
            None => p.changes.push(record(&m.gateway, &now)),
        }
    }
    // Count what stays, then hand out the rest.
    let mut load: BTreeMap<&str, Vec<&String>> = eligible.iter().map(|g| (*g, vec![])).collect();
    let mut homeless = Vec::new();
    for unit in units {
        match owners.owner(unit) {
            Some(g) if eligible.contains(g) => load.get_mut(g).expect("eligible").push(unit),
            other => homeless.push((unit, other)),
        }
    }
    let mut fenced_dead = BTreeSet::new();
    for (unit, old) in homeless {
        let Some(to) = least(&load) else {
            continue; // nobody live: the unit keeps its owner
        };
        if let Some(old) = old {
            if !live_ids.contains(old) && fenced_dead.insert(old) {
                match owners.clients.get(old) {
                    Some(rec) => p.fence.push((old.to_string(), rec.clone())),
                    // Every gateway is recorded in the commit that first gives it a unit.
                    None => {
                        tracing::warn!(gateway = %old, "no client recorded for a gone owner: its units move unfenced")
                    }
                }
            }
        }
        load.get_mut(to).expect("eligible").push(unit);
        p.moves
            .push((unit.clone(), old.map(str::to_string), to.to_string()));
    }
    // Then even out: a gateway that joined (or came back) takes units from the busiest, one
    // at a time, until no two differ by more than one. The moved unit is the busiest
    // gateway's last by name, so the same state always gives the same plan.
    while let (Some(to), Some(from)) = (least(&load), busiest(&load)) {
        if load[from].len() <= load[to].len() + 1 {
            break;
        }
        let src = load.get_mut(from).expect("eligible");
        src.sort();
        let unit = src.pop().expect("the busiest has units");
        load.get_mut(to).expect("eligible").push(unit);
        match p.moves.iter_mut().find(|(u, ..)| u == unit) {
            Some(m) => m.2 = to.to_string(),
            None => p
                .moves
                .push((unit.clone(), Some(from.to_string()), to.to_string())),
        }
    }
    for (unit, _, to) in &p.moves {
        p.changes.push(Change::Put(
            format!("{OWNER}{unit}"),
            Value::from(to.as_str()),
        ));
    }
    // Units that are gone lose their owner row.
    for unit in owners.owners.keys() {
        if !units.contains(unit) {
            p.changes.push(Change::Delete(format!("{OWNER}{unit}")));
        }
    }
    p
}

/// The eligible gateway with the fewest units (the first by id among equals).
fn least<'a>(load: &BTreeMap<&'a str, Vec<&String>>) -> Option<&'a str> {
    load.iter()
        .min_by_key(|(g, u)| (u.len(), **g))
        .map(|(g, _)| *g)
}

/// The eligible gateway with the most units (the first by id among equals).
fn busiest<'a>(load: &BTreeMap<&'a str, Vec<&String>>) -> Option<&'a str> {
    load.iter()
        .max_by_key(|(g, u)| (u.len(), std::cmp::Reverse(**g)))
        .map(|(g, _)| *g)
}

fn record(gateway: &str, rec: &ClientRecord) -> Change {
    Change::Put(
        format!("{GATEWAY}{gateway}"),
        serde_json::to_value(rec).expect("JSON encodes"),
    )
}

/// How the leader's steward works.
#[derive(Debug, Clone)]
pub struct StewardConfig {
    /// How often it looks at the leases and the state (and at once when nudged).
    pub poll: Duration,
    /// How long a fenced gateway stays blocklisted.
    pub blocklist_for: Duration,
}

type Units = dyn Fn(&State) -> BTreeSet<String> + Send + Sync;
type OnPlan = dyn Fn(&Plan) + Send + Sync;

struct Wake {
    stop: bool,
    nudged: bool,
}

/// The leader's duty of giving every unit a live owner: a thread that looks at the
/// gateways' leases and the state every poll (or when nudged), fences what must be fenced
/// and commits the plan at the leader's epoch. It stops when dropped, or by itself once the
/// leader is out of office.
pub struct Steward {
    wake: Arc<(Mutex<Wake>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Steward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Steward")
    }
}

impl Steward {
    /// Starts stewarding for `leader`. `units` lists the units from the state (the caller's
    /// rows); `on_plan` sees each plan after it was committed (for logs and tests).
    pub fn start(
        leader: Arc<Leader>,
        membership: Membership,
        config: StewardConfig,
        units: impl Fn(&State) -> BTreeSet<String> + Send + Sync + 'static,
        on_plan: impl Fn(&Plan) + Send + Sync + 'static,
    ) -> Steward {
        let wake = Arc::new((
            Mutex::new(Wake {
                stop: false,
                nudged: true,
            }),
            Condvar::new(),
        ));
        let units: Box<Units> = Box::new(units);
        let on_plan: Box<OnPlan> = Box::new(on_plan);
        let thread = std::thread::Builder::new()
            .name("steward".into())
            .spawn({
                let wake = wake.clone();
                move || steward(&leader, &membership, &config, &*units, &*on_plan, &wake)
            })
            .expect("spawning the steward thread");
        Steward {
            wake,
            thread: Some(thread),
        }
    }

    /// Looks again now rather than at the next poll.
    pub fn nudge(&self) {
        self.wake.0.lock().expect("steward lock").nudged = true;
        self.wake.1.notify_all();
    }
}

impl Drop for Steward {
    fn drop(&mut self) {
        self.wake.0.lock().expect("steward lock").stop = true;
        self.wake.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn steward(
    leader: &Leader,
    membership: &Membership,
    config: &StewardConfig,
    units: &Units,
    on_plan: &OnPlan,
    wake: &(Mutex<Wake>, Condvar),
) {
    let mut fenced: BTreeSet<(String, String)> = BTreeSet::new();
    loop {
        {
            let mut w = wake.0.lock().expect("steward lock");
            if !w.nudged && !w.stop {
                w = wake.1.wait_timeout(w, config.poll).expect("steward lock").0;
            }
            if w.stop {
                return;
            }
            w.nudged = false;
        }
        if let Err(e) = leader.check() {
            tracing::info!(error = %e, "the steward stops: out of office");
            return;
        }
        match step(leader, membership, config, units, &mut fenced) {
            Ok(Some(plan)) => on_plan(&plan),
            Ok(None) => {}
            Err(e) if e.is_conflict() => {
                // Another writer came first; the next look starts from its state.
                tracing::debug!(error = %e, "ownership plan not committed; looking again");
            }
            Err(e) => tracing::warn!(error = %e, "the steward could not finish a look"),
        }
    }
}

/// One look: the plan from the leases and the state, its fencing done, then its commit
/// (guarded by the version read and the leader's epoch). The plan committed, if any.
fn step(
    leader: &Leader,
    membership: &Membership,
    config: &StewardConfig,
    units: &Units,
    fenced: &mut BTreeSet<(String, String)>,
) -> Result<Option<Plan>> {
    let live = membership.live()?;
    let state = leader_state(leader)?;
    let owners = Owners::from_state(&state)?;
    let plan = plan(&units(&state), &live, &owners);
    if plan.changes.is_empty() {
        return Ok(None);
    }
    for (gateway, rec) in &plan.fence {
        if fenced.contains(&(gateway.clone(), rec.addr.clone())) {
            continue;
        }
        let member = MemberInfo {
            gateway: gateway.clone(),
            client: rec.client.clone(),
            addr: rec.addr.clone(),
        };
        membership.fence(&member, config.blocklist_for)?;
        fenced.insert((gateway.clone(), rec.addr.clone()));
    }
    leader.commit(state.version, &plan.changes)?;
    for (unit, from, to) in &plan.moves {
        tracing::info!(unit = %unit, from = from.as_deref().unwrap_or("-"), to = %to, "unit owner set");
    }
    Ok(Some(plan))
}

fn leader_state(leader: &Leader) -> Result<State> {
    let state = leader.store().read()?;
    state.at_epoch(leader.check()?)?;
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(g: &str, client: &str) -> MemberInfo {
        MemberInfo {
            gateway: g.into(),
            client: client.into(),
            addr: format!("addr-{client}"),
        }
    }

    fn units(n: usize) -> BTreeSet<String> {
        (0..n).map(|i| format!("lun{i}")).collect()
    }

    /// `owners` after `plan` is applied.
    fn apply(owners: &Owners, plan: &Plan) -> Owners {
        let mut rows: BTreeMap<String, Value> = BTreeMap::new();
        for (u, g) in &owners.owners {
            rows.insert(format!("{OWNER}{u}"), Value::from(g.as_str()));
        }
        for (g, r) in &owners.clients {
            rows.insert(format!("{GATEWAY}{g}"), serde_json::to_value(r).unwrap());
        }
        for g in &owners.draining {
            rows.insert(format!("{DRAIN}{g}"), Value::Bool(true));
        }
        for c in &plan.changes {
            match c {
                Change::Put(k, v) => {
                    rows.insert(k.clone(), v.clone());
                }
                Change::Delete(k) => {
                    rows.remove(k);
                }
            }
        }
        Owners::from_state(&State {
            version: 0,
            epoch: 0,
            rows,
        })
        .unwrap()
    }

    fn counts(o: &Owners) -> BTreeMap<String, usize> {
        let mut c = BTreeMap::new();
        for g in o.owners.values() {
            *c.entry(g.clone()).or_default() += 1;
        }
        c
    }

    #[test]
    fn new_units_are_spread_evenly_and_a_second_plan_changes_nothing() {
        let live = [m("a", "c1"), m("b", "c2"), m("c", "c3")];
        let p = plan(&units(7), &live, &Owners::default());
        assert!(p.fence.is_empty());
        let o = apply(&Owners::default(), &p);
        assert_eq!(o.owners.len(), 7);
        let c = counts(&o);
        assert_eq!(
            c.values().max().unwrap() - c.values().min().unwrap(),
            1,
            "{c:?}"
        );
        assert_eq!(o.clients["b"].client, "c2");
        assert_eq!(plan(&units(7), &live, &o), Plan::default());
    }

    #[test]
    fn a_dead_gateways_units_move_after_it_is_fenced_and_nothing_else_moves() {
        let live = [m("a", "c1"), m("b", "c2"), m("c", "c3")];
        let before = apply(
            &Owners::default(),
            &plan(&units(9), &live, &Owners::default()),
        );
        let b_units = before.owned_by("b");
        let p = plan(&units(9), &[m("a", "c1"), m("c", "c3")], &before);
        assert_eq!(
            p.fence,
            vec![(
                "b".to_string(),
                ClientRecord {
                    client: "c2".into(),
                    addr: "addr-c2".into()
                }
            )]
        );
        let moved: Vec<&String> = p.moves.iter().map(|(u, ..)| u).collect();
        assert_eq!(moved, b_units.iter().collect::<Vec<_>>());
        assert!(
            p.moves
                .iter()
                .all(|(_, from, _)| from.as_deref() == Some("b"))
        );
        let after = apply(&before, &p);
        for (u, g) in &before.owners {
            if g != "b" {
                assert_eq!(&after.owners[u], g, "{u} moved though its owner lives");
            }
        }
        assert_eq!(after.owned_by("b"), Vec::<String>::new());
        let c = counts(&after);
        assert!(c["a"].abs_diff(c["c"]) <= 1, "{c:?}");
    }

    #[test]
    fn a_gateway_back_under_a_new_client_keeps_its_units_and_its_old_client_is_fenced() {
        let live = [m("a", "c1"), m("b", "c2")];
        let before = apply(
            &Owners::default(),
            &plan(&units(4), &live, &Owners::default()),
        );
        let p = plan(&units(4), &[m("a", "c1"), m("b", "c9")], &before);
        assert_eq!(p.fence.len(), 1);
        assert_eq!(p.fence[0].1.client, "c2");
        assert!(p.moves.is_empty());
        assert_eq!(apply(&before, &p).clients["b"].client, "c9");
    }

    #[test]
    fn a_gateway_that_joins_takes_its_share_from_the_busiest_only() {
        let one = [m("a", "c1")];
        let before = apply(
            &Owners::default(),
            &plan(&units(7), &one, &Owners::default()),
        );
        assert_eq!(before.owned_by("a").len(), 7);
        let two = [m("a", "c1"), m("b", "c2")];
        let after = apply(&before, &plan(&units(7), &two, &before));
        assert_eq!(
            (after.owned_by("a").len(), after.owned_by("b").len()),
            (4, 3)
        );
        let three = [m("a", "c1"), m("b", "c2"), m("c", "c3")];
        let p = plan(&units(7), &three, &after);
        assert!(p.fence.is_empty());
        assert!(p.moves.iter().all(|(_, _, to)| to == "c"), "{:?}", p.moves);
        let last = apply(&after, &p);
        let c = counts(&last);
        assert_eq!(
            c.values().max().unwrap() - c.values().min().unwrap(),
            1,
            "{c:?}"
        );
        assert_eq!(plan(&units(7), &three, &last), Plan::default());
    }

    #[test]
    fn a_drain_moves_every_unit_off_and_the_drained_gateway_gets_no_new_one() {
        let live = [m("a", "c1"), m("b", "c2")];
        let mut before = apply(
            &Owners::default(),
            &plan(&units(4), &live, &Owners::default()),
        );
        before.draining.insert("a".into());
        let p = plan(&units(4), &live, &before);
        assert!(
            p.fence.is_empty(),
            "a live gateway is never fenced by a drain"
        );
        let after = apply(&before, &p);
        assert_eq!(after.owned_by("b").len(), 4);
        let p = plan(&units(6), &live, &after);
        assert_eq!(apply(&after, &p).owned_by("b").len(), 6);
        // Draining the only gateway strands nothing.
        let alone = [m("b", "c2")];
        let mut only = after.clone();
        only.draining.insert("b".into());
        let p = plan(&units(4), &alone, &only);
        assert!(p.moves.is_empty());
        assert_eq!(apply(&only, &p).owned_by("b").len(), 4);
    }

    #[test]
    fn with_nobody_live_units_keep_their_owner_and_gone_units_lose_their_row() {
        let live = [m("a", "c1")];
        let before = apply(
            &Owners::default(),
            &plan(&units(3), &live, &Owners::default()),
        );
        let p = plan(&units(3), &[], &before);
        assert!(p.changes.is_empty() && p.fence.is_empty());
        let p = plan(&units(2), &live, &before);
        assert_eq!(p.changes, vec![Change::Delete(format!("{OWNER}lun2"))]);
    }
}
