//! VSS writers: the [`Writer`] events the coordinator sends, and [`LedgerWriter`], an
//! application that keeps one ledger per volume and lets a snapshot's point-in-time
//! consistency be proven from the data alone ([`verify_ledgers`]).
//!
//! A ledger is a sequence of 512-byte records at the start of a volume. Transaction `n`
//! appends record `n` to every ledger, then is acknowledged. Freeze finishes the transaction
//! in flight and stops; thaw resumes. So a snapshot taken while frozen holds, on every volume,
//! exactly the records `1..=n` where `n` was the last acknowledged transaction at the freeze.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use thiserror::Error;
use vss::Hresult;

use crate::host::{Host, HostError};

/// Why a writer failed an event.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WriterError {
    /// The freeze window ran out before thaw: the writer thawed itself.
    #[error("writer {0} timed out while frozen and thawed itself")]
    Timeout(String),
    #[error("writer {writer} failed: {message}")]
    Failed { writer: String, message: String },
}

impl WriterError {
    /// The code VSS reports for this writer failure.
    pub fn hresult(&self) -> Hresult {
        match self {
            WriterError::Timeout(_) => Hresult::VSS_E_WRITERERROR_TIMEOUT,
            WriterError::Failed { .. } => Hresult::VSS_E_WRITERERROR_NONRETRYABLE,
        }
    }
}

/// A component of a writer's metadata (`list writers metadata`): its files and the
/// volumes they are on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Component {
    pub name: String,
    pub files: Vec<String>,
    pub volumes: Vec<String>,
}

/// The backup type a requester announces (`SetBackupState`): a full backup lets writers
/// truncate their logs at `BackupComplete`, a copy backup leaves their history alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum BackupType {
    Full,
    Copy,
}

/// A writer id derived from its name (writers of one kind share a class id on Windows).
pub fn writer_id(name: &str) -> vss::VssId {
    let a = crc32c::crc32c(name.as_bytes()) as u128;
    let b = crc32c::crc32c_append(0x5EED, name.as_bytes()) as u128;
    uuid::Builder::from_u128((a << 96) | (b << 64) | 0x5348_4144_4f57_4c55)
        .with_version(uuid::Version::Random)
        .with_variant(uuid::Variant::RFC4122)
        .into_uuid()
}

/// The events VSS sends a writer during a backup.
pub trait Writer: Send + Sync {
    fn name(&self) -> String;
    /// The writer class id (`list writers`).
    fn id(&self) -> vss::VssId {
        writer_id(&self.name())
    }
    /// The volumes (host volume names) the writer's data lives on.
    fn volumes(&self) -> Vec<String>;
    /// The writer's components (its metadata, `OnIdentify`): by default one per volume.
    fn components(&self) -> Vec<Component> {
        self.volumes()
            .into_iter()
            .map(|v| Component {
                name: format!("data on {v}"),
                files: Vec::new(),
                volumes: vec![v],
            })
            .collect()
    }
    /// OnPrepareBackup, with the backup type of the requester.
    fn prepare_backup(&self, _backup_type: BackupType) -> Result<(), WriterError> {
        Ok(())
    }
    /// OnBackupComplete, sent at `end backup` to the writers that took part.
    fn backup_complete(&self) -> Result<(), WriterError> {
        Ok(())
    }
    /// What the writer did at the last `BackupComplete` it got (a database writer: whether
    /// it truncated its log), for `list writers status`; `None` if nothing to say.
    fn last_backup(&self) -> Option<String> {
        None
    }
    /// OnFreeze: stop writing and flush; the writer must thaw itself after `window`.
    fn freeze(&self, window: Duration) -> Result<(), WriterError>;
    /// OnThaw.
    fn thaw(&self) -> Result<(), WriterError>;
    /// OnPostSnapshot (auto-recovery happens here when the context allows it).
    fn post_snapshot(&self) -> Result<(), WriterError> {
        Ok(())
    }
    /// OnAbort: the backup failed; resume normal work.
    fn abort(&self);
}

/// Size of one ledger record.
pub const RECORD_SIZE: usize = 512;
const MAGIC: &[u8; 8] = b"SLLEDGER";

/// Encodes record `seq` of ledger `volume_index` of writer `writer_id`.
pub fn encode_record(writer_id: u64, volume_index: u32, seq: u64) -> [u8; RECORD_SIZE] {
    let mut r = [0u8; RECORD_SIZE];
    r[..8].copy_from_slice(MAGIC);
    r[8..16].copy_from_slice(&writer_id.to_le_bytes());
    r[16..20].copy_from_slice(&volume_index.to_le_bytes());
    r[20..28].copy_from_slice(&seq.to_le_bytes());
    for (i, b) in r[28..508].iter_mut().enumerate() {
        *b = (seq as u8).wrapping_mul(31).wrapping_add(i as u8);
    }
    let crc = crc32c::crc32c(&r[..508]);
    r[508..].copy_from_slice(&crc.to_le_bytes());
    r
}

/// What a ledger holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LedgerState {
    pub volume: String,
    /// The last record of the unbroken run `1..=last` (0 for an empty ledger).
    pub last: u64,
    /// Problems found: bad checksums, gaps, records of another writer, data after the end.
    pub defects: Vec<String>,
}

/// Reads a ledger from a volume (of any host) and checks every record.
pub fn read_ledger(
    host: &Host,
    volume: &str,
    writer_id: u64,
    volume_index: u32,
) -> Result<LedgerState, HostError> {
    let v = host.volume(volume)?;
    let capacity = v.bytes() / RECORD_SIZE as u64;
    let mut state = LedgerState {
        volume: volume.to_string(),
        last: 0,
        defects: Vec::new(),
    };
    const CHUNK: u64 = 256;
    let mut ended = false;
    let mut i = 0u64;
    while i < capacity {
        let n = CHUNK.min(capacity - i);
        let data = host.read_volume(volume, i * RECORD_SIZE as u64, (n as usize) * RECORD_SIZE)?;
        for (k, r) in data.chunks_exact(RECORD_SIZE).enumerate() {
            let seq_expected = i + k as u64 + 1;
            if ended {
                if r.iter().any(|b| *b != 0) {
                    state.defects.push(format!(
                        "data after the end of the ledger at record {seq_expected}"
                    ));
                    return Ok(state);
                }
                continue;
            }
            if r.iter().all(|b| *b == 0) {
                ended = true;
                continue;
            }
            if r[..8] != MAGIC[..] {
                state
                    .defects
                    .push(format!("record {seq_expected}: not a ledger record"));
                return Ok(state);
            }
            let crc = u32::from_le_bytes([r[508], r[509], r[510], r[511]]);
            if crc32c::crc32c(&r[..508]) != crc {
                state
                    .defects
                    .push(format!("record {seq_expected}: checksum mismatch"));
                return Ok(state);
            }
            let wid = u64::from_le_bytes(r[8..16].try_into().unwrap_or_default());
            let vix = u32::from_le_bytes(r[16..20].try_into().unwrap_or_default());
            let seq = u64::from_le_bytes(r[20..28].try_into().unwrap_or_default());
            if wid != writer_id || vix != volume_index {
                state.defects.push(format!(
                    "record {seq_expected}: belongs to writer {wid:x} volume {vix}"
                ));
                return Ok(state);
            }
            if seq != seq_expected {
                state
                    .defects
                    .push(format!("record {seq_expected}: holds sequence {seq}"));
                return Ok(state);
            }
            state.last = seq;
        }
        i += n;
    }
    Ok(state)
}

/// The verdict on a snapshot's consistency.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Consistency {
    pub ledgers: Vec<LedgerState>,
    /// Acknowledged before the hold (must all be present).
    pub acknowledged_at_freeze: u64,
    /// Written after the hold, the first of which must be absent.
    pub first_after_thaw: Option<u64>,
    pub consistent: bool,
    pub problems: Vec<String>,
}

/// Checks that `volumes` (snapshot volumes on `host`, in the writer's volume order) hold
/// exactly transactions `1..=acknowledged_at_freeze` of `writer_id`, with no defect.
pub fn verify_ledgers(
    host: &Host,
    volumes: &[String],
    writer_id: u64,
    acknowledged_at_freeze: u64,
    first_after_thaw: Option<u64>,
) -> Result<Consistency, HostError> {
    let mut ledgers = Vec::with_capacity(volumes.len());
    let mut problems = Vec::new();
    for (i, v) in volumes.iter().enumerate() {
        let l = read_ledger(host, v, writer_id, i as u32)?;
        for d in &l.defects {
            problems.push(format!("{v}: {d}"));
        }
        if l.last < acknowledged_at_freeze {
            problems.push(format!(
                "{v}: transaction {} was acknowledged before the hold but is missing (ledger ends at {})",
                l.last + 1,
                l.last
            ));
        }
        if let Some(after) = first_after_thaw
            && l.last >= after
        {
            problems.push(format!(
                "{v}: transaction {after} was written after the hold but is present"
            ));
        }
        ledgers.push(l);
    }
    if ledgers.windows(2).any(|w| w[0].last != w[1].last) {
        problems.push(format!(
            "volumes end at different transactions: {:?}",
            ledgers.iter().map(|l| l.last).collect::<Vec<_>>()
        ));
    }
    Ok(Consistency {
        consistent: problems.is_empty(),
        ledgers,
        acknowledged_at_freeze,
        first_after_thaw,
        problems,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Running,
    FreezeRequested,
    Frozen,
    Stopping,
}

struct Shared {
    mode: Mode,
    acknowledged: u64,
    frozen_at: Option<u64>,
    freeze_deadline: Option<Instant>,
    timed_out: bool,
    /// The first transaction written after the last thaw.
    first_after_thaw: Option<u64>,
    error: Option<String>,
    full: bool,
}

/// A ledger-writing application on a host, with its VSS writer.
pub struct LedgerWriter {
    name: String,
    id: u64,
    host: Arc<Host>,
    volumes: Vec<String>,
    shared: Arc<(Mutex<Shared>, Condvar)>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Records the smallest volume holds.
    capacity: u64,
    interval: Duration,
    /// Each transaction is flushed (SYNCHRONIZE CACHE on every volume) before it is
    /// acknowledged, as a database flushes its log before a commit returns.
    durable: bool,
}

impl std::fmt::Debug for LedgerWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LedgerWriter({})", self.name)
    }
}

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    m.lock().expect("writer lock")
}

impl LedgerWriter {
    /// Starts writing: one transaction every `interval` until the smallest volume is full or
    /// [`LedgerWriter::stop`] is called. A transaction is acknowledged once its writes are
    /// done: what a snapshot sees, not necessarily what survives a crash of the array (its
    /// write cache); see [`LedgerWriter::start_durable`].
    pub fn start(
        name: &str,
        id: u64,
        host: Arc<Host>,
        volumes: Vec<String>,
        interval: Duration,
    ) -> Result<Arc<Self>, HostError> {
        Self::start_with(name, id, host, volumes, interval, false)
    }

    /// [`LedgerWriter::start`], each transaction flushed on every volume before it is
    /// acknowledged: an acknowledged transaction survives a crash of the array.
    pub fn start_durable(
        name: &str,
        id: u64,
        host: Arc<Host>,
        volumes: Vec<String>,
        interval: Duration,
    ) -> Result<Arc<Self>, HostError> {
        Self::start_with(name, id, host, volumes, interval, true)
    }

    fn start_with(
        name: &str,
        id: u64,
        host: Arc<Host>,
        volumes: Vec<String>,
        interval: Duration,
        durable: bool,
    ) -> Result<Arc<Self>, HostError> {
        let mut capacity = u64::MAX;
        for v in &volumes {
            capacity = capacity.min(host.volume(v)?.bytes() / RECORD_SIZE as u64);
        }
        let w = Arc::new(Self {
            name: name.to_string(),
            id,
            host,
            volumes,
            shared: Arc::new((
                Mutex::new(Shared {
                    mode: Mode::Running,
                    acknowledged: 0,
                    frozen_at: None,
                    freeze_deadline: None,
                    timed_out: false,
                    first_after_thaw: None,
                    error: None,
                    full: false,
                }),
                Condvar::new(),
            )),
            thread: Mutex::new(None),
            capacity,
            interval,
            durable,
        });
        w.spawn()?;
        Ok(w)
    }

    fn spawn(self: &Arc<Self>) -> Result<(), HostError> {
        let me = Arc::clone(self);
        let (capacity, interval) = (self.capacity, self.interval);
        let t = std::thread::Builder::new()
            .name(format!("writer-{}", self.name))
            .spawn(move || me.run(capacity, interval))
            .map_err(|e| HostError::NoSuchVolume(format!("cannot start writer thread: {e}")))?;
        *self.thread.lock().expect("writer thread lock") = Some(t);
        Ok(())
    }

    /// Starts the application again after its thread ended (an I/O error, or
    /// [`LedgerWriter::stop`]), as a database recovers: `acknowledged` is the last transaction
    /// it knows to be durable, and the next one, `acknowledged + 1`, is written again on every
    /// volume, replacing a record the failure may have left on some of them. After a restore
    /// from a snapshot, `acknowledged` is the snapshot's last transaction.
    pub fn restart(self: &Arc<Self>, acknowledged: u64) -> Result<(), HostError> {
        self.stop();
        {
            let mut s = lock(&self.shared.0);
            s.mode = Mode::Running;
            s.acknowledged = acknowledged;
            s.frozen_at = None;
            s.freeze_deadline = None;
            s.timed_out = false;
            s.first_after_thaw = None;
            s.error = None;
            s.full = false;
        }
        self.spawn()
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    fn run(&self, capacity: u64, interval: Duration) {
        let (m, cv) = &*self.shared;
        loop {
            let seq = {
                let mut s = lock(m);
                loop {
                    match s.mode {
                        Mode::Stopping => return,
                        Mode::FreezeRequested => {
                            s.mode = Mode::Frozen;
                            s.frozen_at = Some(s.acknowledged);
                            cv.notify_all();
                        }
                        Mode::Frozen => {
                            let Some(deadline) = s.freeze_deadline else {
                                s = cv.wait(s).expect("writer lock");
                                continue;
                            };
                            let now = Instant::now();
                            if now >= deadline {
                                tracing::warn!(writer = %self.name, "freeze window passed; thawing");
                                s.timed_out = true;
                                s.mode = Mode::Running;
                                s.first_after_thaw = Some(s.acknowledged + 1);
                                cv.notify_all();
                                continue;
                            }
                            s = cv.wait_timeout(s, deadline - now).expect("writer lock").0;
                        }
                        Mode::Running => break,
                    }
                }
                if s.acknowledged >= capacity {
                    s.full = true;
                    s = cv
                        .wait_timeout(s, Duration::from_millis(20))
                        .expect("writer lock")
                        .0;
                    drop(s);
                    continue;
                }
                s.acknowledged + 1
            };
            for (i, v) in self.volumes.iter().enumerate() {
                let rec = encode_record(self.id, i as u32, seq);
                let written = self
                    .host
                    .write_volume(v, (seq - 1) * RECORD_SIZE as u64, &rec);
                if let Err(e) = written.and_then(|()| {
                    if self.durable {
                        self.host.flush_volume(v)
                    } else {
                        Ok(())
                    }
                }) {
                    let mut s = lock(m);
                    s.error = Some(e.to_string());
                    s.mode = Mode::Stopping;
                    cv.notify_all();
                    return;
                }
            }
            {
                let mut s = lock(m);
                s.acknowledged = seq;
                cv.notify_all();
            }
            if !interval.is_zero() {
                std::thread::sleep(interval);
            }
        }
    }

    /// The last acknowledged transaction.
    pub fn acknowledged(&self) -> u64 {
        lock(&self.shared.0).acknowledged
    }

    /// The last transaction acknowledged when the writer froze (last freeze).
    pub fn frozen_at(&self) -> Option<u64> {
        lock(&self.shared.0).frozen_at
    }

    /// The first transaction written after the last thaw (if any was written yet or planned).
    pub fn first_after_thaw(&self) -> Option<u64> {
        lock(&self.shared.0).first_after_thaw
    }

    /// Whether the writer stopped because its ledger is full (it wrote every record the
    /// smallest of its volumes holds).
    pub fn full(&self) -> bool {
        lock(&self.shared.0).full
    }

    /// Waits until at least `n` transactions are acknowledged (or `timeout` passes).
    pub fn wait_for(&self, n: u64, timeout: Duration) -> bool {
        let (m, cv) = &*self.shared;
        let deadline = Instant::now() + timeout;
        let mut s = lock(m);
        while s.acknowledged < n {
            let now = Instant::now();
            if now >= deadline || s.mode == Mode::Stopping || s.full {
                return s.acknowledged >= n;
            }
            s = cv.wait_timeout(s, deadline - now).expect("writer lock").0;
        }
        true
    }

    /// An I/O error that stopped the writer, if any.
    pub fn error(&self) -> Option<String> {
        lock(&self.shared.0).error.clone()
    }

    /// Stops the writer thread and waits for it.
    pub fn stop(&self) {
        {
            let mut s = lock(&self.shared.0);
            s.mode = Mode::Stopping;
            self.shared.1.notify_all();
        }
        if let Some(t) = self.thread.lock().expect("writer thread lock").take() {
            let _ = t.join();
        }
    }
}

impl Drop for LedgerWriter {
    fn drop(&mut self) {
        let mut s = lock(&self.shared.0);
        s.mode = Mode::Stopping;
        self.shared.1.notify_all();
    }
}

impl Writer for LedgerWriter {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn volumes(&self) -> Vec<String> {
        self.volumes.clone()
    }

    fn freeze(&self, window: Duration) -> Result<(), WriterError> {
        let (m, cv) = &*self.shared;
        let mut s = lock(m);
        if let Some(e) = &s.error {
            return Err(WriterError::Failed {
                writer: self.name.clone(),
                message: e.clone(),
            });
        }
        if s.mode == Mode::Stopping {
            // The application has stopped: nothing to freeze.
            return Ok(());
        }
        s.timed_out = false;
        s.freeze_deadline = Some(Instant::now() + window);
        s.mode = Mode::FreezeRequested;
        cv.notify_all();
        while s.mode == Mode::FreezeRequested {
            s = cv.wait(s).expect("writer lock");
        }
        Ok(())
    }

    fn thaw(&self) -> Result<(), WriterError> {
        let (m, cv) = &*self.shared;
        let mut s = lock(m);
        if s.timed_out {
            s.timed_out = false;
            return Err(WriterError::Timeout(self.name.clone()));
        }
        if s.mode == Mode::Frozen {
            s.mode = Mode::Running;
            s.first_after_thaw = Some(s.acknowledged + 1);
            s.freeze_deadline = None;
            cv.notify_all();
        }
        Ok(())
    }

    fn abort(&self) {
        let (m, cv) = &*self.shared;
        let mut s = lock(m);
        if s.mode == Mode::Frozen || s.mode == Mode::FreezeRequested {
            s.mode = Mode::Running;
            s.freeze_deadline = None;
            cv.notify_all();
        }
    }
}

/// What a [`DatabaseWriter`] is asked to do wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriterFault {
    /// Fails its freeze (a writer veto: `VSS_E_WRITERERROR_NONRETRYABLE`).
    Veto,
    /// Does not finish its freeze in the window (`VSS_E_WRITERERROR_TIMEOUT`).
    Timeout,
}

/// A database-like writer: a database component on one volume and its log on another, as
/// SQL Server or Exchange declare them. It records the events it gets (`events`), truncates
/// its log at `BackupComplete` of a full backup (not of a copy backup), and can be asked to
/// veto or time out its freeze.
pub struct DatabaseWriter {
    name: String,
    database: String,
    log: String,
    fault: Option<WriterFault>,
    backup_type: Mutex<Option<BackupType>>,
    events: Mutex<Vec<String>>,
}

impl DatabaseWriter {
    pub fn new(name: &str, database: &str, log: &str, fault: Option<WriterFault>) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_string(),
            database: database.to_string(),
            log: log.to_string(),
            fault,
            backup_type: Mutex::new(None),
            events: Mutex::new(Vec::new()),
        })
    }

    /// The events received, in order (`PrepareForBackup(Full)`, `Freeze`, `Thaw`, …).
    pub fn events(&self) -> Vec<String> {
        self.events.lock().expect("writer events lock").clone()
    }

    fn note(&self, e: String) {
        self.events.lock().expect("writer events lock").push(e);
    }
}

impl Writer for DatabaseWriter {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn volumes(&self) -> Vec<String> {
        vec![self.database.clone(), self.log.clone()]
    }

    fn components(&self) -> Vec<Component> {
        vec![
            Component {
                name: "database".into(),
                files: vec![format!("{}\\Data\\sales.mdf", self.database)],
                volumes: vec![self.database.clone()],
            },
            Component {
                name: "log".into(),
                files: vec![format!("{}\\Log\\sales_log.ldf", self.log)],
                volumes: vec![self.log.clone()],
            },
        ]
    }

    fn prepare_backup(&self, backup_type: BackupType) -> Result<(), WriterError> {
        *self.backup_type.lock().expect("writer backup type lock") = Some(backup_type);
        self.note(format!("PrepareForBackup({backup_type:?})"));
        Ok(())
    }

    fn freeze(&self, _window: Duration) -> Result<(), WriterError> {
        self.note("Freeze".into());
        match self.fault {
            None => Ok(()),
            Some(WriterFault::Veto) => Err(WriterError::Failed {
                writer: self.name.clone(),
                message: "the database refused to freeze (asked to veto)".into(),
            }),
            Some(WriterFault::Timeout) => Err(WriterError::Timeout(self.name.clone())),
        }
    }

    fn thaw(&self) -> Result<(), WriterError> {
        self.note("Thaw".into());
        Ok(())
    }

    fn post_snapshot(&self) -> Result<(), WriterError> {
        self.note("PostSnapshot".into());
        Ok(())
    }

    fn backup_complete(&self) -> Result<(), WriterError> {
        let t = *self.backup_type.lock().expect("writer backup type lock");
        self.note(match t {
            Some(BackupType::Full) => "BackupComplete: log truncated".into(),
            _ => "BackupComplete: log kept (copy backup)".into(),
        });
        Ok(())
    }

    fn last_backup(&self) -> Option<String> {
        self.events()
            .into_iter()
            .rev()
            .find_map(|e| e.strip_prefix("BackupComplete: ").map(str::to_string))
    }

    fn abort(&self) {
        self.note("Abort".into());
    }
}
