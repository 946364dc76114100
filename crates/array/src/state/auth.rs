//! Authentication and scoping: who holds a token, and what each caller may see and act on.

use api::LunId;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::Array;
use super::rows::{Db, LunState};
use crate::error::ArrayError;

/// Who is calling, and so what a verb may reach: the administrator reaches every LUN and
/// job; a host reaches its own (see [`Array::lookup`] for what a host may see).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// The holder of the admin token.
    Admin,
    /// The host of this name, holder of its token.
    Host(String),
}

/// How the journal spells [`Scope::Admin`] where it records who started a job. It can never
/// be a host's name (host names are `[A-Za-z0-9._-]`).
pub(super) const ADMIN_IN_JOURNAL: &str = "*admin*";

impl Scope {
    /// The scope of the host `name`.
    pub fn host(name: impl Into<String>) -> Self {
        Scope::Host(name.into())
    }

    /// This scope reaches what `owner` started: the administrator reaches everything, a host
    /// only its own.
    pub fn reaches(&self, owner: &Scope) -> bool {
        *self == Scope::Admin || self == owner
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Admin => f.write_str("admin"),
            Scope::Host(name) => f.write_str(name),
        }
    }
}

impl Serialize for Scope {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Scope::Admin => s.serialize_str(ADMIN_IN_JOURNAL),
            Scope::Host(name) => s.serialize_str(name),
        }
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Ok(if name == ADMIN_IN_JOURNAL {
            Scope::Admin
        } else {
            Scope::Host(name)
        })
    }
}

/// SHA-256 of a token, hex.
pub fn token_hash(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// A fresh random API token (256 bits, hex).
pub fn new_token() -> Result<String, ArrayError> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b)
        .map_err(|e| ArrayError::io("random token", std::io::Error::other(e.to_string())))?;
    Ok(hex::encode(b))
}

impl Db {
    /// `scope` may see and act on `lun`: the administrator every LUN, a host as
    /// [`Db::visible_to`] says.
    pub(super) fn visible(&self, scope: &Scope, lun: &str) -> bool {
        match scope {
            Scope::Admin => self.luns.contains_key(lun),
            Scope::Host(host) => self.visible_to(host, lun),
        }
    }

    /// The host may see and act on `lun`: mapped to it, created by it, a snapshot of a LUN
    /// it may see, or a snapshot LUN created by a host it may import from. Original LUNs
    /// are never shared through imports.
    pub(super) fn visible_to(&self, host: &str, lun: &str) -> bool {
        if let Some(row) = self.luns.get(lun) {
            let imports = |owner: &str| {
                self.hosts
                    .get(host)
                    .is_some_and(|h| h.import_from.iter().any(|o| o == owner))
            };
            if row.snapshot_of.is_some() && row.owner.as_deref().is_some_and(imports) {
                return true;
            }
        }
        let mut cur = lun.to_string();
        for _ in 0..16 {
            let Some(row) = self.luns.get(&cur) else {
                return false;
            };
            if self.mapped_to(host, &cur) || row.owner.as_deref() == Some(host) {
                return true;
            }
            match &row.snapshot_of {
                Some(o) => cur = o.source.clone(),
                None => return false,
            }
        }
        false
    }
}

/// What a caller hears about a LUN it may not see: the same as for one that does not exist.
pub(super) fn not_visible(scope: &(impl std::fmt::Display + ?Sized), lun: &str) -> ArrayError {
    tracing::warn!(host = %scope, lun, "refused a call on a LUN the host may not see");
    ArrayError::NotFound(format!(
        "LUN {lun} does not exist or is not mapped to this host; look it up again."
    ))
}

impl Array {
    /// Who holds `token`, if anyone.
    pub fn authenticate(&self, token: &str) -> Option<Scope> {
        let h = token_hash(token);
        if h == self.0.admin_token_sha256 {
            return Some(Scope::Admin);
        }
        self.lock()
            .db
            .hosts
            .values()
            .find(|x| x.token_sha256 == h)
            .map(|x| Scope::Host(x.name.clone()))
    }

    /// Every LUN of `luns` is visible to `scope` and committed (not a reserved snapshot LUN).
    pub(super) fn check_visible(db: &Db, scope: &Scope, luns: &[LunId]) -> Result<(), ArrayError> {
        for l in luns {
            if !db.visible(scope, l) {
                return Err(not_visible(scope, l));
            }
            if db.luns[l].state == LunState::Prepared {
                return Err(ArrayError::Conflict(format!(
                    "Snapshot LUN {l} is not committed yet; commit its set first."
                )));
            }
        }
        Ok(())
    }
}
