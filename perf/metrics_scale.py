#!/usr/bin/env python3
"""/metrics at scale: size and scrape time with 1,000 routes of two targets each.

Starts one Switchyard (loopback only) with ROUTES routes, each a 50/50 split of two upstreams that
point at one small nginx upstream, sends one request to each route so that every route x target
series has traffic, then scrapes /metrics SCRAPES times, plain and with Accept-Encoding: gzip.
Reports the body size and the median and p90 scrape time of each. Everything it starts is stopped.

Usage: perf/metrics_scale.py [--routes 1000] [--scrapes 50] [--switchyard target/release/switchyard]
"""

import argparse
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

WORK = "/tmp/switchyard-perf-metrics"
UPSTREAM, LISTEN, ADMIN = 19201, 19202, 19203


def wait_port(port, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on 127.0.0.1:{port}")


def scrape(conn, gzip):
    headers = {"Accept-Encoding": "gzip"} if gzip else {}
    t = time.perf_counter()
    conn.request("GET", "/metrics", headers=headers)
    r = conn.getresponse()
    body = r.read()
    return time.perf_counter() - t, len(body), r.getheader("Content-Encoding")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--routes", type=int, default=1000)
    ap.add_argument("--scrapes", type=int, default=50)
    ap.add_argument("--switchyard", default="target/release/switchyard")
    args = ap.parse_args()
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    with open(f"{WORK}/upstream.conf", "w") as f:
        f.write(f"pid {WORK}/upstream.pid;\nerror_log {WORK}/upstream-error.log warn;\n"
                "worker_processes 1;\nevents { worker_connections 1024; }\n"
                f"http {{ access_log off; server {{ listen 127.0.0.1:{UPSTREAM}; "
                "location / { return 200 'ok'; } } }\n")
    lines = [
        "server:",
        f"  listen: [\"127.0.0.1:{LISTEN}\"]",
        "  threads: 1",
        f"  pid_file: {WORK}/switchyard.pid",
        f"  upgrade_sock: {WORK}/upgrade.sock",
        f"  state_dir: {WORK}/state",
        "  access_log: off",
        "admin:",
        f"  listen: \"127.0.0.1:{ADMIN}\"",
        "upstreams:",
        f"  v1: {{backends: [\"127.0.0.1:{UPSTREAM}\"]}}",
        f"  v2: {{backends: [\"127.0.0.1:{UPSTREAM}\"]}}",
        "routes:",
    ]
    for i in range(args.routes):
        lines += [
            f"  - name: r{i}",
            f"    match: {{path_prefix: /r{i}/}}",
            "    split: {targets: {v1: 50, v2: 50}, baseline: v1, sticky: [header:X-User]}",
        ]
    with open(f"{WORK}/switchyard.yaml", "w") as f:
        f.write("\n".join(lines) + "\n")
    upstream = subprocess.Popen(["nginx", "-g", "daemon off;", "-c", f"{WORK}/upstream.conf"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proxy = subprocess.Popen([args.switchyard, "run", "-c", f"{WORK}/switchyard.yaml"],
                             stdout=subprocess.DEVNULL, stderr=open(f"{WORK}/switchyard.log", "w"))
    try:
        wait_port(UPSTREAM)
        wait_port(LISTEN)
        wait_port(ADMIN)
        conn = http.client.HTTPConnection("127.0.0.1", LISTEN)
        for i in range(args.routes):
            # Two users per route: both targets of every route see traffic.
            for user in ("a", "b", "c", "d"):
                conn.request("GET", f"/r{i}/x", headers={"X-User": user})
                conn.getresponse().read()
        admin = http.client.HTTPConnection("127.0.0.1", ADMIN)
        for gzip in (False, True):
            scrape(admin, gzip)  # warm-up
            runs = [scrape(admin, gzip) for _ in range(args.scrapes)]
            times = sorted(r[0] for r in runs)
            size = runs[-1][1]
            label = "gzip" if gzip else "plain"
            if gzip and runs[-1][2] != "gzip":
                label = "gzip asked, not given"
            print(f"{label}: {size:,} bytes, scrape median {times[len(times) // 2] * 1000:.1f} ms, "
                  f"p90 {times[int(len(times) * 0.9)] * 1000:.1f} ms ({args.scrapes} scrapes)")
    finally:
        proxy.send_signal(signal.SIGINT)
        upstream.send_signal(signal.SIGQUIT)
        proxy.wait(10)
        upstream.wait(10)


if __name__ == "__main__":
    main()
