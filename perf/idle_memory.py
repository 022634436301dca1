#!/usr/bin/env python3
"""Memory held per idle keep-alive client connection: Switchyard, nginx and HAProxy on this machine.

Each peer proxies to the same loopback upstream with one worker/thread. N client connections each send
one request, read the answer and stay open; the peer's resident memory (all its processes) is read
right after the answers and again after `--idle` seconds. Reported: bytes per connection over the
peer's own baseline. Loopback only; every process is stopped at the end.

    perf/idle_memory.py [--connections 10000] [--idle 3] [--peers switchyard,nginx,haproxy]
                        [--switchyard target/release/switchyard]
"""

import argparse
import http.server
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time


def rss_kb(pid):
    """Resident memory of pid and its children, in KiB."""
    total = 0
    pids = [pid]
    try:
        children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
        pids += [int(p) for p in children.split()]
    except FileNotFoundError:
        pass
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def upstream():
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            # One write: a head and body written apart would wait on Nagle and delayed ACKs.
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

        def log_message(self, *args):
            pass

    http.server.ThreadingHTTPServer.request_queue_size = 4096
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    # A peer stopped at the end resets its upstream connections: not worth a traceback each.
    server.handle_error = lambda request, address: None
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_address[1]


def start(peer, port, up, work, switchyard, n):
    if peer == "switchyard":
        conf = os.path.join(work, "switchyard.yaml")
        with open(conf, "w") as f:
            f.write(
                f"server: {{listen: ['127.0.0.1:{port}'], threads: 1, pid_file: {work}/sy.pid, "
                f"upgrade_sock: {work}/sy.sock, state_dir: {work}/state, access_log: off}}\n"
                f"upstreams: {{up: {{backends: ['127.0.0.1:{up}']}}}}\n"
                "routes: [{name: all, split: {targets: {up: 1}}}]\n"
            )
        return subprocess.Popen([switchyard, "run", "-c", conf], stderr=subprocess.DEVNULL)
    if peer == "nginx":
        conf = os.path.join(work, "nginx.conf")
        with open(conf, "w") as f:
            f.write(
                f"daemon off; worker_processes 1; pid {work}/nginx.pid; error_log {work}/nginx.err;\n"
                "events { worker_connections 40000; }\n"
                "http { access_log off; keepalive_timeout 60s;\n"
                f"  upstream up {{ server 127.0.0.1:{up}; keepalive 32; }}\n"
                f"  server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://up;"
                " proxy_http_version 1.1; proxy_set_header Connection \"\"; } } }\n"
            )
        return subprocess.Popen(["nginx", "-c", conf, "-p", work], stderr=subprocess.DEVNULL)
    if peer == "haproxy":
        conf = os.path.join(work, "haproxy.cfg")
        with open(conf, "w") as f:
            f.write(
                # maxconn near what is measured: HAProxy reserves two descriptors per connection.
                f"global\n  maxconn {n + 100}\n  nbthread 1\n"
                "defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n"
                "  timeout server 60s\n  timeout http-keep-alive 60s\n"
                f"frontend f\n  bind 127.0.0.1:{port}\n  default_backend b\n"
                f"backend b\n  server s1 127.0.0.1:{up}\n"
            )
        return subprocess.Popen(["haproxy", "-f", conf], stderr=subprocess.DEVNULL)
    raise SystemExit(f"unknown peer {peer}")


def measure(peer, n, idle, switchyard, up):
    work = tempfile.mkdtemp(prefix=f"idle-{peer}-")
    port = free_port()
    proc = start(peer, port, up, work, switchyard, n)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    time.sleep(0.5)
    base = rss_kb(proc.pid)
    socks = []
    try:
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET / HTTP/1.1\r\nHost: idle.test\r\n\r\n")
            socks.append(s)
        for s in socks:
            buf = b""
            while not (b"\r\n\r\n" in buf and buf.endswith(b"ok")):
                chunk = s.recv(4096)
                if not chunk:
                    raise SystemExit(f"{peer}: a connection closed before its answer")
                buf += chunk
        time.sleep(0.3)
        answered = rss_kb(proc.pid)
        time.sleep(idle)
        idle_rss = rss_kb(proc.pid)
    finally:
        for s in socks:
            s.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(work, ignore_errors=True)
    per = lambda kb: round((kb - base) * 1024 / n)
    return {
        "peer": peer,
        "connections": n,
        "rss_base_kib": base,
        "rss_answered_kib": answered,
        f"rss_after_{idle}s_idle_kib": idle_rss,
        "bytes_per_connection_answered": per(answered),
        "bytes_per_connection_idle": per(idle_rss),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=10000)
    ap.add_argument("--idle", type=float, default=3.0)
    ap.add_argument("--peers", default="switchyard,nginx,haproxy")
    ap.add_argument("--switchyard", default="target/release/switchyard")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * args.connections + 1000
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    up = upstream()
    rows = [measure(p, args.connections, args.idle, args.switchyard, up) for p in args.peers.split(",")]
    json.dump(rows, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
