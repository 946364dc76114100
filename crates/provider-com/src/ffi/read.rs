//! Reading: `VDS_LUN_INFORMATION` arrays, device-name arrays and strings are deep-copied into
//! [`vss::LunInfo`] / `String` with every count and length checked against a fixed limit before
//! anything is allocated (the counts come from the caller).

use vss::LunInfo;
use vss::lun::{BusType, CodeSet, IdentifierType, Interconnect, StorageIdentifier, latin1};
use windows::Win32::Storage::VirtualDiskService::VDS_LUN_INFORMATION;

use crate::ids::to_uuid;

use super::{
    FfiError, MAX_BLOB, MAX_IDENTIFIERS, MAX_INTERCONNECTS, MAX_LUNS, MAX_STRING, check_count,
};

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
