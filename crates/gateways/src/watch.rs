//! Following the state: a RADOS watch on the state object (a commit's notify wakes it) and a
//! poll of the version as the fallback for a missed notify or a broken watch, which is made
//! again at the next poll.

use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use rbd::{Watch, WatchEvent};

use crate::{Result, StateStore};

/// How long the OSD keeps the watch of a gateway it no longer hears from; a commit's notify
/// waits for such a watcher until then (or its own timeout).
const WATCH_TIMEOUT: Duration = Duration::from_secs(10);

enum Msg {
    Event(WatchEvent),
    Stop,
}

/// A running watch of the state; stops (and unwatches) when dropped.
#[derive(Debug)]
pub struct StateWatch {
    tx: Sender<Msg>,
    thread: Option<JoinHandle<()>>,
}

impl StateStore {
    /// Calls `on_change(version, epoch)` each time the state reaches a newer version or a
    /// new leader takes office (a newer epoch) after this call: at once on a notify, at the
    /// latest after `poll`; changes that follow quickly may be seen as one. `on_change` runs
    /// on the watch's own thread.
    pub fn watch(
        &self,
        poll: Duration,
        mut on_change: impl FnMut(u64, u64) + Send + 'static,
    ) -> Result<StateWatch> {
        let (tx, rx) = mpsc::channel();
        let store = self.clone();
        let mut last = store.head()?;
        let mut watch = Some(store.register(&tx)?);
        let thread = std::thread::Builder::new()
            .name("state-watch".into())
            .spawn({
                let tx = tx.clone();
                move || loop {
                    let mut stop = false;
                    let mut broken = false;
                    match rx.recv_timeout(poll) {
                        Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                        Ok(Msg::Event(WatchEvent::Error(errno))) => {
                            tracing::warn!(object = %store.object(), errno, "the state watch broke; polling until it is made again");
                            broken = true;
                        }
                        Ok(Msg::Event(WatchEvent::Notify { .. })) => {}
                        Err(RecvTimeoutError::Timeout) => {
                            if let Some(w) = &watch {
                                broken = w.check().is_err();
                            }
                        }
                    }
                    // Notifies already queued are answered by the one read below.
                    while let Ok(m) = rx.try_recv() {
                        match m {
                            Msg::Stop => stop = true,
                            Msg::Event(WatchEvent::Error(_)) => broken = true,
                            Msg::Event(WatchEvent::Notify { .. }) => {}
                        }
                    }
                    if stop {
                        return;
                    }
                    if broken {
                        watch = None;
                    }
                    if watch.is_none() {
                        match store.register(&tx) {
                            Ok(w) => watch = Some(w),
                            Err(e) => tracing::warn!(object = %store.object(), error = %e, "watching the state failed; polling"),
                        }
                    }
                    match store.head() {
                        Ok((version, epoch)) if version > last.0 || epoch > last.1 => {
                            last = (version, epoch);
                            on_change(version, epoch);
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(object = %store.object(), error = %e, "reading the state's version failed"),
                    }
                }
            })
            .expect("spawning the state watch thread");
        Ok(StateWatch {
            tx,
            thread: Some(thread),
        })
    }

    fn register(&self, tx: &Sender<Msg>) -> Result<Watch> {
        let tx = tx.clone();
        Ok(self.pool().watch(self.object(), WATCH_TIMEOUT, move |ev| {
            let _ = tx.send(Msg::Event(ev));
        })?)
    }
}

impl Drop for StateWatch {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
