#!/usr/bin/env python3
"""Binary upgrades under load: `switchyard upgrade` N times while clients send requests at a fixed rate,
with keep-alive connections, with a connection per request, and over HTTP/2 (h2c on the plain listener
and h2 over TLS), at the same time.

An HTTP/2 stream the old process refused unprocessed (above the last stream id of its GOAWAY, or reset
with REFUSED_STREAM) is counted apart, as `unprocessed`, and sent again on a new connection, as browsers
and gRPC clients do; it is not a failure. The HTTP/2 clients are examples/h2_upgrade_load.rs (the `h2` crate),
built by perf/upgrade.sh.

Prints, per upgrade, the requests that failed (a reset, an empty reply, a timeout or a status other than
200), how long the old process took to exit after the hand-over, and over the whole run the longest gap
in service (the longest time in which no request succeeded). Loopback only; every process it starts is
stopped at the end, and the run is bounded by --upgrades and --pause.

    perf/upgrade.py [--upgrades 20] [--rate 400] [--pause 1.0] [--modes keep-alive,close,h2c,h2]
                    [--switchyard target/release/switchyard]
"""

import argparse
import http.server
import json
import os
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time


class Upstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class ThreadingServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_response(sock, buf):
    """Reads one response with a Content-Length; returns (status, rest of buffer)."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before a response")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    length = 0
    close = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
        if name.strip().lower() == b"connection" and value.strip().lower() == b"close":
            close = True
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed inside a body")
        rest += chunk
    return status, rest[length:], close


class Client(threading.Thread):
    """Sends GETs at `rate` per second on one connection (keep_alive) or a new one per request."""

    def __init__(self, port, rate, keep_alive, stop, log):
        super().__init__(daemon=True)
        self.port, self.rate, self.keep_alive, self.stop, self.log = port, rate, keep_alive, stop, log

    def run(self):
        interval = 1.0 / self.rate
        sock, buf = None, b""
        next_at = time.monotonic()
        request = b"GET /api HTTP/1.1\r\nHost: upgrade.test\r\n" + (
            b"\r\n" if self.keep_alive else b"Connection: close\r\n\r\n")
        while not self.stop.is_set():
            now = time.monotonic()
            if now < next_at:
                time.sleep(next_at - now)
            next_at += interval
            started = time.monotonic()
            try:
                if sock is None:
                    sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                    buf = b""
                sock.sendall(request)
                status, buf, close = read_response(sock, buf)
                ok = status == 200
                if close or not self.keep_alive:
                    sock.close()
                    sock = None
                self.log.append((started, time.monotonic(), ok, None if ok else f"status {status}"))
            except (OSError, ConnectionError, ValueError, IndexError) as e:
                self.log.append((started, time.monotonic(), False, type(e).__name__ + ": " + str(e)))
                if sock is not None:
                    sock.close()
                sock = None


class H2Load:
    """The HTTP/2 clients of one mode (h2c, or h2 over TLS): examples/h2_upgrade_load.rs, until stopped.
    Its log joins the others, on this script's clock."""

    def __init__(self, binary, port, rate, clients, tls, log):
        args = [binary, "--addr", f"127.0.0.1:{port}", "--rate", str(rate), "--clients", str(clients)]
        if tls:
            args.append("--tls")
        self.offset = time.time() - time.monotonic()
        self.log = log
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def join(self, timeout=None):
        out, _ = self.proc.communicate(timeout=timeout)  # closing stdin stops it
        for line in out.splitlines():
            r = json.loads(line)
            ok = True if r["r"] == "ok" else None if r["r"] == "unprocessed" else False
            self.log.append((r["s"] - self.offset, r["e"] - self.offset, ok, None if ok else r["r"]))


def self_signed(work):
    cert, key = os.path.join(work, "cert.pem"), os.path.join(work, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-subj", "/CN=localhost", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    return cert, key


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--upgrades", type=int, default=20)
    ap.add_argument("--rate", type=int, default=400, help="requests per second per mode (keep-alive, close)")
    ap.add_argument("--clients", type=int, default=4, help="clients per mode")
    ap.add_argument("--pause", type=float, default=1.0, help="seconds between upgrades")
    ap.add_argument("--switchyard", default="target/release/switchyard")
    ap.add_argument("--modes", default="keep-alive,close,h2c,h2")
    ap.add_argument("--h2-load", default="target/release/examples/h2_upgrade_load")
    args = ap.parse_args()
    modes = args.modes.split(",")

    upstream = ThreadingServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    work = tempfile.mkdtemp(prefix="switchyard-upgrade-")
    port, tls_port = free_port(), free_port()
    cert, key = self_signed(work)
    conf = os.path.join(work, "switchyard.yaml")
    with open(conf, "w") as f:
        f.write(
            f"server: {{listen: ['127.0.0.1:{port}'], tls: [{{listen: '127.0.0.1:{tls_port}', cert: {cert}, "
            f"key: {key}}}], threads: 2, pid_file: {work}/sy.pid, "
            f"upgrade_sock: {work}/upgrade.sock, grace_period: 5s, shutdown_timeout: 2s, "
            f"state_dir: {work}/state, access_log: 'off'}}\n"
            f"upstreams:\n  v1: {{backends: ['127.0.0.1:{upstream.server_address[1]}']}}\n"
            "routes:\n  - name: api\n    split: {targets: {v1: 1}}\n")
    log_file = open(os.path.join(work, "switchyard.log"), "a")
    first = subprocess.Popen([args.switchyard, "run", "-c", conf], stdout=subprocess.DEVNULL, stderr=log_file)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)

    stop = threading.Event()
    logs = {mode: [] for mode in modes}
    clients = []
    h2_loads = []
    for mode in modes:
        if mode in ("h2c", "h2"):
            target = tls_port if mode == "h2" else port
            h2_loads.append(H2Load(args.h2_load, target, args.rate, args.clients, mode == "h2", logs[mode]))
            continue
        for _ in range(args.clients):
            c = Client(port, args.rate / args.clients, mode == "keep-alive", stop, logs[mode])
            c.start()
            clients.append(c)
    time.sleep(1.0)

    upgrades = []
    try:
        for i in range(args.upgrades):
            started = time.monotonic()
            out = subprocess.run([args.switchyard, "upgrade", "-c", conf], capture_output=True, text=True,
                                 timeout=60)
            handed = time.monotonic()
            if out.returncode != 0:
                upgrades.append({"upgrade": i + 1, "error": out.stderr.strip()})
                break
            words = out.stdout.split()
            old = int(words[words.index("pid") + 1])
            while alive(old) and time.monotonic() - handed < 30:
                if first.pid == old:
                    first.poll()
                time.sleep(0.01)
            upgrades.append({"upgrade": i + 1, "started": started, "command_s": round(handed - started, 3),
                             "old_exit_s": round(time.monotonic() - handed, 3)})
            time.sleep(args.pause)
    finally:
        time.sleep(0.5)
        stop.set()
        for c in clients:
            c.join(timeout=10)
        for h in h2_loads:
            h.join(timeout=30)
        try:
            with open(os.path.join(work, "sy.pid")) as f:
                os.kill(int(f.read().strip()), 2)
        except (OSError, ValueError):
            pass
        first.poll()
        upstream.shutdown()

    bounds = [u.get("started", float("inf")) for u in upgrades] + [float("inf")]
    report = {"upgrades": [], "modes": {}}
    for i, u in enumerate(upgrades):
        row = dict(u)
        row.pop("started", None)
        for mode, log in logs.items():
            row[f"failed_{mode}"] = sum(1 for s, _, ok, _ in log if ok is False and bounds[i] <= s < bounds[i + 1])
            if mode.startswith("h2"):
                row[f"unprocessed_{mode}"] = sum(
                    1 for s, _, ok, _ in log if ok is None and bounds[i] <= s < bounds[i + 1])
        report["upgrades"].append(row)
    successes = sorted(end for log in logs.values() for _, end, ok, _ in log if ok)
    gaps = [b - a for a, b in zip(successes, successes[1:])]
    for mode, log in logs.items():
        failures = [e for _, _, ok, e in log if ok is False]
        report["modes"][mode] = {"requests": sum(1 for _, _, ok, _ in log if ok is not None),
                                 "failed": len(failures), "errors": sorted(set(failures))[:5]}
        if mode.startswith("h2"):
            report["modes"][mode]["unprocessed_resent"] = sum(1 for _, _, ok, _ in log if ok is None)
    report["longest_gap_ms"] = round(max(gaps) * 1000, 1) if gaps else None
    exits = [u["old_exit_s"] for u in upgrades if "old_exit_s" in u]
    report["old_exit_s"] = {"max": max(exits), "mean": round(sum(exits) / len(exits), 3)} if exits else None
    print(json.dumps(report, indent=1))
    print(f"upgrades: {len(exits)} of {args.upgrades}; failed requests: "
          f"{sum(m['failed'] for m in report['modes'].values())} of "
          f"{sum(m['requests'] for m in report['modes'].values())}; longest gap {report['longest_gap_ms']} ms; "
          f"old process exit after hand-over: max {report['old_exit_s']['max'] if exits else '-'} s",
          file=sys.stderr)
    return 0 if len(exits) == args.upgrades else 1


if __name__ == "__main__":
    sys.exit(main())
