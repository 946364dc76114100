//! Known folders. `%ProgramData%` is read through the shell API rather than the environment:
//! a service's environment need not carry the variable (under Wine it differs).

use std::path::PathBuf;

use windows::Win32::System::Com::CoTaskMemFree;
use windows::Win32::UI::Shell::{FOLDERID_ProgramData, KF_FLAG_DEFAULT, SHGetKnownFolderPath};

/// `C:\ProgramData` (FOLDERID_ProgramData); the environment variable, then the usual path,
/// if the shell cannot answer.
pub fn program_data() -> PathBuf {
    // SAFETY: a constant folder id; the returned string is CoTaskMem and freed below.
    match unsafe { SHGetKnownFolderPath(&FOLDERID_ProgramData, KF_FLAG_DEFAULT, None) } {
        Ok(p) => {
            // SAFETY: a terminated string from the shell.
            let s = unsafe { p.to_string() }.unwrap_or_default();
            // SAFETY: allocated by SHGetKnownFolderPath with the COM allocator.
            unsafe { CoTaskMemFree(Some(p.0.cast_const().cast())) };
            if !s.is_empty() {
                return PathBuf::from(s);
            }
        }
        Err(e) => {
            tracing::warn!(hresult = %format_args!("0x{:08X}", e.code().0), "SHGetKnownFolderPath(ProgramData) failed")
        }
    }
    std::env::var_os("ProgramData")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("C:\\ProgramData"))
}
