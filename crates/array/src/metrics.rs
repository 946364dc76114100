//! What the daemon counts and how Prometheus reads it: per-LUN I/O counters and latency
//! histograms kept with atomics beside each LUN's device ([`MeteredDevice`]), the array's
//! own counters ([`ArrayMetrics`]: snapshot sets by outcome, commit duration, journal fsync
//! latency, reaper actions), and [`Exposition`], which reads those, the pool's accounting and
//! the iSCSI target's sessions at scrape time and writes the Prometheus text format through
//! `prometheus-client`.
//!
//! The data path pays a clock read before and after each read or write and four relaxed
//! atomic additions: no lock and no allocation per I/O. Names follow the node_exporter and
//! Ceph exporters: the `shadowlun_` prefix, base units (seconds, bytes), `_total` on
//! counters. `docs/array.md` lists every metric.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use scsi::{BlockDevice, DeviceError};

use crate::state::Array;

/// Upper bounds of the I/O latency buckets, in nanoseconds: 50 µs to 1 s.
const IO_BOUNDS_NS: &[u64] = &[
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    1_000_000_000,
];

/// Upper bounds of the commit and fsync buckets, in nanoseconds: 100 µs to 10 s.
const SLOW_BOUNDS_NS: &[u64] = &[
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    10_000_000_000,
];

/// A histogram of durations in atomics: one relaxed addition to a bucket and one to the sum
/// per observation. The count is the sum of the buckets, so a scrape never sees a count that
/// disagrees with its buckets.
#[derive(Debug)]
pub struct Histogram {
    bounds_ns: &'static [u64],
    /// One more than the bounds: the last counts what is above every bound.
    buckets: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
}

impl Histogram {
    fn new(bounds_ns: &'static [u64]) -> Self {
        Histogram {
            bounds_ns,
            buckets: (0..=bounds_ns.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }

    /// A histogram with the I/O latency buckets (50 µs to 1 s).
    pub fn io() -> Self {
        Self::new(IO_BOUNDS_NS)
    }

    /// A histogram with the buckets of slower work (100 µs to 10 s): commits, fsyncs.
    pub fn slow() -> Self {
        Self::new(SLOW_BOUNDS_NS)
    }

    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = self
            .bounds_ns
            .iter()
            .position(|b| ns <= *b)
            .unwrap_or(self.bounds_ns.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    fn encode(&self, mut e: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut buckets: Vec<(f64, u64)> = self
            .bounds_ns
            .iter()
            .zip(self.buckets.iter())
            .map(|(b, c)| (*b as f64 / 1e9, c.load(Ordering::Relaxed)))
            .collect();
        let above = self.buckets[self.bounds_ns.len()].load(Ordering::Relaxed);
        buckets.push((f64::INFINITY, above));
        let count = buckets.iter().map(|(_, c)| c).sum();
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        e.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }
}

/// One LUN's I/O as its initiators drove it.
#[derive(Debug)]
pub struct LunIo {
    read_ops: AtomicU64,
    read_bytes: AtomicU64,
    write_ops: AtomicU64,
    write_bytes: AtomicU64,
    read_latency: Histogram,
    write_latency: Histogram,
}

impl Default for LunIo {
    fn default() -> Self {
        LunIo {
            read_ops: AtomicU64::new(0),
            read_bytes: AtomicU64::new(0),
            write_ops: AtomicU64::new(0),
            write_bytes: AtomicU64::new(0),
            read_latency: Histogram::io(),
            write_latency: Histogram::io(),
        }
    }
}

impl LunIo {
    fn read(&self, bytes: usize, took: Option<Duration>) {
        self.read_ops.fetch_add(1, Ordering::Relaxed);
        self.read_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        if let Some(d) = took {
            self.read_latency.observe(d);
        }
    }

    fn write(&self, bytes: usize, took: Duration) {
        self.write_ops.fetch_add(1, Ordering::Relaxed);
        self.write_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.write_latency.observe(took);
    }

    /// Reads and writes completed, successful or not.
    pub fn ops(&self) -> (u64, u64) {
        (
            self.read_ops.load(Ordering::Relaxed),
            self.write_ops.load(Ordering::Relaxed),
        )
    }
}

/// A LUN's device with its I/O counted: what the iSCSI target serves.
pub struct MeteredDevice {
    inner: scsi::Device,
    io: Arc<LunIo>,
}

impl MeteredDevice {
    pub fn new(inner: scsi::Device, io: Arc<LunIo>) -> Self {
        MeteredDevice { inner, io }
    }
}

impl BlockDevice for MeteredDevice {
    fn block_size(&self) -> u32 {
        self.inner.block_size()
    }
    fn num_blocks(&self) -> u64 {
        self.inner.num_blocks()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        let t0 = Instant::now();
        let r = self.inner.read_at(offset, buf);
        self.io.read(buf.len(), Some(t0.elapsed()));
        r
    }
    fn read_to_vec(&self, offset: u64, len: usize, buf: &mut Vec<u8>) -> Result<(), DeviceError> {
        let t0 = Instant::now();
        let r = self.inner.read_to_vec(offset, len, buf);
        self.io.read(len, Some(t0.elapsed()));
        r
    }
    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), DeviceError> {
        let t0 = Instant::now();
        let r = self.inner.write_at(offset, data, fua);
        self.io.write(data.len(), t0.elapsed());
        r
    }
    fn flush(&self) -> Result<(), DeviceError> {
        self.inner.flush()
    }
    fn ready(&self) -> Result<(), DeviceError> {
        self.inner.ready()
    }
    fn discard(&self, offset: u64, len: u64) -> Result<(), DeviceError> {
        self.inner.discard(offset, len)
    }
    fn thin_provisioned(&self) -> bool {
        self.inner.thin_provisioned()
    }
    fn quick_io(&self) -> bool {
        self.inner.quick_io()
    }
    fn cached(&self, offset: u64, len: usize) -> bool {
        self.inner.cached(offset, len)
    }
    fn reads_now(&self) -> bool {
        self.inner.reads_now()
    }
    /// Counted and timed only when it read: a read that would wait is counted where it
    /// runs after.
    fn read_now(&self, offset: u64, len: usize, buf: &mut Vec<u8>) -> Result<bool, DeviceError> {
        let t0 = Instant::now();
        let r = self.inner.read_now(offset, len, buf);
        if !matches!(r, Ok(false)) {
            self.io.read(len, Some(t0.elapsed()));
        }
        r
    }
    fn file_span(&self, offset: u64, len: usize) -> Option<scsi::FileSpan> {
        // The transport sends these bytes from the file after the command: counted, but the
        // time the read takes is the socket's, not the device's, and is not observed.
        let span = self.inner.file_span(offset, len);
        if span.is_some() {
            self.io.read(len, None);
        }
        span
    }
    fn mapping_status(&self, offset: u64) -> Result<(bool, u64), DeviceError> {
        self.inner.mapping_status(offset)
    }
}

/// Every LUN's [`LunIo`], by LUN id. Touched when a LUN is first served and at scrape time,
/// never per I/O.
#[derive(Debug, Default)]
pub struct IoStats {
    luns: Mutex<HashMap<String, Arc<LunIo>>>,
}

impl IoStats {
    /// The counters of `lun`, made on first use.
    pub fn lun(&self, lun: &str) -> Arc<LunIo> {
        self.luns
            .lock()
            .expect("I/O statistics lock")
            .entry(lun.to_string())
            .or_default()
            .clone()
    }

    /// The counters of `lun` if it was ever served.
    pub fn get(&self, lun: &str) -> Option<Arc<LunIo>> {
        self.luns
            .lock()
            .expect("I/O statistics lock")
            .get(lun)
            .cloned()
    }

    /// Forgets LUNs for which `keep` is false (deleted LUNs; their ids are never reused).
    fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.luns
            .lock()
            .expect("I/O statistics lock")
            .retain(|k, _| keep(k));
    }
}

/// How a snapshot set ended up, for `shadowlun_snapshot_sets_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetOutcome {
    /// Prepared (first call for the set).
    Prepared,
    /// Refused at prepare: the pool cannot hold it.
    Refused,
    Committed,
    /// The commit failed (engine or journal).
    Failed,
    Completed,
    Aborted,
    /// Removed by the reaper.
    Reaped,
}

impl SetOutcome {
    const ALL: [SetOutcome; 7] = [
        SetOutcome::Prepared,
        SetOutcome::Refused,
        SetOutcome::Committed,
        SetOutcome::Failed,
        SetOutcome::Completed,
        SetOutcome::Aborted,
        SetOutcome::Reaped,
    ];

    fn label(self) -> &'static str {
        match self {
            SetOutcome::Prepared => "prepared",
            SetOutcome::Refused => "refused",
            SetOutcome::Committed => "committed",
            SetOutcome::Failed => "failed",
            SetOutcome::Completed => "completed",
            SetOutcome::Aborted => "aborted",
            SetOutcome::Reaped => "reaped",
        }
    }
}

/// The array's own counters, kept by its verbs.
#[derive(Debug)]
pub struct ArrayMetrics {
    sets: [AtomicU64; 7],
    /// Array-side commit: the group snapshot and its journal record.
    pub commit_duration: Histogram,
    /// Each journal append's write and fdatasync.
    pub journal_fsync: Histogram,
    pub journal_failures: AtomicU64,
    reaped_sets: AtomicU64,
    reaped_luns: AtomicU64,
    reaper_runs: AtomicU64,
}

impl Default for ArrayMetrics {
    fn default() -> Self {
        ArrayMetrics {
            sets: Default::default(),
            commit_duration: Histogram::slow(),
            journal_fsync: Histogram::slow(),
            journal_failures: AtomicU64::new(0),
            reaped_sets: AtomicU64::new(0),
            reaped_luns: AtomicU64::new(0),
            reaper_runs: AtomicU64::new(0),
        }
    }
}

impl ArrayMetrics {
    pub fn set(&self, outcome: SetOutcome) {
        self.sets[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Sets counted with `outcome` so far.
    pub fn sets(&self, outcome: SetOutcome) -> u64 {
        self.sets[outcome as usize].load(Ordering::Relaxed)
    }

    /// One reaper run (not a dry run) that removed `sets` sets and `luns` snapshot LUNs.
    pub fn reaped(&self, sets: usize, luns: usize) {
        self.reaper_runs.fetch_add(1, Ordering::Relaxed);
        self.reaped_sets.fetch_add(sets as u64, Ordering::Relaxed);
        self.reaped_luns.fetch_add(luns as u64, Ordering::Relaxed);
    }
}

/// Reads everything at scrape time and writes it in the Prometheus text format.
#[derive(Debug, Clone)]
pub struct Exposition {
    array: Array,
    io: Option<Arc<IoStats>>,
    iscsi: Option<Arc<iscsi::TargetServer>>,
    /// Pool use (percent) of the warning and the critical threshold.
    thresholds: (u8, u8),
}

impl Exposition {
    pub fn new(
        array: Array,
        io: Option<Arc<IoStats>>,
        iscsi: Option<Arc<iscsi::TargetServer>>,
    ) -> Self {
        Exposition {
            array,
            io,
            iscsi,
            thresholds: (80, 90),
        }
    }

    /// The pool thresholds to publish, in percent (the configuration's).
    pub fn with_thresholds(mut self, warning_percent: u8, critical_percent: u8) -> Self {
        self.thresholds = (warning_percent, critical_percent);
        self
    }

    /// The text a scrape gets (`text/plain; version=0.0.4`).
    pub fn render(&self) -> String {
        let mut registry = Registry::with_prefix("shadowlun");
        registry.register_collector(Box::new(self.clone()));
        let mut out = String::new();
        // Writing to a String cannot fail; an encoding error would be a bug in a collector.
        if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
            tracing::error!(error = %e, "encoding the metrics failed");
        }
        out
    }
}

/// The content type of [`Exposition::render`].
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

fn counter(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    enc.encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, u64, f64>(&v, None)
}

fn gauge(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    v: f64,
) -> Result<(), std::fmt::Error> {
    enc.encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&v)
}

/// The labels of a LUN's series: its id and its name.
type LunLabels<'a> = [(&'static str, &'a str); 2];

impl Collector for Exposition {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = self.array.metrics();
        let luns = self.array.lun_sizes();
        if let Some(io) = &self.io {
            let ids: std::collections::HashSet<&str> =
                luns.iter().map(|(id, _, _)| id.as_str()).collect();
            io.retain(|id| ids.contains(id));
        }
        let lun_io: Vec<(LunLabels<'_>, Option<Arc<LunIo>>)> = luns
            .iter()
            .map(|(id, name, _)| {
                (
                    [("lun", id.as_str()), ("name", name.as_str())],
                    self.io.as_ref().and_then(|io| io.get(id)),
                )
            })
            .collect();
        type Field = fn(&LunIo) -> u64;
        let counters: [(&str, &str, Field); 4] = [
            ("lun_read_ops", "Reads completed on the LUN.", |io| {
                io.read_ops.load(Ordering::Relaxed)
            }),
            ("lun_write_ops", "Writes completed on the LUN.", |io| {
                io.write_ops.load(Ordering::Relaxed)
            }),
            ("lun_read_bytes", "Bytes read from the LUN.", |io| {
                io.read_bytes.load(Ordering::Relaxed)
            }),
            ("lun_written_bytes", "Bytes written to the LUN.", |io| {
                io.write_bytes.load(Ordering::Relaxed)
            }),
        ];
        for (name, help, field) in counters {
            let mut e = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (labels, io) in &lun_io {
                let v = io.as_deref().map(field).unwrap_or(0);
                e.encode_family(labels)?
                    .encode_counter::<NoLabelSet, u64, f64>(&v, None)?;
            }
        }
        let empty = Histogram::io();
        for (name, help, read) in [
            (
                "lun_read_latency_seconds",
                "Time the LUN's storage took to complete a read.",
                true,
            ),
            (
                "lun_write_latency_seconds",
                "Time the LUN's storage took to complete a write.",
                false,
            ),
        ] {
            let mut e = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
            for (labels, io) in &lun_io {
                let h = match io {
                    Some(io) if read => &io.read_latency,
                    Some(io) => &io.write_latency,
                    None => &empty,
                };
                h.encode(e.encode_family(labels)?)?;
            }
        }
        {
            let mut e = enc.encode_descriptor(
                "lun_size_bytes",
                "Size of the LUN as hosts see it.",
                None,
                MetricType::Gauge,
            )?;
            for ((_, _, size), (labels, _)) in luns.iter().zip(&lun_io) {
                e.encode_family(labels)?.encode_gauge(size)?;
            }
        }

        let (sessions, connections) = self
            .iscsi
            .as_ref()
            .map(|s| (s.session_count(), s.connection_count()))
            .unwrap_or((0, 0));
        gauge(
            &mut enc,
            "iscsi_sessions",
            "Open iSCSI normal sessions.",
            sessions as f64,
        )?;
        gauge(
            &mut enc,
            "iscsi_connections",
            "Open iSCSI connections, in login or full feature phase.",
            connections as f64,
        )?;
        {
            let refused = self
                .iscsi
                .as_ref()
                .map(|s| s.refused_logins())
                .unwrap_or_default();
            let mut e = enc.encode_descriptor(
                "iscsi_login_refusals",
                "iSCSI logins the target refused, by reason.",
                None,
                MetricType::Counter,
            )?;
            for (reason, n) in refused.by_reason() {
                e.encode_family(&[("reason", reason)])?
                    .encode_counter::<NoLabelSet, u64, f64>(&n, None)?;
            }
        }

        {
            let mut e = enc.encode_descriptor(
                "snapshot_sets",
                "Snapshot sets by what happened to them.",
                None,
                MetricType::Counter,
            )?;
            for o in SetOutcome::ALL {
                e.encode_family(&[("outcome", o.label())])?
                    .encode_counter::<NoLabelSet, u64, f64>(&m.sets(o), None)?;
            }
        }
        m.commit_duration.encode(enc.encode_descriptor(
            "snapshot_commit_duration_seconds",
            "Array-side commit of a snapshot set: the group snapshot and its journal record.",
            None,
            MetricType::Histogram,
        )?)?;
        m.journal_fsync.encode(enc.encode_descriptor(
            "journal_fsync_duration_seconds",
            "Write and fdatasync of one journal append.",
            None,
            MetricType::Histogram,
        )?)?;
        counter(
            &mut enc,
            "journal_write_failures",
            "Journal appends that failed (the journal refuses changes until restart).",
            m.journal_failures.load(Ordering::Relaxed),
        )?;
        counter(
            &mut enc,
            "reaper_runs",
            "Reaper runs that removed something or nothing (dry runs not counted).",
            m.reaper_runs.load(Ordering::Relaxed),
        )?;
        counter(
            &mut enc,
            "reaper_removed_sets",
            "Snapshot sets the reaper removed.",
            m.reaped_sets.load(Ordering::Relaxed),
        )?;
        counter(
            &mut enc,
            "reaper_removed_luns",
            "Snapshot LUNs the reaper removed with their sets.",
            m.reaped_luns.load(Ordering::Relaxed),
        )?;

        let pool = self.array.pool_figures();
        if let Some(cap) = pool.capacity_bytes {
            gauge(
                &mut enc,
                "pool_capacity_bytes",
                "Bytes the pool can hold.",
                cap as f64,
            )?;
        }
        gauge(
            &mut enc,
            "pool_warning_ratio",
            "Fraction of the pool's capacity past which its health is warning.",
            f64::from(self.thresholds.0) / 100.0,
        )?;
        gauge(
            &mut enc,
            "pool_critical_ratio",
            "Fraction of the pool's capacity past which its health is critical.",
            f64::from(self.thresholds.1) / 100.0,
        )?;
        gauge(
            &mut enc,
            "pool_used_bytes",
            "Bytes of the pool holding data.",
            pool.used_bytes as f64,
        )?;
        gauge(
            &mut enc,
            "pool_reserved_bytes",
            "Bytes of the pool held by prepared snapshot sets for their commits.",
            pool.reserved_bytes as f64,
        )?;
        gauge(
            &mut enc,
            "pool_provisioned_bytes",
            "Sum of the sizes of every LUN, snapshot LUNs included.",
            pool.provisioned_bytes as f64,
        )?;
        Ok(())
    }
}

/// How full a pool is against its thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PoolLevel {
    Ok,
    Warning,
    Critical,
}

impl PoolFigures {
    /// The pool's level against thresholds in percent (an unbounded pool is always fine).
    pub fn level(&self, warning_percent: u8, critical_percent: u8) -> PoolLevel {
        let Some(cap) = self.capacity_bytes.filter(|c| *c > 0) else {
            return PoolLevel::Ok;
        };
        let used = self.used_bytes as u128 * 100;
        if used >= cap as u128 * u128::from(critical_percent) {
            PoolLevel::Critical
        } else if used >= cap as u128 * u128::from(warning_percent) {
            PoolLevel::Warning
        } else {
            PoolLevel::Ok
        }
    }
}

/// Pool figures at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolFigures {
    /// None when the pool is unbounded (the memory engine without a capacity).
    pub capacity_bytes: Option<u64>,
    pub used_bytes: u64,
    pub provisioned_bytes: u64,
    /// Held by prepared snapshot sets for their commits.
    pub reserved_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_the_count_is_their_sum() {
        let h = Histogram::io();
        h.observe(Duration::from_micros(10));
        h.observe(Duration::from_micros(60));
        h.observe(Duration::from_secs(5));
        assert_eq!(h.count(), 3);
        let mut registry = Registry::default();
        #[derive(Debug)]
        struct One(Arc<Histogram>);
        impl Collector for One {
            fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
                self.0.encode(enc.encode_descriptor(
                    "t_seconds",
                    "t",
                    None,
                    MetricType::Histogram,
                )?)
            }
        }
        let h = Arc::new(h);
        registry.register_collector(Box::new(One(h.clone())));
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).unwrap();
        assert!(out.contains("t_seconds_bucket{le=\"5e-05\"} 1\n"), "{out}");
        assert!(out.contains("t_seconds_bucket{le=\"0.0001\"} 2\n"), "{out}");
        assert!(out.contains("t_seconds_bucket{le=\"1\"} 2\n"), "{out}");
        assert!(out.contains("t_seconds_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("t_seconds_count 3\n"), "{out}");
        assert!(out.contains("t_seconds_sum 5.00007\n"), "{out}");
    }

    #[test]
    fn pool_levels_follow_the_thresholds() {
        let at = |used| PoolFigures {
            capacity_bytes: Some(1000),
            used_bytes: used,
            provisioned_bytes: 0,
            reserved_bytes: 0,
        };
        assert_eq!(at(799).level(80, 90), PoolLevel::Ok);
        assert_eq!(at(800).level(80, 90), PoolLevel::Warning);
        assert_eq!(at(900).level(80, 90), PoolLevel::Critical);
        assert_eq!(at(900).level(95, 99), PoolLevel::Ok);
        let unbounded = PoolFigures {
            capacity_bytes: None,
            ..at(u64::MAX)
        };
        assert_eq!(unbounded.level(80, 90), PoolLevel::Ok);
    }

    #[test]
    fn metered_device_counts_reads_and_writes_with_their_bytes() {
        let io = Arc::new(LunIo::default());
        let dev = MeteredDevice::new(Arc::new(scsi::MemDevice::new(512, 64)), io.clone());
        dev.write_at(0, &[7u8; 1024], false).unwrap();
        let mut buf = vec![0u8; 512];
        dev.read_at(512, &mut buf).unwrap();
        assert_eq!(buf, vec![7u8; 512]);
        let mut v = Vec::new();
        dev.read_to_vec(0, 1024, &mut v).unwrap();
        assert_eq!(io.ops(), (2, 1));
        assert_eq!(io.read_bytes.load(Ordering::Relaxed), 1536);
        assert_eq!(io.write_bytes.load(Ordering::Relaxed), 1024);
        assert_eq!(io.read_latency.count(), 2);
        assert_eq!(io.write_latency.count(), 1);
    }
}
