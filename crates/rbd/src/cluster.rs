//! The connection to a cluster and the pools (with their namespaces) in it.

use std::ffi::{CStr, c_char};
use std::path::PathBuf;
use std::ptr;
use std::sync::Arc;
use std::time::Duration;

use crate::ffi::{self, Api};
use crate::{Error, Image, Result, check, cstr};

/// How to reach a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The configuration file; `None`: librados' own search (`$CEPH_CONF`,
    /// `/etc/ceph/ceph.conf`, ...).
    pub conf_path: Option<PathBuf>,
    /// The client id (`admin` for `client.admin`); `None`: librados' default (`admin`).
    pub client_id: Option<String>,
    /// The bound on every call: `rados_osd_op_timeout`, `rados_mon_op_timeout` and
    /// `client_mount_timeout`. A full or unreachable cluster then fails a call with
    /// `ETIMEDOUT` instead of hanging it.
    pub timeout: Duration,
    /// More settings, as `ceph.conf` would set them (`("rbd_cache", "false")`).
    pub settings: Vec<(String, String)>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            conf_path: None,
            client_id: None,
            timeout: Duration::from_secs(30),
            settings: Vec::new(),
        }
    }
}

/// What the cluster reports about its space (from the monitors' statistics, which need a
/// manager: zero without one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterUsage {
    pub total_bytes: u64,
    pub used_bytes: u64,
    pub avail_bytes: u64,
}

/// A connected `rados_t`, shut down when the last handle made from it is dropped.
#[derive(Debug)]
pub struct Cluster {
    handle: ffi::Rados,
    api: &'static Api,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("librbd")
    }
}

// SAFETY: a `rados_t` may be used from any thread and from several at once; librados
// serialises what needs it internally. The handle is only shut down in `Drop`, when no other
// reference exists.
unsafe impl Send for Cluster {}
// SAFETY: as above.
unsafe impl Sync for Cluster {}

impl Cluster {
    pub(crate) fn raw(&self) -> ffi::Rados {
        self.handle
    }

    /// Connects, with every call bounded by `config.timeout`.
    pub fn connect(config: &ClusterConfig) -> Result<Arc<Cluster>> {
        let api = ffi::api()?;
        let id = config.client_id.as_deref().map(cstr).transpose()?;
        let mut handle = ptr::null_mut();
        // SAFETY: `handle` is a valid out-pointer; `id` is NUL-terminated or null.
        let r = unsafe {
            (api.rados_create)(&mut handle, id.as_ref().map_or(ptr::null(), |s| s.as_ptr()))
        };
        check(r.into(), || "creating the cluster handle".into())?;
        let cluster = Cluster { handle, api };
        let path = config
            .conf_path
            .as_ref()
            .map(|p| cstr(&p.to_string_lossy()))
            .transpose()?;
        // SAFETY: the handle is live and not yet connected; the path is NUL-terminated or
        // null (librados' own search).
        let r = unsafe {
            (api.rados_conf_read_file)(handle, path.as_ref().map_or(ptr::null(), |s| s.as_ptr()))
        };
        check(r.into(), || match &config.conf_path {
            Some(p) => format!("reading {}", p.display()),
            None => "reading the Ceph configuration".into(),
        })?;
        // SAFETY: the handle is live; a null variable name means CEPH_ARGS.
        let r = unsafe { (api.rados_conf_parse_env)(handle, ptr::null()) };
        check(r.into(), || "reading CEPH_ARGS".into())?;
        let secs = config.timeout.as_secs().max(1).to_string();
        let mut settings: Vec<(String, String)> = [
            "rados_osd_op_timeout",
            "rados_mon_op_timeout",
            "client_mount_timeout",
        ]
        .iter()
        .map(|k| (k.to_string(), secs.clone()))
        .collect();
        // A discard always leaves zeros, even of less than an object (SCSI UNMAP and WRITE
        // SAME promise it; librbd otherwise skips partial discards).
        settings.push(("rbd_skip_partial_discard".into(), "false".into()));
        // The cache is write-back from the first write, not only after the first flush:
        // a SCSI target reports a volatile write cache (WCE=1) and makes writes durable on
        // FUA and SYNCHRONIZE CACHE, which is exactly what an initiator relies on; without
        // this, an initiator that never flushes gets write-through speed for ever.
        settings.push(("rbd_cache_writethrough_until_flush".into(), "false".into()));
        settings.extend(config.settings.iter().cloned());
        for (k, v) in &settings {
            let ck = cstr(k)?;
            let cv = cstr(v).map_err(|_| Error::Nul(format!("the value of {k}")))?;
            // SAFETY: the handle is live; both strings are NUL-terminated.
            let r = unsafe { (api.rados_conf_set)(handle, ck.as_ptr(), cv.as_ptr()) };
            // The value is left out: it may be a secret (`key`).
            check(r.into(), || format!("setting {k}"))?;
        }
        // SAFETY: the handle is live and configured.
        let r = unsafe { (api.rados_connect)(handle) };
        check(r.into(), || "connecting to the cluster".into())?;
        tracing::debug!("connected to the Ceph cluster");
        Ok(Arc::new(cluster))
    }

    /// Space in the whole cluster.
    pub fn usage(&self) -> Result<ClusterUsage> {
        let mut st = ffi::ClusterStat::default();
        // SAFETY: the handle is live; `st` has the C struct's layout.
        let r = unsafe { (self.api.rados_cluster_stat)(self.handle, &mut st) };
        check(r.into(), || "reading the cluster's usage".into())?;
        Ok(ClusterUsage {
            total_bytes: st.kb.saturating_mul(1024),
            used_bytes: st.kb_used.saturating_mul(1024),
            avail_bytes: st.kb_avail.saturating_mul(1024),
        })
    }

    /// Runs a monitor command (JSON, as the `ceph` CLI sends it, e.g.
    /// `{"prefix":"osd dump","format":"json"}`) and returns what it printed. Monitors answer
    /// even when the OSDs hold every write (a full cluster).
    pub fn mon_command(&self, cmd: &str) -> Result<Vec<u8>> {
        let c = cstr(cmd)?;
        let mut cmds = [c.as_ptr()];
        let (mut out, mut out_len) = (ptr::null_mut(), 0usize);
        let (mut status, mut status_len) = (ptr::null_mut(), 0usize);
        // SAFETY: the handle is live; `cmds` holds one NUL-terminated string that outlives
        // the call; no input buffer; the four out-pointers are valid. librados allocates the
        // output buffers, freed below with rados_buffer_free.
        let r = unsafe {
            (self.api.rados_mon_command)(
                self.handle,
                cmds.as_mut_ptr(),
                1,
                ptr::null(),
                0,
                &mut out,
                &mut out_len,
                &mut status,
                &mut status_len,
            )
        };
        let take = |p: *mut c_char, len: usize| -> Vec<u8> {
            if p.is_null() {
                return Vec::new();
            }
            // SAFETY: librados set `p` to a buffer of `len` bytes it allocated.
            let v = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) }.to_vec();
            // SAFETY: `p` came from librados and is freed once, here.
            unsafe { (self.api.rados_buffer_free)(p) };
            v
        };
        let out = take(out, out_len);
        let status = take(status, status_len);
        check(r.into(), || {
            format!(
                "monitor command {cmd}: {}",
                String::from_utf8_lossy(&status).trim()
            )
        })?;
        Ok(out)
    }

    /// Why the cluster holds writes to `pool`, if it does: the pool over its quota, or an
    /// OSD it uses past the cluster's full ratio (librados then holds such writes until they
    /// time out instead of failing them). From the OSD map's pool flags.
    pub fn pool_full(&self, pool: &str) -> Result<Option<String>> {
        let out = self.mon_command(r#"{"prefix":"osd dump","format":"json"}"#)?;
        let map: serde_json::Value = serde_json::from_slice(&out).map_err(|e| Error::Call {
            op: format!("reading the OSD map: {e}"),
            errno: crate::EIO,
        })?;
        let flags = map["pools"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["pool_name"] == pool)
            .and_then(|p| p["flags_names"].as_str())
            .unwrap_or("");
        let flags: Vec<&str> = flags.split(',').collect();
        Ok(if flags.contains(&"full_quota") {
            Some(format!("Ceph pool {pool} is over its quota"))
        } else if flags.contains(&"full") {
            Some(format!(
                "Ceph pool {pool} is full: an OSD it uses reached the cluster's full ratio"
            ))
        } else {
            None
        })
    }

    /// A handle on `pool`, in RADOS namespace `namespace` ("" for the pool's default one).
    /// RBD namespaces other than the default must exist ([`Pool::create_namespace`]) before
    /// images are made in them.
    pub fn pool(self: &Arc<Self>, pool: &str, namespace: &str) -> Result<Arc<Pool>> {
        let cpool = cstr(pool)?;
        let cns = cstr(namespace)?;
        let mut io = ptr::null_mut();
        // SAFETY: the cluster is connected; `io` is a valid out-pointer.
        let r = unsafe { (self.api.rados_ioctx_create)(self.handle, cpool.as_ptr(), &mut io) };
        check(r.into(), || format!("opening pool {pool}"))?;
        let p = Pool {
            io,
            api: self.api,
            pool: pool.into(),
            namespace: namespace.into(),
            cluster: self.clone(),
        };
        // SAFETY: the ioctx is live and not yet shared.
        unsafe { (self.api.rados_ioctx_set_namespace)(io, cns.as_ptr()) };
        Ok(Arc::new(p))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SAFETY: every pool (and through them every image) holds an `Arc` of this cluster,
        // so none is left; the handle is shut down once.
        unsafe { (self.api.rados_shutdown)(self.handle) };
    }
}

/// A pool and namespace (`rados_ioctx_t`): where images live.
pub struct Pool {
    io: ffi::IoCtx,
    pub(crate) api: &'static Api,
    pool: String,
    namespace: String,
    cluster: Arc<Cluster>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pool({})", self.spec(""))
    }
}

// SAFETY: an ioctx may be used from several threads at once for the calls made here; its one
// piece of mutable state, the namespace, is set before the handle is shared and never again.
unsafe impl Send for Pool {}
// SAFETY: as above.
unsafe impl Sync for Pool {}

/// Image options for [`Pool::create`] and [`Pool::clone_image`], destroyed on drop.
struct Options {
    handle: ffi::Options,
    api: &'static Api,
}

impl Options {
    fn new(api: &'static Api, values: &[(i32, u64)]) -> Result<Options> {
        let mut handle = ptr::null_mut();
        // SAFETY: `handle` is a valid out-pointer.
        unsafe { (api.rbd_image_options_create)(&mut handle) };
        let o = Options { handle, api };
        for (k, v) in values {
            // SAFETY: the options handle is live.
            let r = unsafe { (api.rbd_image_options_set_uint64)(o.handle, *k, *v) };
            check(r.into(), || format!("setting image option {k}"))?;
        }
        Ok(o)
    }
}

impl Drop for Options {
    fn drop(&mut self) {
        // SAFETY: created by `rbd_image_options_create`, destroyed once.
        unsafe { (self.api.rbd_image_options_destroy)(self.handle) };
    }
}

impl Pool {
    pub(crate) fn raw(&self) -> ffi::IoCtx {
        self.io
    }
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }
    pub fn name(&self) -> &str {
        &self.pool
    }
    pub fn namespace(&self) -> &str {
        &self.namespace
    }
    /// `pool/namespace/image` as the `rbd` CLI writes it.
    pub fn spec(&self, image: &str) -> String {
        match (self.namespace.is_empty(), image.is_empty()) {
            (true, true) => self.pool.clone(),
            (true, false) => format!("{}/{image}", self.pool),
            (false, true) => format!("{}/{}", self.pool, self.namespace),
            (false, false) => format!("{}/{}/{image}", self.pool, self.namespace),
        }
    }

    /// Creates this handle's RBD namespace if it is not the default one and does not exist.
    pub fn create_namespace(&self) -> Result<()> {
        if self.namespace.is_empty() {
            return Ok(());
        }
        let ns = cstr(&self.namespace)?;
        let mut exists = false;
        // SAFETY: the ioctx is live; `exists` is a valid out-pointer.
        let r = unsafe { (self.api.rbd_namespace_exists)(self.io, ns.as_ptr(), &mut exists) };
        check(r.into(), || {
            format!("looking up namespace {}", self.spec(""))
        })?;
        if exists {
            return Ok(());
        }
        // SAFETY: the ioctx is live. rbd namespaces are registered in the pool's default
        // namespace whatever this ioctx's own is; librbd handles that.
        let r = unsafe { (self.api.rbd_namespace_create)(self.io, ns.as_ptr()) };
        match check(r.into(), || format!("creating namespace {}", self.spec(""))) {
            Err(e) if e.is_exists() => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// Creates a format 2 image with [`crate::FEATURES`]. `order`: log2 of the object size
    /// (`None`: 22, 4 MiB objects).
    pub fn create(&self, name: &str, size: u64, order: Option<u8>) -> Result<()> {
        let c = cstr(name)?;
        let mut values = vec![
            (ffi::IMAGE_OPTION_FORMAT, 2),
            (ffi::IMAGE_OPTION_FEATURES, crate::FEATURES),
        ];
        if let Some(o) = order {
            values.push((ffi::IMAGE_OPTION_ORDER, o.into()));
        }
        let opts = Options::new(self.api, &values)?;
        // SAFETY: the ioctx and options are live; the name is NUL-terminated.
        let r = unsafe { (self.api.rbd_create4)(self.io, c.as_ptr(), size, opts.handle) };
        check(r.into(), || format!("creating image {}", self.spec(name)))?;
        Ok(())
    }

    /// Makes `child`, a writable clone v2 of `parent@snap` (no protect step; the cluster must
    /// require mimic clients or later), in this pool and namespace.
    pub fn clone_image(&self, parent: &str, snap: &str, child: &str) -> Result<()> {
        let (p, s, c) = (cstr(parent)?, cstr(snap)?, cstr(child)?);
        let opts = Options::new(
            self.api,
            &[
                (ffi::IMAGE_OPTION_FORMAT, 2),
                (ffi::IMAGE_OPTION_FEATURES, crate::FEATURES),
                (ffi::IMAGE_OPTION_CLONE_FORMAT, 2),
            ],
        )?;
        // SAFETY: both ioctx are this live one; names are NUL-terminated.
        let r = unsafe {
            (self.api.rbd_clone3)(
                self.io,
                p.as_ptr(),
                s.as_ptr(),
                self.io,
                c.as_ptr(),
                opts.handle,
            )
        };
        check(r.into(), || {
            format!(
                "cloning {}@{snap} to {}",
                self.spec(parent),
                self.spec(child)
            )
        })?;
        Ok(())
    }

    /// Removes an image (its snapshots must be gone; `EBUSY` while another client has it
    /// open).
    pub fn remove(&self, name: &str) -> Result<()> {
        let c = cstr(name)?;
        // SAFETY: the ioctx is live; the name is NUL-terminated.
        let r = unsafe { (self.api.rbd_remove)(self.io, c.as_ptr()) };
        check(r.into(), || format!("removing image {}", self.spec(name)))?;
        Ok(())
    }

    /// Renames an image in this pool and namespace (one update of the pool's image
    /// directory: other clients see the old name or the new one, never both or neither;
    /// `EEXIST` when `to` is taken).
    pub fn rename(&self, from: &str, to: &str) -> Result<()> {
        let (f, t) = (cstr(from)?, cstr(to)?);
        // SAFETY: the ioctx is live; both names are NUL-terminated.
        let r = unsafe { (self.api.rbd_rename)(self.io, f.as_ptr(), t.as_ptr()) };
        check(r.into(), || {
            format!("renaming image {} to {to}", self.spec(from))
        })?;
        Ok(())
    }

    /// The names of every image in this pool and namespace, sorted.
    pub fn list(&self) -> Result<Vec<String>> {
        let mut cap = 64usize;
        loop {
            let mut specs: Vec<ffi::ImageSpec> = Vec::with_capacity(cap);
            let mut n = cap;
            // SAFETY: `specs` has room for `n` entries; librbd fills at most `n` and says how
            // many (or, with ERANGE, how many it needs).
            let r = unsafe { (self.api.rbd_list2)(self.io, specs.as_mut_ptr(), &mut n) };
            if r == -34 {
                cap = n.max(cap * 2);
                continue;
            }
            check(r.into(), || format!("listing images in {}", self.spec("")))?;
            // SAFETY: librbd initialised the first `n` entries.
            unsafe { specs.set_len(n) };
            let mut names: Vec<String> = specs
                .iter()
                // SAFETY: each name is a NUL-terminated string librbd allocated.
                .map(|s| {
                    unsafe { CStr::from_ptr(s.name as *const c_char) }
                        .to_string_lossy()
                        .into_owned()
                })
                .collect();
            // SAFETY: the entries librbd filled, freed once; `specs` is not read after.
            unsafe { (self.api.rbd_image_spec_list_cleanup)(specs.as_mut_ptr(), n) };
            names.sort();
            return Ok(names);
        }
    }

    /// Opens an image for reading and writing.
    pub fn open(self: &Arc<Self>, name: &str) -> Result<Image> {
        Image::open(self, name, None, false)
    }

    /// Opens an image read-only, at snapshot `snap` or (with `None`) its head.
    pub fn open_read_only(self: &Arc<Self>, name: &str, snap: Option<&str>) -> Result<Image> {
        Image::open(self, name, snap, true)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // SAFETY: every image opened through this pool holds an `Arc` of it, so none is
        // left; destroyed once.
        unsafe { (self.api.rados_ioctx_destroy)(self.io) };
    }
}

impl From<std::ffi::NulError> for Error {
    fn from(e: std::ffi::NulError) -> Self {
        Error::Nul(String::from_utf8_lossy(&e.into_vec()).into_owned())
    }
}
