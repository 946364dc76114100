#!/usr/bin/env bash
# Unit, property and integration tests of every crate on Linux.
set -euo pipefail
# The tests that need a Ceph cluster run in 70-ceph, on its cluster; here they say
# "skipped" (otherwise each would start a cluster of its own on a machine that has Ceph).
SHADOWLUN_SKIP_CEPH=1 cargo test --workspace
