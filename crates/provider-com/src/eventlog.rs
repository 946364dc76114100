//! The Application event log: where vetoes are explained to the administrator.
//!
//! The texts live in the exe's message table (`res/messages.mc`, linked in by `build.rs`);
//! an event carries its id and three inserts: the VSS method, the HRESULT, what failed.

use provider::FailureClass;
use windows::Win32::System::EventLog::{
    DeregisterEventSource, EVENTLOG_ERROR_TYPE, RegisterEventSourceW, ReportEventW,
};
use windows_core::{HSTRING, PCWSTR};

use crate::ids::EVENT_SOURCE;
use crate::veto::{EventLogWriter, VetoEntry};

/// A veto with no more precise class.
pub const EVENT_ID_VETO: u32 = 1;
pub const EVENT_ID_ARRAY_UNREACHABLE: u32 = 1001;
pub const EVENT_ID_CERTIFICATE_MISMATCH: u32 = 1002;
pub const EVENT_ID_TOKEN_REFUSED: u32 = 1003;
pub const EVENT_ID_LUN_NOT_FOUND: u32 = 1004;
pub const EVENT_ID_SET_VETOED: u32 = 1005;
pub const EVENT_ID_INSUFFICIENT_STORAGE: u32 = 1006;
pub const EVENT_ID_COMMIT_TIME_LIMIT: u32 = 1007;

/// Every event id the message table defines.
pub const EVENT_IDS: [u32; 8] = [
    EVENT_ID_VETO,
    EVENT_ID_ARRAY_UNREACHABLE,
    EVENT_ID_CERTIFICATE_MISMATCH,
    EVENT_ID_TOKEN_REFUSED,
    EVENT_ID_LUN_NOT_FOUND,
    EVENT_ID_SET_VETOED,
    EVENT_ID_INSUFFICIENT_STORAGE,
    EVENT_ID_COMMIT_TIME_LIMIT,
];

/// The event id of a failure class.
pub fn event_id(class: Option<FailureClass>) -> u32 {
    match class {
        Some(FailureClass::ArrayUnreachable) => EVENT_ID_ARRAY_UNREACHABLE,
        Some(FailureClass::CertificateMismatch) => EVENT_ID_CERTIFICATE_MISMATCH,
        Some(FailureClass::TokenRefused) => EVENT_ID_TOKEN_REFUSED,
        Some(FailureClass::LunNotFound) => EVENT_ID_LUN_NOT_FOUND,
        Some(FailureClass::SetVetoed) => EVENT_ID_SET_VETOED,
        Some(FailureClass::InsufficientStorage) => EVENT_ID_INSUFFICIENT_STORAGE,
        Some(FailureClass::CommitTimeLimit) => EVENT_ID_COMMIT_TIME_LIMIT,
        Some(FailureClass::Other) | None => EVENT_ID_VETO,
    }
}

/// The event id and the three inserts (method, HRESULT, what failed) of an entry.
pub fn event_of(entry: &VetoEntry) -> (u32, [String; 3]) {
    let hresult = format!(
        "HRESULT 0x{:08X} {}",
        entry.hresult.0,
        entry.hresult.name().unwrap_or("")
    )
    .trim_end()
    .to_string();
    let what = match (&entry.class, entry.set_id) {
        (Some((_, d)), _) => d.clone(),
        (None, Some(set)) => format!("snapshot set {{{set}}}"),
        (None, None) => "no further detail was reported".into(),
    };
    (
        event_id(entry.class.as_ref().map(|c| c.0)),
        [entry.method.to_string(), hresult, what],
    )
}

/// Writes entries to the Application log under the `shadowlun` source.
#[derive(Debug, Default)]
pub struct ApplicationLog;

impl EventLogWriter for ApplicationLog {
    fn write(&self, entry: &VetoEntry) {
        let (id, inserts) = event_of(entry);
        let inserts: Vec<HSTRING> = inserts.iter().map(HSTRING::from).collect();
        // SAFETY: local machine (NULL server), a valid source name.
        let h = match unsafe { RegisterEventSourceW(PCWSTR::null(), &HSTRING::from(EVENT_SOURCE)) }
        {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(hresult = %format_args!("0x{:08X}", e.code().0), "RegisterEventSource failed");
                return;
            }
        };
        let strings: Vec<PCWSTR> = inserts.iter().map(|s| PCWSTR(s.as_ptr())).collect();
        // SAFETY: h is a live event source; the strings outlive the call.
        let r =
            unsafe { ReportEventW(h, EVENTLOG_ERROR_TYPE, 0, id, None, 0, Some(&strings), None) };
        if let Err(e) = r {
            tracing::error!(hresult = %format_args!("0x{:08X}", e.code().0), "ReportEvent failed");
        }
        // SAFETY: h came from RegisterEventSourceW.
        let _ = unsafe { DeregisterEventSource(h) };
    }
}
