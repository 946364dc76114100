//! The SCSI target ports a server serves. Each is one iSCSI target portal group (RFC 7143
//! 4.4.1: its TargetPortalGroupTag, reported at login and after every TargetAddress of
//! SendTargets) with the portals it listens on, and one SCSI target port with its relative
//! target port identifier (SPC-4 7.8.7). A connection's port names the I_T nexus of every
//! command on it (`scsi::Nexus::target_port`, `portal_group_tag`), hence what VPD 0x83
//! reports and which target port group's access state applies (`scsi::Target`).
//!
//! Which ports form which asymmetric access group, and the groups of ports other processes
//! serve, is the device model's (`scsi::Target::set_port_groups`); this server serves only
//! the ports listed here.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::{TargetConfig, TargetError};

/// One SCSI target port of a server: an iSCSI target portal group and its portals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetPort {
    /// Relative target port identifier (1 to 65535), unique among the target's ports,
    /// whichever process serves them.
    pub relative_port: u16,
    /// Target portal group tag: the iSCSI name of the port, with the target name.
    pub portal_group_tag: u16,
    /// Listening addresses; port 0 picks a free port (see [`super::TargetServer::ports`]).
    pub portals: Vec<SocketAddr>,
}

/// Why a list of target ports cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    #[error("relative target port 0 is reserved")]
    ReservedRelativePort,
    #[error("relative target port {0} is listed twice")]
    DuplicateRelativePort(u16),
    #[error("target portal group tag {0} is listed twice")]
    DuplicatePortalGroupTag(u16),
    #[error("target port {0} has no portal")]
    NoPortal(u16),
    #[error("portal {addr} is in the ports {first} and {second}")]
    PortalInTwoPorts {
        addr: SocketAddr,
        first: u16,
        second: u16,
    },
}

/// What a connection knows of the port it came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ServedPort {
    pub relative_port: u16,
    pub portal_group_tag: u16,
}

impl ServedPort {
    pub fn of(p: &TargetPort) -> Self {
        ServedPort {
            relative_port: p.relative_port,
            portal_group_tag: p.portal_group_tag,
        }
    }
}

impl TargetConfig {
    /// The ports to serve: [`TargetConfig::target_ports`], or the one port the single-port
    /// fields describe when it is empty; checked (each relative port and tag once, each
    /// portal in one port, every port with a portal).
    pub fn served_ports(&self) -> Result<Vec<TargetPort>, TargetError> {
        if self.target_ports.is_empty() {
            if self.portals.is_empty() {
                return Err(TargetError::NoPortal);
            }
            return Ok(vec![TargetPort {
                relative_port: self.relative_port,
                portal_group_tag: self.portal_group_tag,
                portals: self.portals.clone(),
            }]);
        }
        let mut rel = BTreeMap::new();
        let mut tags = BTreeMap::new();
        let mut owner: BTreeMap<SocketAddr, u16> = BTreeMap::new();
        for p in &self.target_ports {
            if p.relative_port == 0 {
                return Err(PortError::ReservedRelativePort.into());
            }
            if rel.insert(p.relative_port, ()).is_some() {
                return Err(PortError::DuplicateRelativePort(p.relative_port).into());
            }
            if tags.insert(p.portal_group_tag, ()).is_some() {
                return Err(PortError::DuplicatePortalGroupTag(p.portal_group_tag).into());
            }
            if p.portals.is_empty() {
                return Err(PortError::NoPortal(p.relative_port).into());
            }
            for a in &p.portals {
                // Port 0 asks for a free port: two such portals never collide.
                if a.port() == 0 {
                    continue;
                }
                if let Some(first) = owner.insert(*a, p.relative_port) {
                    return Err(PortError::PortalInTwoPorts {
                        addr: *a,
                        first,
                        second: p.relative_port,
                    }
                    .into());
                }
            }
        }
        Ok(self.target_ports.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(rel: u16, tag: u16, portals: &[&str]) -> TargetPort {
        TargetPort {
            relative_port: rel,
            portal_group_tag: tag,
            portals: portals.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    fn served(ports: Vec<TargetPort>) -> Result<Vec<TargetPort>, PortError> {
        TargetConfig {
            target_ports: ports,
            ..TargetConfig::default()
        }
        .served_ports()
        .map_err(|e| match e {
            TargetError::Ports(p) => p,
            other => panic!("{other}"),
        })
    }

    #[test]
    fn no_list_is_the_one_port_of_the_single_port_fields() {
        let c = TargetConfig {
            portals: vec!["127.0.0.1:3260".parse().unwrap()],
            relative_port: 4,
            portal_group_tag: 9,
            ..TargetConfig::default()
        };
        assert_eq!(
            c.served_ports().unwrap(),
            vec![port(4, 9, &["127.0.0.1:3260"])]
        );
        let none = TargetConfig {
            portals: vec![],
            ..TargetConfig::default()
        };
        assert!(matches!(none.served_ports(), Err(TargetError::NoPortal)));
    }

    #[test]
    fn ports_are_checked() {
        let a = "127.0.0.1:3260";
        let b = "127.0.0.2:3260";
        assert_eq!(
            served(vec![port(1, 1, &[a]), port(2, 2, &[b, "127.0.0.1:0"])]).unwrap()[1]
                .portals
                .len(),
            2
        );
        assert_eq!(
            served(vec![port(0, 1, &[a])]),
            Err(PortError::ReservedRelativePort)
        );
        assert_eq!(
            served(vec![port(1, 1, &[a]), port(1, 2, &[b])]),
            Err(PortError::DuplicateRelativePort(1))
        );
        assert_eq!(
            served(vec![port(1, 5, &[a]), port(2, 5, &[b])]),
            Err(PortError::DuplicatePortalGroupTag(5))
        );
        assert_eq!(
            served(vec![port(1, 1, &[a]), port(2, 2, &[])]),
            Err(PortError::NoPortal(2))
        );
        assert_eq!(
            served(vec![port(1, 1, &[a]), port(2, 2, &[b, a])]),
            Err(PortError::PortalInTwoPorts {
                addr: a.parse().unwrap(),
                first: 1,
                second: 2
            })
        );
        // Free ports picked at bind time never collide.
        assert!(
            served(vec![
                port(1, 1, &["127.0.0.1:0"]),
                port(2, 2, &["127.0.0.1:0"])
            ])
            .is_ok()
        );
    }
}
