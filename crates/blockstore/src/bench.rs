//! Engine benchmarks.
