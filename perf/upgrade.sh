#!/usr/bin/env bash
# 20 binary upgrades (`switchyard upgrade`) under a fixed request rate, keep-alive and connection per
# request at once; prints failures per upgrade, the longest gap in service and the old process's exit
# time. Loopback only, bounded, stops by itself. Extra arguments go to perf/upgrade.py.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
exec python3 perf/upgrade.py --switchyard target/release/switchyard "$@"
