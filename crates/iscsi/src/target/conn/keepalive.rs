//! Keep-alive pings (NOP-In) and, on server shutdown, the Async Message asking the
//! initiator to log out: a task beside the session loop that ends the connection when a
//! ping goes unanswered or the logout grace runs out.

use super::*;

/// State shared by the session loop and the keeper task.
pub(super) struct Keep {
    pub(super) epoch: Instant,
    /// Milliseconds after `epoch` when the last PDU arrived.
    pub(super) last_rx_ms: AtomicU64,
    /// Target Transfer Tag of the unanswered keep-alive ping, 0 when none.
    pub(super) ping_ttt: AtomicU32,
    /// Why the keeper ended the connection.
    pub(super) reason: Mutex<Option<String>>,
}

/// Sends keep-alive pings and, on server shutdown, the Async logout request; ends the
/// connection (through `kill`) when a ping goes unanswered or the logout grace runs out.
pub(super) async fn keeper_task(
    shared: Arc<Shared>,
    keep: Arc<Keep>,
    kill: Arc<Notify>,
    tx: mpsc::Sender<Out>,
    normal: bool,
) {
    let cfg = &shared.config;
    let end = |why: &str| {
        *keep.reason.lock().expect("reason lock") = Some(why.to_string());
        kill.notify_one();
    };
    let mut shutdown = shared.shutdown.clone();
    let tick = cfg
        .nop_interval
        .unwrap_or(Duration::from_secs(3600))
        .min(Duration::from_secs(1));
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_ttt = 0x8000_0000u32;
    let mut ping_sent: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = super::super::stopped(&mut shutdown) => {
                if !normal {
                    return end("server shutdown");
                }
                let grace = cfg.logout_grace;
                let mut b = Bhs::new(op::ASYNC);
                b.set_flags(0x80);
                b.set_itt(RESERVED_TAG);
                b.0[36] = 1; // the target requests a logout
                b.set_u16(42, grace.as_secs().clamp(1, 3600) as u16);
                let _ = tx.send(Out::Pdu(Pdu::new(b), Sn::Advance)).await;
                tokio::time::sleep(grace).await;
                return end("server shutdown");
            }
            _ = ticker.tick() => {
                let Some(iv) = cfg.nop_interval else { continue };
                if keep.ping_ttt.load(Ordering::Acquire) == 0 {
                    ping_sent = None;
                }
                match ping_sent {
                    Some(since) if since.elapsed() > cfg.nop_timeout => {
                        return end("keep-alive NOP-In not answered");
                    }
                    Some(_) => {}
                    None => {
                        let idle_ms = keep.epoch.elapsed().as_millis() as u64
                            - keep.last_rx_ms.load(Ordering::Relaxed).min(keep.epoch.elapsed().as_millis() as u64);
                        if idle_ms >= iv.as_millis() as u64 {
                            next_ttt = next_ttt.wrapping_add(1) | 0x8000_0000;
                            if next_ttt == RESERVED_TAG {
                                next_ttt = 0x8000_0000;
                            }
                            let mut b = Bhs::new(op::NOP_IN);
                            b.set_flags(0x80);
                            b.set_itt(RESERVED_TAG);
                            b.set_u32(20, next_ttt);
                            keep.ping_ttt.store(next_ttt, Ordering::Release);
                            ping_sent = Some(Instant::now());
                            if tx.send(Out::Pdu(Pdu::new(b), Sn::Current)).await.is_err() {
                                return end("writer closed");
                            }
                        }
                    }
                }
            }
        }
    }
}
