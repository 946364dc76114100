//! Volumes as RBD images in a Ceph pool (`kind = "rbd"`), through the `rbd` crate.
//!
//! What lives where (nothing about the images is known only to this process, so another
//! gateway of the same array finds everything in the cluster):
//! - volume `V` of array `A` is image `sl-<A as 8 hex digits>-V`, in the configured pool and
//!   RADOS namespace; [`Backend::volumes`] lists only images with this array's prefix;
//! - a snapshot volume `C` of source `S` is a clone v2 of snapshot `sl-C` of `S`'s image: the
//!   per-image snapshot is named after the clone it exists for;
//! - a group snapshot takes only the snapshots (the commit, while the host holds writes);
//!   the clone image is made by [`Backend::materialize`] afterwards, or on first use. Until
//!   then the snapshot alone is the volume: every method finds it by its name;
//! - a clone is made as image `slc-<A>-C` (outside the array's names) and then renamed to
//!   `sl-<A>-C` in one update of the pool's directory, so no one, this process or another
//!   gateway, ever opens a half-made clone (librbd lists a clone before its parent is
//!   attached: read then, it is all zeros). A first use that finds the clone being made
//!   here waits for it; one a killed process left staged is removed and made again;
//! - deleting `C` removes its image, then the snapshot once no other clone uses it.
//!
//! Reads of a sequential stream are served from 1 MiB chunks read ahead on threads of the
//! image's own ([`scsi::Readahead`]): the OSD then answers one read per chunk instead of one
//! per command. Every write this process makes to a served image, through its device or
//! the backend (resync, resize), drops what was read ahead of it before it completes. A
//! gateway that is not a LUN's owner serves it no media access (ALUA), and chunks live only
//! while their stream passes, so writes by another gateway are not seen only by a stream
//! that runs across a change of owner: the shared-state layer that moves ownership must
//! call [`RbdBackend::forget_read_ahead`] when this gateway takes a LUN over.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rbd::{Image, Pool};
use scsi::{BlockDevice, DeviceError, Readahead};

use crate::{Backend, BackendError, Cause, LOGICAL_BLOCK_SIZE, PoolUsage, VolumeInfo};

/// The rbd engine: one array's volumes in one pool and namespace.
#[derive(Debug)]
pub struct RbdBackend {
    pool: Arc<Pool>,
    prefix: String,
    /// Read-write handles of the images this process serves, shared by their devices.
    open: Mutex<std::collections::BTreeMap<String, Served>>,
    /// Held while a clone is made and while a volume is deleted: a first use waits for a
    /// clone in the making instead of finding none, and a delete never races one.
    cloning: Mutex<()>,
}

/// An image this process serves: its read-write handle and what was read ahead of it.
#[derive(Debug, Clone)]
struct Served {
    image: Arc<Image>,
    readahead: Arc<Readahead>,
}

impl Served {
    /// `image` with its readahead threads started.
    fn open(image: Image) -> Result<Served, BackendError> {
        let image = Arc::new(image);
        let from = image.clone();
        let readahead = Readahead::new(
            1,
            Box::new(move |at, buf| match from.read(at, buf) {
                Ok(n) if n == buf.len() => Ok(()),
                Ok(n) => Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("short read: {n} of {} bytes", buf.len()),
                )),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            }),
        )
        .map_err(|e| BackendError::Io(Cause::Os(e)))?;
        Ok(Served {
            image,
            readahead: Arc::new(readahead),
        })
    }

    /// Drops what was read ahead of the `len` bytes at `offset` (a write, discard or resize
    /// there was attempted: it may have changed them even if it failed).
    fn forget(&self, offset: u64, len: u64) {
        self.readahead.invalidate(offset, len);
    }
}

/// An image as a block device.
#[derive(Debug)]
pub struct RbdVolume {
    served: Served,
}

fn dev_err(e: rbd::Error) -> DeviceError {
    if e.is_no_space() {
        DeviceError::NoSpace
    } else if e.is_not_found() {
        // The image went away under an open handle: its LUN answers NOT READY (02/04/03).
        DeviceError::Gone(e.to_string())
    } else {
        DeviceError::Io(e.to_string())
    }
}

/// `e`, or no space when it is a timeout of a call that wrote to a pool the cluster holds
/// writes to: librados holds writes to a full pool (an OSD past the full ratio, or the pool
/// over its quota) until they time out rather than failing them, so a timeout alone would be
/// reported as an I/O error, and a start, a commit or a write as the wrong fault.
fn full_or(pool: &Pool, e: rbd::Error) -> rbd::Error {
    if !e.is_timeout() {
        return e;
    }
    match pool.cluster().pool_full(pool.name()) {
        Ok(Some(why)) => {
            tracing::warn!(pool = pool.name(), %why, error = %e, "a call timed out on a full pool");
            e.into_full(&why)
        }
        Ok(None) => e,
        Err(check) => {
            tracing::debug!(error = %check, "could not read the pool's flags after a timeout");
            e
        }
    }
}

impl RbdVolume {
    /// The image's size, if the range fits in it.
    fn check(&self, offset: u64, len: u64) -> Result<u64, DeviceError> {
        let size = self.served.image.size().map_err(dev_err)?;
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(size),
            _ => Err(DeviceError::OutOfRange),
        }
    }
}

impl BlockDevice for RbdVolume {
    fn block_size(&self) -> u32 {
        LOGICAL_BLOCK_SIZE
    }
    fn num_blocks(&self) -> u64 {
        self.served.image.size().unwrap_or(0) / LOGICAL_BLOCK_SIZE as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        let size = self.check(offset, buf.len() as u64)?;
        let ahead = self
            .served
            .readahead
            .read(offset, buf.len(), size, |piece, at| {
                buf[at..at + piece.len()].copy_from_slice(piece)
            });
        if ahead {
            return Ok(());
        }
        let image = &self.served.image;
        let n = image.read(offset, buf).map_err(dev_err)?;
        if n != buf.len() {
            return Err(DeviceError::Io(format!(
                "short read of {}: {n} of {} bytes",
                image.spec(),
                buf.len()
            )));
        }
        Ok(())
    }
    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), DeviceError> {
        self.check(offset, data.len() as u64)?;
        let image = &self.served.image;
        let full = |e| dev_err(full_or(image.pool(), e));
        let written = image.write(offset, data);
        self.served.forget(offset, data.len() as u64);
        written.map_err(full)?;
        if fua {
            image.flush().map_err(full)?;
        }
        Ok(())
    }
    fn flush(&self) -> Result<(), DeviceError> {
        let image = &self.served.image;
        image.flush().map_err(|e| dev_err(full_or(image.pool(), e)))
    }
    fn discard(&self, offset: u64, len: u64) -> Result<(), DeviceError> {
        self.check(offset, len)?;
        let image = &self.served.image;
        let r = image.discard(offset, len);
        self.served.forget(offset, len);
        r.map_err(|e| dev_err(full_or(image.pool(), e)))
    }
    fn thin_provisioned(&self) -> bool {
        true
    }
    /// A read within chunks already read ahead is a copy from memory.
    fn cached(&self, offset: u64, len: usize) -> bool {
        self.served.readahead.cached(offset, len)
    }
}

/// The backend's error for a failed call about volume `name`.
fn err(name: &str, e: rbd::Error) -> BackendError {
    if e.is_not_found() {
        BackendError::NoVolume(name.into())
    } else if e.is_exists() {
        BackendError::Exists(name.into())
    } else if e.is_no_space() {
        BackendError::NoSpace(Cause::Rbd(e))
    } else {
        BackendError::Io(Cause::Rbd(e))
    }
}

impl RbdBackend {
    /// The volumes of array `array_id` in `pool` (its namespace is created if missing).
    /// The backend of the process serving the array: [`RbdBackend::attach`], then
    /// [`RbdBackend::recover`].
    pub fn new(pool: Arc<Pool>, array_id: u32) -> Result<Self, BackendError> {
        let b = Self::attach(pool, array_id)?;
        b.recover()?;
        Ok(b)
    }

    /// The backend of array `array_id` in `pool` (its namespace made if missing), touching
    /// no image: what a standby gateway holds until it serves.
    pub fn attach(pool: Arc<Pool>, array_id: u32) -> Result<Self, BackendError> {
        pool.create_namespace()
            .map_err(|e| match full_or(&pool, e) {
                e if e.is_no_space() => BackendError::NoSpace(Cause::Rbd(e)),
                e => BackendError::Io(Cause::Rbd(e)),
            })?;
        let b = RbdBackend {
            pool,
            prefix: format!("sl-{array_id:08x}-"),
            open: Mutex::new(Default::default()),
            cloning: Mutex::new(()),
        };
        Ok(b)
    }

    /// The RADOS pool (and namespace) the images are in, on this backend's client.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Clears what a killed predecessor left, once this process serves the array (the only
    /// one that does: with several gateways, the one in office, after it fenced the previous
    /// one): clones it left staged (made, not yet renamed) are removed, and the exclusive
    /// locks it held on the array's images are broken (else the first write or snapshot of
    /// each waits until the dead client's watch expires, 30 s by default: longer than VSS
    /// holds writes for a commit). Breaking a lock blocklists its holder.
    pub fn recover(&self) -> Result<(), BackendError> {
        let b = self;
        let images = b.pool.list().map_err(|e| BackendError::Io(Cause::Rbd(e)))?;
        for image in images.iter().filter(|i| i.starts_with(&b.prefix)) {
            let broken = match b.pool.open(image) {
                Ok(h) => h.break_locks(),
                Err(e) if e.is_not_found() => continue,
                Err(e) => Err(e),
            };
            match broken {
                Ok(0) => {}
                Ok(n) => tracing::warn!(%image, owners = n,
                    "broke the exclusive lock a previous process left on the image"),
                Err(e) => tracing::warn!(%image, error = %e,
                    "could not break the exclusive lock on the image; its first write waits for it"),
            }
        }
        // A staged clone is watched by the process that was making it until that client is
        // blocklisted (above, when it held a lock, as it does after a commit) and the OSDs
        // drop its watch, or the watch expires: a few tries, then it is left for the next
        // first use or delete of its volume, or the next start.
        let staged = b.staged_name("");
        for name in images.iter().filter_map(|i| i.strip_prefix(&staged)) {
            let mut tries = 0;
            loop {
                match b.remove_staged(name) {
                    Ok(()) => break,
                    Err(BackendError::Io(Cause::Rbd(e))) if e.is_busy() && tries < 20 => {
                        tries += 1;
                        std::thread::sleep(std::time::Duration::from_millis(250));
                    }
                    Err(e) => {
                        tracing::warn!(volume = name, error = %e,
                            "a staged clone is still in use; removed later");
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// The image that holds volume `name`.
    pub fn image_name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Where the clone of snapshot volume `name` is made before it is renamed to
    /// [`RbdBackend::image_name`]: not a name of this array's volumes, so never listed.
    pub fn staged_name(&self, name: &str) -> String {
        format!("slc-{}{name}", &self.prefix["sl-".len()..])
    }

    /// The snapshot, on its source's image, that snapshot volume `clone` is a clone of.
    pub fn snap_name(clone: &str) -> String {
        format!("sl-{clone}")
    }

    fn cloning(&self) -> std::sync::MutexGuard<'_, ()> {
        self.cloning.lock().expect("cloning lock")
    }

    /// Removes the staged clone of `name` a killed process may have left (none: no error).
    fn remove_staged(&self, name: &str) -> Result<(), BackendError> {
        let staged = self.staged_name(name);
        match self.pool.remove(&staged) {
            Ok(()) => {
                tracing::warn!(volume = name, image = %staged, "removed a clone left half made");
                Ok(())
            }
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(err(name, e)),
        }
    }

    /// [`Backend::materialize`], with [`RbdBackend::cloning`] held.
    fn materialize_locked(&self, name: &str) -> Result<(), BackendError> {
        let Some((source, _)) = self.pending(name)? else {
            return Ok(());
        };
        self.remove_staged(name)?;
        let staged = self.staged_name(name);
        let t0 = std::time::Instant::now();
        self.pool
            .clone_image(&source, &Self::snap_name(name), &staged)
            .map_err(|e| err(name, e))?;
        match self.pool.rename(&staged, &self.image_name(name)) {
            Ok(()) => {
                tracing::debug!(
                    volume = name,
                    elapsed_ms = t0.elapsed().as_millis() as u64,
                    "clone made"
                );
                Ok(())
            }
            Err(e) => {
                // Made meanwhile by another gateway of this array, or a failure: either way
                // the staged one goes.
                let _ = self.pool.remove(&staged);
                if e.is_exists() {
                    Ok(())
                } else {
                    Err(err(name, e))
                }
            }
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, Served>> {
        self.open.lock().expect("open images lock")
    }

    /// Drops everything read ahead of volume `name` in this process: for a gateway that
    /// takes the volume's LUN over from another, which may have written it meanwhile.
    pub fn forget_read_ahead(&self, name: &str) {
        if let Some(s) = self.table().get(name) {
            s.forget(0, u64::MAX);
        }
    }

    /// The shared read-write handle of volume `name`.
    fn image(&self, name: &str) -> Result<Arc<Image>, BackendError> {
        Ok(self.served(name)?.image)
    }

    /// The shared read-write handle of volume `name`, with its readahead.
    fn served(&self, name: &str) -> Result<Served, BackendError> {
        let mut t = self.table();
        if let Some(i) = t.get(name) {
            return Ok(i.clone());
        }
        let i = match self.pool.open(&self.image_name(name)) {
            Ok(i) => i,
            Err(e) if e.is_not_found() => {
                // A snapshot volume whose clone is not made yet, or is being made: made (or
                // waited for) now, bounded by the cluster calls' timeout.
                drop(t);
                self.materialize(name)?;
                t = self.table();
                if let Some(i) = t.get(name) {
                    return Ok(i.clone());
                }
                self.pool
                    .open(&self.image_name(name))
                    .map_err(|e| err(name, e))?
            }
            Err(e) => return Err(err(name, e)),
        };
        let i = Served::open(i)?;
        t.insert(name.into(), i.clone());
        Ok(i)
    }

    /// The source image and size of snapshot volume `name` whose clone is not made yet.
    fn pending(&self, name: &str) -> Result<Option<(String, u64)>, BackendError> {
        let snap = Self::snap_name(name);
        let images = self
            .pool
            .list()
            .map_err(|e| BackendError::Io(Cause::Rbd(e)))?;
        if images.contains(&self.image_name(name)) {
            return Ok(None);
        }
        for image in images.iter().filter(|i| i.starts_with(&self.prefix)) {
            let h = match self.pool.open_read_only(image, None) {
                Ok(h) => h,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(BackendError::Io(Cause::Rbd(e))),
            };
            let snaps = h.snaps().map_err(|e| BackendError::Io(Cause::Rbd(e)))?;
            if let Some(s) = snaps.iter().find(|s| s.name == snap) {
                return Ok(Some((image.clone(), s.size)));
            }
        }
        Ok(None)
    }

    fn info(&self, name: &str, image: &Image) -> Result<VolumeInfo, BackendError> {
        Ok(VolumeInfo {
            name: name.into(),
            size_bytes: image.size().map_err(|e| err(name, e))?,
            allocated_bytes: image.used_bytes().map_err(|e| err(name, e))?,
        })
    }

    /// A read-write handle on `image`: the one this process serves the volume through when
    /// it has one, so a snapshot removed or a clone flattened does not take the image's
    /// exclusive lock away from the handle serving the host's writes (handing a lock
    /// between two handles of one process stalls the writes behind it).
    fn head(&self, image: &str) -> Result<Arc<Image>, rbd::Error> {
        if let Some(name) = image.strip_prefix(&self.prefix) {
            if let Some(i) = self.table().get(name) {
                return Ok(i.image.clone());
            }
        }
        self.pool.open(image).map(Arc::new)
    }

    /// Removes snapshot `snap` of `image` if no clone uses it any more.
    fn drop_snap_if_unused(&self, image: &str, snap: &str) -> Result<(), rbd::Error> {
        let at = match self.pool.open_read_only(image, Some(snap)) {
            Ok(at) => at,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
        };
        if !at.children()?.is_empty() {
            return Ok(());
        }
        drop(at);
        let head = self.head(image)?;
        match head.snap_remove(snap) {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }

    /// The names of the snapshots on every image of the array among `images`: read through
    /// the handle serving the image when this process has one, else through a read-only
    /// handle; the images are looked at in parallel (one after the other, each open costs
    /// the cluster round trips, and a group commit waits for all of them).
    fn snapshot_names(
        &self,
        images: &[String],
    ) -> Result<std::collections::BTreeSet<String>, BackendError> {
        const THREADS: usize = 8;
        let ours: Vec<&String> = images
            .iter()
            .filter(|i| i.starts_with(&self.prefix))
            .collect();
        let served = self.table().clone();
        let per_thread = ours.len().div_ceil(THREADS).max(1);
        let found: Vec<Result<Vec<String>, rbd::Error>> = std::thread::scope(|s| {
            let handles: Vec<_> = ours
                .chunks(per_thread)
                .map(|chunk| {
                    let served = &served;
                    s.spawn(move || {
                        let mut names = Vec::new();
                        for image in chunk {
                            let name = &image[self.prefix.len()..];
                            let snaps = match served.get(name) {
                                Some(h) => h.image.snaps()?,
                                None => match self.pool.open_read_only(image, None) {
                                    Ok(h) => h.snaps()?,
                                    Err(_) => continue, // deleted since the listing
                                },
                            };
                            names.extend(snaps.into_iter().map(|s| s.name));
                        }
                        Ok(names)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("snapshot listing thread"))
                .collect()
        });
        let mut names = std::collections::BTreeSet::new();
        for f in found {
            names.extend(f.map_err(|e| BackendError::Io(Cause::Rbd(e)))?);
        }
        Ok(names)
    }

    /// Undoes a failed group: removes the snapshots taken.
    fn undo(&self, snaps: &[(Arc<Image>, String)]) {
        for (img, s) in snaps {
            let _ = img.snap_remove(s);
        }
    }
}

/// The pool space one snapshot LUN's RBD snapshot and clone are reckoned to take at most.
pub const RBD_COPY_METADATA_BYTES: u64 = 64 * 1024;

impl Backend for RbdBackend {
    fn create_volume(&self, name: &str, size_bytes: u64) -> Result<(), BackendError> {
        self.pool
            .create(&self.image_name(name), size_bytes, None)
            .map_err(|e| err(name, full_or(&self.pool, e)))
    }

    fn delete_volume(&self, name: &str) -> Result<(), BackendError> {
        let _g = self.cloning();
        let image = self.image_name(name);
        self.table().remove(name);
        let (parent, snaps) = {
            let h = match self.pool.open_read_only(&image, None) {
                Ok(h) => h,
                Err(e) if e.is_not_found() => {
                    // A snapshot volume whose clone was never made: its snapshot is all.
                    let Some((source, _)) = self.pending(name)? else {
                        return Err(BackendError::NoVolume(name.into()));
                    };
                    self.remove_staged(name)?;
                    return self
                        .head(&source)
                        .and_then(|h| h.snap_remove(&Self::snap_name(name)))
                        .map_err(|e| err(name, e));
                }
                Err(e) => return Err(err(name, e)),
            };
            (
                h.parent().map_err(|e| err(name, e))?,
                h.snaps().map_err(|e| err(name, e))?,
            )
        };
        // Snapshots of this volume: their clones are made if still pending, and flattened, so
        // they keep their data when the source goes.
        for s in &snaps {
            if let Some(clone) = s.name.strip_prefix("sl-") {
                self.materialize_locked(clone)?;
            }
        }
        if !snaps.is_empty() {
            let head = self.pool.open(&image).map_err(|e| err(name, e))?;
            for s in &snaps {
                let at = self
                    .pool
                    .open_read_only(&image, Some(&s.name))
                    .map_err(|e| err(name, e))?;
                for (_, child) in at.children().map_err(|e| err(name, e))? {
                    self.head(&child)
                        .and_then(|c| c.flatten())
                        .map_err(|e| err(&child, e))?;
                }
                head.snap_remove(&s.name).map_err(|e| err(name, e))?;
            }
        }
        self.pool.remove(&image).map_err(|e| err(name, e))?;
        if let Some(p) = parent {
            if p.pool == self.pool.name() && p.namespace == self.pool.namespace() {
                if let Err(e) = self.drop_snap_if_unused(&p.image, &p.snap) {
                    tracing::warn!(volume = name, parent = %p.image, snap = %p.snap, error = %e,
                        "the snapshot the deleted clone came from could not be removed");
                }
            }
        }
        Ok(())
    }

    /// A plex copy on Ceph is a flattened clone: librbd copies every object the clone still
    /// reads from its parent snapshot into the clone's own objects, and cuts the link.
    fn plex_support(&self) -> Result<(), String> {
        Ok(())
    }

    /// `rbd_flatten` on the handle serving the volume (hosts keep reading and writing it
    /// meanwhile; librbd serialises the copy-up with their I/O), then the per-image snapshot
    /// the clone came from goes once nothing else uses it. librbd's flatten cannot be
    /// interrupted: `cancel` is honoured before it starts, and a flatten that was running
    /// when the daemon died is run again (librbd copies only the objects the clone lacks).
    fn detach(
        &self,
        name: &str,
        progress: &(dyn Fn(u8) + Sync),
        cancel: &AtomicBool,
    ) -> Result<(), BackendError> {
        let image = self.image(name)?;
        let Some(parent) = image.parent().map_err(|e| err(name, e))? else {
            progress(100);
            return Ok(());
        };
        if cancel.load(Ordering::Relaxed) {
            return Err(BackendError::Cancelled);
        }
        progress(0);
        let t0 = std::time::Instant::now();
        image.flatten().map_err(|e| err(name, e))?;
        tracing::debug!(
            volume = name,
            elapsed_ms = t0.elapsed().as_millis() as u64,
            "clone flattened"
        );
        if parent.pool == self.pool.name() && parent.namespace == self.pool.namespace() {
            let _g = self.cloning();
            if let Err(e) = self.drop_snap_if_unused(&parent.image, &parent.snap) {
                tracing::warn!(volume = name, parent = %parent.image, snap = %parent.snap,
                    error = %e, "the snapshot the flattened clone came from could not be removed");
            }
        }
        progress(100);
        Ok(())
    }

    fn resize_volume(&self, name: &str, size_bytes: u64) -> Result<(), BackendError> {
        let served = self.served(name)?;
        if size_bytes < served.image.size().map_err(|e| err(name, e))? {
            return Err(BackendError::Shrink(name.into()));
        }
        let r = served.image.resize(size_bytes);
        served.forget(0, u64::MAX);
        r.map_err(|e| err(name, e))
    }

    /// Metadata only: an RBD snapshot and a clone v2 child copy no data; they add a few small
    /// RADOS objects and omap entries per member (the clone's header and id objects, its
    /// directory and children entries). [`RBD_COPY_METADATA_BYTES`] per member bounds them
    /// (an estimate, not measured against a cluster's accounting); the array compares it
    /// with the free space [`Backend::usage`] reports from the cluster.
    fn snapshot_cost(&self, pairs: &[(String, String)]) -> Result<u64, BackendError> {
        Ok(pairs.len() as u64 * RBD_COPY_METADATA_BYTES)
    }

    /// Every source's snapshot is taken at once (in parallel, skipping quiesce: the caller
    /// holds the writes); on any failure none is left. The clones come later
    /// ([`Backend::materialize`]).
    fn snapshot_group(&self, pairs: &[(String, String)]) -> Result<(), BackendError> {
        let t0 = std::time::Instant::now();
        // One look at the pool: the images, and the snapshots waiting for their clones.
        let images = self
            .pool
            .list()
            .map_err(|e| BackendError::Io(Cause::Rbd(e)))?;
        let taken_names = self.snapshot_names(&images)?;
        let scanned = t0.elapsed();
        let mut sources = Vec::new();
        for (src, clone) in pairs {
            sources.push(self.image(src)?);
            if images.contains(&self.image_name(clone))
                || taken_names.contains(&Self::snap_name(clone))
                || pairs.iter().filter(|(_, c)| c == clone).count() > 1
            {
                return Err(BackendError::Exists(clone.clone()));
            }
        }
        let results: Vec<Result<(), rbd::Error>> = std::thread::scope(|s| {
            let handles: Vec<_> = sources
                .iter()
                .zip(pairs)
                .map(|(img, (_, clone))| {
                    s.spawn(move || img.snap_create(&Self::snap_name(clone), true))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("snapshot thread"))
                .collect()
        });
        let mut taken = Vec::new();
        let mut failed = None;
        for ((img, (src, clone)), r) in sources.iter().zip(pairs).zip(results) {
            match r {
                Ok(()) => taken.push((img.clone(), Self::snap_name(clone))),
                Err(e) if e.is_exists() => {
                    failed = failed.or(Some(BackendError::Exists(clone.clone())))
                }
                Err(e) => failed = failed.or(Some(err(src, full_or(&self.pool, e)))),
            }
        }
        if let Some(e) = failed {
            self.undo(&taken);
            return Err(e);
        }
        tracing::debug!(
            members = pairs.len(),
            images = images.len(),
            scan_ms = scanned.as_millis() as u64,
            snapshots_ms = (t0.elapsed() - scanned).as_millis() as u64,
            "group snapshot taken"
        );
        Ok(())
    }

    /// Makes the clone of a snapshot volume (idempotent; nothing to do for other volumes),
    /// staged then renamed; a call while another makes it waits for that one.
    fn materialize(&self, name: &str) -> Result<(), BackendError> {
        let _g = self.cloning();
        self.materialize_locked(name)
    }

    fn volumes(&self) -> Result<Vec<VolumeInfo>, BackendError> {
        let mut out = Vec::new();
        let images = self
            .pool
            .list()
            .map_err(|e| BackendError::Io(Cause::Rbd(e)))?;
        let mut pending = Vec::new();
        for image in &images {
            let Some(name) = image.strip_prefix(&self.prefix) else {
                continue;
            };
            match self.pool.open_read_only(image, None) {
                Ok(h) => {
                    out.push(self.info(name, &h)?);
                    for s in h.snaps().map_err(|e| err(name, e))? {
                        if let Some(clone) = s.name.strip_prefix("sl-") {
                            if !images.contains(&self.image_name(clone)) {
                                pending.push(VolumeInfo {
                                    name: clone.into(),
                                    size_bytes: s.size,
                                    allocated_bytes: 0,
                                });
                            }
                        }
                    }
                }
                Err(e) if e.is_not_found() => {} // deleted since the listing
                Err(e) => return Err(err(name, e)),
            }
        }
        out.extend(pending);
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn volume(&self, name: &str) -> Result<VolumeInfo, BackendError> {
        match self.pool.open_read_only(&self.image_name(name), None) {
            Ok(h) => self.info(name, &h),
            Err(e) if e.is_not_found() => match self.pending(name)? {
                Some((_, size)) => Ok(VolumeInfo {
                    name: name.into(),
                    size_bytes: size,
                    allocated_bytes: 0,
                }),
                None => Err(BackendError::NoVolume(name.into())),
            },
            Err(e) => Err(err(name, e)),
        }
    }

    /// The cluster's capacity (unbounded when the cluster reports none: without a manager)
    /// and the data this array's images hold.
    fn usage(&self) -> Result<PoolUsage, BackendError> {
        let cluster = self
            .pool
            .cluster()
            .usage()
            .map_err(|e| BackendError::Io(Cause::Rbd(e)))?;
        let allocated: u64 = self.volumes()?.iter().map(|v| v.allocated_bytes).sum();
        Ok(PoolUsage {
            capacity_bytes: if cluster.total_bytes == 0 {
                u64::MAX
            } else {
                cluster.total_bytes.max(allocated)
            },
            allocated_bytes: allocated,
        })
    }

    fn device(&self, name: &str) -> Result<scsi::Device, BackendError> {
        Ok(Arc::new(RbdVolume {
            served: self.served(name)?,
        }))
    }

    /// When `from` is a clone of a snapshot of `to` (a snapshot LUN resynced onto its
    /// source), only what changed is copied: the extents `to` changed since the snapshot
    /// and those the clone wrote, both from `rbd_diff_iterate2`. Otherwise a full copy.
    fn resync(
        &self,
        from: &str,
        to: &str,
        progress: &(dyn Fn(u8) + Sync),
        cancel: &AtomicBool,
    ) -> Result<(), BackendError> {
        let src = self.image(from)?;
        let served = self.served(to)?;
        let dst = &served.image;
        let parent = src.parent().map_err(|e| err(from, e))?;
        let snap = match parent {
            Some(p)
                if p.image == self.image_name(to)
                    && p.pool == self.pool.name()
                    && p.namespace == self.pool.namespace() =>
            {
                p.snap
            }
            _ => return crate::copy_volume(self, from, to, progress, cancel),
        };
        let size = src.size().map_err(|e| err(from, e))?;
        if dst.size().map_err(|e| err(to, e))? < size {
            let r = dst.resize(size);
            served.forget(0, u64::MAX);
            r.map_err(|e| err(to, e))?;
        }
        let mut extents = Vec::new();
        dst.diff(Some(&snap), 0, size, true, false, |e| {
            extents.push((e.offset, e.len));
            !cancel.load(Ordering::Relaxed)
        })
        .map_err(|e| {
            if e.is_cancelled() {
                BackendError::Cancelled
            } else {
                err(to, e)
            }
        })?;
        src.diff(None, 0, size, false, false, |e| {
            extents.push((e.offset, e.len));
            !cancel.load(Ordering::Relaxed)
        })
        .map_err(|e| {
            if e.is_cancelled() {
                BackendError::Cancelled
            } else {
                err(from, e)
            }
        })?;
        extents.sort();
        let total: u64 = extents.iter().map(|e| e.1).sum::<u64>().max(1);
        let (mut done, mut last) = (0u64, 0u8);
        progress(0);
        let mut buf = Vec::new();
        for (off, len) in extents {
            let mut pos = off;
            while pos < off + len {
                if cancel.load(Ordering::Relaxed) {
                    return Err(BackendError::Cancelled);
                }
                let n = (off + len - pos).min(4 << 20) as usize;
                buf.resize(n, 0);
                src.read(pos, &mut buf).map_err(|e| err(from, e))?;
                let r = if buf.iter().all(|b| *b == 0) {
                    dst.discard(pos, n as u64)
                } else {
                    dst.write(pos, &buf)
                };
                served.forget(pos, n as u64);
                r.map_err(|e| err(to, e))?;
                pos += n as u64;
                done += n as u64;
                let pct = ((done as u128 * 100) / total as u128).min(99) as u8;
                if pct > last {
                    last = pct;
                    progress(pct);
                }
            }
        }
        dst.flush().map_err(|e| err(to, e))?;
        tracing::info!(from, to, bytes = done, "resync copied the changed extents");
        progress(100);
        Ok(())
    }
}
