//! A standby gateway's control API: every connection relayed, byte for byte, to the gateway
//! in office (docs/gateways.md, "The control API on every gateway"). TLS runs end to end
//! between the client and the gateway in office, which holds the same certificate and
//! checks the token itself; a standby reads nothing of it. While no gateway is in office (or
//! it cannot be reached), a standby closes each connection at once, unanswered: clients
//! treat that as a gateway that cannot be reached and move on to the next one.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::paths::LeaderApi;

/// How long a relay waits to reach the gateway in office.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Relays connections accepted on `listener` to `leader` until `stop` changes; connections
/// being relayed then go on until either end closes.
pub(crate) async fn relay(
    listener: Arc<TcpListener>,
    leader: LeaderApi,
    mut stop: watch::Receiver<bool>,
) {
    while let Some((tcp, peer)) = crate::daemon::next_connection(&listener, &mut stop).await {
        let Some(to) = leader.get() else {
            tracing::debug!(%peer, "no gateway in office: API connection closed unanswered");
            continue;
        };
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let upstream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(to)).await
            {
                Ok(Ok(u)) => u,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, %to, error = %e, "the gateway in office cannot be reached: API connection closed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, %to, "the gateway in office did not answer: API connection closed");
                    return;
                }
            };
            let _ = upstream.set_nodelay(true);
            let (mut a, mut b) = (tcp, upstream);
            if let Err(e) = tokio::io::copy_bidirectional(&mut a, &mut b).await {
                tracing::debug!(%peer, %to, error = %e, "a relayed API connection ended");
            }
        });
    }
}
