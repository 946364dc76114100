//! SendTargets discovery: a discovery session that asks a portal which targets this
//! initiator may see.

use std::net::SocketAddr;

use super::{InitiatorConfig, InitiatorError, Session};

/// A target found by SendTargets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredTarget {
    pub name: String,
    /// `address:port,tpgt` entries.
    pub addresses: Vec<String>,
}

/// Asks a portal which targets this initiator may see (SendTargets=All).
pub fn discover(
    addr: SocketAddr,
    cfg: &InitiatorConfig,
) -> Result<Vec<DiscoveredTarget>, InitiatorError> {
    let mut s = Session::connect(addr, None, cfg)?;
    let text = s.text_request("SendTargets=All")?;
    let _ = s.logout();
    let mut out: Vec<DiscoveredTarget> = Vec::new();
    for (k, v) in text.0 {
        match k.as_str() {
            "TargetName" => out.push(DiscoveredTarget {
                name: v,
                addresses: Vec::new(),
            }),
            "TargetAddress" => {
                if let Some(t) = out.last_mut() {
                    t.addresses.push(v)
                }
            }
            _ => {}
        }
    }
    Ok(out)
}
