//! A commit's notify, sent off the committing thread: `rados_notify2` waits for every
//! watcher's acknowledgement, and a watcher that died holds it until the notify's timeout
//! for as long as the OSD keeps its watch. Notifies not yet sent when a newer one comes are
//! replaced by it: a watcher reads the state's head whatever the payload says.

use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use rbd::Pool;

/// The notifier of one state object; its thread starts with the first notify and ends when
/// the notifier is dropped, which waits for a notify in flight (at most its timeout): a
/// thread left inside librados could meet the library's teardown at the process's exit.
#[derive(Debug)]
pub(crate) struct Notifier {
    pool: Arc<Pool>,
    object: String,
    timeout: Duration,
    tx: OnceLock<Sender<String>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Notifier {
    pub fn new(pool: Arc<Pool>, object: String, timeout: Duration) -> Notifier {
        Notifier {
            pool,
            object,
            timeout,
            tx: OnceLock::new(),
            thread: Mutex::new(None),
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
        let thread = std::thread::Builder::new()
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
        *self.thread.lock().expect("notifier lock") = Some(thread);
        tx
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        // The thread ends once its sender is gone and the notify in flight returns.
        drop(self.tx.take());
        let thread = self.thread.get_mut().map(Option::take).unwrap_or_default();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}
