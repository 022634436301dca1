#!/usr/bin/env python3
"""Slowloris against Switchyard: request latency with and without 500 connections that trickle their
heads a byte at a time, and how fast `server.limits.header_timeout` cuts them off.

Switchyard (one thread) proxies to a loopback upstream. Phase 1 measures the latency of --requests
keep-alive requests from --clients client threads. Phase 2 opens --attackers connections that each
send a partial head and then one more byte every --trickle seconds, reopening when closed, and
measures the same requests again. Loopback only; bounded in count and time; stops by itself.

    perf/slowloris.py [--switchyard target/release/switchyard] [--attackers 500] [--requests 4000]
"""

import argparse
import http.server
import json
import os
import resource
import socket
import statistics
import subprocess
import tempfile
import threading
import time


def upstream():
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            # One write: a head and body written apart would wait on Nagle and delayed ACKs.
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

        def log_message(self, *args):
            pass

    http.server.ThreadingHTTPServer.request_queue_size = 1024
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.handle_error = lambda request, address: None
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_address[1]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def request_latencies(port, requests, clients):
    """Latency (ms) of each keep-alive GET, `clients` connections in parallel."""
    out = []
    lock = threading.Lock()

    def run(n):
        s = socket.create_connection(("127.0.0.1", port))
        mine = []
        for _ in range(n):
            t0 = time.perf_counter()
            s.sendall(b"GET /x HTTP/1.1\r\nHost: bench.test\r\n\r\n")
            buf = b""
            while not (b"\r\n\r\n" in buf and buf.endswith(b"ok")):
                chunk = s.recv(4096)
                if not chunk:
                    s = socket.create_connection(("127.0.0.1", port))
                    break
                buf += chunk
            mine.append((time.perf_counter() - t0) * 1000)
        s.close()
        with lock:
            out.extend(mine)

    threads = [threading.Thread(target=run, args=(requests // clients,)) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def summary(ms):
    ms = sorted(ms)
    q = lambda p: round(ms[min(len(ms) - 1, int(p * len(ms)))], 3)
    return {"requests": len(ms), "p50_ms": q(0.50), "p99_ms": q(0.99), "max_ms": round(ms[-1], 3),
            "mean_ms": round(statistics.fmean(ms), 3)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--switchyard", default="target/release/switchyard")
    ap.add_argument("--attackers", type=int, default=500)
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--trickle", type=float, default=1.0)
    ap.add_argument("--header-timeout", default="10s")
    ap.add_argument("--attack-seconds", type=float, default=25.0)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4 * args.attackers + 1000), hard))

    up = upstream()
    work = tempfile.mkdtemp(prefix="slowloris-")
    port = free_port()
    conf = os.path.join(work, "switchyard.yaml")
    with open(conf, "w") as f:
        f.write(
            f"server: {{listen: ['127.0.0.1:{port}'], threads: 1, pid_file: {work}/pid, "
            f"upgrade_sock: {work}/sock, state_dir: {work}/state, access_log: off, "
            f"limits: {{header_timeout: {args.header_timeout}}}}}\n"
            f"upstreams: {{up: {{backends: ['127.0.0.1:{up}']}}}}\n"
            "routes: [{name: all, split: {targets: {up: 1}}}]\n"
        )
    proc = subprocess.Popen([args.switchyard, "run", "-c", conf], stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        request_latencies(port, 400, args.clients)  # warm-up
        quiet = summary(request_latencies(port, args.requests, args.clients))

        stop = threading.Event()
        lifetimes = []
        lock = threading.Lock()

        def attacker():
            while not stop.is_set():
                try:
                    s = socket.create_connection(("127.0.0.1", port))
                    s.sendall(b"GET / HTTP/1.1\r\nHost: slow.test\r\n")
                except OSError:
                    time.sleep(0.1)
                    continue
                opened = time.monotonic()
                while not stop.is_set():
                    time.sleep(args.trickle)
                    try:
                        s.sendall(b"X")
                        s.setblocking(False)
                        try:
                            if s.recv(1) == b"":
                                break
                        except BlockingIOError:
                            pass
                        finally:
                            s.setblocking(True)
                    except OSError:
                        break
                if not stop.is_set():
                    with lock:
                        lifetimes.append(time.monotonic() - opened)
                s.close()

        attackers = [threading.Thread(target=attacker, daemon=True) for _ in range(args.attackers)]
        for t in attackers:
            t.start()
        time.sleep(2.0)
        started = time.monotonic()
        attacked = summary(request_latencies(port, args.requests, args.clients))
        while time.monotonic() - started < args.attack_seconds:
            time.sleep(0.5)
        stop.set()
        for t in attackers:
            t.join(timeout=5)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    cut = sorted(lifetimes)
    print(json.dumps({
        "attackers": args.attackers,
        "header_timeout": args.header_timeout,
        "without_attack": quiet,
        "during_attack": attacked,
        "p99_ratio": round(attacked["p99_ms"] / quiet["p99_ms"], 2),
        "attack_connections_cut": len(cut),
        "cut_after_s_median": round(cut[len(cut) // 2], 2) if cut else None,
        "cut_after_s_max": round(cut[-1], 2) if cut else None,
    }, indent=1))


if __name__ == "__main__":
    main()
