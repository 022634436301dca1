#!/usr/bin/env bash
# Instructions the proxy executes per request, counted by valgrind (callgrind): repeatable whatever else
# the machine is doing, unlike wall-clock or CPU time on a small shared VM. Two runs per variant, with
# N1 and N2 sequential keep-alive requests; the slope (Ir2 - Ir1) / (N2 - N1) removes start-up and
# shutdown. Loopback only, bounded by the request counts.
#
#   perf/instructions-per-request.sh LABEL BINARY ACCESS_LOG [N1] [N2]
#
# BINARY is a Switchyard binary, or `nginx` to count nginx (one worker) proxying the same route: a
# sticky split on X-User-Id (split_clients, 100% to v1), upstream keep-alive, and X-Request-Id as
# Switchyard sets it (perf/peers/nginx.conf does the same).
# ACCESS_LOG is `off`, `stdout` or `file`. With KEEPALIVE=off in the environment every request comes on
# a connection of its own (`Connection: close`), so the figure is what a whole connection costs. With
# PROFILE=DIR the larger run's callgrind output is kept in DIR for callgrind_annotate. Needs valgrind,
# nginx (the upstream) and python3.
set -euo pipefail
label=$1 bin=$2 log=$3 n1=${4:-500} n2=${5:-2500} keepalive=${KEEPALIVE:-on}
work=$(mktemp -d /tmp/switchyard-ir.XXXXXX)
up_port=18091 px_port=18090
cleanup() { [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
cat > "$work/nginx.conf" <<NGINX
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx.err warn;
events { worker_connections 256; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$up_port; location / { return 200 "ok\n"; } }
}
NGINX
nginx -c "$work/nginx.conf"
case $log in file) access_log=$work/access.log ;; *) access_log=$log ;; esac
cat > "$work/sy.yaml" <<YAML
server:
  listen: ["127.0.0.1:$px_port"]
  threads: 1
  pid_file: $work/sy.pid
  upgrade_sock: $work/sy.sock
  state_dir: $work/state
  grace_period: 0s
  shutdown_timeout: 1s
  access_log: $access_log
upstreams:
  v1: {backends: ["127.0.0.1:$up_port"]}
routes:
  - name: api
    match: {path_prefix: /}
    split: {targets: {v1: 100}, sticky: ["header:X-User-Id"]}
YAML
if [ "$(basename "$bin")" = nginx ]; then
  case $log in off) nginx_log=off ;; stdout) nginx_log=/dev/stdout ;; *) nginx_log=$access_log ;; esac
  cat > "$work/px.conf" <<NGINX
worker_processes 1;
master_process off;
daemon off;
pid $work/px.pid;
error_log $work/px.err warn;
events { worker_connections 256; }
http {
  access_log $nginx_log;
  keepalive_requests 1000000;
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  map \$http_x_request_id \$req_id { default \$http_x_request_id; "" \$request_id; }
  proxy_set_header X-Request-Id \$req_id;
  add_header X-Request-Id \$req_id always;
  upstream v1 { server 127.0.0.1:$up_port; keepalive 64; }
  split_clients "\${http_x_user_id}" \$pool { 100% v1; }
  server { listen 127.0.0.1:$px_port; location / { proxy_pass http://\$pool; } }
}
NGINX
  run=("$bin" -c "$work/px.conf") stop=QUIT
else
  run=("$bin" run -c "$work/sy.yaml") stop=INT
fi

count() { # $1 requests -> total instructions of the proxy process
  rm -rf "$work/state"
  valgrind --tool=callgrind --callgrind-out-file="$work/cg.%p" "${run[@]}" \
    >/dev/null 2>"$work/vg.err" &
  local pid=$!
  python3 - "$px_port" "$1" "$keepalive" <<'PY'
import http.client, sys, time
port, n, keepalive = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] != "off"
deadline = time.time() + 60
while True:
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30); c.request("GET", "/warm"); c.getresponse().read(); break
    except OSError:
        if time.time() > deadline: raise
        time.sleep(0.2)
for i in range(n):
    headers = {"X-User-Id": "u%d" % (i % 100)}
    if not keepalive:
        c.close()
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        headers["Connection"] = "close"
    c.request("GET", "/api/orders/%d" % i, headers=headers)
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
PY
  kill -$stop $pid; wait $pid 2>/dev/null || true
  awk '/^summary:|^totals:/ {print $2; exit}' "$work"/cg.*
  if [ -n "${PROFILE:-}" ]; then mkdir -p "$PROFILE" && cp "$work"/cg.* "$PROFILE/callgrind.$1"; fi
  rm -f "$work"/cg.*
}
ir1=$(count "$n1"); ir2=$(count "$n2")
awk -v l="$label" -v a="$ir1" -v b="$ir2" -v n1="$n1" -v n2="$n2" \
  'BEGIN { printf "%-30s %8.0f instructions/request\n", l, (b - a) / (n2 - n1) }'
