#!/usr/bin/env bash
# Formatting and lints for the whole workspace (Linux target).
set -euo pipefail
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
