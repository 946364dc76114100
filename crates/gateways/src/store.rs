//! The array's state in one RADOS object's omap, changed only by guarded compound operations.
//!
//! Keys: `meta.version` (decimal), `meta.epoch` (decimal, the leader epoch; 0 before any
//! leader), `meta.leader` (JSON [`LeaderRecord`], absent when no leader holds office) and
//! `state.<key>` (one JSON value per row). A commit is one write operation: `omap_cmp` of
//! `meta.version` and `meta.epoch` against what the writer read, the rows set and removed,
//! `meta.version` + 1; then a notify on the object.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rbd::{Pool, WriteOp};
use serde_json::Value;

use crate::leader::LeaderRecord;
use crate::notify::Notifier;
use crate::{Error, Result};

pub(crate) const VERSION: &str = "meta.version";
pub(crate) const EPOCH: &str = "meta.epoch";
pub(crate) const LEADER: &str = "meta.leader";
const ROW: &str = "state.";
/// Entries per omap read; a longer state is read in pages guarded by the version.
const PAGE: u64 = 1000;
/// How often a read restarts when commits keep landing between its pages.
const READ_ATTEMPTS: usize = 16;

/// The state as one read saw it: every row at one version.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    pub version: u64,
    pub epoch: u64,
    pub rows: BTreeMap<String, Value>,
}

impl State {
    /// `Ok` if this state is at leader epoch `epoch`; else the [`Error::Conflict`] a commit
    /// at that epoch would meet: a new leader is in office.
    pub fn at_epoch(&self, epoch: u64) -> Result<()> {
        if self.epoch == epoch {
            return Ok(());
        }
        Err(Error::Conflict {
            expected_version: self.version,
            expected_epoch: epoch,
            version: self.version,
            epoch: self.epoch,
        })
    }
}

/// One change of a commit.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Set row `key` to a value.
    Put(String, Value),
    /// Remove row `key` (absent: no error).
    Delete(String),
}

/// One array's shared state (see the module docs for the object's layout).
#[derive(Debug, Clone)]
pub struct StateStore {
    pool: Arc<Pool>,
    object: String,
    notifier: Arc<Notifier>,
}

fn parse_u64(object: &str, what: &str, raw: &[u8]) -> Result<u64> {
    std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::Corrupt {
            object: object.into(),
            what: what.into(),
            detail: format!("{:?} is not a number", String::from_utf8_lossy(raw)),
        })
}

impl StateStore {
    /// The state of array `array_id` in `pool`, its object made (version 0, epoch 0) if it
    /// does not exist yet.
    pub fn open(pool: Arc<Pool>, array_id: &str) -> Result<StateStore> {
        let object = crate::state_object(array_id);
        let store = StateStore {
            notifier: Arc::new(Notifier::new(
                pool.clone(),
                object.clone(),
                Duration::from_secs(1),
            )),
            pool,
            object,
        };
        let op = WriteOp::new()
            .create(true)
            .omap_set([(VERSION, &b"0"[..]), (EPOCH, &b"0"[..])])?;
        match store.pool.operate(&store.object, &op) {
            Ok(()) => tracing::info!(object = %store.object, "shared state created"),
            Err(e) if e.is_exists() => {}
            Err(e) => return Err(e.into()),
        }
        Ok(store)
    }

    /// How long a notify waits for the watchers' acknowledgements (1 s unless set): a
    /// watcher that died holds each notify this long until the OSD drops its watch. Notifies
    /// are sent by a thread of this handle's (and its clones'), so a commit never waits for
    /// them; while one is held, newer ones wait and are sent as one.
    pub fn with_notify_timeout(mut self, timeout: Duration) -> Self {
        self.notifier = Arc::new(Notifier::new(
            self.pool.clone(),
            self.object.clone(),
            timeout,
        ));
        self
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// The RADOS object's name.
    pub fn object(&self) -> &str {
        &self.object
    }

    /// The current version and leader epoch.
    pub fn head(&self) -> Result<(u64, u64)> {
        let got = self.pool.omap_get(&self.object, &[VERSION, EPOCH])?;
        let find = |k: &str| {
            got.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| parse_u64(&self.object, k, v))
                .unwrap_or_else(|| {
                    Err(Error::Corrupt {
                        object: self.object.clone(),
                        what: k.into(),
                        detail: "missing".into(),
                    })
                })
        };
        Ok((find(VERSION)?, find(EPOCH)?))
    }

    /// Every row, with the version and epoch they are at.
    pub fn read(&self) -> Result<State> {
        'attempt: for _ in 0..READ_ATTEMPTS {
            let mut version: Option<(u64, Vec<u8>)> = None;
            let mut epoch = None;
            let mut rows = BTreeMap::new();
            let mut after = String::new();
            loop {
                let guard = version.as_ref().map(|(_, raw)| (VERSION, raw.as_slice()));
                let (page, more) = match self.pool.omap_page(&self.object, &after, "", PAGE, guard)
                {
                    Ok(p) => p,
                    // A commit landed between two pages: start again.
                    Err(e) if e.is_guard_failed() => continue 'attempt,
                    Err(e) => return Err(e.into()),
                };
                for (key, raw) in page {
                    if key == VERSION {
                        version = Some((parse_u64(&self.object, VERSION, &raw)?, raw));
                    } else if key == EPOCH {
                        epoch = Some(parse_u64(&self.object, EPOCH, &raw)?);
                    } else if let Some(row) = key.strip_prefix(ROW) {
                        let value = serde_json::from_slice(&raw).map_err(|e| Error::Corrupt {
                            object: self.object.clone(),
                            what: format!("row {row}"),
                            detail: e.to_string(),
                        })?;
                        rows.insert(row.to_string(), value);
                    }
                    after = key;
                }
                if !more {
                    break;
                }
                if version.is_none() {
                    // `meta.*` sorts before `state.*`: the first page holds the version.
                    return Err(Error::Corrupt {
                        object: self.object.clone(),
                        what: VERSION.into(),
                        detail: "missing".into(),
                    });
                }
            }
            let missing = |what: &str| Error::Corrupt {
                object: self.object.clone(),
                what: what.into(),
                detail: "missing".into(),
            };
            return Ok(State {
                version: version.ok_or_else(|| missing(VERSION))?.0,
                epoch: epoch.ok_or_else(|| missing(EPOCH))?,
                rows,
            });
        }
        Err(Error::Unsettled {
            object: self.object.clone(),
            attempts: READ_ATTEMPTS,
        })
    }

    /// Applies `changes` (later ones win for the same key) as version `expected_version + 1`
    /// if the state is still at `expected_version` and leader epoch `epoch`; otherwise
    /// nothing changes and the answer is [`Error::Conflict`] with what the state is at. Then
    /// queues a notify to the watchers (sent by another thread; a failed one is logged: they
    /// also poll). Returns the new version.
    pub fn commit(&self, expected_version: u64, epoch: u64, changes: &[Change]) -> Result<u64> {
        let mut merged: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
        for c in changes {
            let (key, value) = match c {
                Change::Put(k, v) => (k, Some(serde_json::to_vec(v).expect("JSON encodes"))),
                Change::Delete(k) => (k, None),
            };
            if key.is_empty() || key.contains('\0') {
                return Err(Error::InvalidKey(key.clone()));
            }
            merged.insert(format!("{ROW}{key}"), value);
        }
        let next = expected_version + 1;
        let next_raw = next.to_string();
        let puts = merged
            .iter()
            .filter_map(|(k, v)| v.as_deref().map(|v| (k.as_str(), v)))
            .chain([(VERSION, next_raw.as_bytes())]);
        let op = WriteOp::new()
            .omap_cmp_eq(VERSION, expected_version.to_string().as_bytes())?
            .omap_cmp_eq(EPOCH, epoch.to_string().as_bytes())?
            .omap_set(puts)?
            .omap_rm(
                merged
                    .iter()
                    .filter(|(_, v)| v.is_none())
                    .map(|(k, _)| k.as_str()),
            )?;
        self.guarded(&op, expected_version, epoch)?;
        tracing::debug!(object = %self.object, version = next, epoch, changes = merged.len(), "state committed");
        self.notify(serde_json::json!({ "version": next, "epoch": epoch }));
        Ok(next)
    }

    /// Reads the state and commits the changes `f` makes of it at `epoch`; when another
    /// commit moved the version first, reads again and asks `f` again, up to `attempts`
    /// times in all (then the last [`Error::Conflict`]). A moved epoch is never retried: a
    /// new leader is in office, and the answer is its `Conflict` at once. No changes: no
    /// commit. Returns the version the state is at after.
    pub fn update(
        &self,
        epoch: u64,
        attempts: usize,
        mut f: impl FnMut(&State) -> Result<Vec<Change>>,
    ) -> Result<u64> {
        let mut last = None;
        for _ in 0..attempts.max(1) {
            let state = self.read()?;
            state.at_epoch(epoch)?;
            let changes = f(&state)?;
            if changes.is_empty() {
                return Ok(state.version);
            }
            match self.commit(state.version, epoch, &changes) {
                Err(e @ Error::Conflict { epoch: now, .. }) if now == epoch => {
                    tracing::debug!(object = %self.object, version = state.version, "state moved under an update; retrying");
                    last = Some(e);
                }
                r => return r,
            }
        }
        Err(last.expect("at least one attempt"))
    }

    /// Runs a write guarded by `version` and `epoch`, turning a failed guard into a
    /// [`Error::Conflict`] that says where the state is.
    pub(crate) fn guarded(&self, op: &WriteOp, version: u64, epoch: u64) -> Result<()> {
        match self.pool.operate(&self.object, op) {
            Ok(()) => Ok(()),
            Err(e) if e.is_guard_failed() => {
                let (now_version, now_epoch) = self.head()?;
                Err(Error::Conflict {
                    expected_version: version,
                    expected_epoch: epoch,
                    version: now_version,
                    epoch: now_epoch,
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Runs a write guarded by `epoch` alone (its own `omap_cmp` on `meta.epoch`), turning a
    /// failed guard into a [`Error::Conflict`].
    pub(crate) fn guarded_epoch(&self, op: &WriteOp, epoch: u64) -> Result<()> {
        match self.pool.operate(&self.object, op) {
            Ok(()) => Ok(()),
            Err(e) if e.is_guard_failed() => {
                let (version, now_epoch) = self.head()?;
                Err(Error::Conflict {
                    expected_version: version,
                    expected_epoch: epoch,
                    version,
                    epoch: now_epoch,
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The leader epoch and the record of the leader in office, if any.
    pub(crate) fn leader(&self) -> Result<(u64, Option<LeaderRecord>)> {
        let got = self.pool.omap_get(&self.object, &[EPOCH, LEADER])?;
        let mut epoch = None;
        let mut record = None;
        for (k, v) in got {
            if k == EPOCH {
                epoch = Some(parse_u64(&self.object, EPOCH, &v)?);
            } else if k == LEADER {
                record = Some(serde_json::from_slice(&v).map_err(|e| Error::Corrupt {
                    object: self.object.clone(),
                    what: LEADER.into(),
                    detail: e.to_string(),
                })?);
            }
        }
        let epoch = epoch.ok_or_else(|| Error::Corrupt {
            object: self.object.clone(),
            what: EPOCH.into(),
            detail: "missing".into(),
        })?;
        Ok((epoch, record))
    }

    /// Tells the watchers the state moved (`payload` says where to, for the logs of whoever
    /// reads it: a watcher reads the head itself).
    pub(crate) fn notify(&self, payload: Value) {
        self.notifier.send(payload.to_string());
    }
}
