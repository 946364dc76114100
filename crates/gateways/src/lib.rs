//! What several gateway processes serving one array over one Ceph pool share, in RADOS.
//!
//! - [`StateStore`]: the array's state, one object's omap (`shadowlun.<array>.state`): a key
//!   per row holding JSON, a version and the leader's epoch. Every change is one compound
//!   write operation guarded by the version and the epoch the writer read, then a notify;
//!   [`StateStore::watch`] follows it by watch and by polling.
//! - [`Leadership`]: one leader at a time, by an exclusive lock with an expiry on the state
//!   object, renewed by a thread. A new leader fences its predecessor (blocklists the address
//!   the predecessor recorded) and bumps the epoch before it acts; a leader that cannot renew
//!   in time is told at once.
//! - [`Membership`]: each gateway's lease, a shared lock with an expiry on the members
//!   object (`shadowlun.<array>.members`); the holders listed are the live gateways.
//! - [`Steward`]: the leader's duty of giving every unit (LUN) one live owner, by the
//!   leases alone ([`plan`]), fencing a gone owner before its units move; [`Owners`] reads
//!   who owns what.
//!
//! Invariants: a commit changes nothing unless the version and the epoch it names are both
//! the object's current ones; the epoch only grows, and only a holder of the leader lock
//! bumps it, after blocklisting the previous leader's address; a lease (leader or member)
//! lasts as the OSD measures it, and its holder stops counting on it earlier (its own clock
//! starts before the OSD's does).

#![forbid(unsafe_code)]

mod error;
mod leader;
mod lease;
mod member;
mod notify;
mod ownership;
mod store;
mod watch;

pub use error::{Error, Lost};
pub use leader::{Leader, LeaderRecord, Leadership, LeadershipConfig};
pub use member::{Member, MemberInfo, Membership, Roster, RosterChange};
pub use ownership::{ClientRecord, Owners, Plan, Steward, StewardConfig, plan};
pub use store::{Change, State, StateStore};
pub use watch::StateWatch;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The object holding array `array_id`'s state (and the leader lock).
pub fn state_object(array_id: &str) -> String {
    format!("shadowlun.{array_id}.state")
}

/// The object whose shared lock holds the leases of array `array_id`'s gateways.
pub fn members_object(array_id: &str) -> String {
    format!("shadowlun.{array_id}.members")
}
