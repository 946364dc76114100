#!/usr/bin/env bash
# Unit, property and integration tests of every crate on Linux.
set -euo pipefail
cargo test --workspace
