//! RADOS objects in a [`Pool`]: compound write operations with omap changes and guards
//! ([`WriteOp`], [`Pool::operate`]), omap reads, advisory locks with an expiry, watch/notify
//! ([`Watch`]) and fencing of another client ([`Cluster::blocklist`]).
//!
//! Every call is an OSD or monitor operation, bounded by the cluster's op timeouts
//! ([`crate::ClusterConfig::timeout`]); a notify by its own timeout.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::ptr;
use std::sync::Arc;
use std::time::Duration;

use crate::ffi_rados::{self, RadosApi, Timeval};
use crate::{Cluster, Error, Pool, Result, check, cstr};

/// An omap key and its value.
pub type OmapEntry = (String, Vec<u8>);

/// One change or guard of a [`WriteOp`].
#[derive(Debug, Clone)]
enum Step {
    Create {
        exclusive: bool,
    },
    OmapCmpEq {
        key: CString,
        value: Vec<u8>,
    },
    CmpXattrEq {
        name: CString,
        value: Vec<u8>,
    },
    OmapSet {
        keys: Vec<CString>,
        values: Vec<Vec<u8>>,
    },
    OmapRm {
        keys: Vec<CString>,
    },
    SetXattr {
        name: CString,
        value: Vec<u8>,
    },
}

/// A compound write operation on one object: the OSD applies all of its steps or none, in
/// order; a guard that does not hold fails the whole operation with `ECANCELED`
/// ([`Error::is_guard_failed`]) and changes nothing.
#[derive(Debug, Clone, Default)]
pub struct WriteOp {
    steps: Vec<Step>,
}

impl WriteOp {
    pub fn new() -> WriteOp {
        WriteOp::default()
    }
    /// Creates the object; `exclusive`: fail with `EEXIST` if it exists.
    pub fn create(mut self, exclusive: bool) -> Self {
        self.steps.push(Step::Create { exclusive });
        self
    }
    /// Guard: omap key `key` exists and holds exactly `value`.
    pub fn omap_cmp_eq(mut self, key: &str, value: &[u8]) -> Result<Self> {
        self.steps.push(Step::OmapCmpEq {
            key: cstr(key)?,
            value: value.to_vec(),
        });
        Ok(self)
    }
    /// Guard: extended attribute `name` holds exactly `value`.
    pub fn cmpxattr_eq(mut self, name: &str, value: &[u8]) -> Result<Self> {
        self.steps.push(Step::CmpXattrEq {
            name: cstr(name)?,
            value: value.to_vec(),
        });
        Ok(self)
    }
    /// Sets omap keys to values.
    pub fn omap_set<'a>(
        mut self,
        entries: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<Self> {
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        for (k, v) in entries {
            keys.push(cstr(k)?);
            values.push(v.to_vec());
        }
        if !keys.is_empty() {
            self.steps.push(Step::OmapSet { keys, values });
        }
        Ok(self)
    }
    /// Removes omap keys (absent ones are no error).
    pub fn omap_rm<'a>(mut self, keys: impl IntoIterator<Item = &'a str>) -> Result<Self> {
        let keys = keys.into_iter().map(cstr).collect::<Result<Vec<_>>>()?;
        if !keys.is_empty() {
            self.steps.push(Step::OmapRm { keys });
        }
        Ok(self)
    }
    /// Sets extended attribute `name`.
    pub fn setxattr(mut self, name: &str, value: &[u8]) -> Result<Self> {
        self.steps.push(Step::SetXattr {
            name: cstr(name)?,
            value: value.to_vec(),
        });
        Ok(self)
    }
}

/// A `rados_write_op_t`, released on drop.
struct RawWriteOp(ffi_rados::WriteOp, &'static RadosApi);

impl Drop for RawWriteOp {
    fn drop(&mut self) {
        // SAFETY: created by rados_create_write_op, released once.
        unsafe { (self.1.rados_release_write_op)(self.0) };
    }
}

/// A `rados_read_op_t`, released on drop.
struct RawReadOp(ffi_rados::ReadOp, &'static RadosApi);

impl Drop for RawReadOp {
    fn drop(&mut self) {
        // SAFETY: created by rados_create_read_op, released once.
        unsafe { (self.1.rados_release_read_op)(self.0) };
    }
}

/// Holders of an advisory lock ([`Pool::lockers`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lockers {
    pub exclusive: bool,
    pub tag: String,
    pub holders: Vec<Locker>,
}

/// One holder of a lock: its RADOS client (`client.4123`), the cookie it locked with and its
/// address (what [`Cluster::blocklist`] takes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locker {
    pub client: String,
    pub cookie: String,
    pub addr: String,
}

/// What a [`Watch`] reports, on a librados thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A notify on the object (already acknowledged): the notifier's client id and payload.
    Notify { notifier: u64, payload: Vec<u8> },
    /// The watch broke (errno, e.g. `ENOTCONN` after the OSD timed it out): notifies may
    /// have been missed; make a new watch.
    Error(i32),
}

type WatchFn = dyn Fn(WatchEvent) + Send + Sync;

/// What librados' watch callbacks reach through their `void *`.
struct WatchCtx {
    api: &'static RadosApi,
    io: crate::ffi::IoCtx,
    oid: CString,
    f: Box<WatchFn>,
}

/// A watch on an object, unregistered on drop (after which no callback runs).
pub struct Watch {
    pool: Arc<Pool>,
    cookie: u64,
    ctx: *mut WatchCtx,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Watch({:?}, {})", self.pool, self.cookie)
    }
}

// SAFETY: the context is only read (by librados' callback threads and `Drop`), and freed in
// `Drop` after unwatch and a watch flush, when no callback can run any more.
unsafe impl Send for Watch {}
// SAFETY: as above; `check` only reads the cookie.
unsafe impl Sync for Watch {}

unsafe extern "C" fn watch_cb(
    arg: *mut c_void,
    notify_id: u64,
    cookie: u64,
    notifier: u64,
    data: *mut c_void,
    len: usize,
) {
    // SAFETY: `arg` is the `WatchCtx` `Pool::watch` registered, freed only after the watch
    // is gone and flushed.
    let ctx = unsafe { &*(arg as *const WatchCtx) };
    let payload = if data.is_null() || len == 0 {
        Vec::new()
    } else {
        // SAFETY: librados passes `len` bytes at `data`, valid during the callback.
        unsafe { std::slice::from_raw_parts(data as *const u8, len) }.to_vec()
    };
    // SAFETY: the ioctx outlives the watch (the `Watch` holds its pool); the notify is
    // acknowledged with an empty reply so the notifier does not wait for its timeout.
    let r = unsafe {
        (ctx.api.rados_notify_ack)(ctx.io, ctx.oid.as_ptr(), notify_id, cookie, ptr::null(), 0)
    };
    if r < 0 {
        tracing::debug!(errno = -r, "acknowledging a notify failed");
    }
    (ctx.f)(WatchEvent::Notify { notifier, payload });
}

unsafe extern "C" fn watch_err_cb(arg: *mut c_void, _cookie: u64, err: c_int) {
    // SAFETY: as in `watch_cb`.
    let ctx = unsafe { &*(arg as *const WatchCtx) };
    (ctx.f)(WatchEvent::Error(err.abs()));
}

impl Watch {
    /// How long ago the OSD last confirmed the watch, or the error that broke it.
    pub fn check(&self) -> Result<Duration> {
        let api = ffi_rados::rados_api()?;
        // SAFETY: the ioctx is live (held by `self.pool`); the cookie is this watch's.
        let r = unsafe { (api.rados_watch_check)(self.pool.raw(), self.cookie) };
        check(r.into(), || "checking a watch".into()).map(|ms| Duration::from_millis(ms as u64))
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Ok(api) = ffi_rados::rados_api() {
            // SAFETY: the ioctx is live; the cookie is this watch's, unregistered once.
            let r = unsafe { (api.rados_unwatch2)(self.pool.raw(), self.cookie) };
            if r < 0 {
                tracing::debug!(errno = -r, "unwatching failed");
            }
            // SAFETY: the cluster is live; this waits for callbacks in flight to return.
            unsafe { (api.rados_watch_flush)(self.pool.cluster().raw()) };
        }
        // SAFETY: made by `Box::into_raw` in `Pool::watch`; no callback can reach it now.
        drop(unsafe { Box::from_raw(self.ctx) });
    }
}

fn timeval(d: Option<Duration>) -> Option<Timeval> {
    d.map(|d| Timeval {
        tv_sec: d.as_secs() as i64,
        tv_usec: d.subsec_micros().into(),
    })
}

/// Splits a buffer of NUL-terminated strings.
fn split_nul(buf: &[u8], len: usize) -> Vec<String> {
    buf[..len.min(buf.len())]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

impl Pool {
    /// Applies `op` to object `oid` atomically.
    pub fn operate(&self, oid: &str, op: &WriteOp) -> Result<()> {
        let api = ffi_rados::rados_api()?;
        let o = cstr(oid)?;
        // SAFETY: no arguments; the op is released by `RawWriteOp`.
        let raw = RawWriteOp(unsafe { (api.rados_create_write_op)() }, api);
        let guards = op
            .steps
            .iter()
            .filter(|s| matches!(s, Step::OmapCmpEq { .. }))
            .count();
        // Result slots of the omap guards, written by librados when the op completes: made
        // once, so their addresses hold until `operate` returns.
        let mut prvals: Vec<c_int> = vec![0; guards];
        let mut slot = prvals.as_mut_ptr();
        for step in &op.steps {
            match step {
                // SAFETY (every arm): the op is live; strings are NUL-terminated and buffers
                // sized by their lengths; librados copies keys, values and names into the op.
                Step::Create { exclusive } => unsafe {
                    let excl = if *exclusive {
                        ffi_rados::CREATE_EXCLUSIVE
                    } else {
                        0
                    };
                    (api.rados_write_op_create)(raw.0, excl, ptr::null())
                },
                Step::OmapCmpEq { key, value } => unsafe {
                    (api.rados_write_op_omap_cmp)(
                        raw.0,
                        key.as_ptr(),
                        ffi_rados::CMP_EQ,
                        value.as_ptr().cast(),
                        value.len(),
                        slot,
                    );
                    // `slot` stays within `prvals`: one per guard, counted above.
                    slot = slot.add(1);
                },
                Step::CmpXattrEq { name, value } => unsafe {
                    (api.rados_write_op_cmpxattr)(
                        raw.0,
                        name.as_ptr(),
                        ffi_rados::CMP_EQ,
                        value.as_ptr().cast(),
                        value.len(),
                    )
                },
                Step::OmapSet { keys, values } => unsafe {
                    let kp: Vec<*const c_char> = keys.iter().map(|k| k.as_ptr()).collect();
                    let vp: Vec<*const c_char> = values.iter().map(|v| v.as_ptr().cast()).collect();
                    let lens: Vec<usize> = values.iter().map(Vec::len).collect();
                    (api.rados_write_op_omap_set)(
                        raw.0,
                        kp.as_ptr(),
                        vp.as_ptr(),
                        lens.as_ptr(),
                        kp.len(),
                    )
                },
                Step::OmapRm { keys } => unsafe {
                    let kp: Vec<*const c_char> = keys.iter().map(|k| k.as_ptr()).collect();
                    (api.rados_write_op_omap_rm_keys)(raw.0, kp.as_ptr(), kp.len())
                },
                Step::SetXattr { name, value } => unsafe {
                    (api.rados_write_op_setxattr)(
                        raw.0,
                        name.as_ptr(),
                        value.as_ptr().cast(),
                        value.len(),
                    )
                },
            }
        }
        // SAFETY: the op and ioctx are live; no mtime; `prvals` outlives the call.
        let r = unsafe {
            (api.rados_write_op_operate)(raw.0, self.raw(), o.as_ptr(), ptr::null_mut(), 0)
        };
        check(r.into(), || {
            format!("writing object {oid} in {}", self.spec(""))
        })?;
        drop(prvals);
        Ok(())
    }

    /// A page of object `oid`'s omap: up to `max` entries after key `start_after` ("" from
    /// the start) whose keys begin with `prefix`, and whether more follow. With `guard`, the
    /// read is refused with `ECANCELED` unless that omap key holds that value (to read a
    /// consistent state over several pages).
    pub fn omap_page(
        &self,
        oid: &str,
        start_after: &str,
        prefix: &str,
        max: u64,
        guard: Option<(&str, &[u8])>,
    ) -> Result<(Vec<OmapEntry>, bool)> {
        let api = ffi_rados::rados_api()?;
        let (o, after, pfx) = (cstr(oid)?, cstr(start_after)?, cstr(prefix)?);
        let gkey = guard.map(|(k, _)| cstr(k)).transpose()?;
        // SAFETY: no arguments; released by `RawReadOp`.
        let raw = RawReadOp(unsafe { (api.rados_create_read_op)() }, api);
        let (mut cmp_rval, mut rval, mut more): (c_int, c_int, u8) = (0, 0, 0);
        if let (Some(k), Some((_, v))) = (&gkey, guard) {
            // SAFETY: the op is live; key NUL-terminated, value sized; `cmp_rval` outlives
            // the operation.
            unsafe {
                (api.rados_read_op_omap_cmp)(
                    raw.0,
                    k.as_ptr(),
                    ffi_rados::CMP_EQ,
                    v.as_ptr().cast(),
                    v.len(),
                    &mut cmp_rval,
                )
            };
        }
        let mut iter = ptr::null_mut();
        // SAFETY: the op is live; the strings outlive it; `iter`, `more` and `rval` are
        // written when it completes, within this function.
        unsafe {
            (api.rados_read_op_omap_get_vals2)(
                raw.0,
                after.as_ptr(),
                pfx.as_ptr(),
                max,
                &mut iter,
                &mut more,
                &mut rval,
            )
        };
        // SAFETY: the op and ioctx are live.
        let r = unsafe { (api.rados_read_op_operate)(raw.0, self.raw(), o.as_ptr(), 0) };
        let what = || format!("reading the omap of {oid} in {}", self.spec(""));
        if r < 0 {
            if !iter.is_null() {
                // SAFETY: an iterator librados made, ended once.
                unsafe { (api.rados_omap_get_end)(iter) };
            }
            check(r.into(), what)?;
        }
        let entries = drain(api, iter);
        check(rval.into(), what)?;
        Ok((entries, more != 0))
    }

    /// The values of the omap keys of `oid` among `keys` that exist.
    pub fn omap_get(&self, oid: &str, keys: &[&str]) -> Result<Vec<OmapEntry>> {
        let api = ffi_rados::rados_api()?;
        let o = cstr(oid)?;
        let ck = keys.iter().map(|k| cstr(k)).collect::<Result<Vec<_>>>()?;
        let kp: Vec<*const c_char> = ck.iter().map(|k| k.as_ptr()).collect();
        let lens: Vec<usize> = keys.iter().map(|k| k.len()).collect();
        // SAFETY: no arguments; released by `RawReadOp`.
        let raw = RawReadOp(unsafe { (api.rados_create_read_op)() }, api);
        let (mut iter, mut rval) = (ptr::null_mut(), 0);
        // SAFETY: the op is live; `kp` and `lens` hold `keys.len()` entries and outlive the
        // operation (librados copies the keys); `iter` and `rval` are written on completion.
        unsafe {
            (api.rados_read_op_omap_get_vals_by_keys2)(
                raw.0,
                kp.as_ptr(),
                kp.len(),
                lens.as_ptr(),
                &mut iter,
                &mut rval,
            )
        };
        // SAFETY: the op and ioctx are live.
        let r = unsafe { (api.rados_read_op_operate)(raw.0, self.raw(), o.as_ptr(), 0) };
        let what = || format!("reading omap keys of {oid} in {}", self.spec(""));
        if r < 0 {
            if !iter.is_null() {
                // SAFETY: an iterator librados made, ended once.
                unsafe { (api.rados_omap_get_end)(iter) };
            }
            check(r.into(), what)?;
        }
        let entries = drain(api, iter);
        check(rval.into(), what)?;
        Ok(entries)
    }

    /// Removes object `oid`.
    pub fn remove_object(&self, oid: &str) -> Result<()> {
        let api = ffi_rados::rados_api()?;
        let o = cstr(oid)?;
        // SAFETY: the ioctx is live; the name is NUL-terminated.
        let r = unsafe { (api.rados_remove)(self.raw(), o.as_ptr()) };
        check(r.into(), || {
            format!("removing object {oid} in {}", self.spec(""))
        })?;
        Ok(())
    }

    /// Takes (or, with `renew`, renews: `ENOENT` if this client no longer holds it) the
    /// exclusive advisory lock `name` on `oid` for `duration` (`None`: until unlocked).
    /// `EBUSY` while another client or cookie holds it.
    pub fn lock_exclusive(
        &self,
        oid: &str,
        name: &str,
        cookie: &str,
        desc: &str,
        duration: Option<Duration>,
        renew: bool,
    ) -> Result<()> {
        let api = ffi_rados::rados_api()?;
        let (o, n, c, d) = (cstr(oid)?, cstr(name)?, cstr(cookie)?, cstr(desc)?);
        let mut tv = timeval(duration);
        let flags = if renew {
            ffi_rados::LOCK_FLAG_MUST_RENEW
        } else {
            0
        };
        // SAFETY: the ioctx is live; the strings are NUL-terminated; the duration is a valid
        // timeval or null (no expiry).
        let r = unsafe {
            (api.rados_lock_exclusive)(
                self.raw(),
                o.as_ptr(),
                n.as_ptr(),
                c.as_ptr(),
                d.as_ptr(),
                tv.as_mut().map_or(ptr::null_mut(), |t| t as *mut Timeval),
                flags,
            )
        };
        check(r.into(), || {
            format!("locking {oid} ({name}) in {}", self.spec(""))
        })?;
        Ok(())
    }

    /// Takes (or renews) a shared advisory lock `name` on `oid` under `cookie`, with `tag`
    /// (every shared holder must use the same one), for `duration`.
    #[allow(clippy::too_many_arguments)]
    pub fn lock_shared(
        &self,
        oid: &str,
        name: &str,
        cookie: &str,
        tag: &str,
        desc: &str,
        duration: Option<Duration>,
        renew: bool,
    ) -> Result<()> {
        let api = ffi_rados::rados_api()?;
        let (o, n, c) = (cstr(oid)?, cstr(name)?, cstr(cookie)?);
        let (t, d) = (cstr(tag)?, cstr(desc)?);
        let mut tv = timeval(duration);
        let flags = if renew {
            ffi_rados::LOCK_FLAG_MUST_RENEW
        } else {
            0
        };
        // SAFETY: as in `lock_exclusive`.
        let r = unsafe {
            (api.rados_lock_shared)(
                self.raw(),
                o.as_ptr(),
                n.as_ptr(),
                c.as_ptr(),
                t.as_ptr(),
                d.as_ptr(),
                tv.as_mut().map_or(ptr::null_mut(), |t| t as *mut Timeval),
                flags,
            )
        };
        check(r.into(), || {
            format!("locking {oid} ({name}, shared) in {}", self.spec(""))
        })?;
        Ok(())
    }

    /// Releases lock `name` on `oid` held by this client under `cookie` (`ENOENT` if it
    /// does not hold it).
    pub fn unlock(&self, oid: &str, name: &str, cookie: &str) -> Result<()> {
        let api = ffi_rados::rados_api()?;
        let (o, n, c) = (cstr(oid)?, cstr(name)?, cstr(cookie)?);
        // SAFETY: the ioctx is live; the strings are NUL-terminated.
        let r = unsafe { (api.rados_unlock)(self.raw(), o.as_ptr(), n.as_ptr(), c.as_ptr()) };
        check(r.into(), || {
            format!("unlocking {oid} ({name}) in {}", self.spec(""))
        })?;
        Ok(())
    }

    /// Releases another client's hold of lock `name` on `oid` (`ENOENT` if that client and
    /// cookie do not hold it). It does not fence that client: blocklist it first.
    pub fn break_lock(&self, oid: &str, name: &str, client: &str, cookie: &str) -> Result<()> {
        let api = ffi_rados::rados_api()?;
        let (o, n, cl, c) = (cstr(oid)?, cstr(name)?, cstr(client)?, cstr(cookie)?);
        // SAFETY: the ioctx is live; the strings are NUL-terminated.
        let r = unsafe {
            (api.rados_break_lock)(self.raw(), o.as_ptr(), n.as_ptr(), cl.as_ptr(), c.as_ptr())
        };
        check(r.into(), || {
            format!("breaking lock {name} on {oid} in {}", self.spec(""))
        })?;
        Ok(())
    }

    /// Who holds lock `name` on `oid` now (expired holders are gone); none if the object
    /// does not exist.
    pub fn lockers(&self, oid: &str, name: &str) -> Result<Lockers> {
        let api = ffi_rados::rados_api()?;
        let (o, n) = (cstr(oid)?, cstr(name)?);
        let mut caps = [256usize; 4];
        for _ in 0..8 {
            let mut bufs: Vec<Vec<u8>> = caps.iter().map(|c| vec![0u8; *c]).collect();
            let mut lens = caps;
            let mut exclusive: c_int = 0;
            let [tag, clients, cookies, addrs] = &mut bufs[..] else {
                unreachable!("four buffers")
            };
            let [tl, cl, kl, al] = &mut lens;
            // SAFETY: the ioctx is live; each buffer holds as many bytes as its length says;
            // on ERANGE librados writes the sizes it needs into the lengths.
            let r = unsafe {
                (api.rados_list_lockers)(
                    self.raw(),
                    o.as_ptr(),
                    n.as_ptr(),
                    &mut exclusive,
                    tag.as_mut_ptr().cast(),
                    tl,
                    clients.as_mut_ptr().cast(),
                    cl,
                    cookies.as_mut_ptr().cast(),
                    kl,
                    addrs.as_mut_ptr().cast(),
                    al,
                )
            };
            if r == -34 {
                caps = lens.map(|l| l.max(256) * 2);
                continue;
            }
            if r == -(crate::ENOENT as isize) {
                return Ok(Lockers::default());
            }
            check(r as i64, || {
                format!("listing lockers of {oid} ({name}) in {}", self.spec(""))
            })?;
            let (clients, cookies, addrs) = (
                split_nul(clients, lens[1]),
                split_nul(cookies, lens[2]),
                split_nul(addrs, lens[3]),
            );
            let holders = clients
                .into_iter()
                .zip(cookies)
                .zip(addrs)
                .map(|((client, cookie), addr)| Locker {
                    client,
                    cookie,
                    addr,
                })
                .take(r as usize)
                .collect();
            return Ok(Lockers {
                exclusive: exclusive != 0,
                tag: split_nul(tag, lens[0])
                    .into_iter()
                    .next()
                    .unwrap_or_default(),
                holders,
            });
        }
        Err(Error::Call {
            op: format!("listing lockers of {oid} ({name}): the list kept growing"),
            errno: 34,
        })
    }

    /// Watches `oid`: `f` gets every notify (acknowledged before `f` runs, so keep it short:
    /// it runs on a librados thread) and watch errors. `timeout`: how long the OSD keeps the
    /// watch of a client it no longer hears from (whole seconds, at least one).
    pub fn watch(
        self: &Arc<Self>,
        oid: &str,
        timeout: Duration,
        f: impl Fn(WatchEvent) + Send + Sync + 'static,
    ) -> Result<Watch> {
        let api = ffi_rados::rados_api()?;
        let ctx = Box::into_raw(Box::new(WatchCtx {
            api,
            io: self.raw(),
            oid: cstr(oid)?,
            f: Box::new(f),
        }));
        let mut cookie = 0u64;
        // SAFETY: the ioctx is live; `ctx` stays valid until the `Watch` is dropped (after
        // unwatch and flush), or is freed below if the watch was not made.
        let r = unsafe {
            (api.rados_watch3)(
                self.raw(),
                (*ctx).oid.as_ptr(),
                &mut cookie,
                Some(watch_cb),
                Some(watch_err_cb),
                timeout.as_secs().clamp(1, u32::MAX.into()) as u32,
                ctx.cast(),
            )
        };
        if r < 0 {
            // SAFETY: made above; librados did not keep it (the watch failed).
            drop(unsafe { Box::from_raw(ctx) });
            check(r.into(), || format!("watching {oid} in {}", self.spec("")))?;
        }
        Ok(Watch {
            pool: self.clone(),
            cookie,
            ctx,
        })
    }

    /// Notifies the watchers of `oid` with `payload` and waits up to `timeout` for every
    /// one to acknowledge (`ETIMEDOUT` when one did not: a watcher that died and whose watch
    /// the OSD has not timed out yet).
    pub fn notify(&self, oid: &str, payload: &[u8], timeout: Duration) -> Result<()> {
        let api = ffi_rados::rados_api()?;
        let o = cstr(oid)?;
        let len = c_int::try_from(payload.len()).map_err(|_| Error::Call {
            op: "notify payload too large".into(),
            errno: 27,
        })?;
        let (mut reply, mut reply_len) = (ptr::null_mut(), 0usize);
        // SAFETY: the ioctx is live; the payload is `len` bytes; librados allocates the
        // reply buffer, freed below.
        let r = unsafe {
            (api.rados_notify2)(
                self.raw(),
                o.as_ptr(),
                payload.as_ptr().cast(),
                len,
                timeout.as_millis().max(1) as u64,
                &mut reply,
                &mut reply_len,
            )
        };
        if !reply.is_null() {
            // SAFETY: allocated by librados for this call, freed once.
            unsafe { (api.rados_buffer_free)(reply) };
        }
        check(r.into(), || {
            format!("notifying watchers of {oid} in {}", self.spec(""))
        })?;
        Ok(())
    }
}

/// The entries of an omap iterator, which it ends.
fn drain(api: &'static RadosApi, iter: ffi_rados::OmapIter) -> Vec<OmapEntry> {
    let mut out = Vec::new();
    if iter.is_null() {
        return out;
    }
    loop {
        let (mut k, mut v, mut kl, mut vl) = (ptr::null_mut(), ptr::null_mut(), 0usize, 0usize);
        // SAFETY: a live iterator; the out-pointers are valid.
        let r = unsafe { (api.rados_omap_get_next2)(iter, &mut k, &mut v, &mut kl, &mut vl) };
        if r < 0 || k.is_null() {
            break;
        }
        // SAFETY: librados points `k` at `kl` bytes and `v` at `vl` bytes, valid until the
        // next call on the iterator.
        let key = unsafe { std::slice::from_raw_parts(k as *const u8, kl) };
        let val = if v.is_null() {
            Vec::new()
        } else {
            // SAFETY: as above.
            unsafe { std::slice::from_raw_parts(v as *const u8, vl) }.to_vec()
        };
        out.push((String::from_utf8_lossy(key).into_owned(), val));
    }
    // SAFETY: made by librados for this read, ended once.
    unsafe { (api.rados_omap_get_end)(iter) };
    out
}

impl Cluster {
    /// This client's addresses, as the monitors know them (what another client passes to
    /// [`Cluster::blocklist`] to fence this one).
    pub fn addrs(&self) -> Result<String> {
        let api = ffi_rados::rados_api()?;
        let mut p = ptr::null_mut();
        // SAFETY: the cluster is connected; librados allocates the string.
        let r = unsafe { (api.rados_getaddrs)(self.raw(), &mut p) };
        check(r.into(), || "reading this client's address".into())?;
        if p.is_null() {
            return Ok(String::new());
        }
        // SAFETY: a NUL-terminated string librados allocated with malloc.
        let s = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
        // SAFETY: rados_buffer_free frees what librados allocated; freed once.
        unsafe { (api.rados_buffer_free)(p) };
        Ok(s)
    }

    /// This connection's unique id (the `N` of `client.N`).
    pub fn instance_id(&self) -> Result<u64> {
        let api = ffi_rados::rados_api()?;
        // SAFETY: the cluster is connected.
        Ok(unsafe { (api.rados_get_instance_id)(self.raw()) })
    }

    /// Fences the client at `addr` (one entry of [`Cluster::addrs`], or the whole
    /// `[v2:...,v1:...]` list: each entry is blocklisted) for `expire`: the OSDs refuse its
    /// every operation (`ESHUTDOWN`, [`Error::is_blocklisted`]) and it needs a new
    /// connection. Returns once this client has the OSD map that says so; an OSD learns it at
    /// the latest from this client's next operation to it (which carries that map), so an
    /// operation of the fenced client on an object may still land before this client's next
    /// one on that object, never after it.
    pub fn blocklist(&self, addr: &str, expire: Duration) -> Result<()> {
        let api = ffi_rados::rados_api()?;
        let list = addr.trim().trim_start_matches('[').trim_end_matches(']');
        for one in list.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            let c = cstr(one)?;
            // SAFETY: the cluster is connected; librados only reads the string (the header
            // declares it mutable).
            let r = unsafe {
                (api.blocklist_add)(
                    self.raw(),
                    c.as_ptr().cast_mut(),
                    expire.as_secs().clamp(1, u32::MAX.into()) as u32,
                )
            };
            check(r.into(), || format!("blocklisting {one}"))?;
        }
        // SAFETY: the cluster is connected.
        let r = unsafe { (api.rados_wait_for_latest_osdmap)(self.raw()) };
        check(r.into(), || "waiting for the latest OSD map".into())?;
        tracing::info!(addr, "client blocklisted");
        Ok(())
    }
}
