//! Changes to a host that cause no outage: a new API token, initiators added, removed or
//! replaced, a CHAP secret set or cleared. Nothing is unmapped: the host's LUNs stay at their
//! numbers, and the host's other initiators keep their sessions. Each change is one journal
//! record (the host's row), so it survives `kill -9`, and the iSCSI target follows it at once.

use api::{CreatedHost, HostRecord, UpdateHost};

use super::Array;
use super::admin::check_initiators;
use super::auth::{new_token, token_hash};
use super::rows::Record;
use crate::error::ArrayError;

/// A CHAP secret as the Microsoft initiator accepts it: 12 to 16 ASCII characters.
pub(super) fn check_chap_secret(s: &str) -> Result<(), ArrayError> {
    if !(12..=16).contains(&s.len()) || !s.is_ascii() {
        return Err(ArrayError::BadRequest(format!(
            "A CHAP secret must be 12 to 16 ASCII characters (the Microsoft initiator's rule); \
             this one is {} characters long.",
            s.chars().count()
        )));
    }
    Ok(())
}

impl Array {
    /// Gives the host a new API token and answers it (once: only its hash is kept). The old
    /// token is refused from the moment the change is journaled.
    pub fn rotate_token(&self, name: &str) -> Result<CreatedHost, ArrayError> {
        let mut inner = self.lock();
        let mut h = Self::host_row(&inner.db, name)?;
        let token = new_token()?;
        h.token_sha256 = token_hash(&token);
        Self::write(&mut inner, vec![Record::Host(h.clone())])?;
        tracing::info!(host = name, "host API token rotated");
        Ok(CreatedHost {
            host: Self::host_record(&h),
            token,
        })
    }

    /// Changes a host's initiators and CHAP secret as one journaled change (see
    /// [`api::UpdateHost`] for what each field does to live sessions).
    pub fn update_host(&self, name: &str, req: &UpdateHost) -> Result<HostRecord, ArrayError> {
        if req.add_initiators.is_empty()
            && req.remove_initiators.is_empty()
            && req.chap_secret.is_none()
            && !req.clear_chap
        {
            return Err(ArrayError::BadRequest(
                "Say what to change: initiators to add or remove, a CHAP secret to set, or \
                 CHAP to clear."
                    .into(),
            ));
        }
        if req.chap_secret.is_some() && req.clear_chap {
            return Err(ArrayError::BadRequest(
                "Set a CHAP secret or clear CHAP, not both at once.".into(),
            ));
        }
        if let Some(s) = &req.chap_secret {
            check_chap_secret(s)?;
        }
        check_initiators(&req.add_initiators)?;
        let mut inner = self.lock();
        let old = Self::host_row(&inner.db, name)?;
        let mut h = old.clone();
        for i in &req.remove_initiators {
            if !h.initiators.contains(i) {
                return Err(ArrayError::NotFound(format!(
                    "{i} is not an initiator of host {name} (its initiators: {}).",
                    old.initiators.join(", ")
                )));
            }
            h.initiators.retain(|x| x != i);
        }
        for i in &req.add_initiators {
            if let Some(other) = inner
                .db
                .hosts
                .values()
                .find(|o| o.name != name && o.initiators.contains(i))
            {
                return Err(ArrayError::Conflict(format!(
                    "Initiator {i} belongs to host {}; an initiator has one host. Remove it \
                     there first.",
                    other.name
                )));
            }
            if !h.initiators.contains(i) {
                h.initiators.push(i.clone());
            }
        }
        if h.initiators.is_empty() {
            return Err(ArrayError::BadRequest(format!(
                "Host {name} would be left with no initiator; add the new one in the same \
                 change (shadowlun host initiators {name} --remove OLD --add NEW)."
            )));
        }
        if let Some(s) = &req.chap_secret {
            h.chap_secret = Some(s.clone());
        }
        if req.clear_chap {
            h.chap_secret = None;
        }
        if h == old {
            return Ok(Self::host_record(&h));
        }
        Self::write(&mut inner, vec![Record::Host(h.clone())])?;

        let removed: Vec<&String> = old
            .initiators
            .iter()
            .filter(|i| !h.initiators.contains(i))
            .collect();
        let added: Vec<String> = h
            .initiators
            .iter()
            .filter(|i| !old.initiators.contains(i))
            .cloned()
            .collect();
        for i in &removed {
            for n in h.luns.keys() {
                self.0.exporter.unmap(i, *n);
            }
            self.0.exporter.forget_initiator(i);
        }
        let secret = h.chap_secret.as_deref();
        for i in &h.initiators {
            if added.contains(i) || secret != old.chap_secret.as_deref() {
                self.0.exporter.set_chap(i, secret);
            }
        }
        for (n, lun) in &h.luns {
            self.export(&inner.db, &added, *n, lun);
        }
        tracing::info!(
            host = name,
            added = ?added,
            removed = ?removed,
            chap = if req.clear_chap { "cleared" } else if req.chap_secret.is_some() { "set" } else { "unchanged" },
            "host changed"
        );
        Ok(Self::host_record(&h))
    }
}
