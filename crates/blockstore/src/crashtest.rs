//! Crash test harness.
