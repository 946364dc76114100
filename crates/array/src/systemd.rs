//! Telling a service manager where the daemon is (`sd_notify`, systemd's `Type=notify`):
//! `READY=1` once everything the configuration asks for is serving, `STOPPING=1` when the
//! shutdown begins, and `WATCHDOG=1` while the array's state can still be reached, when the
//! unit sets `WatchdogSec=`.
//!
//! Every function does nothing when `NOTIFY_SOCKET` is not set (the daemon started by hand or
//! by a test). A notification that cannot be sent is logged and the daemon carries on: the
//! service manager's own timeout then says the start failed.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::watch;

use crate::daemon::RunningArray;
use crate::state::Array;

fn send(what: &str, states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "could not tell the service manager {what}");
    }
}

/// The `STATUS=` line `systemctl status` shows while the array serves: where the API, the
/// portals and the metrics listen, and the certificate fingerprint clients pin (no secret).
pub fn status_line(running: &RunningArray) -> String {
    let mut s = format!("serving: API https://{}", running.api_addr);
    if !running.iscsi_addrs.is_empty() {
        let portals: Vec<String> = running.iscsi_addrs.iter().map(|a| a.to_string()).collect();
        s.push_str(&format!(", iSCSI {}", portals.join(" ")));
    }
    if let Some(m) = running.metrics_addr {
        s.push_str(&format!(", metrics http://{m}/metrics"));
    }
    s.push_str(&format!(", fingerprint {}", running.fingerprint));
    s
}

/// `READY=1`, with this process's id and the status line. Called only once [`crate::start`]
/// has returned: the pool is open and recovered, and the iSCSI portals, the control API and
/// the metrics endpoint (when configured) are bound and accepting.
pub fn ready(running: &RunningArray) {
    let status = status_line(running);
    send(
        "the array is ready",
        &[
            NotifyState::Ready,
            NotifyState::MainPid(std::process::id()),
            NotifyState::Status(&status),
        ],
    );
}

/// `STOPPING=1`: the shutdown has begun (connections drain, the journal is synced).
pub fn stopping() {
    send(
        "the array is stopping",
        &[
            NotifyState::Stopping,
            NotifyState::Status("stopping: draining connections, syncing the journal"),
        ],
    );
}

/// When the service manager asks for a watchdog (`WATCHDOG_USEC`, from `WatchdogSec=`),
/// pings it at half the interval for as long as a blocking thread can take the array's state
/// lock. A poisoned lock (a panic while it was held) or a state that no thread can reach any
/// more stops the pings, and the service manager restarts the daemon, which rebuilds the
/// state from its journal. Runs until `stop` changes.
pub fn watchdog(
    array: Array,
    mut stop: watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    let interval = sd_notify::watchdog_enabled()?;
    let every = (interval / 2).max(Duration::from_millis(100));
    tracing::info!(
        every_ms = every.as_millis() as u64,
        "pinging the service manager's watchdog"
    );
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            let a = array.clone();
            let probe = tokio::task::spawn_blocking(move || a.journal_failed());
            match tokio::time::timeout(every, probe).await {
                Ok(Ok(_)) => send("the array is alive", &[NotifyState::Watchdog]),
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "the array's state cannot be reached; no watchdog ping");
                }
                Err(_) => {
                    tracing::warn!(
                        waited_ms = every.as_millis() as u64,
                        "the array's state did not answer in time; no watchdog ping"
                    );
                }
            }
        }
    }))
}
