//! The API token at rest: protected with DPAPI in the machine scope, so that the service
//! (LocalSystem) can read what an administrator stored; the file itself is readable by
//! SYSTEM and Administrators only.

use windows::Win32::Foundation::{HLOCAL, LocalFree};
use windows::Win32::Security::Cryptography::{
    CRYPT_INTEGER_BLOB, CRYPTPROTECT_LOCAL_MACHINE, CRYPTPROTECT_UI_FORBIDDEN, CryptProtectData,
    CryptUnprotectData,
};
use windows_core::HSTRING;

/// A DPAPI failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DpapiError {
    #[error("CryptProtectData failed: HRESULT 0x{0:08X}")]
    Protect(u32),
    #[error(
        "CryptUnprotectData failed: HRESULT 0x{0:08X} (was the token stored on another machine?)"
    )]
    Unprotect(u32),
}

fn take(blob: CRYPT_INTEGER_BLOB) -> Vec<u8> {
    let out = if blob.pbData.is_null() {
        Vec::new()
    } else {
        // SAFETY: DPAPI returned cbData bytes at pbData.
        unsafe { std::slice::from_raw_parts(blob.pbData, blob.cbData as usize) }.to_vec()
    };
    // SAFETY: DPAPI output is LocalAlloc memory owned by the caller.
    unsafe { LocalFree(Some(HLOCAL(blob.pbData.cast()))) };
    out
}

/// Encrypts `secret` for this machine.
pub fn protect(secret: &[u8]) -> Result<Vec<u8>, DpapiError> {
    let input = CRYPT_INTEGER_BLOB {
        cbData: secret.len() as u32,
        pbData: secret.as_ptr().cast_mut(),
    };
    let mut out = CRYPT_INTEGER_BLOB::default();
    // SAFETY: input points to `secret` for the call; `out` receives a LocalAlloc'd blob.
    unsafe {
        CryptProtectData(
            &input,
            &HSTRING::from("shadowlun array token"),
            None,
            None,
            None,
            CRYPTPROTECT_LOCAL_MACHINE | CRYPTPROTECT_UI_FORBIDDEN,
            &mut out,
        )
    }
    .map_err(|e| DpapiError::Protect(e.code().0 as u32))?;
    Ok(take(out))
}

/// Decrypts what [`protect`] produced.
pub fn unprotect(blob: &[u8]) -> Result<Vec<u8>, DpapiError> {
    let input = CRYPT_INTEGER_BLOB {
        cbData: blob.len() as u32,
        pbData: blob.as_ptr().cast_mut(),
    };
    let mut out = CRYPT_INTEGER_BLOB::default();
    // SAFETY: input points to `blob` for the call; `out` receives a LocalAlloc'd blob.
    unsafe {
        CryptUnprotectData(
            &input,
            None,
            None,
            None,
            None,
            CRYPTPROTECT_UI_FORBIDDEN,
            &mut out,
        )
    }
    .map_err(|e| DpapiError::Unprotect(e.code().0 as u32))?;
    Ok(take(out))
}
