#!/usr/bin/env bash
# The README's main command, exactly as a user runs it: it must finish with every check
# passed and leave nothing behind.
set -euo pipefail
count() { find "${TMPDIR:-/tmp}" -maxdepth 1 -name 'shadowlun-demo-*' | wc -l; }
before=$(count)
timeout --foreground 900 cargo run --release -q -- demo | tee /tmp/shadowlun-demo.out
grep -q "all checks passed" /tmp/shadowlun-demo.out
after=$(count)
[ "$after" -le "$before" ] || { echo "the demo left a pool directory behind"; exit 1; }
