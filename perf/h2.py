#!/usr/bin/env python3
"""HTTP/2 over TLS, Switchyard against nginx on the same machine, with h2load.

Each proxy terminates TLS with ALPN h2 on loopback, one worker/thread pinned to the same CPU. h2load
(one thread, on another CPU) keeps 100 streams in flight (4 connections x 25 streams) for DURATION
seconds per round. Three scenarios:

- http: GET, proxied to the same small-JSON HTTP/1.1 upstream (one nginx worker, keep-alive);
- grpc: unary gRPC calls (POST application/grpc, one framed message, TE: trailers), proxied over h2c
  to the same gRPC upstream (one nginx worker serving a framed reply with `grpc-status: 0` as a
  trailer); nginx proxies them with `grpc_pass`, Switchyard with an `h2c` upstream;
- handshake: a new TLS connection (full handshake, no resumption) for each request (`GET /api/x`),
  100 at a time: what a proxy spends per connection more than per request.

Reported per proxy and scenario: requests per second, and the proxy's CPU time per request (user +
system, from /proc), each also as a ratio to nginx's.

Switchyard runs twice: as configured by default (its engine serves HTTP/2 streams to HTTP/1.1
upstreams) and as `switchyard-pingora` (`server.http1_engine: false`: every stream on Pingora's
pipeline, the fallback path).

Usage: perf/h2.py [--duration 10] [--rounds 3] [--scenario http,grpc,handshake] [--cert rsa|ecdsa] [--peers switchyard,switchyard-pingora,nginx]
                  [--switchyard target/release/switchyard]
Needs: nginx (with http_v2), h2load (Debian's nghttp2-client), openssl, taskset. Loopback only;
everything it starts is stopped at the end.
"""

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

WORK = "/tmp/switchyard-perf-h2"
UPSTREAM = 19101
GRPC_UPSTREAM = 19102
GRPC_PATH = "/helloworld.Greeter/SayHello"
PORTS = {"switchyard": 18443, "nginx": 18444, "switchyard-pingora": 18446}


def wait_port(port, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on 127.0.0.1:{port}")


def cpu_seconds(pids):
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / tick


def children(pid):
    out = [pid]
    try:
        for line in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split():
            out += children(int(line))
    except OSError:
        pass
    return out


def write_files(cert="rsa"):
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    key = ["-newkey", "rsa:2048"] if cert == "rsa" else ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    subprocess.run(
        ["openssl", "req", "-x509"] + key + ["-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-keyout", f"{WORK}/key.pem", "-out", f"{WORK}/cert.pem"],
        check=True, capture_output=True)
    def common(pid, name):
        return (f"pid {pid};\nerror_log {WORK}/{name}-error.log warn;\nworker_processes 1;\n"
                "events { worker_connections 4096; }\n")
    # A gRPC reply: one uncompressed message of 12 bytes (a HelloReply with message "hello, h2"),
    # framed as gRPC frames it (flag, 4-byte length, message).
    message = b"\x0a\x0ahello, h2!"
    os.makedirs(f"{WORK}/grpc/helloworld.Greeter")
    with open(f"{WORK}/grpc/helloworld.Greeter/SayHello", "wb") as f:
        f.write(b"\x00" + len(message).to_bytes(4, "big") + message)
    with open(f"{WORK}/request.bin", "wb") as f:
        name = b"\x0a\x05world"
        f.write(b"\x00" + len(name).to_bytes(4, "big") + name)
    with open(f"{WORK}/upstream.conf", "w") as f:
        f.write(common(f"{WORK}/upstream.pid", "upstream") + f"""
http {{
  access_log off;
  keepalive_requests 100000000;
  server {{
    listen 127.0.0.1:{UPSTREAM};
    location / {{ default_type application/json; return 200 '{{"version":"v1","ok":true}}'; }}
  }}
  server {{
    listen 127.0.0.1:{GRPC_UPSTREAM} http2;
    http2_max_concurrent_streams 1000;
    root {WORK}/grpc;
    location / {{
      # POST to a static file: answered as GET would be.
      error_page 405 =200 $uri;
      default_type application/grpc;
      add_trailer grpc-status 0;
    }}
  }}
}}
""")
    with open(f"{WORK}/nginx.conf", "w") as f:
        f.write(common(f"{WORK}/nginx.pid", "nginx") + f"""
http {{
  access_log off;
  keepalive_requests 100000000;   # per HTTP/2 connection too: the default 1,000 ends h2load's connections
  upstream v1 {{ server 127.0.0.1:{UPSTREAM}; keepalive 64; keepalive_requests 100000000; }}
  upstream greeter {{ server 127.0.0.1:{GRPC_UPSTREAM}; keepalive 64; keepalive_requests 100000000; }}
  server {{
    listen 127.0.0.1:{PORTS['nginx']} ssl http2;
    http2_max_concurrent_streams 128;
    ssl_certificate {WORK}/cert.pem;
    ssl_certificate_key {WORK}/key.pem;
    location / {{
      proxy_pass http://v1;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
    location /helloworld.Greeter/ {{
      grpc_pass grpc://greeter;
    }}
  }}
}}
""")
    for name, plain, engine in [("switchyard", 18445, ""), ("switchyard-pingora", 18447, "  http1_engine: false\n")]:
        os.makedirs(f"{WORK}/{name}", exist_ok=True)
        with open(f"{WORK}/{name}.yaml", "w") as f:
            f.write(f"""server:
  listen: ["127.0.0.1:{plain}"]
  tls: [{{listen: "127.0.0.1:{PORTS[name]}", cert: {WORK}/cert.pem, key: {WORK}/key.pem}}]
  threads: 1
  pid_file: {WORK}/{name}/switchyard.pid
  upgrade_sock: {WORK}/{name}/upgrade.sock
  state_dir: {WORK}/{name}/state
  access_log: off
{engine}  # As nginx's keepalive_requests above: h2load does not reopen a connection the proxy ends.
  limits: {{max_requests_per_connection: 100000000}}
upstreams:
  v1: {{backends: ["127.0.0.1:{UPSTREAM}"]}}
  greeter: {{protocol: h2c, backends: ["127.0.0.1:{GRPC_UPSTREAM}"]}}
routes:
  - name: greeter
    match: {{path_prefix: /helloworld.Greeter/}}
    split: {{targets: {{greeter: 100}}}}
  - name: api
    match: {{path_prefix: /}}
    split: {{targets: {{v1: 100}}}}
""")


def start(name, binary):
    if name.startswith("switchyard"):
        cmd = ["taskset", "-c", "1", binary, "run", "-c", f"{WORK}/{name}.yaml"]
    else:
        cmd = ["taskset", "-c", "1", "nginx", "-g", "daemon off;", "-c", f"{WORK}/nginx.conf"]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(f"{WORK}/{name}.log", "w"))
    wait_port(PORTS[name])
    time.sleep(0.5)
    return p


def handshakes(port, duration):
    """New TLS connections, one request each, for DURATION seconds: h2load runs of 100 connections."""
    done, end, out = 0, time.time() + duration, ""
    while time.time() < end:
        out = subprocess.run(
            ["taskset", "-c", "0", "h2load", "-t", "1", "-c", "100", "-n", "100",
             f"https://localhost:{port}/api/x"],
            capture_output=True, text=True).stdout
        m = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
        if not m:
            sys.exit(f"h2load said:\n{out}")
        done += int(m.group(2))
    return done, out


def h2load(port, duration, scenario):
    if scenario == "handshake":
        return handshakes(port, duration)
    if scenario == "grpc":
        target = ["-d", f"{WORK}/request.bin", "-H", "content-type: application/grpc",
                  "-H", "te: trailers", f"https://localhost:{port}{GRPC_PATH}"]
    else:
        target = [f"https://localhost:{port}/api/x"]
    out = subprocess.run(
        ["taskset", "-c", "0", "h2load", "-t", "1", "-c", "4", "-m", "25", "-D", str(duration)]
        + target,
        capture_output=True, text=True).stdout
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    if not done:
        sys.exit(f"h2load said:\n{out}")
    if "h2" not in out.split("Application protocol:")[-1].splitlines()[0]:
        sys.exit(f"h2load did not negotiate h2:\n{out}")
    return int(done.group(2)), out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--switchyard", default="target/release/switchyard")
    ap.add_argument("--scenario", default="http,grpc,handshake",
                    help="comma-separated: http, grpc, handshake")
    ap.add_argument("--peers", default="switchyard,switchyard-pingora,nginx",
                    help="comma-separated: switchyard (its engine), switchyard-pingora "
                         "(server.http1_engine: false, Pingora's pipeline), nginx")
    ap.add_argument("--cert", default="rsa", choices=["rsa", "ecdsa"],
                    help="the listeners' certificate: RSA 2048 or ECDSA P-256")
    args = ap.parse_args()
    scenarios = args.scenario.split(",")
    peers = args.peers.split(",")
    if "nginx" not in peers:
        sys.exit("--peers must include nginx: the ratios are to it")
    write_files(args.cert)
    upstream = subprocess.Popen(["taskset", "-c", "0", "nginx", "-g", "daemon off;", "-c", f"{WORK}/upstream.conf"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(UPSTREAM)
    wait_port(GRPC_UPSTREAM)
    check_grpc(args.switchyard, peers)
    results = {(s, n): [] for s in scenarios for n in peers}
    try:
        for r in range(args.rounds):
            for scenario, name in [(s, n) for s in scenarios for n in peers]:
                p = start(name, args.switchyard)
                pids = children(p.pid)
                before = cpu_seconds(pids)
                ok, _ = h2load(PORTS[name], args.duration, scenario)
                cpu = cpu_seconds(pids) - before
                p.send_signal(signal.SIGINT if name.startswith("switchyard") else signal.SIGQUIT)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                rps = ok / args.duration
                us = cpu / ok * 1e6 if ok else float("nan")
                results[(scenario, name)].append((rps, us))
                print(f"round {r + 1} {scenario} {name}: {rps:,.0f} req/s, {us:.1f} us CPU/request",
                      flush=True)
    finally:
        upstream.send_signal(signal.SIGQUIT)
        upstream.wait(10)
    med = lambda xs: sorted(xs)[len(xs) // 2]
    print()
    print("| scenario | proxy | req/s | x nginx | CPU/request | x nginx |")
    print("|---|---|---|---|---|---|")
    for scenario in scenarios:
        nginx = results[(scenario, "nginx")]
        n_rps, n_us = med([x[0] for x in nginx]), med([x[1] for x in nginx])
        for name in peers:
            got = results[(scenario, name)]
            rps, us = med([x[0] for x in got]), med([x[1] for x in got])
            print(f"| {scenario} | {name} | {rps:,.0f} | {rps / n_rps:.2f} | {us:.1f} us | {us / n_us:.2f} |")


def check_grpc(binary, peers):
    """One gRPC call through each proxy must come back with grpc-status 0 in its trailers."""
    for name in peers:
        p = start(name, binary)
        try:
            # nghttp (with h2load in nghttp2-client) prints every frame, the trailers included.
            out = subprocess.run(
                ["nghttp", "-v", "-H", "content-type: application/grpc", "-H", "te: trailers",
                 "-d", f"{WORK}/request.bin", f"https://localhost:{PORTS[name]}{GRPC_PATH}"],
                capture_output=True).stdout.decode("utf-8", "replace")
        finally:
            p.send_signal(signal.SIGINT if name.startswith("switchyard") else signal.SIGQUIT)
            p.wait(10)
        if ") grpc-status: 0" not in out:
            sys.exit(f"a gRPC call through {name} did not end with grpc-status 0:\n{out}")


if __name__ == "__main__":
    main()
