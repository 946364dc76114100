//! A commit's notify, sent off the committing thread: `rados_notify2` waits for every
//! watcher's acknowledgement, and a watcher that died holds it until the notify's timeout
//! for as long as the OSD keeps its watch. Notifies not yet sent when a newer one comes are
//! replaced by it: a watcher reads the state's head whatever the payload says.

use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rbd::Pool;

/// The notifier of one state object; its thread starts with the first notify and ends when
/// the notifier is dropped.
#[derive(Debug)]
pub(crate) struct Notifier {
    pool: Arc<Pool>,
    object: String,
    timeout: Duration,
    tx: OnceLock<Sender<String>>,
}

impl Notifier {
    pub fn new(pool: Arc<Pool>, object: String, timeout: Duration) -> Notifier {
        Notifier {
            pool,
            object,
            timeout,
            tx: OnceLock::new(),
        }
    }

    /// Queues a notify with `payload`; returns at once.
    pub fn send(&self, payload: String) {
        let tx = self.tx.get_or_init(|| self.spawn());
        // The thread only ends once every sender is gone.
        let _ = tx.send(payload);
    }

    fn spawn(&self) -> Sender<String> {
        let (tx, rx) = mpsc::channel::<String>();
        let (pool, object, timeout) = (self.pool.clone(), self.object.clone(), self.timeout);
        std::thread::Builder::new()
            .name("state-notify".into())
            .spawn(move || {
                while let Ok(mut payload) = rx.recv() {
                    // Only the newest of those waiting matters.
                    while let Ok(newer) = rx.try_recv() {
                        payload = newer;
                    }
                    if let Err(e) = pool.notify(&object, payload.as_bytes(), timeout) {
                        tracing::debug!(object = %object, error = %e, "notify not acknowledged by every watcher");
                    }
                }
            })
            .expect("spawning the notify thread");
        tx
    }
}
