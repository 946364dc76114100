//! The out-of-process server: COM security, the registered class object, and the idle exit.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use windows::Win32::System::Com::{
    CLSCTX_LOCAL_SERVER, COINIT_MULTITHREADED, CoInitializeEx, CoInitializeSecurity,
    CoRegisterClassObject, CoRevokeClassObject, CoUninitialize, EOAC_DISABLE_AAA,
    EOAC_NO_CUSTOM_MARSHAL, EOLE_AUTHENTICATION_CAPABILITIES, REGCLS_MULTIPLEUSE,
    RPC_C_AUTHN_LEVEL_PKT_PRIVACY, RPC_C_IMP_LEVEL_IDENTIFY,
};
use windows_core::GUID;

use crate::ffi::{CoreFactory, ProviderFactory};
use crate::veto::VetoLog;

use crate::sddl::{COM_ACCESS_SDDL, Descriptor};

/// Errors of the server process.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("CoInitializeEx failed: HRESULT 0x{0:08X}")]
    ComInit(u32),
    #[error("building the security descriptor failed: HRESULT 0x{0:08X}")]
    SecurityDescriptor(u32),
    #[error("CoInitializeSecurity failed: HRESULT 0x{0:08X}")]
    Security(u32),
    #[error("CoRegisterClassObject failed: HRESULT 0x{0:08X}")]
    Register(u32),
}

fn code(e: &windows_core::Error) -> u32 {
    e.code().0 as u32
}

#[derive(Default)]
struct Counts {
    objects: usize,
    locks: usize,
    stop: bool,
    last_busy: Option<Instant>,
}

/// Counts live objects and server locks; the server exits after it has been idle for a while.
#[derive(Default)]
pub struct Lifetime {
    counts: Mutex<Counts>,
    changed: Condvar,
}

/// Held by each provider object: the server stays up while one exists.
pub struct LifetimeGuard(Arc<Lifetime>);

impl Drop for LifetimeGuard {
    fn drop(&mut self) {
        self.0.update(|c| c.objects -= 1);
    }
}

impl Lifetime {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().expect("lifetime counts lock")
    }

    fn update(&self, f: impl FnOnce(&mut Counts)) {
        let mut c = self.lock();
        f(&mut c);
        c.last_busy = Some(Instant::now());
        self.changed.notify_all();
    }

    pub fn guard(self: &Arc<Self>) -> LifetimeGuard {
        self.update(|c| c.objects += 1);
        LifetimeGuard(self.clone())
    }

    /// `IClassFactory::LockServer`.
    pub fn lock_server(&self, lock: bool) {
        self.update(|c| {
            if lock {
                c.locks += 1
            } else {
                c.locks = c.locks.saturating_sub(1)
            }
        });
    }

    /// Makes [`Self::wait_idle`] return now (service stop).
    pub fn request_stop(&self) {
        self.update(|c| c.stop = true);
    }

    /// Live provider objects.
    pub fn objects(&self) -> usize {
        self.lock().objects
    }

    /// Blocks until a stop is requested, or no object or lock has existed for `grace`
    /// (counted from the start or the last change).
    pub fn wait_idle(&self, grace: Duration) {
        let start = Instant::now();
        let mut c = self.lock();
        loop {
            if c.stop {
                return;
            }
            let since = c.last_busy.unwrap_or(start);
            let idle = c.objects == 0 && c.locks == 0;
            if idle && since.elapsed() >= grace {
                return;
            }
            let wait = if idle {
                grace.saturating_sub(since.elapsed())
            } else {
                grace
            };
            c = self
                .changed
                .wait_timeout(c, wait.max(Duration::from_millis(10)))
                .expect("lifetime counts lock")
                .0;
        }
    }
}

/// Initialises COM for the server thread (multithreaded apartment) and restricts every call
/// into this process to [`COM_ACCESS_SDDL`].
pub fn init_com_security() -> Result<(), ServerError> {
    // SAFETY: first COM call of the process; no reserved pointer.
    let hr = unsafe { CoInitializeEx(None, COINIT_MULTITHREADED) };
    if hr.is_err() {
        return Err(ServerError::ComInit(hr.0 as u32));
    }
    let sd = Descriptor::from_sddl(COM_ACCESS_SDDL)
        .map_err(|e| ServerError::SecurityDescriptor(e.code))?;
    // SAFETY: sd is a valid descriptor that outlives the call (COM copies it); the other
    // arguments are constants or NULL.
    let r = unsafe {
        CoInitializeSecurity(
            Some(sd.as_raw()),
            -1,
            None,
            None,
            RPC_C_AUTHN_LEVEL_PKT_PRIVACY,
            RPC_C_IMP_LEVEL_IDENTIFY,
            None,
            EOLE_AUTHENTICATION_CAPABILITIES(EOAC_DISABLE_AAA.0 | EOAC_NO_CUSTOM_MARSHAL.0),
            None,
        )
    };
    r.map_err(|e| ServerError::Security(code(&e)))
}

/// Registers the class object for `clsid` and serves until idle for `grace` or stopped through
/// `lifetime`. COM must have been initialised with [`init_com_security`].
pub fn serve(
    clsid: &GUID,
    make: Arc<CoreFactory>,
    veto: Arc<VetoLog>,
    lifetime: Arc<Lifetime>,
    grace: Duration,
) -> Result<(), ServerError> {
    let factory = ProviderFactory::new(make, veto, lifetime.clone()).into_interface();
    // SAFETY: clsid is valid for the call; the factory is a live COM object.
    let cookie =
        unsafe { CoRegisterClassObject(clsid, &factory, CLSCTX_LOCAL_SERVER, REGCLS_MULTIPLEUSE) }
            .map_err(|e| ServerError::Register(code(&e)))?;
    tracing::info!(clsid = ?clsid, "class object registered");
    lifetime.wait_idle(grace);
    // SAFETY: cookie came from CoRegisterClassObject above.
    if let Err(e) = unsafe { CoRevokeClassObject(cookie) } {
        tracing::warn!(hresult = %format_args!("0x{:08X}", code(&e)), "CoRevokeClassObject failed");
    }
    tracing::info!("server idle; exiting");
    Ok(())
}

/// Balances [`init_com_security`].
pub fn uninit_com() {
    // SAFETY: called once on the thread that initialised COM.
    unsafe { CoUninitialize() };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_exits_after_the_grace_once_the_last_object_is_gone() {
        let l = Lifetime::new();
        let g = l.guard();
        let l2 = l.clone();
        let t = std::thread::spawn(move || {
            l2.wait_idle(Duration::from_millis(200));
            Instant::now()
        });
        std::thread::sleep(Duration::from_millis(400));
        assert!(!t.is_finished(), "exited while an object was alive");
        let dropped = Instant::now();
        drop(g);
        let waited = t.join().unwrap().duration_since(dropped);
        assert!(waited >= Duration::from_millis(200), "{waited:?}");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
    }

    #[test]
    fn server_lock_keeps_it_up_and_stop_ends_it_at_once() {
        let l = Lifetime::new();
        l.lock_server(true);
        let l2 = l.clone();
        let t = std::thread::spawn(move || l2.wait_idle(Duration::from_millis(50)));
        std::thread::sleep(Duration::from_millis(200));
        assert!(!t.is_finished(), "exited while the server was locked");
        let start = Instant::now();
        l.request_stop();
        t.join().unwrap();
        assert!(start.elapsed() < Duration::from_secs(2));
    }
}
