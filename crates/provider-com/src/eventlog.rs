//! The Application event log: where vetoes are explained to the administrator.

use windows::Win32::System::EventLog::{
    DeregisterEventSource, EVENTLOG_ERROR_TYPE, RegisterEventSourceW, ReportEventW,
};
use windows_core::{HSTRING, PCWSTR};

use crate::ids::EVENT_SOURCE;
use crate::veto::{EventLogWriter, VetoEntry};

/// Event id of a veto. The source's message file maps ids 1..=1000 to "%1" (see `install`).
pub const EVENT_ID_VETO: u32 = 1;

/// Writes entries to the Application log under the `shadowlun` source.
#[derive(Debug, Default)]
pub struct ApplicationLog;

impl EventLogWriter for ApplicationLog {
    fn write(&self, entry: &VetoEntry) {
        let text = HSTRING::from(entry.message());
        // SAFETY: local machine (NULL server), a valid source name.
        let h = match unsafe { RegisterEventSourceW(PCWSTR::null(), &HSTRING::from(EVENT_SOURCE)) }
        {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(hresult = %format_args!("0x{:08X}", e.code().0), "RegisterEventSource failed");
                return;
            }
        };
        let strings = [PCWSTR(text.as_ptr())];
        // SAFETY: h is a live event source; one string that outlives the call.
        let r = unsafe {
            ReportEventW(
                h,
                EVENTLOG_ERROR_TYPE,
                0,
                EVENT_ID_VETO,
                None,
                0,
                Some(&strings),
                None,
            )
        };
        if let Err(e) = r {
            tracing::error!(hresult = %format_args!("0x{:08X}", e.code().0), "ReportEvent failed");
        }
        // SAFETY: h came from RegisterEventSourceW.
        let _ = unsafe { DeregisterEventSource(h) };
    }
}
