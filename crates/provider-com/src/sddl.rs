//! Security descriptors from SDDL: the AppID permissions and the config file's ACL.

use windows::Win32::Foundation::{HLOCAL, LocalFree};
use windows::Win32::Security::Authorization::{
    ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1,
};
use windows::Win32::Security::{
    DACL_SECURITY_INFORMATION, GetSecurityDescriptorLength, PROTECTED_DACL_SECURITY_INFORMATION,
    PSECURITY_DESCRIPTOR, SetFileSecurityW,
};
use windows_core::HSTRING;

/// Who may call into the provider (CoInitializeSecurity and the AppID's `AccessPermission`):
/// LocalSystem (vssvc) and the local Administrators group, nobody else. `0x3` =
/// COM_RIGHTS_EXECUTE | EXECUTE_LOCAL; owner and group are Administrators as COM requires.
pub const COM_ACCESS_SDDL: &str = "O:BAG:BAD:(A;;0x3;;;SY)(A;;0x3;;;BA)";

/// Who may launch and activate it (the AppID's `LaunchPermission`): the same two. `0xB` =
/// COM_RIGHTS_EXECUTE | EXECUTE_LOCAL | ACTIVATE_LOCAL.
pub const COM_LAUNCH_SDDL: &str = "O:BAG:BAD:(A;;0xB;;;SY)(A;;0xB;;;BA)";

/// The config file (it holds the DPAPI-protected token): SYSTEM and Administrators only,
/// nothing inherited.
pub const CONFIG_FILE_SDDL: &str = "D:P(A;;FA;;;SY)(A;;FA;;;BA)";

/// A Win32 security call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{op} failed: HRESULT 0x{code:08X}")]
pub struct SecurityError {
    pub op: &'static str,
    pub code: u32,
}

/// A LocalAlloc'd self-relative descriptor.
pub struct Descriptor(PSECURITY_DESCRIPTOR);

impl Descriptor {
    pub fn from_sddl(sddl: &str) -> Result<Self, SecurityError> {
        let mut sd = PSECURITY_DESCRIPTOR::default();
        // SAFETY: valid SDDL string; `sd` receives a LocalAlloc'd descriptor.
        unsafe {
            ConvertStringSecurityDescriptorToSecurityDescriptorW(
                &HSTRING::from(sddl),
                SDDL_REVISION_1,
                &mut sd,
                None,
            )
        }
        .map_err(|e| SecurityError {
            op: "ConvertStringSecurityDescriptorToSecurityDescriptorW",
            code: e.code().0 as u32,
        })?;
        Ok(Self(sd))
    }

    pub fn as_raw(&self) -> PSECURITY_DESCRIPTOR {
        self.0
    }

    /// The self-relative bytes (the format of AppID `LaunchPermission` / `AccessPermission`).
    pub fn to_bytes(&self) -> Vec<u8> {
        // SAFETY: a valid descriptor.
        let n = unsafe { GetSecurityDescriptorLength(self.0) } as usize;
        // SAFETY: the descriptor is n contiguous bytes (self-relative).
        unsafe { std::slice::from_raw_parts(self.0.0.cast::<u8>(), n) }.to_vec()
    }
}

impl Drop for Descriptor {
    fn drop(&mut self) {
        // SAFETY: allocated by ConvertStringSecurityDescriptorToSecurityDescriptorW.
        unsafe { LocalFree(Some(HLOCAL(self.0.0))) };
    }
}

/// Replaces a file's DACL with `sddl`'s, not inheriting from the folder.
pub fn restrict_file(path: &std::path::Path, sddl: &str) -> Result<(), SecurityError> {
    let sd = Descriptor::from_sddl(sddl)?;
    let p = HSTRING::from(path.as_os_str());
    // SAFETY: valid path and descriptor for the duration of the call.
    let ok = unsafe {
        SetFileSecurityW(
            &p,
            DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION,
            sd.as_raw(),
        )
    };
    if ok.as_bool() {
        Ok(())
    } else {
        Err(SecurityError {
            op: "SetFileSecurityW",
            code: windows_core::Error::from_thread().code().0 as u32,
        })
    }
}
