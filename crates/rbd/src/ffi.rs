//! The C functions of librados 2 and librbd 1 (Ceph 16.2 "pacific" headers), looked up at run
//! time: nothing here is linked, so the project builds and runs without Ceph installed.
//!
//! Every pointer type is opaque (`*mut c_void`) except the few structs librbd fills in, which
//! mirror the header's layout.

use std::ffi::{c_char, c_int, c_void};
use std::sync::OnceLock;

use libloading::Library;

use crate::Error;

pub(crate) type Rados = *mut c_void;
pub(crate) type IoCtx = *mut c_void;
pub(crate) type Image = *mut c_void;
pub(crate) type Options = *mut c_void;
pub(crate) type Completion = *mut c_void;
pub(crate) type Callback = Option<unsafe extern "C" fn(Completion, *mut c_void)>;
pub(crate) type Progress = Option<unsafe extern "C" fn(u64, u64, *mut c_void) -> c_int>;
pub(crate) type DiffCallback = unsafe extern "C" fn(u64, usize, c_int, *mut c_void) -> c_int;

/// `rbd_image_info_t`.
#[repr(C)]
pub(crate) struct ImageInfo {
    pub size: u64,
    pub obj_size: u64,
    pub num_objs: u64,
    pub order: c_int,
    pub block_name_prefix: [c_char; 24],
    pub parent_pool: i64,
    pub parent_name: [c_char; 96],
}

/// `rbd_image_spec_t`.
#[repr(C)]
pub(crate) struct ImageSpec {
    pub id: *mut c_char,
    pub name: *mut c_char,
}

/// `rbd_linked_image_spec_t`.
#[repr(C)]
pub(crate) struct LinkedImageSpec {
    pub pool_id: i64,
    pub pool_name: *mut c_char,
    pub pool_namespace: *mut c_char,
    pub image_id: *mut c_char,
    pub image_name: *mut c_char,
    pub trash: bool,
}

/// `rbd_snap_spec_t`.
#[repr(C)]
pub(crate) struct SnapSpec {
    pub id: u64,
    pub namespace_type: c_int,
    pub name: *mut c_char,
}

/// `rbd_snap_info_t`.
#[repr(C)]
pub(crate) struct SnapInfo {
    pub id: u64,
    pub size: u64,
    pub name: *const c_char,
}

/// `struct rados_cluster_stat_t`.
#[repr(C)]
#[derive(Default)]
pub(crate) struct ClusterStat {
    pub kb: u64,
    pub kb_used: u64,
    pub kb_avail: u64,
    pub num_objects: u64,
}

pub(crate) const IMAGE_OPTION_FORMAT: c_int = 0;
pub(crate) const IMAGE_OPTION_FEATURES: c_int = 1;
pub(crate) const IMAGE_OPTION_ORDER: c_int = 2;
pub(crate) const IMAGE_OPTION_CLONE_FORMAT: c_int = 12;
pub(crate) const SNAP_CREATE_SKIP_QUIESCE: u32 = 1;

macro_rules! api {
    ($($name:ident: fn($($arg:ty),*) $(-> $ret:ty)?;)+) => {
        /// The loaded libraries and every function this crate calls.
        pub(crate) struct Api {
            $(pub $name: unsafe extern "C" fn($($arg),*) $(-> $ret)?,)+
            _rbd: Library,
            _rados: Library,
        }

        impl Api {
            fn load() -> Result<Api, String> {
                // SAFETY: loading runs the libraries' initialisers; librados and librbd are
                // the system's Ceph client libraries, whose initialisers only set up their
                // own globals. They stay loaded for the life of the process (`API` is never
                // dropped): unloading Ceph's libraries while their threads run would crash.
                let rados = unsafe { Library::new("librados.so.2") }
                    .map_err(|e| format!("loading librados.so.2: {e}"))?;
                // SAFETY: as above.
                let rbd = unsafe { Library::new("librbd.so.1") }
                    .map_err(|e| format!("loading librbd.so.1: {e}"))?;
                Ok(Api {
                    $($name: {
                        let sym = concat!(stringify!($name), "\0").as_bytes();
                        // SAFETY: the type is the function's signature in the pacific
                        // headers (librados.h, librbd.h), written out above; the pointer is
                        // copied out of the symbol and the library it points into is kept
                        // loaded with it in this struct.
                        unsafe {
                            match rbd.get::<unsafe extern "C" fn($($arg),*) $(-> $ret)?>(sym) {
                                Ok(f) => *f,
                                Err(_) => *rados
                                    .get::<unsafe extern "C" fn($($arg),*) $(-> $ret)?>(sym)
                                    .map_err(|e| format!("{}: {e}", stringify!($name)))?,
                            }
                        }
                    },)+
                    _rbd: rbd,
                    _rados: rados,
                })
            }
        }
    };
}

api! {
    rados_create: fn(*mut Rados, *const c_char) -> c_int;
    rados_conf_read_file: fn(Rados, *const c_char) -> c_int;
    rados_conf_parse_env: fn(Rados, *const c_char) -> c_int;
    rados_conf_set: fn(Rados, *const c_char, *const c_char) -> c_int;
    rados_connect: fn(Rados) -> c_int;
    rados_shutdown: fn(Rados);
    rados_cluster_stat: fn(Rados, *mut ClusterStat) -> c_int;
    rados_mon_command: fn(Rados, *mut *const c_char, usize, *const c_char, usize, *mut *mut c_char, *mut usize, *mut *mut c_char, *mut usize) -> c_int;
    rados_buffer_free: fn(*mut c_char);
    rados_ioctx_create: fn(Rados, *const c_char, *mut IoCtx) -> c_int;
    rados_ioctx_destroy: fn(IoCtx);
    rados_ioctx_set_namespace: fn(IoCtx, *const c_char);

    rbd_namespace_create: fn(IoCtx, *const c_char) -> c_int;
    rbd_namespace_exists: fn(IoCtx, *const c_char, *mut bool) -> c_int;
    rbd_image_options_create: fn(*mut Options);
    rbd_image_options_destroy: fn(Options);
    rbd_image_options_set_uint64: fn(Options, c_int, u64) -> c_int;
    rbd_create4: fn(IoCtx, *const c_char, u64, Options) -> c_int;
    rbd_clone3: fn(IoCtx, *const c_char, *const c_char, IoCtx, *const c_char, Options) -> c_int;
    rbd_remove: fn(IoCtx, *const c_char) -> c_int;
    rbd_rename: fn(IoCtx, *const c_char, *const c_char) -> c_int;
    rbd_list2: fn(IoCtx, *mut ImageSpec, *mut usize) -> c_int;
    rbd_image_spec_list_cleanup: fn(*mut ImageSpec, usize);

    rbd_open: fn(IoCtx, *const c_char, *mut Image, *const c_char) -> c_int;
    rbd_open_read_only: fn(IoCtx, *const c_char, *mut Image, *const c_char) -> c_int;
    rbd_close: fn(Image) -> c_int;
    rbd_stat: fn(Image, *mut ImageInfo, usize) -> c_int;
    rbd_get_size: fn(Image, *mut u64) -> c_int;
    rbd_get_features: fn(Image, *mut u64) -> c_int;
    rbd_resize: fn(Image, u64) -> c_int;
    rbd_flatten: fn(Image) -> c_int;
    rbd_lock_get_owners: fn(Image, *mut c_int, *mut *mut c_char, *mut usize) -> c_int;
    rbd_lock_get_owners_cleanup: fn(*mut *mut c_char, usize);
    rbd_lock_break: fn(Image, c_int, *const c_char) -> c_int;
    rbd_get_parent: fn(Image, *mut LinkedImageSpec, *mut SnapSpec) -> c_int;
    rbd_linked_image_spec_cleanup: fn(*mut LinkedImageSpec);
    rbd_snap_spec_cleanup: fn(*mut SnapSpec);
    rbd_list_children3: fn(Image, *mut LinkedImageSpec, *mut usize) -> c_int;
    rbd_linked_image_spec_list_cleanup: fn(*mut LinkedImageSpec, usize);

    rbd_snap_create2: fn(Image, *const c_char, u32, Progress, *mut c_void) -> c_int;
    rbd_snap_remove: fn(Image, *const c_char) -> c_int;
    rbd_snap_protect: fn(Image, *const c_char) -> c_int;
    rbd_snap_unprotect: fn(Image, *const c_char) -> c_int;
    rbd_snap_is_protected: fn(Image, *const c_char, *mut c_int) -> c_int;
    rbd_snap_exists: fn(Image, *const c_char, *mut bool) -> c_int;
    rbd_snap_list: fn(Image, *mut SnapInfo, *mut c_int) -> c_int;
    rbd_snap_list_end: fn(*mut SnapInfo);
    rbd_diff_iterate2: fn(Image, *const c_char, u64, u64, u8, u8, DiffCallback, *mut c_void) -> c_int;

    rbd_read2: fn(Image, u64, usize, *mut c_char, c_int) -> isize;
    rbd_write2: fn(Image, u64, usize, *const c_char, c_int) -> isize;
    rbd_discard: fn(Image, u64, u64) -> c_int;
    rbd_flush: fn(Image) -> c_int;

    rbd_aio_create_completion: fn(*mut c_void, Callback, *mut Completion) -> c_int;
    rbd_aio_read2: fn(Image, u64, usize, *mut c_char, Completion, c_int) -> c_int;
    rbd_aio_write2: fn(Image, u64, usize, *const c_char, Completion, c_int) -> c_int;
    rbd_aio_discard: fn(Image, u64, u64, Completion) -> c_int;
    rbd_aio_flush: fn(Image, Completion) -> c_int;
    rbd_aio_wait_for_complete: fn(Completion) -> c_int;
    rbd_aio_get_return_value: fn(Completion) -> isize;
    rbd_aio_release: fn(Completion);
}

static API: OnceLock<Result<Api, String>> = OnceLock::new();

/// The libraries, loaded on first use.
pub(crate) fn api() -> Result<&'static Api, Error> {
    API.get_or_init(Api::load)
        .as_ref()
        .map_err(|e| Error::NotInstalled(e.clone()))
}
