//! Persistent reservations across gateways: a standby hands every PERSISTENT RESERVE IN/OUT
//! it receives to the gateway in office, which keeps the array's reservations (each change
//! made durable in the shared state before it completes, `export::KeptLink`) and enforces
//! them on the paths that reach the medium (docs/gateways.md, "Persistent reservations").
//!
//! The command goes over the control API of the gateway in office
//! (`POST /v1/admin/gateway/reservations`, the admin token, the array's pinned certificate)
//! with the I_T nexus it came through, so a registration made through a standby's port is
//! that port's registration. While no gateway is in office, or it does not answer in
//! [`FORWARD_TIMEOUT`], the command ends NOT READY, ASYMMETRIC ACCESS STATE TRANSITION
//! (02/04/0A): hosts retry it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::{ForwardedCommand, ForwardedOutcome, routes};
use scsi::sense::{Asc, key};
use scsi::{Nexus, Outcome, PrLink, Sense};

use crate::client::Client;
use crate::export::ForwardLinks;
use crate::paths::LeaderApi;

/// The longest a forwarded command waits for the gateway in office.
pub(crate) const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// A standby's way to the gateway in office's control API.
pub(crate) struct Forwarder {
    leader: LeaderApi,
    token: String,
    fingerprint: String,
    /// Connections kept alive to the gateway in office (those to an earlier one are dropped).
    idle: Mutex<Vec<Client>>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token stays out of logs.
        f.debug_struct("Forwarder")
            .field("leader", &self.leader.get())
            .finish()
    }
}

fn transition() -> Outcome {
    Outcome::check(&Sense::new(
        key::NOT_READY,
        Asc::LUN_NOT_ACCESSIBLE_ASYMMETRIC_ACCESS_TRANSITION,
    ))
}

impl Forwarder {
    pub(crate) fn new(leader: LeaderApi, token: String, fingerprint: String) -> Arc<Forwarder> {
        Arc::new(Forwarder {
            leader,
            token,
            fingerprint,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// The links a standby's units get ([`crate::export::ScsiExporter::forward_reservations`]).
    pub(crate) fn links(self: &Arc<Self>) -> ForwardLinks {
        let me = self.clone();
        Arc::new(move |lun: &str| {
            Arc::new(Forward {
                lun: lun.to_string(),
                via: me.clone(),
            }) as Arc<dyn PrLink>
        })
    }

    fn run(&self, lun: &str, nexus: &Nexus, cdb: &[u8], data_out: &[u8]) -> Outcome {
        let Some(addr) = self.leader.get() else {
            tracing::debug!(lun, "no gateway in office to run a reservation command");
            return transition();
        };
        let reused = {
            let mut idle = self.idle.lock().expect("idle lock");
            // Connections to a gateway no longer in office are of no further use.
            idle.retain(|c| c.addr() == addr);
            idle.pop()
        };
        let mut client = match reused {
            Some(c) => c,
            None => match Client::new(addr, &self.fingerprint, Some(&self.token)) {
                Ok(mut c) => {
                    c.set_timeout(FORWARD_TIMEOUT);
                    c
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reach the gateway in office");
                    return transition();
                }
            },
        };
        let req = ForwardedCommand {
            lun: lun.to_string(),
            initiator: nexus.initiator.clone(),
            initiator_port: nexus.initiator_port.clone(),
            target_port: nexus.target_port,
            portal_group_tag: nexus.portal_group_tag,
            cdb: cdb.to_vec(),
            data: data_out.to_vec(),
        };
        let answer = client.post(routes::ADMIN_GATEWAY_RESERVATIONS, &req);
        let outcome = match answer {
            Ok(r) if r.status == 200 => match r.json::<ForwardedOutcome>() {
                Ok(o) => Outcome {
                    status: o.status,
                    sense: o.sense,
                    data_in: o.data,
                },
                Err(e) => {
                    tracing::warn!(error = %e, "the gateway in office answered a reservation command with nonsense");
                    return transition();
                }
            },
            Ok(r) => {
                tracing::warn!(
                    status = r.status,
                    body = %String::from_utf8_lossy(&r.body),
                    lun,
                    "the gateway in office refused a reservation command"
                );
                return transition();
            }
            Err(e) => {
                tracing::warn!(error = %e, %addr, "the gateway in office did not answer a reservation command");
                return transition();
            }
        };
        self.idle.lock().expect("idle lock").push(client);
        outcome
    }
}

/// A standby unit's link: every reservation command runs on the gateway in office.
#[derive(Debug)]
struct Forward {
    lun: String,
    via: Arc<Forwarder>,
}

impl PrLink for Forward {
    fn forward(&self, nexus: &Nexus, cdb: &[u8], data_out: &[u8]) -> Option<Outcome> {
        Some(self.via.run(&self.lun, nexus, cdb, data_out))
    }
}
