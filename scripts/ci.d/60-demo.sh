#!/usr/bin/env bash
# The README's main command, exactly as a user runs it: it must finish with every check
# passed and leave nothing behind.
set -euo pipefail
before=$(ls -d /tmp/shadowlun-demo-* 2>/dev/null | wc -l)
timeout --foreground 900 cargo run --release -q -- demo | tee /tmp/shadowlun-demo.out
grep -q "all checks passed" /tmp/shadowlun-demo.out
after=$(ls -d /tmp/shadowlun-demo-* 2>/dev/null | wc -l)
[ "$after" -le "$before" ] || { echo "the demo left a pool directory behind"; exit 1; }
