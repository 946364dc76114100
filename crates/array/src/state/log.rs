//! Where the array's rows are made durable: the journal file in the pool directory (one
//! gateway), or the array's shared state in RADOS (`gateways::StateStore`), written by the
//! gateway in office as leader.
//!
//! In RADOS every live row is one key of the state object (`array.counters`,
//! `array.lun.<id>`, `array.host.<name>`, `array.set.<id>`, `array.job.<id>`,
//! `array.idem.<key>`, `array.pr.<lun id>`), holding the journal record that sets it; a record that removes a row
//! deletes its key. An append is one commit, guarded by the version this gateway last wrote
//! and the epoch it leads at: it lands whole or not at all, and it cannot land once another
//! gateway has taken office (or has written) since. A refused commit poisons the log, as a
//! failed fsync poisons the file: this gateway changes nothing more until it restarts and
//! reads the state again. The rows are always compact, so there is nothing to rewrite.

use std::collections::BTreeMap;

use gateways::{Change, StateStore};
use serde_json::Value;

use super::rows::Record;
use crate::error::JournalError;
use crate::journal::Journal;

/// Prefix of the array's keys in the shared state.
const PREFIX: &str = "array.";

/// The array's durable log.
#[derive(Debug)]
pub(crate) enum Log {
    File(Journal),
    Shared(SharedLog),
}

impl Log {
    pub(crate) fn append(&mut self, records: &[Record]) -> Result<(), JournalError> {
        match self {
            Log::File(j) => j.append(records),
            Log::Shared(s) => s.append(records),
        }
    }

    pub(crate) fn rewrite(&mut self, live: &[Record]) -> Result<(), JournalError> {
        match self {
            Log::File(j) => j.rewrite(live),
            Log::Shared(s) => {
                s.appended = 0;
                Ok(())
            }
        }
    }

    pub(crate) fn poisoned(&self) -> bool {
        match self {
            Log::File(j) => j.poisoned(),
            Log::Shared(s) => s.poisoned,
        }
    }

    pub(crate) fn appended(&self) -> u64 {
        match self {
            Log::File(j) => j.appended(),
            Log::Shared(s) => s.appended,
        }
    }

    pub(crate) fn sync(&mut self) -> Result<(), JournalError> {
        match self {
            Log::File(j) => j.sync(),
            Log::Shared(_) => Ok(()),
        }
    }
}

/// The array's rows in the shared state, written at one leader epoch.
#[derive(Debug)]
pub(crate) struct SharedLog {
    store: StateStore,
    epoch: u64,
    /// The state's version after this gateway's last commit.
    version: u64,
    poisoned: bool,
    appended: u64,
}

/// The key of the row `r` sets or removes, and its value (`None`: removed).
fn row(r: &Record) -> (String, Option<Value>) {
    let key = match r {
        Record::Counters { .. } => "counters".to_string(),
        Record::Lun(l) => format!("lun.{}", l.id),
        Record::LunGone { id } => format!("lun.{id}"),
        Record::Host(h) => format!("host.{}", h.name),
        Record::HostGone { name } => format!("host.{name}"),
        Record::Set(s) => format!("set.{}", s.set_id),
        Record::SetGone { set_id } => format!("set.{set_id}"),
        Record::Job(j) => format!("job.{}", j.id),
        Record::Idem(i) => format!("idem.{}", i.key),
        Record::IdemGone { key } => format!("idem.{key}"),
        Record::Reservations { lun, .. } => format!("pr.{lun}"),
    };
    let value = match r {
        Record::LunGone { .. }
        | Record::HostGone { .. }
        | Record::SetGone { .. }
        | Record::IdemGone { .. } => None,
        _ => Some(serde_json::to_value(r).expect("journal records serialize")),
    };
    (format!("{PREFIX}{key}"), value)
}

/// The journal records of the array's rows in `state` (read from object `object`), the
/// counters first: replay applies them by maximum, the rows by key.
pub(crate) fn records(state: &gateways::State, object: &str) -> Result<Vec<Record>, JournalError> {
    let mut records = Vec::new();
    for (key, value) in state.rows.iter().filter(|(k, _)| k.starts_with(PREFIX)) {
        let r: Record =
            serde_json::from_value(value.clone()).map_err(|e| JournalError::Corrupt {
                path: object.to_string(),
                line: 0,
                reason: format!("row {key}: {e}"),
            })?;
        if matches!(r, Record::Counters { .. }) {
            records.insert(0, r);
        } else {
            records.push(r);
        }
    }
    Ok(records)
}

fn shared(e: gateways::Error) -> JournalError {
    JournalError::Shared(Box::new(e))
}

impl SharedLog {
    /// Reads the array's rows from `store` at leader epoch `epoch`, passes their records to
    /// `compact`, and writes back whatever it changed (one commit); then the log is open for
    /// appending. Returns the records `compact` kept.
    pub(crate) fn open(
        store: StateStore,
        epoch: u64,
        compact: impl FnOnce(Vec<Record>) -> Vec<Record>,
    ) -> Result<(SharedLog, Vec<Record>), JournalError> {
        let state = store.read().map_err(shared)?;
        state.at_epoch(epoch).map_err(shared)?;
        let had: BTreeMap<String, Value> = state
            .rows
            .iter()
            .filter(|(k, _)| k.starts_with(PREFIX))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let live = compact(records(&state, store.object())?);
        let mut want: BTreeMap<String, Value> = BTreeMap::new();
        for r in &live {
            if let (key, Some(value)) = row(r) {
                want.insert(key, value);
            }
        }
        let mut changes: Vec<Change> = want
            .iter()
            .filter(|(k, v)| had.get(*k) != Some(*v))
            .map(|(k, v)| Change::Put(k.clone(), v.clone()))
            .collect();
        changes.extend(
            had.keys()
                .filter(|k| !want.contains_key(*k))
                .map(|k| Change::Delete(k.clone())),
        );
        let version = if changes.is_empty() {
            state.version
        } else {
            store
                .commit(state.version, epoch, &changes)
                .map_err(shared)?
        };
        tracing::info!(object = %store.object(), version, epoch, rows = want.len(), "array state read from the cluster");
        Ok((
            SharedLog {
                store,
                epoch,
                version,
                poisoned: false,
                appended: 0,
            },
            live,
        ))
    }

    fn append(&mut self, records: &[Record]) -> Result<(), JournalError> {
        if self.poisoned {
            return Err(JournalError::Poisoned);
        }
        let changes: Vec<Change> = records
            .iter()
            .map(|r| match row(r) {
                (key, Some(value)) => Change::Put(key, value),
                (key, None) => Change::Delete(key),
            })
            .collect();
        match self.store.commit(self.version, self.epoch, &changes) {
            Ok(v) => {
                self.version = v;
                self.appended += records.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Refused (another gateway wrote or took office) or unknown (the cluster did
                // not answer in time): either way this gateway's view may be stale.
                self.poisoned = true;
                Err(shared(e))
            }
        }
    }
}
