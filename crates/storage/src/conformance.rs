//! The behaviour every [`Backend`] must have, as cases any engine's tests can run.
//!
//! Each case takes a factory that returns a fresh, empty backend together with whatever has
//! to live as long as it (a temporary directory, a connection), and panics when the backend
//! does not behave. [`run_all`] runs every case; an engine's test suite calls it once:
//!
//! ```no_run
//! storage::conformance::run_all(|| {
//!     let dir = tempfile::tempdir().unwrap();
//!     (storage::FileBackend::open(dir.path()).unwrap(), dir)
//! });
//! ```
//!
//! Volume sizes here are whole MiB, a multiple of every engine's
//! [`Backend::size_granularity`].

use std::sync::Mutex;
use std::sync::atomic::AtomicBool;

use scsi::DeviceError;

use crate::{Backend, BackendError, LOGICAL_BLOCK_SIZE, copy_volume};

const MIB: u64 = 1 << 20;

macro_rules! suite {
    ($($case:ident),+ $(,)?) => {
        /// The name of every case, in the order [`run_all`] runs them.
        pub const CASES: &[&str] = &[$(stringify!($case)),+];

        /// Runs every case, each on a fresh backend from `make`.
        pub fn run_all<B: Backend, G>(make: impl Fn() -> (B, G)) {
            $(
                eprintln!("storage conformance: {}", stringify!($case));
                $case(&make);
            )+
        }
    };
}

suite!(
    create_write_read_back,
    create_refuses_an_existing_name,
    delete_removes_the_volume,
    missing_volumes_are_reported_by_name,
    resize_grows_keeps_data_and_refuses_to_shrink,
    io_beyond_the_end_is_out_of_range,
    volumes_lists_each_volume_once_with_its_size,
    group_snapshot_is_point_in_time_and_writable,
    snapshot_group_of_missing_source_creates_nothing,
    snapshot_group_onto_an_existing_name_creates_nothing,
    deleting_a_snapshot_leaves_its_source,
    materialize_is_idempotent,
    resync_copies_and_can_be_cancelled,
    detach_makes_a_plex_copy_or_says_why_not,
    copy_volume_copies_grows_and_keeps_zeros,
    usage_counts_written_data,
    snapshot_cost_covers_what_a_snapshot_takes,
);

/// `len` bytes that differ from block to block and from seed to seed.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            seed.wrapping_add((i % 251) as u8)
                .wrapping_add((i / 512) as u8)
        })
        .collect()
}

fn read<B: Backend>(b: &B, name: &str, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    b.device(name).unwrap().read_at(offset, &mut buf).unwrap();
    buf
}

fn write<B: Backend>(b: &B, name: &str, offset: u64, data: &[u8]) {
    b.device(name)
        .unwrap()
        .write_at(offset, data, false)
        .unwrap();
}

fn names<B: Backend>(b: &B) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = b
        .volumes()
        .unwrap()
        .into_iter()
        .map(|v| (v.name, v.size_bytes))
        .collect();
    v.sort();
    v
}

fn is_no_volume(r: Result<impl std::fmt::Debug, BackendError>, name: &str) -> bool {
    matches!(r, Err(BackendError::NoVolume(n)) if n == name)
}

fn pair(source: &str, clone: &str) -> (String, String) {
    (source.into(), clone.into())
}

/// A new volume has its size, reads zeros, and reads back what was written.
pub fn create_write_read_back<B: Backend, G>(make: &impl Fn() -> (B, G)) {
    let (b, _g) = make();
    let unit = b.size_granularity();
    assert!(unit >= LOGICAL_BLOCK_SIZE as u64 && unit % LOGICAL_BLOCK_SIZE as u64 == 0);
    assert_eq!(MIB % unit, 0, "sizes of whole MiB are valid");
    b.create_volume("a", 2 * MIB).unwrap();
    let info = b.volume("a").unwrap();
    assert_eq!((info.name.as_str(), info.size_bytes), ("a", 2 * MIB));
    let dev = b.device("a").unwrap();
    assert_eq!(dev.block_size(), LOGICAL_BLOCK_SIZE);
    assert_eq!(dev.num_blocks(), 2 * MIB / LOGICAL_BLOCK_SIZE as u64);
    assert_eq!(
        read(&b, "a", 0, 8192),
        vec![0u8; 8192],
        "a new volume reads zeros"
    );
    let data = pattern(3, 8192);
    dev.write_at(MIB - 4096, &data, false).unwrap();
    dev.flush().unwrap();
    assert_eq!(read(&b, "a", MIB - 4096, 8192), data);
    assert_eq!(read(&b, "a", MIB + 4096, 512), vec![0u8; 512]);
}

/// Creating a name that exists fails and leaves the volume as it was.
pub fn create_refuses_an_existing_name<B: Backend, G>(make: &impl Fn() -> (B, G)) {
    let (b, _g) = make();
    b.create_volume("a", MIB).unwrap();
    write(&b, "a", 0, &pattern(1, 512));
    let err = b.create_volume("a", 2 * MIB).unwrap_err();
    assert!(
        matches!(&err, BackendError::Exists(n) if n == "a"),
        "{err:?}"
    );
    assert_eq!(b.volume("a").unwrap().size_bytes, MIB);
    assert_eq!(read(&b, "a", 0, 512), pattern(1, 512));
}

/// A deleted volume is gone from every method; deleting it again fails.
pub fn delete_removes_the_volume<B: Backend, G>(make: &impl Fn() -> (B, G)) {
    let (b, _g) = make();
    b.create_volume("a", MIB).unwrap();
    b.create_volume("b", MIB).unwrap();
    write(&b, "b", 0, &pattern(2, 512));
    b.delete_volume("a").unwrap();
    assert!(is_no_volume(b.volume("a"), "a"));
    assert!(is_no_volume(b.device("a").map(|_| ()), "a"));
    assert!(is_no_volume(b.delete_volume("a"), "a"));
    assert_eq!(names(&b), vec![("b".to_string(), MIB)]);
    assert_eq!(read(&b, "b", 0, 512), pattern(2, 512));
    // The name is free again, for an empty volume.
    b.create_volume("a", MIB).unwrap();
    assert_eq!(read(&b, "a", 0, 512), vec![0u8; 512]);
}

/// Every method names the missing volume.
pub fn missing_volumes_are_reported_by_name<B: Backend, G>(make: &impl Fn() -> (B, G)) {
    let (b, _g) = make();
    assert!(is_no_volume(b.volume("x"), "x"));
    assert!(is_no_volume(b.device("x").map(|_| ()), "x"));
    assert!(is_no_volume(b.delete_volume("x"), "x"));
    assert!(is_no_volume(b.resize_volume("x", MIB), "x"));
    assert!(b.volumes().unwrap().is_empty());
}

/// Growing keeps the data, every device of the volume sees the new size, shrinking fails.
pub fn resize_grows_keeps_data_and_refuses_to_shrink<B: Backend, G>(make: &impl Fn() -> (B, G)) {
    let (b, _g) = make();
    b.create_volume("a", MIB).unwrap();
    let before = b.device("a").unwrap();
    before.write_at(0, &pattern(4, 4096), false).unwrap();
    b.resize_volume("a", 3 * MIB).unwrap();
    assert_eq!(b.volume("a").unwrap().size_bytes, 3 * MIB);
    assert_eq!(
        before.num_blocks(),
        3 * MIB / LOGICAL_BLOCK_SIZE as u64,
        "a device opened before the resize sees the new size"
    );
    assert_eq!(read(&b, "a", 0, 4096), pattern(4, 4096));
    assert_eq!(read(&b, "a", 2 * MIB, 4096), vec![0u8; 4096]);
    write(&b, "a", 3 * MIB - 512, &pattern(5, 512));
    assert_eq!(read(&b, "a", 3 * MIB - 512, 512), pattern(5, 512));
    let err = b.resize_volume("a", MIB).unwrap_err();
    assert!(
        matches!(&err, BackendError::Shrink(n) if n == "a"),
        "{err:?}"
    );
    assert_eq!(b.volume("a").unwrap().size_bytes, 3 * MIB);
    b.resize_volume("a", 3 * MIB).unwrap();
}

/// Reads and writes that pass the end fail without touching the volume.
pub fn io_beyond_the_end_is_out_of_range<B: Backend, G>(make: &impl Fn() -> (B, G)) {
    let (b, _g) = make();
    b.create_volume("a", MIB).unwrap();
    let dev = b.device("a").unwrap();
    let mut buf = vec![0u8; 1024];
    assert_eq!(
        dev.read_at(MIB - 512, &mut buf),
        Err(DeviceError::OutOfRange)
    );
    assert_eq!(
        dev.write_at(MIB - 512, &pattern(6, 1024), false),
        Err(DeviceError::OutOfRange)
    );
    assert_eq!(
        dev.read_at(MIB, &mut buf[..512]),
        Err(DeviceError::OutOfRange)
    );
    assert_eq!(read(&b, "a", MIB - 512, 512), vec![0u8; 512]);
}

/// `volumes()` lists every volume and snapshot once, under its own name, with its size.
pub fn volumes_lists_each_volume_once_with_its_size<B: Backend, G>(make: &impl Fn() -> (B, G)) {
    let (b, _g) = make();
    b.create_volume("a", MIB).unwrap();
    b.create_volume("b", 2 * MIB).unwrap();
    b.snapshot_group(&[pair("b", "s")]).unwrap();
    let want = vec![
        ("a".to_string(), MIB),
        ("b".to_string(), 2 * MIB),
        ("s".to_string(), 2 * MIB),
    ];
    assert_eq!(names(&b), want, "before the clone is materialised");
    b.materialize("s").unwrap();
    assert_eq!(names(&b), want, "after");
    for (name, size) in &want {
        let v = b.volume(name).unwrap();
        assert_eq!((&v.name, v.size_bytes), (name, *size));
    }
}

/// A group snapshot holds every source as it was at one instant, and is writable on its own.
pub fn group_snapshot_is_point_in_time_and_writable<B: Backend, G>(make: &impl Fn() -> (B, G)) {
    let (b, _g) = make();
    b.create_volume("a", MIB).unwrap();
    b.create_volume("b", MIB).unwrap();
    let a = b.device("a").unwrap();
    a.write_at(4096, &[7u8; 512], false).unwrap();
    b.snapshot_group(&[pair("a", "a1"), pair("b", "b1")])
        .unwrap();
    a.write_at(4096, &[9u8; 512], false).unwrap();
    let s = b.device("a1").unwrap();
    let mut buf = [0u8; 512];
    s.read_at(4096, &mut buf).unwrap();
    assert_eq!(buf, [7u8; 512], "clone keeps the instant's data");
    s.write_at(0, &[1u8; 512], false).unwrap();
    a.read_at(0, &mut buf).unwrap();
    assert_eq!(
        buf, [0u8; 512],
        "writes to the clone do not reach the source"
    );
    s.read_at(0, &mut buf).unwrap();
    assert_eq!(buf, [1u8; 512], "the clone keeps its own writes");
    assert_eq!(b.volume("b1").unwrap().size_bytes, MIB);
}

/// A group naming a missing source fails and creates no clone.
pub fn snapshot_group_of_missing_source_creates_nothing<B: Backend, G>(make: &impl Fn() -> (B, G)) {
    let (b, _g) = make();
    b.create_volume("a", MIB).unwrap();
    let err = b
        .snapshot_group(&[pair("a", "a1"), pair("zz", "z1")])
        .unwrap_err();
    assert!(
        matches!(&err, BackendError::NoVolume(n) if n == "zz"),
        "{err:?}"
    );
    assert!(matches!(b.volume("a1"), Err(BackendError::NoVolume(_))));
    assert_eq!(names(&b), vec![("a".to_string(), MIB)]);
}

/// A group whose clone name is taken fails and creates no clone.
pub fn snapshot_group_onto_an_existing_name_creates_nothing<B: Backend, G>(
    make: &impl Fn() -> (B, G),
) {
    let (b, _g) = make();
    b.create_volume("a", MIB).unwrap();
    b.create_volume("b", MIB).unwrap();
    write(&b, "b", 0, &pattern(8, 512));
    let err = b
        .snapshot_group(&[pair("a", "a1"), pair("a", "b")])
        .unwrap_err();
    assert!(
        matches!(&err, BackendError::Exists(n) if n == "b"),
        "{err:?}"
    );
    assert!(matches!(b.volume("a1"), Err(BackendError::NoVolume(_))));
    assert_eq!(read(&b, "b", 0, 512), pattern(8, 512), "b is untouched");
    b.snapshot_group(&[pair("a", "a1")]).unwrap();
    let err = b.snapshot_group(&[pair("b", "a1")]).unwrap_err();
    assert!(
        matches!(&err, BackendError::Exists(n) if n == "a1"),
        "{err:?}"
    );
}

/// Deleting a snapshot (release) leaves its source and the other snapshots as they were.
pub fn deleting_a_snapshot_leaves_its_source<B: Backend, G>(make: &impl Fn() -> (B, G)) {
    let (b, _g) = make();
    b.create_volume("a", MIB).unwrap();
    write(&b, "a", 0, &pattern(9, 4096));
    b.snapshot_group(&[pair("a", "s1")]).unwrap();
    b.snapshot_group(&[pair("a", "s2")]).unwrap();
    write(&b, "s1", 0, &pattern(10, 512));
    b.delete_volume("s1").unwrap();
    assert!(is_no_volume(b.volume("s1"), "s1"));
    assert_eq!(read(&b, "a", 0, 4096), pattern(9, 4096));
    assert_eq!(read(&b, "s2", 0, 4096), pattern(9, 4096));
    // A snapshot never materialised goes as well.
    b.delete_volume("s2").unwrap();
    assert_eq!(names(&b), vec![("a".to_string(), MIB)]);
}

/// Materialising a snapshot's clone twice, or after first use, changes nothing.
pub fn materialize_is_idempotent<B: Backend, G>(make: &impl Fn() -> (B, G)) {
    let (b, _g) = make();
    b.create_volume("a", MIB).unwrap();
    write(&b, "a", 512, &pattern(11, 512));
    b.snapshot_group(&[pair("a", "s")]).unwrap();
    b.materialize("s").unwrap();
    write(&b, "s", 0, &pattern(12, 512));
    b.materialize("s").unwrap();
    assert_eq!(
        read(&b, "s", 0, 1024),
        [pattern(12, 512), pattern(11, 512)].concat()
    );
    b.materialize("a").unwrap();
    assert_eq!(read(&b, "a", 0, 512), vec![0u8; 512]);
}

/// [`Backend::resync`] copies a volume onto another (growing it) and can be cancelled.
pub fn resync_copies_and_can_be_cancelled<B: Backend, G>(make: &impl Fn() -> (B, G)) {
    let (b, _g) = make();
    b.create_volume("s", 3 * MIB).unwrap();
    b.create_volume("d", MIB).unwrap();
    write(&b, "s", 2 * MIB + 512, &[5u8; 512]);
    let seen = Mutex::new(Vec::new());
    b.resync(
        "s",
        "d",
        &|p| seen.lock().expect("seen lock").push(p),
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!(read(&b, "d", 2 * MIB + 512, 512), [5u8; 512]);
    assert_eq!(b.volume("d").unwrap().size_bytes, 3 * MIB);
    assert_eq!(seen.lock().expect("seen lock").last(), Some(&100));
    let err = b
        .resync("s", "d", &|_| {}, &AtomicBool::new(true))
        .unwrap_err();
    assert!(matches!(err, BackendError::Cancelled), "{err:?}");
}

/// [`Backend::detach`] (for an engine whose [`Backend::plex_support`] says yes): the clone
/// keeps the source's point-in-time bytes and its own writes, progress ends at 100, and the
/// clone outlives its source overwritten and then deleted, and the copy takes no more than
/// [`Backend::detach_cost`] announced. An engine that says no refuses
/// with [`BackendError::Unsupported`] and a reason.
pub fn detach_makes_a_plex_copy_or_says_why_not<B: Backend, G>(make: &impl Fn() -> (B, G)) {
    let (b, _g) = make();
    b.create_volume("a", 2 * MIB).unwrap();
    write(&b, "a", 0, &pattern(21, MIB as usize));
    b.snapshot_group(&[pair("a", "p")]).unwrap();
    let never = AtomicBool::new(false);
    if let Err(reason) = b.plex_support() {
        assert!(!reason.is_empty());
        let err = b.detach("p", &|_| {}, &never).unwrap_err();
        assert!(matches!(err, BackendError::Unsupported(_)), "{err:?}");
        return;
    }
    write(&b, "p", 4096, &pattern(22, 4096));
    let cost = b.detach_cost(&[pair("a", "p")]).unwrap();
    let before = b.usage().unwrap().allocated_bytes;
    let seen = Mutex::new(Vec::new());
    b.detach("p", &|p| seen.lock().expect("seen lock").push(p), &never)
        .unwrap();
    assert_eq!(seen.lock().expect("seen lock").last(), Some(&100));
    let took = b.usage().unwrap().allocated_bytes.saturating_sub(before);
    assert!(took <= cost, "the copy took {took} bytes, {cost} announced");
    // Idempotent.
    b.detach("p", &|_| {}, &never).unwrap();
    let mut want = pattern(21, MIB as usize);
    want[4096..8192].copy_from_slice(&pattern(22, 4096));
    write(&b, "a", 0, &pattern(23, 2 * MIB as usize));
    b.delete_volume("a").unwrap();
    assert!(
        read(&b, "p", 0, MIB as usize) == want,
        "the plex copy changed"
    );
    assert_eq!(read(&b, "p", MIB, 512), vec![0u8; 512]);
    assert!(is_no_volume(b.detach("gone", &|_| {}, &never), "gone"));
}

/// [`copy_volume`] (the resync of engines without their own) over this backend's devices:
/// the destination grows to the source's size, ranges the source holds as zeros read back
/// as zeros, progress only rises and ends at 100, cancel and missing names fail.
pub fn copy_volume_copies_grows_and_keeps_zeros<B: Backend, G>(make: &impl Fn() -> (B, G)) {
    let (b, _g) = make();
    b.create_volume("s", 3 * MIB).unwrap();
    b.create_volume("d", MIB).unwrap();
    write(&b, "s", 2 * MIB + 512, &pattern(13, 1024));
    write(&b, "d", 0, &pattern(14, 4096));
    let seen = Mutex::new(Vec::new());
    copy_volume(
        &b,
        "s",
        "d",
        &|p| seen.lock().expect("seen lock").push(p),
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!(b.volume("d").unwrap().size_bytes, 3 * MIB);
    assert_eq!(
        read(&b, "d", 0, 4096),
        vec![0u8; 4096],
        "zeros are copied too"
    );
    assert_eq!(read(&b, "d", 2 * MIB + 512, 1024), pattern(13, 1024));
    let seen = seen.into_inner().expect("seen lock");
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    assert_eq!((seen.first(), seen.last()), (Some(&0), Some(&100)));
    let err = copy_volume(&b, "s", "d", &|_| {}, &AtomicBool::new(true)).unwrap_err();
    assert!(matches!(err, BackendError::Cancelled), "{err:?}");
    let err = copy_volume(&b, "x", "d", &|_| {}, &AtomicBool::new(false)).unwrap_err();
    assert!(
        matches!(&err, BackendError::NoVolume(n) if n == "x"),
        "{err:?}"
    );
    let err = copy_volume(&b, "s", "y", &|_| {}, &AtomicBool::new(false)).unwrap_err();
    assert!(
        matches!(&err, BackendError::NoVolume(n) if n == "y"),
        "{err:?}"
    );
}

/// Written data shows in the volume's and the pool's allocation; a volume never claims to
/// hold more than its size.
pub fn usage_counts_written_data<B: Backend, G>(make: &impl Fn() -> (B, G)) {
    let (b, _g) = make();
    b.create_volume("a", 4 * MIB).unwrap();
    let (vol0, pool0) = (b.volume("a").unwrap(), b.usage().unwrap());
    write(&b, "a", MIB, &pattern(15, MIB as usize));
    b.device("a").unwrap().flush().unwrap();
    let (vol1, pool1) = (b.volume("a").unwrap(), b.usage().unwrap());
    assert!(
        vol1.allocated_bytes >= vol0.allocated_bytes + MIB,
        "{vol0:?} -> {vol1:?}"
    );
    assert!(vol1.allocated_bytes <= vol1.size_bytes, "{vol1:?}");
    assert!(
        pool1.allocated_bytes >= pool0.allocated_bytes + MIB,
        "{pool0:?} -> {pool1:?}"
    );
    assert!(pool1.capacity_bytes >= pool1.allocated_bytes, "{pool1:?}");
    let listed = b.volumes().unwrap();
    assert_eq!(listed, vec![vol1]);
}

/// What [`Backend::snapshot_cost`] announces covers the pool space the group snapshot and its
/// writable clones take (the array reserves that much before the commit).
pub fn snapshot_cost_covers_what_a_snapshot_takes<B: Backend, G>(make: &impl Fn() -> (B, G)) {
    let (b, _g) = make();
    b.create_volume("a", 4 * MIB).unwrap();
    b.create_volume("b", 2 * MIB).unwrap();
    write(&b, "a", 0, &pattern(16, 3 * MIB as usize));
    write(&b, "b", MIB, &pattern(17, MIB as usize));
    b.device("a").unwrap().flush().unwrap();
    b.device("b").unwrap().flush().unwrap();
    let pairs = vec![
        ("a".to_string(), "a-snap".to_string()),
        ("b".to_string(), "b-snap".to_string()),
    ];
    let cost = b.snapshot_cost(&pairs).unwrap();
    let before = b.usage().unwrap().allocated_bytes;
    b.snapshot_group(&pairs).unwrap();
    b.materialize("a-snap").unwrap();
    b.materialize("b-snap").unwrap();
    let after = b.usage().unwrap().allocated_bytes;
    assert!(
        after.saturating_sub(before) <= cost,
        "the snapshot took {} bytes, {cost} announced",
        after - before
    );
}
