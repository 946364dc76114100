//! The fixed identities of the provider: VSS provider id, COM class id, AppID, names.
#![forbid(unsafe_code)]

use windows_core::GUID;

/// The VSS provider id: permanent across upgrades (`docs/vss-contract.md` §9.1).
pub const PROVIDER_ID: GUID = GUID::from_u128(0x90eb7606_45ed_4b0b_aaee_08f38ce193ea);

/// The COM class id VSS instantiates (`CoCreateInstance(CLSCTX_LOCAL_SERVER)`).
pub const CLSID_PROVIDER: GUID = GUID::from_u128(0x70ba5367_904b_48d4_be3d_839c33665d43);

/// The COM AppID that carries the launch/access permissions and the service name.
pub const APPID: GUID = GUID::from_u128(0x4c423050_3650_43c8_a33b_e467ddf8e619);

/// Namespace from which the per-build version id is derived.
const VERSION_NAMESPACE: GUID = GUID::from_u128(0x44ce9503_d81c_47e5_8c52_9bd36328fc9c);

/// Display name registered with VSS and used for the event source.
pub const PROVIDER_NAME: &str = "shadowlun VSS hardware provider";

/// The Windows service name (also the AppID's `LocalService`).
pub const SERVICE_NAME: &str = "ShadowlunProvider";

/// The Application event-log source.
pub const EVENT_SOURCE: &str = "shadowlun";

/// The version string registered with VSS.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The VSS version id of this build: a name-based (v5) UUID of the version string, so every
/// release has its own id and rebuilding the same version gives the same one.
pub fn version_id() -> GUID {
    let ns = uuid::Uuid::from_u128(VERSION_NAMESPACE.to_u128());
    GUID::from_u128(uuid::Uuid::new_v5(&ns, VERSION.as_bytes()).as_u128())
}

/// `{xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx}` in upper case, the registry's spelling.
pub fn braced(g: &GUID) -> String {
    format!("{{{}}}", uuid::Uuid::from_u128(g.to_u128()).hyphenated()).to_uppercase()
}

/// GUID (COM) to UUID (core).
pub fn to_uuid(g: &GUID) -> uuid::Uuid {
    uuid::Uuid::from_u128(g.to_u128())
}

/// UUID (core) to GUID (COM).
pub fn to_guid(u: &uuid::Uuid) -> GUID {
    GUID::from_u128(u.as_u128())
}
