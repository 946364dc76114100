//! [`HardwareProvider`] calls carried over a byte stream, one JSON object per line.
//!
//! [`serve`] answers calls on any provider; [`RelayClient`] is a provider whose every method
//! is such a call. Together they let code that drives a provider through the trait (the VSS
//! emulator's conformance catalogue) drive one that lives in another process: on Linux, the
//! Windows COM client running under Wine, which in turn reaches `shadowlun-provider.exe`
//! across COM's process boundary.
//!
//! Calls may overlap, as they do when VSS calls a provider from several threads: each request
//! carries an id, [`serve`] runs each on its own thread, and answers come back in any order.
//! The `IVssAsync` of `ResyncLuns` stays on the serving side; the client holds its id.
//!
//! Lines are at most [`MAX_LINE`] bytes. A request that does not parse is answered with id 0
//! and `E_INVALIDARG`; an answer of the wrong kind or an `[in,out]` array whose length changed
//! is `E_UNEXPECTED` for the caller; an answer line that does not parse is logged and dropped
//! (its caller waits until the stream ends). A relay that goes away turns every call, pending or later, into
//! `HRESULT_FROM_WIN32(RPC_S_SERVER_UNAVAILABLE)`, what COM returns when a server process dies.

use std::collections::HashMap;
use std::io::{self, BufRead, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vss::{HardwareOptions, Hresult, LunInfo, SnapshotContext, VssId};

use provider::{AsyncOperation, HardwareProvider, UnloadAnswer};

/// The longest line either side reads (a 64-LUN call is about 100 KiB).
pub const MAX_LINE: usize = 16 << 20;

/// `HRESULT_FROM_WIN32(RPC_S_SERVER_UNAVAILABLE)`: the relay (the server) is gone.
pub const SERVER_UNAVAILABLE: Hresult = Hresult(0x8007_06BA);

/// One provider method, or one method of an `IVssAsync` the serving side holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "method")]
pub enum Call {
    AreLunsSupported {
        context: SnapshotContext,
        devices: Vec<String>,
        luns: Vec<LunInfo>,
    },
    BeginPrepareSnapshot {
        set_id: VssId,
        snapshot_id: VssId,
        context: SnapshotContext,
        devices: Vec<String>,
        luns: Vec<LunInfo>,
    },
    FillInLunInfo {
        device: String,
        lun: LunInfo,
    },
    GetTargetLuns {
        devices: Vec<String>,
        sources: Vec<LunInfo>,
        destinations: Vec<LunInfo>,
    },
    LocateLuns {
        luns: Vec<LunInfo>,
    },
    OnLunEmpty {
        device: String,
        lun: LunInfo,
    },
    GetProviderCapabilities,
    OnLunStateChange {
        snapshot_luns: Vec<LunInfo>,
        original_luns: Vec<LunInfo>,
        flags: HardwareOptions,
    },
    ResyncLuns {
        sources: Vec<LunInfo>,
        targets: Vec<LunInfo>,
    },
    OnReuseLuns {
        snapshot_luns: Vec<LunInfo>,
        original_luns: Vec<LunInfo>,
    },
    EndPrepareSnapshots {
        set_id: VssId,
    },
    PreCommitSnapshots {
        set_id: VssId,
    },
    CommitSnapshots {
        set_id: VssId,
    },
    PostCommitSnapshots {
        set_id: VssId,
        snapshot_count: i32,
    },
    PreFinalCommitSnapshots {
        set_id: VssId,
    },
    PostFinalCommitSnapshots {
        set_id: VssId,
    },
    AbortSnapshots {
        set_id: VssId,
    },
    OnLoad,
    OnUnload {
        force: bool,
    },
    /// `IVssAsync::Wait` (`timeout_ms` absent: INFINITE).
    AsyncWait {
        operation: u64,
        timeout_ms: Option<u64>,
    },
    AsyncQueryStatus {
        operation: u64,
    },
    AsyncCancel {
        operation: u64,
    },
    /// The client's last reference to the operation is gone.
    AsyncRelease {
        operation: u64,
    },
}

/// What a call answers when it succeeds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum Reply {
    Done,
    /// `AreLunsSupported`: the answer and the `[in,out]` LUNs as the provider left them.
    Supported {
        supported: bool,
        luns: Vec<LunInfo>,
    },
    /// `BeginPrepareSnapshot`, `GetTargetLuns`: the `[in,out]` LUNs as the provider left them.
    Luns {
        luns: Vec<LunInfo>,
    },
    Filled {
        found: bool,
        lun: LunInfo,
    },
    Capabilities {
        value: u64,
    },
    Operation {
        operation: u64,
    },
    Status {
        code: Hresult,
        progress: i32,
    },
    Code {
        code: Hresult,
    },
    Unload {
        busy: bool,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Request {
    id: u64,
    call: Call,
}

#[derive(Debug, Serialize, Deserialize)]
struct Response {
    id: u64,
    result: Result<Reply, Hresult>,
}

/// Reads one line of at most [`MAX_LINE`] bytes; false at end of stream.
fn read_line<R: BufRead>(input: &mut R, buf: &mut Vec<u8>) -> io::Result<bool> {
    buf.clear();
    let n = Read::take(input, MAX_LINE as u64 + 1).read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(false);
    }
    if buf.len() > MAX_LINE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a relay line longer than {MAX_LINE} bytes"),
        ));
    }
    Ok(true)
}

fn write_line<T: Serialize>(out: &Mutex<impl Write>, value: &T) -> io::Result<()> {
    let mut line = serde_json::to_vec(value).map_err(io::Error::other)?;
    line.push(b'\n');
    let mut out = out.lock().expect("relay lock");
    out.write_all(&line)?;
    out.flush()
}

/// The serving side's `IVssAsync` objects, by id.
#[derive(Default)]
struct Operations {
    next: AtomicU64,
    live: Mutex<HashMap<u64, Arc<dyn AsyncOperation>>>,
}

impl Operations {
    fn get(&self, id: u64) -> Result<Arc<dyn AsyncOperation>, Hresult> {
        self.live
            .lock()
            .expect("relay lock")
            .get(&id)
            .cloned()
            .ok_or(Hresult::E_INVALIDARG)
    }
}

fn execute(p: &dyn HardwareProvider, ops: &Operations, call: Call) -> Result<Reply, Hresult> {
    Ok(match call {
        Call::AreLunsSupported {
            context,
            devices,
            mut luns,
        } => {
            let supported = p.are_luns_supported(context, &devices, &mut luns)?;
            Reply::Supported { supported, luns }
        }
        Call::BeginPrepareSnapshot {
            set_id,
            snapshot_id,
            context,
            devices,
            mut luns,
        } => {
            p.begin_prepare_snapshot(set_id, snapshot_id, context, &devices, &mut luns)?;
            Reply::Luns { luns }
        }
        Call::FillInLunInfo { device, mut lun } => {
            let found = p.fill_in_lun_info(&device, &mut lun)?;
            Reply::Filled { found, lun }
        }
        Call::GetTargetLuns {
            devices,
            sources,
            mut destinations,
        } => {
            p.get_target_luns(&devices, &sources, &mut destinations)?;
            Reply::Luns { luns: destinations }
        }
        Call::LocateLuns { luns } => {
            p.locate_luns(&luns)?;
            Reply::Done
        }
        Call::OnLunEmpty { device, lun } => {
            p.on_lun_empty(&device, &lun)?;
            Reply::Done
        }
        Call::GetProviderCapabilities => Reply::Capabilities {
            value: p.get_provider_capabilities()?,
        },
        Call::OnLunStateChange {
            snapshot_luns,
            original_luns,
            flags,
        } => {
            p.on_lun_state_change(&snapshot_luns, &original_luns, flags)?;
            Reply::Done
        }
        Call::ResyncLuns { sources, targets } => {
            let op = p.resync_luns(&sources, &targets)?;
            let id = ops.next.fetch_add(1, Ordering::Relaxed) + 1;
            ops.live.lock().expect("relay lock").insert(id, op);
            Reply::Operation { operation: id }
        }
        Call::OnReuseLuns {
            snapshot_luns,
            original_luns,
        } => {
            p.on_reuse_luns(&snapshot_luns, &original_luns)?;
            Reply::Done
        }
        Call::EndPrepareSnapshots { set_id } => {
            p.end_prepare_snapshots(set_id)?;
            Reply::Done
        }
        Call::PreCommitSnapshots { set_id } => {
            p.pre_commit_snapshots(set_id)?;
            Reply::Done
        }
        Call::CommitSnapshots { set_id } => {
            p.commit_snapshots(set_id)?;
            Reply::Done
        }
        Call::PostCommitSnapshots {
            set_id,
            snapshot_count,
        } => {
            p.post_commit_snapshots(set_id, snapshot_count)?;
            Reply::Done
        }
        Call::PreFinalCommitSnapshots { set_id } => {
            p.pre_final_commit_snapshots(set_id)?;
            Reply::Done
        }
        Call::PostFinalCommitSnapshots { set_id } => {
            p.post_final_commit_snapshots(set_id)?;
            Reply::Done
        }
        Call::AbortSnapshots { set_id } => {
            p.abort_snapshots(set_id)?;
            Reply::Done
        }
        Call::OnLoad => {
            p.on_load()?;
            Reply::Done
        }
        Call::OnUnload { force } => Reply::Unload {
            busy: p.on_unload(force)? == UnloadAnswer::Busy,
        },
        Call::AsyncWait {
            operation,
            timeout_ms,
        } => {
            ops.get(operation)?
                .wait(timeout_ms.map(Duration::from_millis))?;
            Reply::Done
        }
        Call::AsyncQueryStatus { operation } => {
            let (code, progress) = ops.get(operation)?.query_status()?;
            Reply::Status { code, progress }
        }
        Call::AsyncCancel { operation } => Reply::Code {
            code: ops.get(operation)?.cancel()?,
        },
        Call::AsyncRelease { operation } => {
            ops.live.lock().expect("relay lock").remove(&operation);
            Reply::Done
        }
    })
}

/// Answers calls read from `input` on `provider`, each on its own thread, writing each answer
/// to `output` as it is ready. `thread_init` runs first on every such thread (COM needs each
/// calling thread in an apartment). Returns when `input` ends, after every call has been
/// answered; a line that is not a request is answered with id 0 and `E_INVALIDARG`.
pub fn serve<W, F>(
    provider: Arc<dyn HardwareProvider>,
    mut input: impl BufRead,
    output: W,
    thread_init: F,
) -> io::Result<()>
where
    W: Write + Send,
    F: Fn() + Sync,
{
    let output = Mutex::new(output);
    let ops = Operations::default();
    let mut line = Vec::new();
    std::thread::scope(|scope| {
        while read_line(&mut input, &mut line)? {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let request: Request = match serde_json::from_slice(&line) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!("relay: not a request: {e}");
                    write_line(
                        &output,
                        &Response {
                            id: 0,
                            result: Err(Hresult::E_INVALIDARG),
                        },
                    )?;
                    continue;
                }
            };
            let (p, ops, output, thread_init) = (&provider, &ops, &output, &thread_init);
            scope.spawn(move || {
                thread_init();
                let result = execute(p.as_ref(), ops, request.call);
                if let Err(e) = write_line(
                    output,
                    &Response {
                        id: request.id,
                        result,
                    },
                ) {
                    tracing::warn!("relay: cannot answer call {}: {e}", request.id);
                }
            });
        }
        Ok(())
    })
}

type Waiter = mpsc::Sender<Result<Reply, Hresult>>;

/// Callers waiting for answers, by call id; `None` once the answers stopped, when every later
/// call fails at once.
type Pending = Mutex<Option<HashMap<u64, Waiter>>>;

/// The sending half, shared by the client and its operations. Dropping the last of them
/// closes `output` (the serving side sees the end of its input and finishes), then drops
/// `guard`.
struct Channel {
    output: Mutex<Box<dyn Write + Send>>,
    pending: Arc<Pending>,
    next: AtomicU64,
    guard: Mutex<Option<Box<dyn Send>>>,
}

impl Channel {
    fn call(&self, call: Call) -> Result<Reply, Hresult> {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = mpsc::channel();
        match self.pending.lock().expect("relay lock").as_mut() {
            Some(p) => p.insert(id, tx),
            None => return Err(SERVER_UNAVAILABLE),
        };
        if let Err(e) = write_line(&self.output, &Request { id, call }) {
            tracing::warn!("relay: cannot send call {id}: {e}");
            self.forget(id);
            return Err(SERVER_UNAVAILABLE);
        }
        // A closed channel means the relay went away with this call pending.
        rx.recv().unwrap_or(Err(SERVER_UNAVAILABLE))
    }

    /// A call whose only answer is `Done`.
    fn done(&self, call: Call) -> Result<(), Hresult> {
        match self.call(call)? {
            Reply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    fn forget(&self, id: u64) {
        if let Some(p) = self.pending.lock().expect("relay lock").as_mut() {
            p.remove(&id);
        }
    }
}

/// Delivers answers until `input` ends, then fails every pending and later call.
fn read_answers(pending: &Pending, mut input: impl BufRead) {
    let mut line = Vec::new();
    loop {
        match read_line(&mut input, &mut line) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                tracing::warn!("relay: {e}");
                break;
            }
        }
        match serde_json::from_slice::<Response>(&line) {
            Ok(r) => {
                let waiter = pending
                    .lock()
                    .expect("relay lock")
                    .as_mut()
                    .and_then(|p| p.remove(&r.id));
                match waiter {
                    Some(w) => {
                        let _ = w.send(r.result);
                    }
                    None => tracing::warn!("relay: an answer to no call ({})", r.id),
                }
            }
            Err(e) => tracing::warn!("relay: not an answer: {e}"),
        }
    }
    // Dropping the waiters wakes every pending caller with SERVER_UNAVAILABLE.
    *pending.lock().expect("relay lock") = None;
}

/// A [`HardwareProvider`] whose methods are calls answered by [`serve`] at the other end of a
/// stream pair.
pub struct RelayClient {
    channel: Arc<Channel>,
}

impl RelayClient {
    /// Sends calls to `output` and reads answers from `input` (on a thread of its own that
    /// ends when `input` does). `output` is closed when the client and every operation it
    /// returned are gone.
    pub fn new(
        input: impl BufRead + Send + 'static,
        output: impl Write + Send + 'static,
    ) -> io::Result<Self> {
        let pending: Arc<Pending> = Arc::new(Mutex::new(Some(HashMap::new())));
        let reader = pending.clone();
        std::thread::Builder::new()
            .name("relay-answers".into())
            .spawn(move || read_answers(&reader, input))?;
        Ok(Self {
            channel: Arc::new(Channel {
                output: Mutex::new(Box::new(output)),
                pending,
                next: AtomicU64::new(0),
                guard: Mutex::new(None),
            }),
        })
    }

    /// Keeps `guard` (say, the serving process) until `output` has been closed, then drops it.
    pub fn with_guard(self, guard: impl Send + 'static) -> Self {
        *self.channel.guard.lock().expect("relay lock") = Some(Box::new(guard));
        self
    }

    fn call(&self, call: Call) -> Result<Reply, Hresult> {
        self.channel.call(call)
    }

    fn done(&self, call: Call) -> Result<(), Hresult> {
        self.channel.done(call)
    }

    fn luns(&self, call: Call, into: &mut [LunInfo]) -> Result<(), Hresult> {
        match self.call(call)? {
            Reply::Luns { luns } => copy_back(luns, into),
            other => Err(unexpected(other)),
        }
    }
}

fn unexpected(reply: Reply) -> Hresult {
    tracing::warn!("relay: an answer of the wrong kind: {reply:?}");
    Hresult::E_UNEXPECTED
}

fn copy_back(luns: Vec<LunInfo>, into: &mut [LunInfo]) -> Result<(), Hresult> {
    if luns.len() != into.len() {
        return Err(Hresult::E_UNEXPECTED);
    }
    for (dst, src) in into.iter_mut().zip(luns) {
        *dst = src;
    }
    Ok(())
}

impl HardwareProvider for RelayClient {
    fn are_luns_supported(
        &self,
        context: SnapshotContext,
        devices: &[String],
        luns: &mut [LunInfo],
    ) -> Result<bool, Hresult> {
        match self.call(Call::AreLunsSupported {
            context,
            devices: devices.to_vec(),
            luns: luns.to_vec(),
        })? {
            Reply::Supported {
                supported,
                luns: after,
            } => {
                copy_back(after, luns)?;
                Ok(supported)
            }
            other => Err(unexpected(other)),
        }
    }

    fn begin_prepare_snapshot(
        &self,
        set_id: VssId,
        snapshot_id: VssId,
        context: SnapshotContext,
        devices: &[String],
        luns: &mut [LunInfo],
    ) -> Result<(), Hresult> {
        let call = Call::BeginPrepareSnapshot {
            set_id,
            snapshot_id,
            context,
            devices: devices.to_vec(),
            luns: luns.to_vec(),
        };
        self.luns(call, luns)
    }

    fn fill_in_lun_info(&self, device: &str, lun: &mut LunInfo) -> Result<bool, Hresult> {
        match self.call(Call::FillInLunInfo {
            device: device.into(),
            lun: lun.clone(),
        })? {
            Reply::Filled { found, lun: after } => {
                *lun = after;
                Ok(found)
            }
            other => Err(unexpected(other)),
        }
    }

    fn get_target_luns(
        &self,
        devices: &[String],
        sources: &[LunInfo],
        destinations: &mut [LunInfo],
    ) -> Result<(), Hresult> {
        let call = Call::GetTargetLuns {
            devices: devices.to_vec(),
            sources: sources.to_vec(),
            destinations: destinations.to_vec(),
        };
        self.luns(call, destinations)
    }

    fn locate_luns(&self, luns: &[LunInfo]) -> Result<(), Hresult> {
        self.done(Call::LocateLuns {
            luns: luns.to_vec(),
        })
    }

    fn on_lun_empty(&self, device: &str, lun: &LunInfo) -> Result<(), Hresult> {
        self.done(Call::OnLunEmpty {
            device: device.into(),
            lun: lun.clone(),
        })
    }

    fn get_provider_capabilities(&self) -> Result<u64, Hresult> {
        match self.call(Call::GetProviderCapabilities)? {
            Reply::Capabilities { value } => Ok(value),
            other => Err(unexpected(other)),
        }
    }

    fn on_lun_state_change(
        &self,
        snapshot_luns: &[LunInfo],
        original_luns: &[LunInfo],
        flags: HardwareOptions,
    ) -> Result<(), Hresult> {
        self.done(Call::OnLunStateChange {
            snapshot_luns: snapshot_luns.to_vec(),
            original_luns: original_luns.to_vec(),
            flags,
        })
    }

    fn resync_luns(
        &self,
        sources: &[LunInfo],
        targets: &[LunInfo],
    ) -> Result<Arc<dyn AsyncOperation>, Hresult> {
        match self.call(Call::ResyncLuns {
            sources: sources.to_vec(),
            targets: targets.to_vec(),
        })? {
            Reply::Operation { operation } => Ok(Arc::new(RelayOperation {
                channel: self.channel.clone(),
                operation,
            })),
            other => Err(unexpected(other)),
        }
    }

    fn on_reuse_luns(
        &self,
        snapshot_luns: &[LunInfo],
        original_luns: &[LunInfo],
    ) -> Result<(), Hresult> {
        self.done(Call::OnReuseLuns {
            snapshot_luns: snapshot_luns.to_vec(),
            original_luns: original_luns.to_vec(),
        })
    }

    fn end_prepare_snapshots(&self, set_id: VssId) -> Result<(), Hresult> {
        self.done(Call::EndPrepareSnapshots { set_id })
    }

    fn pre_commit_snapshots(&self, set_id: VssId) -> Result<(), Hresult> {
        self.done(Call::PreCommitSnapshots { set_id })
    }

    fn commit_snapshots(&self, set_id: VssId) -> Result<(), Hresult> {
        self.done(Call::CommitSnapshots { set_id })
    }

    fn post_commit_snapshots(&self, set_id: VssId, snapshot_count: i32) -> Result<(), Hresult> {
        self.done(Call::PostCommitSnapshots {
            set_id,
            snapshot_count,
        })
    }

    fn pre_final_commit_snapshots(&self, set_id: VssId) -> Result<(), Hresult> {
        self.done(Call::PreFinalCommitSnapshots { set_id })
    }

    fn post_final_commit_snapshots(&self, set_id: VssId) -> Result<(), Hresult> {
        self.done(Call::PostFinalCommitSnapshots { set_id })
    }

    fn abort_snapshots(&self, set_id: VssId) -> Result<(), Hresult> {
        self.done(Call::AbortSnapshots { set_id })
    }

    fn on_load(&self) -> Result<(), Hresult> {
        self.done(Call::OnLoad)
    }

    fn on_unload(&self, force: bool) -> Result<UnloadAnswer, Hresult> {
        match self.call(Call::OnUnload { force })? {
            Reply::Unload { busy: false } => Ok(UnloadAnswer::Ready),
            Reply::Unload { busy: true } => Ok(UnloadAnswer::Busy),
            other => Err(unexpected(other)),
        }
    }
}

/// The client's handle on an `IVssAsync` held by the serving side.
struct RelayOperation {
    channel: Arc<Channel>,
    operation: u64,
}

impl AsyncOperation for RelayOperation {
    fn wait(&self, timeout: Option<Duration>) -> Result<(), Hresult> {
        self.channel.done(Call::AsyncWait {
            operation: self.operation,
            timeout_ms: timeout.map(|t| t.as_millis().min(u64::MAX as u128) as u64),
        })
    }

    fn query_status(&self) -> Result<(Hresult, i32), Hresult> {
        match self.channel.call(Call::AsyncQueryStatus {
            operation: self.operation,
        })? {
            Reply::Status { code, progress } => Ok((code, progress)),
            other => Err(unexpected(other)),
        }
    }

    fn cancel(&self) -> Result<Hresult, Hresult> {
        match self.channel.call(Call::AsyncCancel {
            operation: self.operation,
        })? {
            Reply::Code { code } => Ok(code),
            other => Err(unexpected(other)),
        }
    }
}

impl Drop for RelayOperation {
    fn drop(&mut self) {
        // Releases the serving side's reference; a relay already gone has nothing to release.
        let _ = self.channel.call(Call::AsyncRelease {
            operation: self.operation,
        });
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use crate::memory_array::MemoryArray;
    use provider::ShadowlunProvider;
    use std::io::BufReader;
    use std::os::unix::net::UnixStream;

    /// A relay over a socket pair to `provider`, served on a thread.
    fn relay(provider: Arc<dyn HardwareProvider>) -> (RelayClient, std::thread::JoinHandle<()>) {
        let (near, far) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || {
            let out = far.try_clone().unwrap();
            serve(provider, BufReader::new(far), out, || {}).unwrap();
        });
        let client = RelayClient::new(BufReader::new(near.try_clone().unwrap()), near).unwrap();
        (client, server)
    }

    #[test]
    fn a_snapshot_set_through_the_relay_matches_the_provider_called_directly() {
        let array = MemoryArray::new();
        let id = array.create_lun(1 << 20, &["iqn.2026-01.org.shadowlun.test:x"]);
        let identity = array.identity(&id).unwrap();
        let lun = LunInfo::from_identity(&identity, vss::BusType::ISCSI).unwrap();
        let direct = ShadowlunProvider::new(array.client("iqn.2026-01.org.shadowlun.test:x"));
        let (client, _server) = relay(Arc::new(ShadowlunProvider::new(
            array.client("iqn.2026-01.org.shadowlun.test:x"),
        )));
        let ctx = SnapshotContext::from_i32(0);
        let devices = vec!["\\\\?\\disk1".to_string()];
        let mut a = vec![lun.clone()];
        let mut b = vec![lun.clone()];
        assert_eq!(direct.are_luns_supported(ctx, &devices, &mut a), Ok(true));
        assert_eq!(client.are_luns_supported(ctx, &devices, &mut b), Ok(true));
        assert_eq!(
            a, b,
            "the [in,out] LUNs came back as the provider left them"
        );
        // A whole set through the relay leaves one more snapshot LUN on the array.
        let set = uuid::Uuid::from_u128(0x5e7);
        let mut l = vec![lun.clone()];
        client
            .begin_prepare_snapshot(set, uuid::Uuid::from_u128(1), ctx, &devices, &mut l)
            .unwrap();
        client.end_prepare_snapshots(set).unwrap();
        client.pre_commit_snapshots(set).unwrap();
        client.commit_snapshots(set).unwrap();
        client.post_commit_snapshots(set, 1).unwrap();
        let mut dst = vec![LunInfo::default()];
        client
            .get_target_luns(&devices, std::slice::from_ref(&lun), &mut dst)
            .unwrap();
        assert_ne!(dst[0], LunInfo::default(), "destinations were filled in");
        assert_ne!(dst[0].serial_number, lun.serial_number);
        assert_eq!(array.snapshot_luns().len(), 1);
        // An error crosses as its HRESULT, the same as the provider returns it directly.
        let unknown = uuid::Uuid::from_u128(0xbad);
        let e = client.commit_snapshots(unknown);
        assert!(e.is_err());
        assert_eq!(e, direct.commit_snapshots(unknown));
        // Calls from several threads at once each get their own answer.
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    assert_eq!(
                        client.get_provider_capabilities(),
                        direct.get_provider_capabilities()
                    )
                });
            }
        });
    }

    #[test]
    fn a_relay_that_goes_away_fails_every_call_as_server_unavailable() {
        let (near, far) = UnixStream::pair().unwrap();
        let client = RelayClient::new(BufReader::new(near.try_clone().unwrap()), near).unwrap();
        drop(far);
        assert_eq!(client.on_load(), Err(SERVER_UNAVAILABLE));
        assert_eq!(
            client.commit_snapshots(uuid::Uuid::nil()),
            Err(SERVER_UNAVAILABLE)
        );
    }

    /// A socket's sending half that, like a pipe, is closed when dropped.
    struct Half(UnixStream);

    impl Write for Half {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.write(b)
        }
        fn flush(&mut self) -> io::Result<()> {
            self.0.flush()
        }
    }

    impl Drop for Half {
        fn drop(&mut self) {
            let _ = self.0.shutdown(std::net::Shutdown::Write);
        }
    }

    #[test]
    fn dropping_the_client_ends_the_relay_then_drops_the_guard() {
        let (near, far) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || {
            let out = far.try_clone().unwrap();
            let p: Arc<dyn HardwareProvider> = Arc::new(ShadowlunProvider::new(
                MemoryArray::new().client("iqn.2026-01.org.shadowlun.test:x"),
            ));
            serve(p, BufReader::new(far), out, || {}).unwrap();
        });
        struct Guard(mpsc::Sender<&'static str>);
        impl Drop for Guard {
            fn drop(&mut self) {
                let _ = self.0.send("guard dropped");
            }
        }
        let (tx, rx) = mpsc::channel();
        let client = RelayClient::new(BufReader::new(near.try_clone().unwrap()), Half(near))
            .unwrap()
            .with_guard(Guard(tx));
        assert!(client.get_provider_capabilities().is_ok());
        assert!(
            rx.try_recv().is_err(),
            "the guard lives as long as the client"
        );
        drop(client);
        // The serving side saw the end of its input and returned.
        server.join().unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok("guard dropped"));
    }

    #[test]
    fn garbage_gets_invalidarg_and_the_relay_keeps_serving() {
        let (near, far) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || {
            let out = far.try_clone().unwrap();
            let p: Arc<dyn HardwareProvider> = Arc::new(ShadowlunProvider::new(
                MemoryArray::new().client("iqn.2026-01.org.shadowlun.test:x"),
            ));
            serve(p, BufReader::new(far), out, || {}).unwrap();
        });
        let mut w = near.try_clone().unwrap();
        let mut r = BufReader::new(near);
        w.write_all(b"{not json\n").unwrap();
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let resp: Response = serde_json::from_str(&line).unwrap();
        assert_eq!((resp.id, resp.result), (0, Err(Hresult::E_INVALIDARG)));
        w.write_all(b"{\"id\":7,\"call\":{\"method\":\"GetProviderCapabilities\"}}\n")
            .unwrap();
        line.clear();
        r.read_line(&mut line).unwrap();
        let resp: Response = serde_json::from_str(&line).unwrap();
        assert_eq!(resp.id, 7);
        assert!(matches!(resp.result, Ok(Reply::Capabilities { .. })));
        // An unknown operation id is the caller's mistake.
        w.write_all(b"{\"id\":8,\"call\":{\"method\":\"AsyncQueryStatus\",\"operation\":99}}\n")
            .unwrap();
        line.clear();
        r.read_line(&mut line).unwrap();
        let resp: Response = serde_json::from_str(&line).unwrap();
        assert_eq!((resp.id, resp.result), (8, Err(Hresult::E_INVALIDARG)));
        // The wire form docs/windows-provider.md shows: the HRESULT as a number.
        assert_eq!(line.trim_end(), r#"{"id":8,"result":{"Err":2147942487}}"#);
        // End of input ends the relay once every call is answered.
        w.shutdown(std::net::Shutdown::Write).unwrap();
        server.join().unwrap();
    }
}
