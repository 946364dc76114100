//! The Windows service: the same server, started by the SCM as LocalSystem when COM activates
//! the class (the AppID's `LocalService`), and the SCM calls `install` / `uninstall` need.

use std::ffi::c_void;
use std::sync::{Arc, OnceLock};

use windows::Win32::Foundation::{ERROR_SERVICE_DOES_NOT_EXIST, ERROR_SERVICE_NOT_ACTIVE};
use windows::Win32::System::Services::{
    ChangeServiceConfigW, CloseServiceHandle, ControlService, CreateServiceW, DeleteService,
    OpenSCManagerW, OpenServiceW, QueryServiceStatus, RegisterServiceCtrlHandlerExW, SC_HANDLE,
    SC_MANAGER_ALL_ACCESS, SERVICE_ACCEPT_STOP, SERVICE_ALL_ACCESS, SERVICE_CONTROL_INTERROGATE,
    SERVICE_CONTROL_SHUTDOWN, SERVICE_CONTROL_STOP, SERVICE_DEMAND_START, SERVICE_ERROR_NORMAL,
    SERVICE_RUNNING, SERVICE_START_PENDING, SERVICE_STATUS, SERVICE_STATUS_CURRENT_STATE,
    SERVICE_STATUS_HANDLE, SERVICE_STOPPED, SERVICE_TABLE_ENTRYW, SERVICE_WIN32_OWN_PROCESS,
    SetServiceStatus, StartServiceCtrlDispatcherW,
};
use windows_core::{HSTRING, PCWSTR, PWSTR};

use crate::ids::{PROVIDER_NAME, SERVICE_NAME};
use crate::server::Lifetime;

/// A service-control call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{op} failed: HRESULT 0x{code:08X}")]
pub struct ServiceError {
    pub op: &'static str,
    pub code: u32,
}

fn err(op: &'static str) -> impl Fn(windows_core::Error) -> ServiceError {
    move |e| ServiceError {
        op,
        code: e.code().0 as u32,
    }
}

struct Handle(SC_HANDLE);

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: a handle from OpenSCManagerW / OpenServiceW / CreateServiceW.
        let _ = unsafe { CloseServiceHandle(self.0) };
    }
}

fn manager() -> Result<Handle, ServiceError> {
    // SAFETY: local machine, default database.
    unsafe { OpenSCManagerW(PCWSTR::null(), PCWSTR::null(), SC_MANAGER_ALL_ACCESS) }
        .map(Handle)
        .map_err(err("OpenSCManagerW"))
}

fn open(m: &Handle) -> Result<Option<Handle>, ServiceError> {
    // SAFETY: a live manager handle and a valid name.
    match unsafe { OpenServiceW(m.0, &HSTRING::from(SERVICE_NAME), SERVICE_ALL_ACCESS) } {
        Ok(h) => Ok(Some(Handle(h))),
        Err(e) if e.code() == ERROR_SERVICE_DOES_NOT_EXIST.to_hresult() => Ok(None),
        Err(e) => Err(err("OpenServiceW")(e)),
    }
}

/// Whether the service was created or updated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Installed {
    Created,
    Updated,
}

/// Creates the service (demand start, LocalSystem) or points the existing one at `exe`.
pub fn install(exe: &str) -> Result<Installed, ServiceError> {
    let m = manager()?;
    let cmd = HSTRING::from(format!("\"{exe}\" service"));
    let name = HSTRING::from(SERVICE_NAME);
    let display = HSTRING::from(PROVIDER_NAME);
    if let Some(s) = open(&m)? {
        // SAFETY: live service handle; strings outlive the call; NULL = unchanged.
        unsafe {
            ChangeServiceConfigW(
                s.0,
                SERVICE_WIN32_OWN_PROCESS,
                SERVICE_DEMAND_START,
                SERVICE_ERROR_NORMAL,
                &cmd,
                PCWSTR::null(),
                None,
                PCWSTR::null(),
                PCWSTR::null(),
                PCWSTR::null(),
                &display,
            )
        }
        .map_err(err("ChangeServiceConfigW"))?;
        return Ok(Installed::Updated);
    }
    // SAFETY: live manager handle; strings outlive the call; NULL account = LocalSystem.
    let h = unsafe {
        CreateServiceW(
            m.0,
            &name,
            &display,
            SERVICE_ALL_ACCESS,
            SERVICE_WIN32_OWN_PROCESS,
            SERVICE_DEMAND_START,
            SERVICE_ERROR_NORMAL,
            &cmd,
            PCWSTR::null(),
            None,
            PCWSTR::null(),
            PCWSTR::null(),
            PCWSTR::null(),
        )
    }
    .map_err(err("CreateServiceW"))?;
    drop(Handle(h));
    Ok(Installed::Created)
}

/// Stops and deletes the service; `Ok(false)` if it did not exist.
pub fn uninstall() -> Result<bool, ServiceError> {
    let m = manager()?;
    let Some(s) = open(&m)? else {
        return Ok(false);
    };
    let mut st = SERVICE_STATUS::default();
    // SAFETY: live service handle; `st` is writable.
    match unsafe { ControlService(s.0, SERVICE_CONTROL_STOP, &mut st) } {
        Ok(()) => {}
        Err(e) if e.code() == ERROR_SERVICE_NOT_ACTIVE.to_hresult() => {}
        Err(e) => {
            tracing::warn!(hresult = %format_args!("0x{:08X}", e.code().0), "stopping the service failed")
        }
    }
    // SAFETY: live service handle.
    unsafe { DeleteService(s.0) }.map_err(err("DeleteService"))?;
    Ok(true)
}

/// The service's current state, or `None` if it is not installed.
pub fn state() -> Result<Option<u32>, ServiceError> {
    let m = manager()?;
    let Some(s) = open(&m)? else {
        return Ok(None);
    };
    let mut st = SERVICE_STATUS::default();
    // SAFETY: live service handle; `st` is writable.
    unsafe { QueryServiceStatus(s.0, &mut st) }.map_err(err("QueryServiceStatus"))?;
    Ok(Some(st.dwCurrentState.0))
}

// ---------------------------------------------------------------------------------------------
// Running as the service

type Body = Box<dyn Fn(Arc<Lifetime>) + Send + Sync>;

static BODY: OnceLock<Body> = OnceLock::new();
static LIFETIME: OnceLock<Arc<Lifetime>> = OnceLock::new();
/// The status handle, stored as an integer (the SCM's handle is a plain token).
static STATUS: OnceLock<usize> = OnceLock::new();

fn report(state: SERVICE_STATUS_CURRENT_STATE, exit: u32) {
    let Some(h) = STATUS.get() else { return };
    let h = SERVICE_STATUS_HANDLE(*h as *mut c_void);
    let st = SERVICE_STATUS {
        dwServiceType: SERVICE_WIN32_OWN_PROCESS,
        dwCurrentState: state,
        dwControlsAccepted: if state == SERVICE_RUNNING {
            SERVICE_ACCEPT_STOP
        } else {
            0
        },
        dwWin32ExitCode: exit,
        dwServiceSpecificExitCode: 0,
        dwCheckPoint: 0,
        dwWaitHint: 5000,
    };
    // SAFETY: h came from RegisterServiceCtrlHandlerExW; st is a valid status.
    if let Err(e) = unsafe { SetServiceStatus(h, &st) } {
        tracing::error!(hresult = %format_args!("0x{:08X}", e.code().0), "SetServiceStatus failed");
    }
}

unsafe extern "system" fn handler(
    control: u32,
    _ty: u32,
    _data: *mut c_void,
    _ctx: *mut c_void,
) -> u32 {
    match control {
        SERVICE_CONTROL_STOP | SERVICE_CONTROL_SHUTDOWN => {
            if let Some(l) = LIFETIME.get() {
                l.request_stop();
            }
            0
        }
        SERVICE_CONTROL_INTERROGATE => 0,
        _ => 120, // ERROR_CALL_NOT_IMPLEMENTED
    }
}

unsafe extern "system" fn service_main(_argc: u32, _argv: *mut PWSTR) {
    // SAFETY: our service name and a handler with the documented signature.
    let h = match unsafe {
        RegisterServiceCtrlHandlerExW(&HSTRING::from(SERVICE_NAME), Some(handler), None)
    } {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(hresult = %format_args!("0x{:08X}", e.code().0), "RegisterServiceCtrlHandlerExW failed");
            return;
        }
    };
    let _ = STATUS.set(h.0 as usize);
    report(SERVICE_START_PENDING, 0);
    let lifetime = LIFETIME.get_or_init(Lifetime::new).clone();
    report(SERVICE_RUNNING, 0);
    if let Some(body) = BODY.get() {
        body(lifetime);
    }
    report(SERVICE_STOPPED, 0);
}

/// Hands the process to the SCM; `body` runs the server until its lifetime ends.
pub fn run(body: Body) -> Result<(), ServiceError> {
    let _ = BODY.set(body);
    let mut name: Vec<u16> = SERVICE_NAME.encode_utf16().chain(Some(0)).collect();
    let table = [
        SERVICE_TABLE_ENTRYW {
            lpServiceName: PWSTR(name.as_mut_ptr()),
            lpServiceProc: Some(service_main),
        },
        SERVICE_TABLE_ENTRYW::default(),
    ];
    // SAFETY: a NULL-terminated table whose strings outlive the dispatcher.
    unsafe { StartServiceCtrlDispatcherW(table.as_ptr()) }
        .map_err(err("StartServiceCtrlDispatcherW"))
}

/// A service state as `status` prints it.
pub fn state_name(state: u32) -> String {
    match state {
        1 => "stopped".into(),
        2 => "start-pending".into(),
        3 => "stop-pending".into(),
        4 => "running".into(),
        other => format!("state {other}"),
    }
}

/// `SERVICE_STOPPED`, for `status`.
pub const STOPPED: u32 = SERVICE_STOPPED.0;
/// `SERVICE_RUNNING`, for `status`.
pub const RUNNING: u32 = SERVICE_RUNNING.0;
