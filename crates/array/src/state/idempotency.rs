//! Idempotency keys on the administrator's creating requests: a request that carries an
//! `Idempotency-Key` and succeeded is answered again, as it was the first time, when the
//! same key comes back with the same request (a client retrying after a timeout or a reset
//! connection); the same key with a different request is refused. Answers are journaled,
//! so they outlive a restart, and bounded: at most [`MAX_KEYS`] keys, each kept
//! [`KEEP_SECS`].
//!
//! The answer is journaled right after the change it answers, in a second append: a crash
//! between the two leaves the change done and the key unknown, so the retry runs again and
//! is refused as a duplicate (`a LUN named … exists`), never executed twice.

use serde::{Deserialize, Serialize};

use super::Array;
use super::rows::Record;
use crate::error::ArrayError;

/// Keys kept at most; the oldest goes first.
pub const MAX_KEYS: usize = 1000;
/// How long a key is honoured, in seconds (24 hours).
pub const KEEP_SECS: u64 = 24 * 3600;

/// One answered request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdemRow {
    pub key: String,
    /// SHA-256 of the method, route and body, hex.
    pub request_sha256: String,
    pub status: u16,
    /// The answer's JSON (a host's one-time token included: the journal is 0600).
    pub body: String,
    pub at: u64,
}

/// What to do with a keyed request.
pub enum Keyed {
    /// The key answered this request before: answer the same.
    Replay { status: u16, body: String },
    /// Run it.
    Run,
}

/// Checks a key's form: 1-255 visible ASCII characters.
pub fn check_key(key: &str) -> Result<(), ArrayError> {
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ArrayError::BadRequest(
            "An Idempotency-Key must be 1 to 255 visible ASCII characters.".into(),
        ));
    }
    Ok(())
}

impl Array {
    /// Serialises keyed requests, so two retries of one request cannot both run.
    pub fn idempotency_gate(&self) -> std::sync::MutexGuard<'_, ()> {
        self.0.idem_gate.lock().expect("idempotency gate lock")
    }

    /// What the array answered `key` (if it still keeps it) and whether that was this
    /// request. Call with [`Array::idempotency_gate`] held.
    pub fn idempotency_check(&self, key: &str, request_sha256: &str) -> Result<Keyed, ArrayError> {
        check_key(key)?;
        let now = self.now();
        let inner = self.lock();
        match inner.db.idem.get(key) {
            Some(r) if now.saturating_sub(r.at) <= KEEP_SECS => {
                if r.request_sha256 != request_sha256 {
                    return Err(ArrayError::Conflict(format!(
                        "Idempotency-Key {key} was used for a different request; a retry must \
                         repeat its request exactly, and a new request needs a new key."
                    )));
                }
                Ok(Keyed::Replay {
                    status: r.status,
                    body: r.body.clone(),
                })
            }
            _ => Ok(Keyed::Run),
        }
    }

    /// Journals the answer to `key`, dropping keys past their age and the oldest past
    /// [`MAX_KEYS`]. Call with [`Array::idempotency_gate`] held.
    pub fn idempotency_store(
        &self,
        key: &str,
        request_sha256: &str,
        status: u16,
        body: String,
    ) -> Result<(), ArrayError> {
        let now = self.now();
        let mut inner = self.lock();
        let mut records = Vec::new();
        let mut rows: Vec<(&u64, &String)> = inner
            .db
            .idem
            .values()
            .filter(|r| r.key != key)
            .map(|r| (&r.at, &r.key))
            .collect();
        rows.sort();
        let over = (rows.len() + 1).saturating_sub(MAX_KEYS);
        for (i, (at, k)) in rows.iter().enumerate() {
            if i < over || now.saturating_sub(**at) > KEEP_SECS {
                records.push(Record::IdemGone { key: (*k).clone() });
            }
        }
        records.push(Record::Idem(IdemRow {
            key: key.to_string(),
            request_sha256: request_sha256.to_string(),
            status,
            body,
            at: now,
        }));
        Self::write(&mut inner, records)
    }
}
