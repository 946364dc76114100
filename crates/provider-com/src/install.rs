//! `install` and `uninstall`: every registration step, each reported on its own.
//!
//! Install writes, in order: the configuration (token DPAPI-protected), the COM class
//! (`CLSID\{clsid}\LocalServer32` and the AppID with `LocalService` and the launch/access
//! permissions), the Windows service, the Application event source, and the VSS registration
//! (`IVssAdmin::RegisterProvider`, after unregistering an older version). Re-running it
//! upgrades in place. Uninstall reverses every step and treats "already absent" as success, so
//! it finishes from any partial state.

use std::fmt;

use windows::Win32::Storage::Vss::{IVssAdmin, VSS_PROV_HARDWARE, VSSCoordinator};
use windows::Win32::System::Com::{
    CLSCTX_LOCAL_SERVER, COINIT_MULTITHREADED, CoCreateInstance, CoInitializeEx,
};
use windows_core::HSTRING;

use crate::config::Config;
use crate::ids::{
    self, APPID, CLSID_PROVIDER, EVENT_SOURCE, PROVIDER_ID, PROVIDER_NAME, SERVICE_NAME, braced,
};
use crate::registry::{self, HKEY_LOCAL_MACHINE as HKLM};
use crate::sddl::{COM_ACCESS_SDDL, COM_LAUNCH_SDDL, Descriptor};
use crate::service;

/// `REGDB_E_CLASSNOTREG`: what CoCreateInstance of the VSS coordinator gives where there is
/// no vssvc (Wine, or a stripped-down system).
pub const REGDB_E_CLASSNOTREG: u32 = 0x8004_0154;
const VSS_E_PROVIDER_NOT_REGISTERED: u32 = 0x8004_2304;

/// How one step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done; the text says what was written or removed.
    Done(String),
    /// Nothing to do (uninstall of something absent).
    Absent,
    /// Not attempted or not possible here, and not an error for this command.
    Skipped(String),
    /// Failed; the text carries the HRESULT or Win32 code.
    Failed(String),
}

/// One step of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub name: &'static str,
    pub outcome: Outcome,
}

/// Everything a command did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub steps: Vec<Step>,
}

impl Report {
    pub(crate) fn push(&mut self, name: &'static str, outcome: Outcome) {
        match &outcome {
            Outcome::Failed(m) => tracing::error!(step = name, "{m}"),
            o => tracing::info!(step = name, outcome = ?o),
        }
        self.steps.push(Step { name, outcome });
    }

    /// True when no step failed.
    pub fn ok(&self) -> bool {
        !self
            .steps
            .iter()
            .any(|s| matches!(s.outcome, Outcome::Failed(_)))
    }

    /// The failed steps' names.
    pub fn failed(&self) -> Vec<&'static str> {
        self.steps
            .iter()
            .filter(|s| matches!(s.outcome, Outcome::Failed(_)))
            .map(|s| s.name)
            .collect()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.steps {
            let (tag, text) = match &s.outcome {
                Outcome::Done(t) => ("done", t.as_str()),
                Outcome::Absent => ("absent", ""),
                Outcome::Skipped(t) => ("skipped", t.as_str()),
                Outcome::Failed(t) => ("FAILED", t.as_str()),
            };
            writeln!(f, "{:<18} {:<8} {}", s.name, tag, text)?;
        }
        Ok(())
    }
}

pub(crate) fn clsid_key() -> String {
    format!("SOFTWARE\\Classes\\CLSID\\{}", braced(&CLSID_PROVIDER))
}

pub(crate) fn appid_key() -> String {
    format!("SOFTWARE\\Classes\\AppID\\{}", braced(&APPID))
}

const APPID_EXE_KEY: &str = "SOFTWARE\\Classes\\AppID\\shadowlun-provider.exe";

pub(crate) fn event_source_key() -> String {
    format!("SYSTEM\\CurrentControlSet\\Services\\EventLog\\Application\\{EVENT_SOURCE}")
}

fn register_com(exe: &str) -> Result<String, String> {
    let e = |x: registry::RegistryError| x.to_string();
    let launch = Descriptor::from_sddl(COM_LAUNCH_SDDL).map_err(|x| x.to_string())?;
    let access = Descriptor::from_sddl(COM_ACCESS_SDDL).map_err(|x| x.to_string())?;
    let clsid = clsid_key();
    let appid = appid_key();
    registry::set_string(HKLM, &clsid, "", PROVIDER_NAME).map_err(e)?;
    registry::set_string(HKLM, &clsid, "AppID", &braced(&APPID)).map_err(e)?;
    registry::set_string(
        HKLM,
        &format!("{clsid}\\LocalServer32"),
        "",
        &format!("\"{exe}\""),
    )
    .map_err(e)?;
    registry::set_string(HKLM, &appid, "", PROVIDER_NAME).map_err(e)?;
    registry::set_string(HKLM, &appid, "LocalService", SERVICE_NAME).map_err(e)?;
    registry::set_binary(HKLM, &appid, "LaunchPermission", &launch.to_bytes()).map_err(e)?;
    registry::set_binary(HKLM, &appid, "AccessPermission", &access.to_bytes()).map_err(e)?;
    registry::set_string(HKLM, APPID_EXE_KEY, "AppID", &braced(&APPID)).map_err(e)?;
    Ok(format!("CLSID {} -> {exe}", braced(&CLSID_PROVIDER)))
}

/// The event source's message file is this exe: its message table holds our texts.
fn register_event_source(exe: &str) -> Result<String, String> {
    let key = event_source_key();
    let e = |x: registry::RegistryError| x.to_string();
    registry::set_expand_string(HKLM, &key, "EventMessageFile", exe).map_err(e)?;
    registry::set_dword(HKLM, &key, "TypesSupported", 7).map_err(e)?;
    registry::set_dword(HKLM, &key, "CustomSource", 1).map_err(e)?;
    Ok(format!("Application\\{EVENT_SOURCE}"))
}

pub(crate) fn hresult_text(code: u32) -> String {
    let name = vss::Hresult(code)
        .name()
        .map(|n| format!(" {n}"))
        .unwrap_or_default();
    let hint = if code == REGDB_E_CLASSNOTREG {
        " REGDB_E_CLASSNOTREG: no VSS coordinator (vssvc) on this system"
    } else {
        ""
    };
    format!("HRESULT 0x{code:08X}{name}{hint}")
}

pub(crate) fn vss_admin() -> Result<IVssAdmin, u32> {
    // SAFETY: COM initialised on this thread by the caller; a constant CLSID.
    unsafe { CoCreateInstance(&VSSCoordinator, None, CLSCTX_LOCAL_SERVER) }
        .map_err(|e| e.code().0 as u32)
}

fn unregister_vss(admin: &IVssAdmin) -> Result<bool, u32> {
    // SAFETY: a live IVssAdmin; by-value GUID.
    match unsafe { admin.UnregisterProvider(PROVIDER_ID) } {
        Ok(()) => Ok(true),
        Err(e) if e.code().0 as u32 == VSS_E_PROVIDER_NOT_REGISTERED => Ok(false),
        Err(e) => Err(e.code().0 as u32),
    }
}

fn register_vss() -> Result<String, u32> {
    let admin = vss_admin()?;
    // Upgrade in place: the (provider id, version id) pair must be new, so drop the old one.
    unregister_vss(&admin)?;
    let name = HSTRING::from(PROVIDER_NAME);
    let version = HSTRING::from(ids::VERSION);
    // SAFETY: a live IVssAdmin; strings outlive the call.
    unsafe {
        admin.RegisterProvider(
            PROVIDER_ID,
            CLSID_PROVIDER,
            name.as_ptr(),
            VSS_PROV_HARDWARE,
            version.as_ptr(),
            ids::version_id(),
        )
    }
    .map_err(|e| e.code().0 as u32)?;
    Ok(format!(
        "provider {} version {} ({})",
        braced(&PROVIDER_ID),
        ids::VERSION,
        braced(&ids::version_id())
    ))
}

pub(crate) fn com_init() {
    // SAFETY: initialises COM on the calling thread; a second call is harmless.
    let _ = unsafe { CoInitializeEx(None, COINIT_MULTITHREADED) };
}

/// What `install` needs.
#[derive(Debug, Clone)]
pub struct InstallArgs {
    /// (the gateways' URLs, token, fingerprint); `None` keeps the existing configuration.
    pub config: Option<(Vec<String>, String, String)>,
    /// The Windows path of the server executable to register.
    pub exe: String,
}

/// Runs every install step; later steps run even if an earlier one failed, so the report
/// shows the whole state.
pub fn install(a: &InstallArgs) -> Report {
    com_init();
    let mut r = Report::default();
    match &a.config {
        Some((urls, token, fp)) => match Config::new(urls, token, fp).and_then(|c| c.save()) {
            Ok(p) => r.push("configuration", Outcome::Done(p.display().to_string())),
            Err(e) => r.push("configuration", Outcome::Failed(e.to_string())),
        },
        None => match Config::load().and_then(|c| c.token().map(|_| c)) {
            Ok(c) => r.push(
                "configuration",
                Outcome::Done(format!("kept (array {})", c.urls_text())),
            ),
            Err(e) => r.push(
                "configuration",
                Outcome::Failed(format!(
                    "no usable configuration to keep ({e}): give --array, --fingerprint and \
                     --token-file"
                )),
            ),
        },
    }
    match register_com(&a.exe) {
        Ok(t) => r.push("COM class", Outcome::Done(t)),
        Err(e) => r.push("COM class", Outcome::Failed(e)),
    }
    match service::install(&a.exe) {
        Ok(s) => r.push("service", Outcome::Done(format!("{SERVICE_NAME} {s:?}"))),
        Err(e) => r.push("service", Outcome::Failed(e.to_string())),
    }
    match register_event_source(&a.exe) {
        Ok(t) => r.push("event source", Outcome::Done(t)),
        Err(e) => r.push("event source", Outcome::Failed(e)),
    }
    match register_vss() {
        Ok(t) => r.push("VSS registration", Outcome::Done(t)),
        Err(c) => r.push("VSS registration", Outcome::Failed(hresult_text(c))),
    }
    r
}

/// Reverses every install step; absent pieces are not errors. `keep_config` leaves the
/// configuration file (an upgrade, or an administrator who will reinstall).
pub fn uninstall(keep_config: bool) -> Report {
    com_init();
    let mut r = Report::default();
    match vss_admin() {
        Ok(admin) => match unregister_vss(&admin) {
            Ok(true) => r.push("VSS registration", Outcome::Done(braced(&PROVIDER_ID))),
            Ok(false) => r.push("VSS registration", Outcome::Absent),
            Err(c) => r.push("VSS registration", Outcome::Failed(hresult_text(c))),
        },
        // Without a coordinator there is no registration to remove.
        Err(c) => r.push("VSS registration", Outcome::Skipped(hresult_text(c))),
    }
    let del = |key: &str| registry::delete_tree(HKLM, key);
    match del(&event_source_key()) {
        Ok(true) => r.push("event source", Outcome::Done(event_source_key())),
        Ok(false) => r.push("event source", Outcome::Absent),
        Err(e) => r.push("event source", Outcome::Failed(e.to_string())),
    }
    match service::uninstall() {
        Ok(true) => r.push("service", Outcome::Done(SERVICE_NAME.into())),
        Ok(false) => r.push("service", Outcome::Absent),
        Err(e) => r.push("service", Outcome::Failed(e.to_string())),
    }
    let com = [clsid_key(), appid_key(), APPID_EXE_KEY.to_string()]
        .iter()
        .map(|k| del(k))
        .collect::<Result<Vec<bool>, _>>();
    match com {
        Ok(v) if v.iter().any(|x| *x) => r.push("COM class", Outcome::Done(clsid_key())),
        Ok(_) => r.push("COM class", Outcome::Absent),
        Err(e) => r.push("COM class", Outcome::Failed(e.to_string())),
    }
    if keep_config {
        r.push("configuration", Outcome::Skipped("kept".into()));
        return r;
    }
    match Config::remove() {
        Ok(true) => r.push(
            "configuration",
            Outcome::Done(crate::config::path().display().to_string()),
        ),
        Ok(false) => r.push("configuration", Outcome::Absent),
        Err(e) => r.push("configuration", Outcome::Failed(e.to_string())),
    }
    r
}
