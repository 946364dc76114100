//! Writing back `[in,out]` structures follows `docs/vss-contract.md` §5.2 and §5.3: only
//! the fields the core changed are rewritten; each new buffer is `CoTaskMemAlloc` memory; the old buffer is freed with
//! `CoTaskMemFree` only after every new buffer of the whole array has been allocated, so an
//! allocation failure leaves the caller's structures exactly as received. The top-level arrays
//! belong to VSS and are never freed; `m_rgInterconnects` is never touched.

use std::ffi::c_void;
use std::ptr;

use vss::LunInfo;
use vss::lun::{StorageIdentifier, latin1_bytes};
use windows::Win32::Storage::VirtualDiskService::{
    VDS_INTERCONNECT, VDS_INTERCONNECT_ADDRESS_TYPE, VDS_LUN_INFORMATION, VDS_STORAGE_BUS_TYPE,
    VDS_STORAGE_DEVICE_ID_DESCRIPTOR, VDS_STORAGE_IDENTIFIER, VDS_STORAGE_IDENTIFIER_CODE_SET,
    VDS_STORAGE_IDENTIFIER_TYPE,
};
use windows::Win32::System::Com::{CoTaskMemAlloc, CoTaskMemFree};
use windows_core::BOOL;

use super::{FfiError, MAX_BLOB, MAX_IDENTIFIERS, check_count};

/// One `CoTaskMemAlloc` block owned by Rust until handed to the caller.
pub(super) struct CoBuf(pub(super) *mut c_void);

impl CoBuf {
    pub(super) fn alloc(bytes: usize) -> Result<Self, FfiError> {
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
    pub(super) fn release<T>(self) -> *mut T {
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

/// A string field may be rewritten only if the new value is no longer than the old one
/// (`docs/vss-contract.md` §5.4).
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
        // SAFETY: the old value is CoTaskMem owned by the structure (`docs/vss-contract.md` §5.2).
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
/// `dst` points to `before.len()` structures as read by [`read_luns`](super::read_luns), owned
/// by the caller.
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
