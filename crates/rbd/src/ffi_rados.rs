//! The C functions of librados 2 for RADOS objects (Ceph 16.2 "pacific" `librados.h`): compound
//! write and read operations with omap and guards, advisory locks, watch/notify and fencing.
//! Looked up at run time like the rest of [`crate::ffi`]; kept apart so each table stays one job.

use std::ffi::{c_char, c_int, c_void};
use std::sync::OnceLock;

use libloading::Library;

use crate::Error;
use crate::ffi::{IoCtx, Rados};

pub(crate) type WriteOp = *mut c_void;
pub(crate) type ReadOp = *mut c_void;
pub(crate) type OmapIter = *mut c_void;
/// `rados_watchcb2_t`: `(arg, notify_id, handle, notifier_id, data, data_len)`.
pub(crate) type WatchCb =
    Option<unsafe extern "C" fn(*mut c_void, u64, u64, u64, *mut c_void, usize)>;
/// `rados_watcherrcb_t`: `(arg, cookie, err)`.
pub(crate) type WatchErrCb = Option<unsafe extern "C" fn(*mut c_void, u64, c_int)>;

/// `struct timeval` (Linux, 64-bit `time_t` and `suseconds_t`).
#[repr(C)]
pub(crate) struct Timeval {
    pub tv_sec: i64,
    pub tv_usec: i64,
}

/// `LIBRADOS_CMPXATTR_OP_EQ`: the comparison of `rados_write_op_omap_cmp` and
/// `rados_write_op_cmpxattr`.
pub(crate) const CMP_EQ: u8 = 1;
/// `LIBRADOS_CREATE_EXCLUSIVE`.
pub(crate) const CREATE_EXCLUSIVE: c_int = 1;
/// `LIBRADOS_LOCK_FLAG_MUST_RENEW`: renew a lock this client holds, fail with `ENOENT` if it
/// does not (any more).
pub(crate) const LOCK_FLAG_MUST_RENEW: u8 = 1 << 1;

macro_rules! rados_api {
    ($($name:ident: fn($($arg:ty),*) $(-> $ret:ty)?;)+) => {
        /// librados' object functions, and the blocklist call under whichever name this
        /// librados has.
        pub(crate) struct RadosApi {
            $(pub $name: unsafe extern "C" fn($($arg),*) $(-> $ret)?,)+
            /// `rados_blocklist_add` (pacific), or `rados_blacklist_add` where it is missing.
            pub blocklist_add: unsafe extern "C" fn(Rados, *mut c_char, u32) -> c_int,
            _rados: Library,
        }

        impl RadosApi {
            fn load() -> Result<RadosApi, String> {
                // SAFETY: the same library `ffi::Api` loads (a second reference to it); its
                // initialisers only set up its own globals, and it stays loaded for the life
                // of the process (`RADOS_API` is never dropped).
                let rados = unsafe { Library::new("librados.so.2") }
                    .map_err(|e| format!("loading librados.so.2: {e}"))?;
                // SAFETY: the type is the function's signature in pacific's librados.h; the
                // pointer is copied out of the symbol and its library is kept in this struct.
                let blocklist_add = unsafe {
                    type F = unsafe extern "C" fn(Rados, *mut c_char, u32) -> c_int;
                    match rados.get::<F>(b"rados_blocklist_add\0") {
                        Ok(f) => *f,
                        Err(_) => *rados
                            .get::<F>(b"rados_blacklist_add\0")
                            .map_err(|e| format!("rados_blocklist_add: {e}"))?,
                    }
                };
                Ok(RadosApi {
                    $($name: {
                        let sym = concat!(stringify!($name), "\0").as_bytes();
                        // SAFETY: as for `blocklist_add` above.
                        unsafe {
                            *rados
                                .get::<unsafe extern "C" fn($($arg),*) $(-> $ret)?>(sym)
                                .map_err(|e| format!("{}: {e}", stringify!($name)))?
                        }
                    },)+
                    blocklist_add,
                    _rados: rados,
                })
            }
        }
    };
}

rados_api! {
    rados_create_write_op: fn() -> WriteOp;
    rados_release_write_op: fn(WriteOp);
    rados_write_op_create: fn(WriteOp, c_int, *const c_char);
    rados_write_op_omap_set: fn(WriteOp, *const *const c_char, *const *const c_char, *const usize, usize);
    rados_write_op_omap_rm_keys: fn(WriteOp, *const *const c_char, usize);
    rados_write_op_omap_cmp: fn(WriteOp, *const c_char, u8, *const c_char, usize, *mut c_int);
    rados_write_op_cmpxattr: fn(WriteOp, *const c_char, u8, *const c_char, usize);
    rados_write_op_setxattr: fn(WriteOp, *const c_char, *const c_char, usize);
    rados_write_op_operate: fn(WriteOp, IoCtx, *const c_char, *mut i64, c_int) -> c_int;

    rados_create_read_op: fn() -> ReadOp;
    rados_release_read_op: fn(ReadOp);
    rados_read_op_omap_cmp: fn(ReadOp, *const c_char, u8, *const c_char, usize, *mut c_int);
    rados_read_op_omap_get_vals2: fn(ReadOp, *const c_char, *const c_char, u64, *mut OmapIter, *mut u8, *mut c_int);
    rados_read_op_omap_get_vals_by_keys2: fn(ReadOp, *const *const c_char, usize, *const usize, *mut OmapIter, *mut c_int);
    rados_read_op_operate: fn(ReadOp, IoCtx, *const c_char, c_int) -> c_int;
    rados_omap_get_next2: fn(OmapIter, *mut *mut c_char, *mut *mut c_char, *mut usize, *mut usize) -> c_int;
    rados_omap_get_end: fn(OmapIter);
    rados_remove: fn(IoCtx, *const c_char) -> c_int;

    rados_lock_exclusive: fn(IoCtx, *const c_char, *const c_char, *const c_char, *const c_char, *mut Timeval, u8) -> c_int;
    rados_lock_shared: fn(IoCtx, *const c_char, *const c_char, *const c_char, *const c_char, *const c_char, *mut Timeval, u8) -> c_int;
    rados_unlock: fn(IoCtx, *const c_char, *const c_char, *const c_char) -> c_int;
    rados_list_lockers: fn(IoCtx, *const c_char, *const c_char, *mut c_int, *mut c_char, *mut usize, *mut c_char, *mut usize, *mut c_char, *mut usize, *mut c_char, *mut usize) -> isize;
    rados_break_lock: fn(IoCtx, *const c_char, *const c_char, *const c_char, *const c_char) -> c_int;

    rados_watch3: fn(IoCtx, *const c_char, *mut u64, WatchCb, WatchErrCb, u32, *mut c_void) -> c_int;
    rados_unwatch2: fn(IoCtx, u64) -> c_int;
    rados_watch_check: fn(IoCtx, u64) -> c_int;
    rados_watch_flush: fn(Rados) -> c_int;
    rados_notify2: fn(IoCtx, *const c_char, *const c_char, c_int, u64, *mut *mut c_char, *mut usize) -> c_int;
    rados_notify_ack: fn(IoCtx, *const c_char, u64, u64, *const c_char, c_int) -> c_int;

    rados_getaddrs: fn(Rados, *mut *mut c_char) -> c_int;
    rados_get_instance_id: fn(Rados) -> u64;
    rados_wait_for_latest_osdmap: fn(Rados) -> c_int;
    rados_buffer_free: fn(*mut c_char);
}

static RADOS_API: OnceLock<Result<RadosApi, String>> = OnceLock::new();

/// librados' object functions, loaded on first use.
pub(crate) fn rados_api() -> Result<&'static RadosApi, Error> {
    RADOS_API
        .get_or_init(RadosApi::load)
        .as_ref()
        .map_err(|e| Error::NotInstalled(e.clone()))
}
