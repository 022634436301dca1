#!/usr/bin/env bash
# 20 binary upgrades (`switchyard upgrade`) under a fixed request rate, keep-alive, connection per
# request, h2c and TLS h2 at once; prints failures per upgrade, the longest gap in service and the old process's exit
# time. Loopback only, bounded, stops by itself. Extra arguments go to perf/upgrade.py.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin switchyard --example h2_upgrade_load
exec python3 perf/upgrade.py --switchyard target/release/switchyard "$@"
