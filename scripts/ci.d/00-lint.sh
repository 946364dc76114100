#!/usr/bin/env bash
# Formatting and lints for the whole workspace (Linux target) and the fuzz targets.
set -euo pipefail
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
(cd fuzz && cargo fmt -- --check && cargo clippy --all-targets -- -D warnings)
