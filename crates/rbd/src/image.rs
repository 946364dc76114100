//! An open image: I/O, size, snapshots, parent and children, diffs.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::ptr;
use std::sync::Arc;

use crate::ffi::{self, Api};
use crate::{Error, Pool, Result, check, cstr};

/// An open image (`rbd_image_t`), closed on drop.
pub struct Image {
    handle: ffi::Image,
    pub(crate) api: &'static Api,
    name: String,
    snap: Option<String>,
    pool: Arc<Pool>,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Image({})", self.spec())
    }
}

// SAFETY: librbd image handles are safe to use from several threads at once: I/O and
// management calls take the image's own locks. The handle is closed only in `Drop`.
unsafe impl Send for Image {}
// SAFETY: as above.
unsafe impl Sync for Image {}

/// A snapshot of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snap {
    pub id: u64,
    pub name: String,
    pub size: u64,
}

/// Where a clone comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parent {
    pub pool: String,
    pub namespace: String,
    pub image: String,
    pub snap: String,
}

/// One extent [`Image::diff`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiffExtent {
    pub offset: u64,
    pub len: u64,
    /// False when the extent was discarded (reads as zeros) since the snapshot.
    pub exists: bool,
}

fn c_name(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: a non-null pointer librbd returned for a name: NUL-terminated, live until the
    // matching cleanup call, which the callers make after this copy.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

impl Image {
    pub(crate) fn open(
        pool: &Arc<Pool>,
        name: &str,
        snap: Option<&str>,
        read_only: bool,
    ) -> Result<Image> {
        let api = pool.api;
        let cname = cstr(name)?;
        let csnap = snap.map(cstr).transpose()?;
        let mut handle = ptr::null_mut();
        let f = if read_only {
            api.rbd_open_read_only
        } else {
            api.rbd_open
        };
        // SAFETY: the pool's ioctx is live; the strings are NUL-terminated or null; `handle`
        // is a valid out-pointer.
        let r = unsafe {
            f(
                pool.raw(),
                cname.as_ptr(),
                &mut handle,
                csnap.as_ref().map_or(ptr::null(), |s| s.as_ptr()),
            )
        };
        check(r.into(), || match snap {
            Some(s) => format!("opening {}@{s}", pool.spec(name)),
            None => format!("opening {}", pool.spec(name)),
        })?;
        Ok(Image {
            handle,
            api,
            name: name.into(),
            snap: snap.map(str::to_string),
            pool: pool.clone(),
        })
    }

    pub(crate) fn raw(&self) -> ffi::Image {
        self.handle
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }
    /// `pool/namespace/image[@snap]`.
    pub fn spec(&self) -> String {
        match &self.snap {
            Some(s) => format!("{}@{s}", self.pool.spec(&self.name)),
            None => self.pool.spec(&self.name),
        }
    }
    fn op(&self, what: &str) -> impl FnOnce() -> String + '_ {
        let what = what.to_string();
        move || format!("{what} {}", self.spec())
    }

    /// Size in bytes.
    pub fn size(&self) -> Result<u64> {
        let mut size = 0u64;
        // SAFETY: the handle is open; `size` is a valid out-pointer.
        let r = unsafe { (self.api.rbd_get_size)(self.handle, &mut size) };
        check(r.into(), self.op("reading the size of"))?;
        Ok(size)
    }

    /// Object size in bytes.
    pub fn object_size(&self) -> Result<u64> {
        // SAFETY: an all-zero `rbd_image_info_t` is valid (integers and char arrays).
        let mut info: ffi::ImageInfo = unsafe { std::mem::zeroed() };
        // SAFETY: the handle is open; `info` has the C struct's layout and size.
        let r = unsafe {
            (self.api.rbd_stat)(
                self.handle,
                &mut info,
                std::mem::size_of::<ffi::ImageInfo>(),
            )
        };
        check(r.into(), self.op("reading"))?;
        Ok(info.obj_size)
    }

    /// The image's feature bits (`RBD_FEATURE_*`).
    pub fn features(&self) -> Result<u64> {
        let mut f = 0u64;
        // SAFETY: the handle is open; `f` is a valid out-pointer.
        let r = unsafe { (self.api.rbd_get_features)(self.handle, &mut f) };
        check(r.into(), self.op("reading the features of"))?;
        Ok(f)
    }

    /// Changes the size (librbd shrinks too: callers that must not shrink check first).
    pub fn resize(&self, size: u64) -> Result<()> {
        // SAFETY: the handle is open.
        let r = unsafe { (self.api.rbd_resize)(self.handle, size) };
        check(r.into(), self.op("resizing"))?;
        Ok(())
    }

    /// Copies the parent's data into this clone and cuts the link.
    pub fn flatten(&self) -> Result<()> {
        // SAFETY: the handle is open.
        let r = unsafe { (self.api.rbd_flatten)(self.handle) };
        check(r.into(), self.op("flattening"))?;
        Ok(())
    }

    /// Breaks the exclusive lock another client holds on this image (librbd blocklists that
    /// client, so a process that died holding it cannot write again); returns how many
    /// owners it had. A client that was killed keeps its lock until its watch on the image
    /// expires (30 s by default), and every write or snapshot of another waits until then.
    pub fn break_locks(&self) -> Result<usize> {
        const MAX: usize = 8;
        let mut mode: c_int = 0;
        let mut owners: [*mut c_char; MAX] = [ptr::null_mut(); MAX];
        let mut n = MAX;
        // SAFETY: the handle is open; `owners` has room for `n` pointers, which librbd fills
        // with strings it allocates (freed below by the matching cleanup).
        let r = unsafe {
            (self.api.rbd_lock_get_owners)(self.handle, &mut mode, owners.as_mut_ptr(), &mut n)
        };
        if r == -crate::ENOENT {
            return Ok(0); // not locked
        }
        check(r.into(), self.op("reading the lock owners"))?;
        let names: Vec<std::ffi::CString> = owners[..n]
            .iter()
            // SAFETY: librbd filled the first `n` entries with NUL-terminated strings.
            .map(|p| unsafe { CStr::from_ptr(*p) }.to_owned())
            .collect();
        // SAFETY: the `n` strings librbd allocated, freed once and not read after.
        unsafe { (self.api.rbd_lock_get_owners_cleanup)(owners.as_mut_ptr(), n) };
        for owner in &names {
            // SAFETY: the handle is open; the owner is NUL-terminated.
            let r = unsafe { (self.api.rbd_lock_break)(self.handle, mode, owner.as_ptr()) };
            match check(r.into(), self.op("breaking the lock")) {
                Err(e) if e.is_not_found() => {} // released meanwhile
                other => {
                    other?;
                }
            }
        }
        Ok(names.len())
    }

    /// Reads `buf.len()` bytes at `offset`; returns how many were read (fewer only at the end
    /// of the image).
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        // SAFETY: the handle is open; `buf` is valid for `buf.len()` bytes of writes for the
        // whole (synchronous) call.
        let r = unsafe {
            (self.api.rbd_read2)(
                self.handle,
                offset,
                buf.len(),
                buf.as_mut_ptr() as *mut c_char,
                0,
            )
        };
        Ok(check(r as i64, self.op("reading"))? as usize)
    }

    /// Writes `data` at `offset`.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        // SAFETY: the handle is open; `data` is valid for reads for the whole call.
        let r = unsafe {
            (self.api.rbd_write2)(
                self.handle,
                offset,
                data.len(),
                data.as_ptr() as *const c_char,
                0,
            )
        };
        let n = check(r as i64, self.op("writing"))? as usize;
        if n != data.len() {
            return Err(Error::Call {
                op: format!(
                    "writing {} (short write: {n} of {})",
                    self.spec(),
                    data.len()
                ),
                errno: crate::EIO,
            });
        }
        Ok(())
    }

    /// Deallocates a range: it reads as zeros afterwards.
    pub fn discard(&self, offset: u64, len: u64) -> Result<()> {
        // SAFETY: the handle is open.
        let r = unsafe { (self.api.rbd_discard)(self.handle, offset, len) };
        check(r.into(), self.op("discarding in"))?;
        Ok(())
    }

    /// Makes every completed write durable (librbd's cache written back).
    pub fn flush(&self) -> Result<()> {
        // SAFETY: the handle is open.
        let r = unsafe { (self.api.rbd_flush)(self.handle) };
        check(r.into(), self.op("flushing"))?;
        Ok(())
    }

    /// Takes snapshot `name`. `skip_quiesce`: do not ask the image's users to quiesce (the
    /// caller holds writes itself).
    pub fn snap_create(&self, name: &str, skip_quiesce: bool) -> Result<()> {
        let c = cstr(name)?;
        let flags = if skip_quiesce {
            ffi::SNAP_CREATE_SKIP_QUIESCE
        } else {
            0
        };
        // SAFETY: the handle is open; no progress callback.
        let r = unsafe {
            (self.api.rbd_snap_create2)(self.handle, c.as_ptr(), flags, None, ptr::null_mut())
        };
        check(r.into(), || {
            format!("creating snapshot {}@{name}", self.spec())
        })?;
        Ok(())
    }

    /// Removes snapshot `name` (`EBUSY` while protected or, for clone v1, with children).
    pub fn snap_remove(&self, name: &str) -> Result<()> {
        let c = cstr(name)?;
        // SAFETY: the handle is open; the name is NUL-terminated.
        let r = unsafe { (self.api.rbd_snap_remove)(self.handle, c.as_ptr()) };
        check(r.into(), || {
            format!("removing snapshot {}@{name}", self.spec())
        })?;
        Ok(())
    }

    /// Protects a snapshot from removal (clone v1 needs it; clone v2 does not).
    pub fn snap_protect(&self, name: &str) -> Result<()> {
        let c = cstr(name)?;
        // SAFETY: the handle is open; the name is NUL-terminated.
        let r = unsafe { (self.api.rbd_snap_protect)(self.handle, c.as_ptr()) };
        check(r.into(), || {
            format!("protecting snapshot {}@{name}", self.spec())
        })?;
        Ok(())
    }

    /// Lifts [`Image::snap_protect`].
    pub fn snap_unprotect(&self, name: &str) -> Result<()> {
        let c = cstr(name)?;
        // SAFETY: the handle is open; the name is NUL-terminated.
        let r = unsafe { (self.api.rbd_snap_unprotect)(self.handle, c.as_ptr()) };
        check(r.into(), || {
            format!("unprotecting snapshot {}@{name}", self.spec())
        })?;
        Ok(())
    }

    /// Whether snapshot `name` is protected.
    pub fn snap_is_protected(&self, name: &str) -> Result<bool> {
        let c = cstr(name)?;
        let mut p: c_int = 0;
        // SAFETY: the handle is open; `p` is a valid out-pointer.
        let r = unsafe { (self.api.rbd_snap_is_protected)(self.handle, c.as_ptr(), &mut p) };
        check(r.into(), || {
            format!("reading snapshot {}@{name}", self.spec())
        })?;
        Ok(p != 0)
    }

    /// Whether snapshot `name` exists.
    pub fn snap_exists(&self, name: &str) -> Result<bool> {
        let c = cstr(name)?;
        let mut e = false;
        // SAFETY: the handle is open; `e` is a valid out-pointer.
        let r = unsafe { (self.api.rbd_snap_exists)(self.handle, c.as_ptr(), &mut e) };
        check(r.into(), || {
            format!("looking up snapshot {}@{name}", self.spec())
        })?;
        Ok(e)
    }

    /// The image's user snapshots, oldest first.
    pub fn snaps(&self) -> Result<Vec<Snap>> {
        let mut cap: c_int = 16;
        loop {
            let mut v: Vec<ffi::SnapInfo> = Vec::with_capacity(cap as usize + 1);
            let mut n = cap;
            // SAFETY: `v` has room for `cap` entries plus the terminator librbd writes.
            let r = unsafe { (self.api.rbd_snap_list)(self.handle, v.as_mut_ptr(), &mut n) };
            if r == -34 {
                cap = n.max(cap * 2);
                continue;
            }
            let count = check(r.into(), self.op("listing the snapshots of"))? as usize;
            // SAFETY: librbd filled `count` entries and the terminator.
            unsafe { v.set_len(count + 1) };
            let out = v[..count]
                .iter()
                .map(|s| Snap {
                    id: s.id,
                    name: c_name(s.name),
                    size: s.size,
                })
                .collect();
            // SAFETY: frees the names librbd allocated in the filled entries, once.
            unsafe { (self.api.rbd_snap_list_end)(v.as_mut_ptr()) };
            return Ok(out);
        }
    }

    /// The parent of a clone, `None` for an image that is not one (or no longer is).
    pub fn parent(&self) -> Result<Option<Parent>> {
        // SAFETY: all-zero specs are valid inputs (null pointers, zero integers).
        let mut img: ffi::LinkedImageSpec = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut snap: ffi::SnapSpec = unsafe { std::mem::zeroed() };
        // SAFETY: the handle is open; both are valid out-pointers.
        let r = unsafe { (self.api.rbd_get_parent)(self.handle, &mut img, &mut snap) };
        if r == -crate::ENOENT {
            return Ok(None);
        }
        check(r.into(), self.op("reading the parent of"))?;
        let p = Parent {
            pool: c_name(img.pool_name),
            namespace: c_name(img.pool_namespace),
            image: c_name(img.image_name),
            snap: c_name(snap.name),
        };
        // SAFETY: both were filled by librbd and are freed once.
        unsafe {
            (self.api.rbd_linked_image_spec_cleanup)(&mut img);
            (self.api.rbd_snap_spec_cleanup)(&mut snap);
        }
        Ok(Some(p))
    }

    /// The clones of the snapshot this image is open at (of every snapshot when open at its
    /// head), as `namespace/name` pairs, including clones moved to the trash.
    pub fn children(&self) -> Result<Vec<(String, String)>> {
        let mut cap = 16usize;
        loop {
            let mut v: Vec<ffi::LinkedImageSpec> = Vec::with_capacity(cap);
            let mut n = cap;
            // SAFETY: `v` has room for `n` entries.
            let r = unsafe { (self.api.rbd_list_children3)(self.handle, v.as_mut_ptr(), &mut n) };
            if r == -34 {
                cap = n.max(cap * 2);
                continue;
            }
            check(r.into(), self.op("listing the clones of"))?;
            // SAFETY: librbd filled `n` entries.
            unsafe { v.set_len(n) };
            let out = v
                .iter()
                .map(|c| (c_name(c.pool_namespace), c_name(c.image_name)))
                .collect();
            // SAFETY: the filled entries, freed once.
            unsafe { (self.api.rbd_linked_image_spec_list_cleanup)(v.as_mut_ptr(), n) };
            return Ok(out);
        }
    }

    /// Walks the extents that differ between snapshot `from` (`None`: the image was empty)
    /// and this image (at its head, or at the snapshot it is open at), in `[offset,
    /// offset+len)`. `include_parent`: a clone's parent data counts; `whole_object`: report
    /// whole objects (cheap with fast-diff). `each` returns false to stop: the walk then
    /// ends with an error for which [`Error::is_cancelled`] holds.
    pub fn diff(
        &self,
        from: Option<&str>,
        offset: u64,
        len: u64,
        include_parent: bool,
        whole_object: bool,
        mut each: impl FnMut(DiffExtent) -> bool,
    ) -> Result<()> {
        struct State<'a> {
            each: &'a mut dyn FnMut(DiffExtent) -> bool,
            panic: Option<Box<dyn std::any::Any + Send>>,
            /// librbd may still report the rest of a batch after a callback said stop.
            stopped: bool,
        }
        unsafe extern "C" fn trampoline(
            off: u64,
            len: usize,
            exists: c_int,
            arg: *mut c_void,
        ) -> c_int {
            // SAFETY: `arg` is the `State` below, alive and not otherwise borrowed for the
            // whole `rbd_diff_iterate2` call, which calls this on its own thread one extent
            // at a time.
            let st = unsafe { &mut *(arg as *mut State<'_>) };
            if st.stopped {
                return -crate::ECANCELED;
            }
            let e = DiffExtent {
                offset: off,
                len: len as u64,
                exists: exists != 0,
            };
            st.stopped = true;
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (st.each)(e))) {
                Ok(true) => {
                    st.stopped = false;
                    0
                }
                Ok(false) => -crate::ECANCELED,
                Err(p) => {
                    st.panic = Some(p);
                    -crate::ECANCELED
                }
            }
        }
        let cfrom = from.map(cstr).transpose()?;
        let mut st = State {
            each: &mut each,
            panic: None,
            stopped: false,
        };
        // SAFETY: the handle is open; `trampoline` matches the callback type; `st` outlives
        // the call (librbd does not keep the pointer after returning).
        let r = unsafe {
            (self.api.rbd_diff_iterate2)(
                self.handle,
                cfrom.as_ref().map_or(ptr::null(), |s| s.as_ptr()),
                offset,
                len,
                include_parent as u8,
                whole_object as u8,
                trampoline,
                &mut st as *mut State<'_> as *mut c_void,
            )
        };
        if let Some(p) = st.panic.take() {
            std::panic::resume_unwind(p);
        }
        check(r.into(), self.op("comparing"))?;
        Ok(())
    }

    /// Bytes of data this image itself holds, in whole objects (a clone's parent data does
    /// not count): what `rbd du` reports as used, cheap with fast-diff.
    pub fn used_bytes(&self) -> Result<u64> {
        let size = self.size()?;
        let mut used = 0u64;
        self.diff(None, 0, size, false, true, |e| {
            if e.exists {
                used += e.len;
            }
            true
        })?;
        Ok(used.min(size))
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        // SAFETY: the handle is open; every `Aio` borrows this image, so none is in flight;
        // closed once.
        let r = unsafe { (self.api.rbd_close)(self.handle) };
        if r < 0 {
            tracing::warn!(image = %self.spec(), errno = -r, "closing the image failed");
        }
    }
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        match e.errno() {
            Some(n) => std::io::Error::new(std::io::Error::from_raw_os_error(n).kind(), e),
            None => std::io::Error::other(e),
        }
    }
}
