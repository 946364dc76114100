//! Every raw pointer VSS hands the provider, and the COM objects that receive them.
//!
//! `read.rs` deep-copies what VSS passes in; `write.rs` writes `[in,out]` structures back and
//! builds and frees CoTaskMem ones; `com.rs` holds the COM objects; `client.rs` is the caller.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

pub mod client;

mod com;
mod read;
mod write;

use vss::Hresult;

pub use com::{ClassFactory, ComAsync, ComProvider, CoreFactory, ProviderFactory, provider_iids};
pub use read::{read_cstr, read_devices, read_lun, read_luns, read_wstr};
use write::CoBuf;
pub use write::{alloc_lun, free_lun, write_back};

/// Most LUNs accepted in one call (a snapshot set has at most 64 volumes; a volume rarely
/// spans more than a few LUNs).
pub const MAX_LUNS: usize = 1024;
/// Most identifiers accepted in one `VDS_STORAGE_DEVICE_ID_DESCRIPTOR`.
pub const MAX_IDENTIFIERS: usize = 64;
/// Most interconnects accepted in one LUN.
pub const MAX_INTERCONNECTS: usize = 64;
/// Longest identifier, port or address accepted (a VPD 0x83 designator is at most 255 bytes).
pub const MAX_BLOB: usize = 4096;
/// Longest `char*` / `wchar_t*` string accepted, terminator excluded.
pub const MAX_STRING: usize = 32 * 1024;

/// Why a structure handed to the provider could not be read or written back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FfiError {
    #[error("{what} is a NULL pointer")]
    Null { what: &'static str },
    #[error("{what} count {count} is outside 0..={max}")]
    Count {
        what: &'static str,
        count: i64,
        max: usize,
    },
    #[error("{what} has no terminator within {max} characters")]
    Unterminated { what: &'static str, max: usize },
    #[error("{what} contains a NUL character and cannot be written as a C string")]
    InteriorNul { what: &'static str },
    #[error("CoTaskMemAlloc of {bytes} bytes failed")]
    OutOfMemory { bytes: usize },
}

impl FfiError {
    /// The HRESULT VSS receives.
    pub fn hresult(&self) -> Hresult {
        match self {
            FfiError::OutOfMemory { .. } => Hresult::E_OUTOFMEMORY,
            FfiError::InteriorNul { .. } => Hresult::E_UNEXPECTED,
            _ => Hresult::E_INVALIDARG,
        }
    }
}

fn check_count(what: &'static str, count: i64, max: usize) -> Result<usize, FfiError> {
    if count < 0 || count as u64 > max as u64 {
        return Err(FfiError::Count { what, count, max });
    }
    Ok(count as usize)
}
