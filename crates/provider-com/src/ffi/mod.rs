//! Every raw pointer VSS hands the provider, and the COM objects that receive them.
//!
//! Reading: `VDS_LUN_INFORMATION` arrays, device-name arrays and strings are deep-copied into
//! [`vss::LunInfo`] / `String` with every count and length checked against a fixed limit before
//! anything is allocated (the counts come from the caller).
//!
//! Writing back `[in,out]` structures follows contract §3.6: only the fields the core changed
//! are rewritten; each new buffer is `CoTaskMemAlloc` memory; the old buffer is freed with
//! `CoTaskMemFree` only after every new buffer of the whole array has been allocated, so an
//! allocation failure leaves the caller's structures exactly as received. The top-level arrays
//! belong to VSS and are never freed; `m_rgInterconnects` is never touched.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

pub mod client;

use std::ffi::c_void;
use std::ptr;
use std::sync::Arc;
use std::time::Duration;

use provider::{AsyncOperation, HardwareProvider, UnloadAnswer};
use vss::lun::{
    BusType, CodeSet, IdentifierType, Interconnect, StorageIdentifier, latin1, latin1_bytes,
};
use vss::{HardwareOptions, Hresult, LunInfo, SnapshotContext, VssId};
use windows::Win32::Foundation::{CLASS_E_NOAGGREGATION, E_POINTER};
use windows::Win32::Storage::VirtualDiskService::{
    VDS_INTERCONNECT, VDS_INTERCONNECT_ADDRESS_TYPE, VDS_LUN_INFORMATION, VDS_STORAGE_BUS_TYPE,
    VDS_STORAGE_DEVICE_ID_DESCRIPTOR, VDS_STORAGE_IDENTIFIER, VDS_STORAGE_IDENTIFIER_CODE_SET,
    VDS_STORAGE_IDENTIFIER_TYPE,
};
use windows::Win32::Storage::Vss::{
    IVssAsync, IVssAsync_Impl, IVssHardwareSnapshotProvider_Impl, IVssHardwareSnapshotProviderEx,
    IVssHardwareSnapshotProviderEx_Impl, IVssProviderCreateSnapshotSet,
    IVssProviderCreateSnapshotSet_Impl, IVssProviderNotifications, IVssProviderNotifications_Impl,
};
use windows::Win32::System::Com::{
    CoTaskMemAlloc, CoTaskMemFree, IClassFactory, IClassFactory_Impl,
};
use windows_core::{BOOL, GUID, HRESULT, IUnknown, Interface, Ref, implement};

use crate::ids::to_uuid;
use crate::server::{Lifetime, LifetimeGuard};
use crate::veto::VetoLog;

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

// ---------------------------------------------------------------------------------------------
// Reading

/// Deep-copies a NUL-terminated `char*` (Latin-1, one char per byte); NULL is `None`.
///
/// # Safety
/// `p` is NULL or points to readable memory up to its terminator or `MAX_STRING` bytes.
pub unsafe fn read_cstr(p: *const u8, what: &'static str) -> Result<Option<String>, FfiError> {
    if p.is_null() {
        return Ok(None);
    }
    for n in 0..=MAX_STRING {
        // SAFETY: bytes before index n were readable and non-NUL, so the string continues.
        if unsafe { *p.add(n) } == 0 {
            // SAFETY: the n bytes before the terminator are readable.
            let bytes = unsafe { std::slice::from_raw_parts(p, n) };
            return Ok(Some(latin1(bytes)));
        }
    }
    Err(FfiError::Unterminated {
        what,
        max: MAX_STRING,
    })
}

/// Deep-copies a NUL-terminated `wchar_t*` (UTF-16, lossy); NULL is the empty string.
///
/// # Safety
/// `p` is NULL or points to readable UTF-16 up to its terminator or `MAX_STRING` units.
pub unsafe fn read_wstr(p: *const u16, what: &'static str) -> Result<String, FfiError> {
    if p.is_null() {
        return Ok(String::new());
    }
    for n in 0..=MAX_STRING {
        // SAFETY: units before index n were readable and non-NUL.
        if unsafe { *p.add(n) } == 0 {
            // SAFETY: the n units before the terminator are readable.
            let units = unsafe { std::slice::from_raw_parts(p, n) };
            return Ok(String::from_utf16_lossy(units));
        }
    }
    Err(FfiError::Unterminated {
        what,
        max: MAX_STRING,
    })
}

/// Copies `len` bytes (checked against [`MAX_BLOB`]); NULL with a zero length is empty.
///
/// # Safety
/// `p` is NULL or points to `len` readable bytes.
unsafe fn read_blob(p: *const u8, len: u32, what: &'static str) -> Result<Vec<u8>, FfiError> {
    let n = check_count(what, len as i64, MAX_BLOB)?;
    if n == 0 {
        return Ok(Vec::new());
    }
    if p.is_null() {
        return Err(FfiError::Null { what });
    }
    // SAFETY: the caller promises `len` readable bytes at `p`, `len` <= MAX_BLOB.
    Ok(unsafe { std::slice::from_raw_parts(p, n) }.to_vec())
}

/// Reads a VSS device-name array (`[in, size_is(count), unique] VSS_PWSZ*`). A NULL array
/// gives `count` empty names; a NULL element gives an empty name.
///
/// # Safety
/// `p` is NULL or points to `count` readable pointers, each NULL or a terminated string.
pub unsafe fn read_devices(p: *const *const u16, count: usize) -> Result<Vec<String>, FfiError> {
    if p.is_null() {
        return Ok(vec![String::new(); count]);
    }
    (0..count)
        // SAFETY: i < count and the caller promises `count` elements; each element is NULL or
        // a terminated string.
        .map(|i| unsafe { read_wstr(*p.add(i), "device name") })
        .collect()
}

/// Deep-copies one `VDS_LUN_INFORMATION`.
///
/// # Safety
/// Every embedded pointer is NULL or valid for its count / terminator.
pub unsafe fn read_lun(v: &VDS_LUN_INFORMATION) -> Result<LunInfo, FfiError> {
    let d = &v.m_deviceIdDescriptor;
    let nid = check_count("m_cIdentifiers", d.m_cIdentifiers as i64, MAX_IDENTIFIERS)?;
    let mut identifiers = Vec::with_capacity(nid);
    if nid > 0 {
        if d.m_rgIdentifiers.is_null() {
            return Err(FfiError::Null {
                what: "m_rgIdentifiers",
            });
        }
        for i in 0..nid {
            // SAFETY: i < m_cIdentifiers elements of the caller's array.
            let id = unsafe { &*d.m_rgIdentifiers.add(i) };
            identifiers.push(StorageIdentifier {
                code_set: CodeSet(id.m_CodeSet.0 as u32),
                id_type: IdentifierType(id.m_Type.0 as u32),
                // SAFETY: m_rgbIdentifier holds m_cbIdentifier bytes.
                identifier: unsafe {
                    read_blob(id.m_rgbIdentifier, id.m_cbIdentifier, "identifier")
                }?,
            });
        }
    }
    let nic = check_count(
        "m_cInterconnects",
        v.m_cInterconnects as i64,
        MAX_INTERCONNECTS,
    )?;
    let mut interconnects = Vec::with_capacity(nic);
    if nic > 0 {
        if v.m_rgInterconnects.is_null() {
            return Err(FfiError::Null {
                what: "m_rgInterconnects",
            });
        }
        for i in 0..nic {
            // SAFETY: i < m_cInterconnects elements of the caller's array.
            let ic = unsafe { &*v.m_rgInterconnects.add(i) };
            interconnects.push(Interconnect {
                address_type: ic.m_addressType.0 as u32,
                // SAFETY: m_pbPort holds m_cbPort bytes.
                port: unsafe { read_blob(ic.m_pbPort, ic.m_cbPort, "m_pbPort") }?,
                // SAFETY: m_pbAddress holds m_cbAddress bytes.
                address: unsafe { read_blob(ic.m_pbAddress, ic.m_cbAddress, "m_pbAddress") }?,
            });
        }
    }
    Ok(LunInfo {
        version: v.m_version,
        device_type: v.m_DeviceType,
        device_type_modifier: v.m_DeviceTypeModifier,
        command_queueing: v.m_bCommandQueueing.as_bool(),
        bus_type: BusType(v.m_BusType.0 as u32),
        // SAFETY (four strings): each is NULL or terminated, per the function contract.
        vendor_id: unsafe { read_cstr(v.m_szVendorId, "m_szVendorId") }?,
        product_id: unsafe { read_cstr(v.m_szProductId, "m_szProductId") }?,
        product_revision: unsafe { read_cstr(v.m_szProductRevision, "m_szProductRevision") }?,
        serial_number: unsafe { read_cstr(v.m_szSerialNumber, "m_szSerialNumber") }?,
        disk_signature: to_uuid(&v.m_diskSignature),
        id_descriptor_version: d.m_version,
        identifiers,
        interconnects,
    })
}

/// Deep-copies an array of `count` LUNs (`count` from the caller, checked).
///
/// # Safety
/// `p` is NULL or points to `count` readable structures as for [`read_lun`].
pub unsafe fn read_luns(
    p: *const VDS_LUN_INFORMATION,
    count: i64,
    what: &'static str,
) -> Result<Vec<LunInfo>, FfiError> {
    let n = check_count(what, count, MAX_LUNS)?;
    if n == 0 {
        return Ok(Vec::new());
    }
    if p.is_null() {
        return Err(FfiError::Null { what });
    }
    // SAFETY: i < count elements of the caller's array, each valid per the contract.
    (0..n).map(|i| unsafe { read_lun(&*p.add(i)) }).collect()
}

// ---------------------------------------------------------------------------------------------
// Writing

/// One `CoTaskMemAlloc` block owned by Rust until handed to the caller.
struct CoBuf(*mut c_void);

impl CoBuf {
    fn alloc(bytes: usize) -> Result<Self, FfiError> {
        // SAFETY: CoTaskMemAlloc has no preconditions; NULL means failure.
        let p = unsafe { CoTaskMemAlloc(bytes.max(1)) };
        if p.is_null() {
            return Err(FfiError::OutOfMemory { bytes });
        }
        // SAFETY: p is a fresh block of at least `bytes.max(1)` bytes.
        unsafe { ptr::write_bytes(p.cast::<u8>(), 0, bytes.max(1)) };
        Ok(Self(p))
    }

    fn from_bytes(b: &[u8]) -> Result<Self, FfiError> {
        let buf = Self::alloc(b.len())?;
        // SAFETY: buf holds at least b.len() bytes and does not overlap b.
        unsafe { ptr::copy_nonoverlapping(b.as_ptr(), buf.0.cast::<u8>(), b.len()) };
        Ok(buf)
    }

    fn cstr(s: &str, what: &'static str) -> Result<Self, FfiError> {
        let mut b = latin1_bytes(s);
        if b.contains(&0) {
            return Err(FfiError::InteriorNul { what });
        }
        b.push(0);
        Self::from_bytes(&b)
    }

    /// Gives the block to the caller (no longer freed on drop).
    fn release<T>(self) -> *mut T {
        let p = self.0.cast::<T>();
        std::mem::forget(self);
        p
    }
}

impl Drop for CoBuf {
    fn drop(&mut self) {
        // SAFETY: self.0 came from CoTaskMemAlloc and was never handed out.
        unsafe { CoTaskMemFree(Some(self.0)) };
    }
}

/// An identifier array built in CoTaskMem, freed on drop unless committed.
struct IdArray {
    array: CoBuf,
    count: u32,
    /// The per-identifier byte buffers, already linked from `array`.
    blobs: Vec<CoBuf>,
}

impl IdArray {
    fn build(ids: &[StorageIdentifier]) -> Result<Self, FfiError> {
        check_count("identifiers", ids.len() as i64, MAX_IDENTIFIERS)?;
        let array = CoBuf::alloc(ids.len() * std::mem::size_of::<VDS_STORAGE_IDENTIFIER>())?;
        let base = array.0.cast::<VDS_STORAGE_IDENTIFIER>();
        let mut blobs = Vec::with_capacity(ids.len());
        for (i, id) in ids.iter().enumerate() {
            check_count("identifier", id.identifier.len() as i64, MAX_BLOB)?;
            let blob = if id.identifier.is_empty() {
                None
            } else {
                Some(CoBuf::from_bytes(&id.identifier)?)
            };
            let e = VDS_STORAGE_IDENTIFIER {
                m_CodeSet: VDS_STORAGE_IDENTIFIER_CODE_SET(id.code_set.0 as i32),
                m_Type: VDS_STORAGE_IDENTIFIER_TYPE(id.id_type.0 as i32),
                m_cbIdentifier: id.identifier.len() as u32,
                m_rgbIdentifier: blob.as_ref().map_or(ptr::null_mut(), |b| b.0.cast()),
            };
            // SAFETY: i < ids.len() elements were allocated (and zeroed) in `array`.
            unsafe { base.add(i).write(e) };
            blobs.extend(blob);
        }
        Ok(Self {
            array,
            count: ids.len() as u32,
            blobs,
        })
    }

    fn release(self) -> (u32, *mut VDS_STORAGE_IDENTIFIER) {
        for b in self.blobs {
            b.release::<u8>();
        }
        (self.count, self.array.release())
    }
}

/// A string field's replacement: `Some(None)` writes NULL, `Some(Some(buf))` a new string.
type StrUpdate = Option<Option<CoBuf>>;

/// Everything to change in one structure, allocated up front.
#[derive(Default)]
struct LunUpdate {
    vendor: StrUpdate,
    product: StrUpdate,
    revision: StrUpdate,
    serial: StrUpdate,
    identifiers: Option<IdArray>,
}

fn str_update(
    before: &Option<String>,
    after: &Option<String>,
    what: &'static str,
) -> Result<StrUpdate, FfiError> {
    if before == after {
        return Ok(None);
    }
    Ok(Some(match after {
        None => None,
        Some(s) => Some(CoBuf::cstr(s, what)?),
    }))
}

fn str_fits(before: &Option<String>, after: &Option<String>) -> bool {
    match (before, after) {
        (None, _) => true,
        (Some(b), Some(a)) => a.chars().count() <= b.chars().count(),
        (Some(_), None) => false,
    }
}

fn ids_fit(b: &[StorageIdentifier], a: &[StorageIdentifier]) -> bool {
    b.is_empty()
        || (!a.is_empty()
            && a.len() <= b.len()
            && a.iter().zip(b).all(|(x, y)| {
                y.identifier.is_empty()
                    || (!x.identifier.is_empty() && x.identifier.len() <= y.identifier.len())
            }))
}

/// The rule that keeps `[in,out]` rewrites safe across processes: NDR unmarshals a returned
/// embedded pointer that was non-NULL on input into the caller's existing memory (unique-
/// pointer semantics; Wine's proxies do, and the first cross-process test run showed the
/// overflow), and orphans it if it comes back NULL. So a field VSS passed non-NULL is
/// rewritten only with a value that fits: a string no longer than before, an identifier
/// array with no more entries, each no longer than the one it replaces. A change that does
/// not fit is not written (the caller keeps its value) and is logged; fields VSS passed NULL
/// (GetTargetLuns' zeroed destinations) may receive anything.
fn fitting(before: &LunInfo, after: &LunInfo) -> LunInfo {
    let mut out = after.clone();
    let keep = |ok: bool, what: &'static str| {
        if !ok {
            tracing::warn!(
                field = what,
                "the provider core lengthened or removed a field VSS passed in; \
                 it cannot be returned across processes and is left as received"
            );
        }
        !ok
    };
    if keep(
        str_fits(&before.vendor_id, &after.vendor_id),
        "m_szVendorId",
    ) {
        out.vendor_id = before.vendor_id.clone();
    }
    if keep(
        str_fits(&before.product_id, &after.product_id),
        "m_szProductId",
    ) {
        out.product_id = before.product_id.clone();
    }
    if keep(
        str_fits(&before.product_revision, &after.product_revision),
        "m_szProductRevision",
    ) {
        out.product_revision = before.product_revision.clone();
    }
    if keep(
        str_fits(&before.serial_number, &after.serial_number),
        "m_szSerialNumber",
    ) {
        out.serial_number = before.serial_number.clone();
    }
    if keep(
        ids_fit(&before.identifiers, &after.identifiers),
        "m_rgIdentifiers",
    ) {
        out.identifiers = before.identifiers.clone();
    }
    out
}

fn prepare(before: &LunInfo, after: &LunInfo) -> Result<LunUpdate, FfiError> {
    if before.interconnects != after.interconnects {
        tracing::warn!("the provider core changed m_rgInterconnects; the change is ignored");
    }
    Ok(LunUpdate {
        vendor: str_update(&before.vendor_id, &after.vendor_id, "vendor id")?,
        product: str_update(&before.product_id, &after.product_id, "product id")?,
        revision: str_update(
            &before.product_revision,
            &after.product_revision,
            "product revision",
        )?,
        serial: str_update(&before.serial_number, &after.serial_number, "serial number")?,
        identifiers: if before.identifiers != after.identifiers {
            Some(IdArray::build(&after.identifiers)?)
        } else {
            None
        },
    })
}

/// Frees the old string and installs the new one.
///
/// # Safety
/// `*field` is NULL or CoTaskMem memory owned by the structure.
unsafe fn swap_str(field: &mut *mut u8, update: StrUpdate) {
    if let Some(new) = update {
        // SAFETY: the old value is CoTaskMem owned by the structure (contract §3.6).
        unsafe { CoTaskMemFree(Some((*field).cast_const().cast())) };
        *field = new.map_or(ptr::null_mut(), |b| b.release());
    }
}

/// Frees an identifier array and every identifier's bytes.
///
/// # Safety
/// `rg` is NULL or a CoTaskMem array of `count` identifiers whose byte pointers are NULL or
/// CoTaskMem.
unsafe fn free_identifiers(count: u32, rg: *mut VDS_STORAGE_IDENTIFIER) {
    if rg.is_null() {
        return;
    }
    for i in 0..count as usize {
        // SAFETY: i < count elements of the array.
        let id = unsafe { &*rg.add(i) };
        // SAFETY: identifier bytes are CoTaskMem (or NULL).
        unsafe { CoTaskMemFree(Some(id.m_rgbIdentifier.cast_const().cast())) };
    }
    // SAFETY: the array itself is CoTaskMem.
    unsafe { CoTaskMemFree(Some(rg.cast_const().cast())) };
}

/// Applies a prepared update: cannot fail.
///
/// # Safety
/// `dst` is a valid structure whose pointers are NULL or CoTaskMem owned by it.
unsafe fn commit(dst: &mut VDS_LUN_INFORMATION, after: &LunInfo, u: LunUpdate) {
    dst.m_version = after.version;
    dst.m_DeviceType = after.device_type;
    dst.m_DeviceTypeModifier = after.device_type_modifier;
    dst.m_bCommandQueueing = BOOL::from(after.command_queueing);
    dst.m_BusType = VDS_STORAGE_BUS_TYPE(after.bus_type.0 as i32);
    dst.m_diskSignature = crate::ids::to_guid(&after.disk_signature);
    dst.m_deviceIdDescriptor.m_version = after.id_descriptor_version;
    // SAFETY (four strings): the fields are owned by the structure, per the contract.
    unsafe {
        swap_str(&mut dst.m_szVendorId, u.vendor);
        swap_str(&mut dst.m_szProductId, u.product);
        swap_str(&mut dst.m_szProductRevision, u.revision);
        swap_str(&mut dst.m_szSerialNumber, u.serial);
    }
    if let Some(ids) = u.identifiers {
        let d = &mut dst.m_deviceIdDescriptor;
        // SAFETY: the old array and its bytes are CoTaskMem owned by the structure.
        unsafe { free_identifiers(d.m_cIdentifiers, d.m_rgIdentifiers) };
        let (n, rg) = ids.release();
        d.m_cIdentifiers = n;
        d.m_rgIdentifiers = rg;
    }
}

/// Writes `after[i]` into `dst[i]` wherever it differs from `before[i]`. All allocations happen
/// before the first structure is modified: on error nothing has changed.
///
/// # Safety
/// `dst` points to `before.len()` structures as read by [`read_luns`], owned by the caller.
pub unsafe fn write_back(
    dst: *mut VDS_LUN_INFORMATION,
    before: &[LunInfo],
    after: &[LunInfo],
) -> Result<(), FfiError> {
    debug_assert_eq!(before.len(), after.len());
    let after: Vec<LunInfo> = before
        .iter()
        .zip(after)
        .map(|(b, a)| fitting(b, a))
        .collect();
    let updates = before
        .iter()
        .zip(&after)
        .map(|(b, a)| prepare(b, a))
        .collect::<Result<Vec<_>, _>>()?;
    for (i, (u, a)) in updates.into_iter().zip(&after).enumerate() {
        // SAFETY: i < before.len() elements of the caller's array.
        unsafe { commit(&mut *dst.add(i), a, u) };
    }
    Ok(())
}

/// Builds a structure whose every pointer is fresh CoTaskMem memory (what VSS passes to a
/// provider). Used by the Windows-side client and the tests; free with [`free_lun`].
pub fn alloc_lun(l: &LunInfo) -> Result<VDS_LUN_INFORMATION, FfiError> {
    let mut v = VDS_LUN_INFORMATION::default();
    // SAFETY: v is zeroed: every pointer is NULL, so commit frees nothing.
    unsafe { commit(&mut v, l, prepare(&LunInfo::default(), l)?) };
    let ics = l
        .interconnects
        .iter()
        .map(|ic| {
            Ok((
                CoBuf::from_bytes(&ic.port)?,
                CoBuf::from_bytes(&ic.address)?,
            ))
        })
        .collect::<Result<Vec<_>, FfiError>>();
    let ics = match ics {
        Ok(x) => x,
        Err(e) => {
            // SAFETY: v's pointers were all allocated just above.
            unsafe { free_lun(&mut v) };
            return Err(e);
        }
    };
    if !ics.is_empty() {
        let array = match CoBuf::alloc(ics.len() * std::mem::size_of::<VDS_INTERCONNECT>()) {
            Ok(a) => a,
            Err(e) => {
                // SAFETY: as above.
                unsafe { free_lun(&mut v) };
                return Err(e);
            }
        };
        let base = array.0.cast::<VDS_INTERCONNECT>();
        for (i, ((port, addr), ic)) in ics.into_iter().zip(&l.interconnects).enumerate() {
            let e = VDS_INTERCONNECT {
                m_addressType: VDS_INTERCONNECT_ADDRESS_TYPE(ic.address_type as i32),
                m_cbPort: ic.port.len() as u32,
                m_pbPort: port.release(),
                m_cbAddress: ic.address.len() as u32,
                m_pbAddress: addr.release(),
            };
            // SAFETY: i < len elements allocated in `array`.
            unsafe { base.add(i).write(e) };
        }
        v.m_cInterconnects = l.interconnects.len() as u32;
        v.m_rgInterconnects = array.release();
    }
    Ok(v)
}

/// Frees every embedded pointer of a structure and leaves it zeroed (the structure itself is
/// not freed: it is an element of a caller's array).
///
/// # Safety
/// Every embedded pointer is NULL or CoTaskMem memory owned by the structure.
pub unsafe fn free_lun(v: &mut VDS_LUN_INFORMATION) {
    for p in [
        v.m_szVendorId,
        v.m_szProductId,
        v.m_szProductRevision,
        v.m_szSerialNumber,
    ] {
        // SAFETY: CoTaskMem or NULL.
        unsafe { CoTaskMemFree(Some(p.cast_const().cast())) };
    }
    let d = &v.m_deviceIdDescriptor;
    // SAFETY: CoTaskMem array of m_cIdentifiers entries (or NULL).
    unsafe { free_identifiers(d.m_cIdentifiers, d.m_rgIdentifiers) };
    if !v.m_rgInterconnects.is_null() {
        for i in 0..v.m_cInterconnects as usize {
            // SAFETY: i < m_cInterconnects entries.
            let ic = unsafe { &*v.m_rgInterconnects.add(i) };
            // SAFETY: CoTaskMem or NULL.
            unsafe {
                CoTaskMemFree(Some(ic.m_pbPort.cast_const().cast()));
                CoTaskMemFree(Some(ic.m_pbAddress.cast_const().cast()));
            }
        }
        // SAFETY: CoTaskMem array.
        unsafe { CoTaskMemFree(Some(v.m_rgInterconnects.cast_const().cast())) };
    }
    *v = VDS_LUN_INFORMATION {
        m_deviceIdDescriptor: VDS_STORAGE_DEVICE_ID_DESCRIPTOR::default(),
        ..Default::default()
    };
}

// ---------------------------------------------------------------------------------------------
// HRESULT plumbing

fn hr(h: Hresult) -> windows_core::Error {
    let code = if h.0 == 0 {
        Hresult::E_UNEXPECTED.0
    } else {
        h.0
    };
    windows_core::Error::from_hresult(HRESULT(code as i32))
}

fn ffi_err(method: &'static str, e: FfiError) -> windows_core::Error {
    tracing::error!(method, error = %e, "bad arguments from the caller");
    hr(e.hresult())
}

/// Writes `*p = v` when `p` is not NULL; NULL is `E_INVALIDARG`.
fn write_out<T>(p: *mut T, v: T, what: &'static str) -> Result<(), FfiError> {
    if p.is_null() {
        return Err(FfiError::Null { what });
    }
    // SAFETY: p is a non-NULL [out] pointer supplied by the caller.
    unsafe { p.write(v) };
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The provider object

/// The COM object VSS talks to: converts arguments and delegates to the core.
#[implement(
    IVssHardwareSnapshotProviderEx,
    IVssProviderCreateSnapshotSet,
    IVssProviderNotifications
)]
pub struct ComProvider {
    core: Arc<dyn HardwareProvider>,
    veto: Arc<VetoLog>,
    _alive: Option<LifetimeGuard>,
}

impl ComProvider {
    /// A provider object over `core`; vetoes the core did not report itself go to `veto`
    /// (normally the same log the core reports to).
    pub fn new(core: Arc<dyn HardwareProvider>, veto: Arc<VetoLog>) -> Self {
        Self {
            core,
            veto,
            _alive: None,
        }
    }

    /// The same, keeping the server process alive while the object exists.
    pub fn with_lifetime(
        core: Arc<dyn HardwareProvider>,
        veto: Arc<VetoLog>,
        lifetime: &Arc<Lifetime>,
    ) -> Self {
        Self {
            _alive: Some(lifetime.guard()),
            ..Self::new(core, veto)
        }
    }

    /// The object as the interface VSS asks for first.
    pub fn into_interface(self) -> IVssHardwareSnapshotProviderEx {
        self.into()
    }

    /// Runs one core call, logs its outcome and makes sure a veto has an event-log entry.
    fn finish<T>(
        &self,
        method: &'static str,
        set: Option<&GUID>,
        call: impl FnOnce() -> Result<T, Hresult>,
    ) -> windows_core::Result<T> {
        let reported = self.veto.reported();
        let r = call();
        let code = r.as_ref().err().copied().unwrap_or(Hresult::S_OK);
        tracing::debug!(method, hresult = %format_args!("0x{:08X}", code.0), "call returned");
        if self.veto.reported() == reported {
            self.veto.record(method, set.map(to_uuid), code);
        }
        r.map_err(hr)
    }

    /// The common shape of the `[in,out]` LUN-array methods: read, call, write back.
    fn in_out<R>(
        &self,
        method: &'static str,
        set: Option<&GUID>,
        luns: *mut VDS_LUN_INFORMATION,
        count: i64,
        call: impl FnOnce(&mut [LunInfo]) -> Result<R, Hresult>,
    ) -> windows_core::Result<R> {
        // SAFETY: VSS passes `count` structures at `luns` (checked for NULL and range inside).
        let before =
            unsafe { read_luns(luns, count, "LUN array") }.map_err(|e| ffi_err(method, e))?;
        let mut after = before.clone();
        let r = self.finish(method, set, || call(&mut after))?;
        // SAFETY: same array, same count, just read.
        unsafe { write_back(luns, &before, &after) }.map_err(|e| ffi_err(method, e))?;
        Ok(r)
    }
}

fn vss_id(g: &GUID) -> VssId {
    to_uuid(g)
}

impl IVssHardwareSnapshotProvider_Impl for ComProvider_Impl {
    fn AreLunsSupported(
        &self,
        lluncount: i32,
        lcontext: i32,
        rgwszdevices: *const *const u16,
        pluninformation: *mut VDS_LUN_INFORMATION,
        pbissupported: *mut BOOL,
    ) -> windows_core::Result<()> {
        const M: &str = "AreLunsSupported";
        if pbissupported.is_null() {
            return Err(ffi_err(
                M,
                FfiError::Null {
                    what: "pbIsSupported",
                },
            ));
        }
        let n = check_count("lLunCount", lluncount as i64, MAX_LUNS).map_err(|e| ffi_err(M, e))?;
        // SAFETY: VSS passes `n` device names (or NULL).
        let devices = unsafe { read_devices(rgwszdevices, n) }.map_err(|e| ffi_err(M, e))?;
        let ctx = SnapshotContext::from_i32(lcontext);
        let ok = self.in_out(M, None, pluninformation, n as i64, |luns| {
            self.core.are_luns_supported(ctx, &devices, luns)
        })?;
        write_out(pbissupported, BOOL::from(ok), "pbIsSupported").map_err(|e| ffi_err(M, e))
    }

    fn FillInLunInfo(
        &self,
        wszdevicename: *const u16,
        pluninfo: *mut VDS_LUN_INFORMATION,
        pbissupported: *mut BOOL,
    ) -> windows_core::Result<()> {
        const M: &str = "FillInLunInfo";
        if pbissupported.is_null() {
            return Err(ffi_err(
                M,
                FfiError::Null {
                    what: "pbIsSupported",
                },
            ));
        }
        // SAFETY: NULL or a terminated string from VSS.
        let device =
            unsafe { read_wstr(wszdevicename, "wszDeviceName") }.map_err(|e| ffi_err(M, e))?;
        let ok = self.in_out(M, None, pluninfo, 1, |luns| {
            self.core.fill_in_lun_info(&device, &mut luns[0])
        })?;
        write_out(pbissupported, BOOL::from(ok), "pbIsSupported").map_err(|e| ffi_err(M, e))
    }

    fn BeginPrepareSnapshot(
        &self,
        snapshotsetid: &GUID,
        snapshotid: &GUID,
        lcontext: i32,
        lluncount: i32,
        rgdevicenames: *const *const u16,
        rgluninformation: *mut VDS_LUN_INFORMATION,
    ) -> windows_core::Result<()> {
        const M: &str = "BeginPrepareSnapshot";
        let n = check_count("lLunCount", lluncount as i64, MAX_LUNS).map_err(|e| ffi_err(M, e))?;
        // SAFETY: VSS passes `n` device names (or NULL).
        let devices = unsafe { read_devices(rgdevicenames, n) }.map_err(|e| ffi_err(M, e))?;
        let ctx = SnapshotContext::from_i32(lcontext);
        let (set, snap) = (vss_id(snapshotsetid), vss_id(snapshotid));
        self.in_out(M, Some(snapshotsetid), rgluninformation, n as i64, |luns| {
            self.core
                .begin_prepare_snapshot(set, snap, ctx, &devices, luns)
        })
    }

    fn GetTargetLuns(
        &self,
        lluncount: i32,
        rgdevicenames: *const *const u16,
        rgsourceluns: *const VDS_LUN_INFORMATION,
        rgdestinationluns: *mut VDS_LUN_INFORMATION,
    ) -> windows_core::Result<()> {
        const M: &str = "GetTargetLuns";
        let n = check_count("lLunCount", lluncount as i64, MAX_LUNS).map_err(|e| ffi_err(M, e))?;
        // SAFETY: VSS passes `n` device names (or NULL) and `n` source structures.
        let devices = unsafe { read_devices(rgdevicenames, n) }.map_err(|e| ffi_err(M, e))?;
        // SAFETY: as above.
        let sources = unsafe { read_luns(rgsourceluns, n as i64, "rgSourceLuns") }
            .map_err(|e| ffi_err(M, e))?;
        self.in_out(M, None, rgdestinationluns, n as i64, |dst| {
            self.core.get_target_luns(&devices, &sources, dst)
        })
    }

    fn LocateLuns(
        &self,
        lluncount: i32,
        rgsourceluns: *const VDS_LUN_INFORMATION,
    ) -> windows_core::Result<()> {
        const M: &str = "LocateLuns";
        // SAFETY: VSS passes `lluncount` structures.
        let luns = unsafe { read_luns(rgsourceluns, lluncount as i64, "rgSourceLuns") }
            .map_err(|e| ffi_err(M, e))?;
        self.finish(M, None, || self.core.locate_luns(&luns))
    }

    fn OnLunEmpty(
        &self,
        wszdevicename: *const u16,
        pinformation: *const VDS_LUN_INFORMATION,
    ) -> windows_core::Result<()> {
        const M: &str = "OnLunEmpty";
        // SAFETY: NULL or a terminated string from VSS.
        let device =
            unsafe { read_wstr(wszdevicename, "wszDeviceName") }.map_err(|e| ffi_err(M, e))?;
        // SAFETY: one structure (NULL is rejected inside).
        let lun =
            unsafe { read_luns(pinformation, 1, "pInformation") }.map_err(|e| ffi_err(M, e))?;
        self.finish(M, None, || self.core.on_lun_empty(&device, &lun[0]))
    }
}

/// Reads the two parallel `[in]` arrays of the Ex methods.
fn pair(
    a: *const VDS_LUN_INFORMATION,
    b: *const VDS_LUN_INFORMATION,
    count: u32,
) -> Result<(Vec<LunInfo>, Vec<LunInfo>), FfiError> {
    // SAFETY: VSS passes `count` structures in each array.
    let x = unsafe { read_luns(a, count as i64, "first LUN array") }?;
    // SAFETY: as above.
    let y = unsafe { read_luns(b, count as i64, "second LUN array") }?;
    Ok((x, y))
}

impl IVssHardwareSnapshotProviderEx_Impl for ComProvider_Impl {
    fn GetProviderCapabilities(&self) -> windows_core::Result<u64> {
        self.finish("GetProviderCapabilities", None, || {
            self.core.get_provider_capabilities()
        })
    }

    fn OnLunStateChange(
        &self,
        psnapshotluns: *const VDS_LUN_INFORMATION,
        poriginalluns: *const VDS_LUN_INFORMATION,
        dwcount: u32,
        dwflags: u32,
    ) -> windows_core::Result<()> {
        const M: &str = "OnLunStateChange";
        let (s, o) = pair(psnapshotluns, poriginalluns, dwcount).map_err(|e| ffi_err(M, e))?;
        let flags = HardwareOptions::from_bits_retain(dwflags);
        self.finish(M, None, || self.core.on_lun_state_change(&s, &o, flags))
    }

    fn ResyncLuns(
        &self,
        psourceluns: *const VDS_LUN_INFORMATION,
        ptargetluns: *const VDS_LUN_INFORMATION,
        dwcount: u32,
    ) -> windows_core::Result<IVssAsync> {
        const M: &str = "ResyncLuns";
        let (s, t) = pair(psourceluns, ptargetluns, dwcount).map_err(|e| ffi_err(M, e))?;
        let op = self.finish(M, None, || self.core.resync_luns(&s, &t))?;
        Ok(ComAsync::new(op).into())
    }

    fn OnReuseLuns(
        &self,
        psnapshotluns: *const VDS_LUN_INFORMATION,
        poriginalluns: *const VDS_LUN_INFORMATION,
        dwcount: u32,
    ) -> windows_core::Result<()> {
        const M: &str = "OnReuseLuns";
        let (s, o) = pair(psnapshotluns, poriginalluns, dwcount).map_err(|e| ffi_err(M, e))?;
        self.finish(M, None, || self.core.on_reuse_luns(&s, &o))
    }
}

impl IVssProviderCreateSnapshotSet_Impl for ComProvider_Impl {
    fn EndPrepareSnapshots(&self, id: &GUID) -> windows_core::Result<()> {
        self.finish("EndPrepareSnapshots", Some(id), || {
            self.core.end_prepare_snapshots(vss_id(id))
        })
    }

    fn PreCommitSnapshots(&self, id: &GUID) -> windows_core::Result<()> {
        // From here until PostCommit (or Abort) returns, the applications are frozen.
        self.veto.freeze();
        self.finish("PreCommitSnapshots", Some(id), || {
            self.core.pre_commit_snapshots(vss_id(id))
        })
    }

    fn CommitSnapshots(&self, id: &GUID) -> windows_core::Result<()> {
        self.finish("CommitSnapshots", Some(id), || {
            self.core.commit_snapshots(vss_id(id))
        })
    }

    fn PostCommitSnapshots(&self, id: &GUID, count: i32) -> windows_core::Result<()> {
        let r = self.finish("PostCommitSnapshots", Some(id), || {
            self.core.post_commit_snapshots(vss_id(id), count)
        });
        self.veto.thaw();
        r
    }

    fn PreFinalCommitSnapshots(&self, id: &GUID) -> windows_core::Result<()> {
        self.finish("PreFinalCommitSnapshots", Some(id), || {
            self.core.pre_final_commit_snapshots(vss_id(id))
        })
    }

    fn PostFinalCommitSnapshots(&self, id: &GUID) -> windows_core::Result<()> {
        self.finish("PostFinalCommitSnapshots", Some(id), || {
            self.core.post_final_commit_snapshots(vss_id(id))
        })
    }

    fn AbortSnapshots(&self, id: &GUID) -> windows_core::Result<()> {
        let r = self.finish("AbortSnapshots", Some(id), || {
            self.core.abort_snapshots(vss_id(id))
        });
        self.veto.thaw();
        r
    }
}

impl IVssProviderNotifications_Impl for ComProvider_Impl {
    fn OnLoad(&self, _callback: Ref<IUnknown>) -> windows_core::Result<()> {
        self.finish("OnLoad", None, || self.core.on_load())
    }

    fn OnUnload(&self, force: BOOL) -> windows_core::Result<()> {
        let force = force.as_bool();
        match self.finish("OnUnload", None, || self.core.on_unload(force))? {
            UnloadAnswer::Ready => Ok(()),
            UnloadAnswer::Busy if force => {
                tracing::warn!("core answered Busy to a forced unload; returning S_OK");
                Ok(())
            }
            UnloadAnswer::Busy => Err(hr(Hresult::S_FALSE)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// IVssAsync

/// `IVssAsync` over a core [`AsyncOperation`] (returned by `ResyncLuns`).
#[implement(IVssAsync)]
pub struct ComAsync {
    op: Arc<dyn AsyncOperation>,
}

impl ComAsync {
    pub fn new(op: Arc<dyn AsyncOperation>) -> Self {
        Self { op }
    }
}

impl IVssAsync_Impl for ComAsync_Impl {
    fn Cancel(&self) -> windows_core::Result<()> {
        match self.op.cancel().map_err(hr)? {
            Hresult::S_OK => Ok(()),
            // Success codes (VSS_S_ASYNC_FINISHED / _CANCELLED) travel as the method's HRESULT.
            other => Err(hr(other)),
        }
    }

    fn Wait(&self, ms: u32) -> windows_core::Result<()> {
        let timeout = (ms != u32::MAX).then(|| Duration::from_millis(ms as u64));
        self.op.wait(timeout).map_err(hr)
    }

    fn QueryStatus(
        &self,
        phrresult: *mut HRESULT,
        preserved: *mut i32,
    ) -> windows_core::Result<()> {
        if phrresult.is_null() {
            return Err(hr(Hresult::E_INVALIDARG));
        }
        let (status, progress) = self.op.query_status().map_err(hr)?;
        write_out(phrresult, HRESULT(status.0 as i32), "pHrResult").map_err(|e| hr(e.hresult()))?;
        if !preserved.is_null() {
            write_out(preserved, progress, "pReserved").map_err(|e| hr(e.hresult()))?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Class factory

/// Builds the core for each new provider object.
pub type CoreFactory = dyn Fn() -> Result<Arc<dyn HardwareProvider>, Hresult> + Send + Sync;

/// The class factory registered with `CoRegisterClassObject`.
#[implement(IClassFactory)]
pub struct ProviderFactory {
    make: Arc<CoreFactory>,
    veto: Arc<VetoLog>,
    lifetime: Arc<Lifetime>,
}

impl ProviderFactory {
    pub fn new(make: Arc<CoreFactory>, veto: Arc<VetoLog>, lifetime: Arc<Lifetime>) -> Self {
        Self {
            make,
            veto,
            lifetime,
        }
    }

    pub fn into_interface(self) -> IClassFactory {
        self.into()
    }
}

impl IClassFactory_Impl for ProviderFactory_Impl {
    fn CreateInstance(
        &self,
        outer: Ref<IUnknown>,
        riid: *const GUID,
        ppv: *mut *mut c_void,
    ) -> windows_core::Result<()> {
        if ppv.is_null() || riid.is_null() {
            return Err(E_POINTER.into());
        }
        // SAFETY: ppv is a non-NULL [out] pointer.
        unsafe { ppv.write(ptr::null_mut()) };
        if outer.is_some() {
            return Err(CLASS_E_NOAGGREGATION.into());
        }
        let core = (self.make)().map_err(|h| {
            tracing::error!(hresult = %format_args!("0x{:08X}", h.0), "cannot build the provider core");
            hr(h)
        })?;
        let obj = ComProvider::with_lifetime(core, self.veto.clone(), &self.lifetime);
        let unk: IUnknown = obj.into();
        // SAFETY: riid and ppv are valid (checked above); query AddRefs on success.
        unsafe { unk.query(riid, ppv) }.ok()
    }

    fn LockServer(&self, lock: BOOL) -> windows_core::Result<()> {
        self.lifetime.lock_server(lock.as_bool());
        Ok(())
    }
}

/// The IIDs a client may ask the provider object for.
pub fn provider_iids() -> [GUID; 3] {
    [
        IVssHardwareSnapshotProviderEx::IID,
        IVssProviderCreateSnapshotSet::IID,
        IVssProviderNotifications::IID,
    ]
}

/// Keeps `IClassFactory` nameable for callers that build the factory themselves.
pub type ClassFactory = IClassFactory;
