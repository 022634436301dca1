#!/usr/bin/env bash
# What per-request metrics and the access log cost the whole proxy: requests/s and proxy CPU time per
# request, for a build without them (BASELINE) and this build with the access log off, to a file, and to
# stdout (redirected to /dev/null). Loopback only; every run is bounded (wrk -d).
#
#   perf/observability-cost.sh BASELINE_BINARY CURRENT_BINARY [SECONDS] [ROUNDS]
#
# Needs wrk and nginx (the upstream: a fixed 200 "ok"). On a 2-core machine the proxy is pinned to
# CPU 0 with one worker thread, wrk and nginx to CPU 1, so the proxy's core is the one being measured.
set -euo pipefail
base_bin=$1 cur_bin=$2 secs=${3:-10} rounds=${4:-3}
work=$(mktemp -d /tmp/switchyard-obs-cost.XXXXXX)
up_port=18081 px_port=18080
cleanup() { [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null; pkill -f "$work/sy.yaml" 2>/dev/null || true; }
trap cleanup EXIT

cat > "$work/nginx.conf" <<NGINX
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx.err warn;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$up_port; location / { return 200 "ok\n"; } }
}
NGINX
taskset -c 1 nginx -c "$work/nginx.conf"

write_config() { # $1 access_log
  cat > "$work/sy.yaml" <<YAML
server:
  listen: ["127.0.0.1:$px_port"]
  threads: 1
  pid_file: $work/sy.pid
  upgrade_sock: $work/sy.sock
  state_dir: $work/state
  access_log: $1
upstreams:
  v1: {backends: ["127.0.0.1:$up_port"]}
routes:
  - name: api
    match: {path_prefix: /}
    split: {targets: {v1: 100}, sticky: ["header:X-User-Id"]}
YAML
}

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }

run_one() { # $1 label, $2 binary, $3 access_log
  write_config "$3"
  rm -rf "$work/state" "$work/access.log"
  taskset -c 0 "$2" run -c "$work/sy.yaml" >/dev/null 2>"$work/sy.err" &
  local pid=$!
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$px_port/" && break; sleep 0.05; done
  taskset -c 1 wrk -t1 -c32 -d2s "http://127.0.0.1:$px_port/" >/dev/null   # warm up
  local t0; t0=$(cpu_ticks $pid)
  local out; out=$(taskset -c 1 wrk -t1 -c32 -d"${secs}s" --latency -H "X-User-Id: u1" "http://127.0.0.1:$px_port/")
  local t1; t1=$(cpu_ticks $pid)
  kill $pid; wait $pid 2>/dev/null || true
  local reqs rps p99
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  local hz; hz=$(getconf CLK_TCK)
  local us_per_req; us_per_req=$(awk -v t=$((t1 - t0)) -v hz="$hz" -v n="$reqs" 'BEGIN {printf "%.2f", t / hz * 1e6 / n}')
  printf "%-28s %10s req/s  %8s us CPU/req  p99 %s\n" "$1" "$rps" "$us_per_req" "$p99"
}

echo "proxy: 1 worker thread on CPU 0; wrk -t1 -c32 -d${secs}s and nginx on CPU 1; $rounds rounds"
for r in $(seq "$rounds"); do
  echo "--- round $r"
  run_one "baseline (no metrics)" "$base_bin" off
  run_one "metrics, access_log off" "$cur_bin" off
  run_one "metrics, access_log file" "$cur_bin" "$work/access.log"
  run_one "metrics, access_log stdout" "$cur_bin" stdout
done
