//! Persistent reservations shared by several targets serving one logical unit (the gateways
//! of an array): where they live and who decides them is the link's business.
//!
//! A logical unit with a link ([`crate::LogicalUnit::set_pr_link`]) either hands every
//! PERSISTENT RESERVE IN/OUT to the target that keeps the state ([`PrLink::forward`]: a
//! standby gateway's unit, whose own copy does not count), or keeps the state itself and
//! has each change made durable before the command completes ([`PrLink::persist`]: the
//! serving gateway's). Without a link, reservations live in the unit alone.

use crate::{Nexus, Outcome, PrState, Sense};

/// Where a logical unit's persistent reservations are kept besides the unit.
pub trait PrLink: Send + Sync + std::fmt::Debug {
    /// Runs PERSISTENT RESERVE IN or OUT (`cdb`, with its parameter data) from `nexus`
    /// where the state is kept, and returns how it ended there; `None` runs it here. An
    /// answer that cannot be had (nobody keeps the state now) is an outcome too: NOT READY,
    /// ASYMMETRIC ACCESS STATE TRANSITION, which tells the host to try again.
    fn forward(&self, nexus: &Nexus, cdb: &[u8], data_out: &[u8]) -> Option<Outcome> {
        let _ = (nexus, cdb, data_out);
        None
    }

    /// Makes `state` durable: called after a PERSISTENT RESERVE OUT changed the unit's state
    /// and before the command completes. An error undoes the change in the unit and ends the
    /// command with the sense returned.
    fn persist(&self, state: &PrState) -> Result<(), Sense> {
        let _ = state;
        Ok(())
    }
}
