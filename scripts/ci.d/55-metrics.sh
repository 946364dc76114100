#!/usr/bin/env bash
# Metrics (about a minute): the real daemon's Prometheus endpoint scraped by a real Prometheus
# server on loopback every second; after I/O to a LUN over iSCSI a PromQL query through
# Prometheus's HTTP API must see that LUN's operations, and `promtool check metrics` must find
# nothing to fix in the scraped text. Installs Debian's prometheus package when missing and
# fails if it still is.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  # The package starts its own server on :9090; this stage starts the one it tests.
  $SUDO systemctl stop prometheus 2>/dev/null || true
fi
command -v prometheus >/dev/null && command -v promtool >/dev/null || {
  echo "55-metrics: prometheus and promtool are still missing after installing the prometheus package" >&2
  exit 1
}

SHADOWLUN_REQUIRE_PROMETHEUS=1 cargo test -q -p shadowlun --test metrics
