//! Thin wrappers over the registry calls `install`, `uninstall` and `status` need.

use windows::Win32::Foundation::{ERROR_FILE_NOT_FOUND, ERROR_PATH_NOT_FOUND, WIN32_ERROR};
use windows::Win32::System::Registry::{
    HKEY, KEY_READ, KEY_WRITE, REG_BINARY, REG_DWORD, REG_EXPAND_SZ, REG_OPTION_NON_VOLATILE,
    REG_ROUTINE_FLAGS, REG_SZ, REG_VALUE_TYPE, RRF_NOEXPAND, RRF_RT_ANY, RRF_RT_REG_DWORD,
    RRF_RT_REG_EXPAND_SZ, RRF_RT_REG_SZ, RegCloseKey, RegCreateKeyExW, RegDeleteTreeW,
    RegGetValueW, RegOpenKeyExW, RegSetValueExW,
};
use windows_core::{HSTRING, PCWSTR};

pub use windows::Win32::System::Registry::{HKEY_CURRENT_USER, HKEY_LOCAL_MACHINE};

/// A failed registry call, with the key it concerned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("registry {op} of {path} failed: Win32 error {code}")]
pub struct RegistryError {
    pub op: &'static str,
    pub path: String,
    pub code: u32,
}

fn check(r: WIN32_ERROR, op: &'static str, path: &str) -> Result<(), RegistryError> {
    if r.is_ok() {
        Ok(())
    } else {
        Err(RegistryError {
            op,
            path: path.to_string(),
            code: r.0,
        })
    }
}

struct Key(HKEY);

impl Drop for Key {
    fn drop(&mut self) {
        // SAFETY: the handle came from RegCreateKeyExW / RegOpenKeyExW.
        let _ = unsafe { RegCloseKey(self.0) };
    }
}

fn create(root: HKEY, path: &str) -> Result<Key, RegistryError> {
    let mut k = HKEY::default();
    // SAFETY: valid root and path; `k` receives the handle.
    let r = unsafe {
        RegCreateKeyExW(
            root,
            &HSTRING::from(path),
            None,
            PCWSTR::null(),
            REG_OPTION_NON_VOLATILE,
            KEY_WRITE,
            None,
            &mut k,
            None,
        )
    };
    check(r, "create", path)?;
    Ok(Key(k))
}

fn set(
    root: HKEY,
    path: &str,
    name: &str,
    ty: REG_VALUE_TYPE,
    data: &[u8],
) -> Result<(), RegistryError> {
    let k = create(root, path)?;
    let name = if name.is_empty() {
        HSTRING::new()
    } else {
        HSTRING::from(name)
    };
    // SAFETY: open key; data is a valid byte slice of the declared type.
    let r = unsafe { RegSetValueExW(k.0, &name, None, ty, Some(data)) };
    check(r, "write", path)
}

fn wide_bytes(s: &str) -> Vec<u8> {
    s.encode_utf16()
        .chain(Some(0))
        .flat_map(|u| u.to_le_bytes())
        .collect()
}

/// Writes a `REG_SZ` (`name` empty = the default value), creating the key.
pub fn set_string(root: HKEY, path: &str, name: &str, value: &str) -> Result<(), RegistryError> {
    set(root, path, name, REG_SZ, &wide_bytes(value))
}

/// Writes a `REG_EXPAND_SZ`.
pub fn set_expand_string(
    root: HKEY,
    path: &str,
    name: &str,
    value: &str,
) -> Result<(), RegistryError> {
    set(root, path, name, REG_EXPAND_SZ, &wide_bytes(value))
}

/// Writes a `REG_DWORD`.
pub fn set_dword(root: HKEY, path: &str, name: &str, value: u32) -> Result<(), RegistryError> {
    set(root, path, name, REG_DWORD, &value.to_le_bytes())
}

/// Writes a `REG_BINARY`.
pub fn set_binary(root: HKEY, path: &str, name: &str, value: &[u8]) -> Result<(), RegistryError> {
    set(root, path, name, REG_BINARY, value)
}

/// Reads a `REG_SZ`; `Ok(None)` when the key or value does not exist.
pub fn get_string(root: HKEY, path: &str, name: &str) -> Result<Option<String>, RegistryError> {
    get_text(root, path, name, RRF_RT_REG_SZ)
}

/// Reads a `REG_SZ` or a `REG_EXPAND_SZ` as stored (variables not expanded); `Ok(None)` when
/// the key or value does not exist.
pub fn get_string_unexpanded(
    root: HKEY,
    path: &str,
    name: &str,
) -> Result<Option<String>, RegistryError> {
    get_text(
        root,
        path,
        name,
        REG_ROUTINE_FLAGS(RRF_RT_REG_SZ.0 | RRF_RT_REG_EXPAND_SZ.0 | RRF_NOEXPAND.0),
    )
}

/// Reads a `REG_DWORD`; `Ok(None)` when the key or value does not exist.
pub fn get_dword(root: HKEY, path: &str, name: &str) -> Result<Option<u32>, RegistryError> {
    let mut v = 0u32;
    let mut len = 4u32;
    // SAFETY: `v` holds the 4 bytes announced in `len`.
    let r = unsafe {
        RegGetValueW(
            root,
            &HSTRING::from(path),
            &HSTRING::from(name),
            RRF_RT_REG_DWORD,
            None,
            Some((&mut v as *mut u32).cast()),
            Some(&mut len),
        )
    };
    if r == ERROR_FILE_NOT_FOUND || r == ERROR_PATH_NOT_FOUND {
        return Ok(None);
    }
    check(r, "read", path)?;
    Ok(Some(v))
}

/// Whether a value of any type exists.
pub fn value_exists(root: HKEY, path: &str, name: &str) -> Result<bool, RegistryError> {
    let mut len = 0u32;
    // SAFETY: size query: no data buffer.
    let r = unsafe {
        RegGetValueW(
            root,
            &HSTRING::from(path),
            &HSTRING::from(name),
            RRF_RT_ANY,
            None,
            None,
            Some(&mut len),
        )
    };
    if r == ERROR_FILE_NOT_FOUND || r == ERROR_PATH_NOT_FOUND {
        return Ok(false);
    }
    check(r, "read", path)?;
    Ok(true)
}

fn get_text(
    root: HKEY,
    path: &str,
    name: &str,
    flags: REG_ROUTINE_FLAGS,
) -> Result<Option<String>, RegistryError> {
    let p = HSTRING::from(path);
    let n = if name.is_empty() {
        HSTRING::new()
    } else {
        HSTRING::from(name)
    };
    let mut bytes = 0u32;
    // SAFETY: size query: no data buffer.
    let r = unsafe { RegGetValueW(root, &p, &n, flags, None, None, Some(&mut bytes)) };
    if r == ERROR_FILE_NOT_FOUND || r == ERROR_PATH_NOT_FOUND {
        return Ok(None);
    }
    check(r, "read", path)?;
    // The size is the registry's own answer, bounded by the registry's value-size limit.
    let mut buf = vec![0u16; (bytes as usize).div_ceil(2).min(1 << 20)];
    let mut len = (buf.len() * 2) as u32;
    // SAFETY: buf holds `len` bytes.
    let r = unsafe {
        RegGetValueW(
            root,
            &p,
            &n,
            flags,
            None,
            Some(buf.as_mut_ptr().cast()),
            Some(&mut len),
        )
    };
    check(r, "read", path)?;
    let units = (len as usize / 2).min(buf.len());
    let s = String::from_utf16_lossy(&buf[..units]);
    Ok(Some(s.trim_end_matches('\0').to_string()))
}

/// Whether a key exists.
pub fn key_exists(root: HKEY, path: &str) -> bool {
    let mut k = HKEY::default();
    // SAFETY: valid root and path; `k` receives the handle.
    let r = unsafe { RegOpenKeyExW(root, &HSTRING::from(path), None, KEY_READ, &mut k) };
    if r.is_ok() {
        drop(Key(k));
        true
    } else {
        false
    }
}

/// Deletes a key and everything below it. `Ok(false)` when it did not exist.
pub fn delete_tree(root: HKEY, path: &str) -> Result<bool, RegistryError> {
    // SAFETY: valid root and path.
    let r = unsafe { RegDeleteTreeW(root, &HSTRING::from(path)) };
    if r == ERROR_FILE_NOT_FOUND || r == ERROR_PATH_NOT_FOUND {
        return Ok(false);
    }
    check(r, "delete", path)?;
    Ok(true)
}
