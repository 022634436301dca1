#!/usr/bin/env python3
"""Memory held per idle keep-alive client connection: Switchyard, nginx and HAProxy on this machine.

Each peer proxies to the same loopback upstream with one worker/thread. N client connections each send
one request, read the answer and stay open; the peer's resident memory (all its processes) is read
right after the answers and again after `--idle` seconds. Reported: bytes per connection over the
peer's own baseline. Loopback only; every process is stopped at the end.

`--protocol` is `h1` (HTTP/1.1), `h2c` (HTTP/2 with prior knowledge on a plain listener) or `h2`
(HTTP/2 over TLS, by ALPN; a self-signed certificate made with openssl). HTTP/2 needs the `h2` Python
package (pip install h2); HAProxy is measured over HTTP/1 only. `--no-request` opens the connections
(HTTP/2: preface and settings) without sending a request.

Peer `bare-h2` (h2c only) is the floor under an HTTP/2 connection: examples/bare_h2.rs, a bare server
on the `h2` crate with Switchyard's runtime and HTTP/2 settings that answers every stream itself
(`cargo build --release --example bare_h2`).

    perf/idle_memory.py [--connections 10000] [--idle 3] [--peers switchyard,nginx,haproxy]
                        [--protocol h1] [--no-request] [--switchyard target/release/switchyard]
"""

import argparse
import http.server
import json
import os
import resource
import shutil
import socket
import ssl
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


def self_signed(work):
    """A certificate and key for localhost, made with openssl."""
    cert, key = os.path.join(work, "cert.pem"), os.path.join(work, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", "/CN=localhost", "-keyout", key, "-out", cert],
        check=True, capture_output=True,
    )
    return cert, key


def start(peer, port, up, work, switchyard, n, protocol):
    tls = self_signed(work) if protocol == "h2" else None
    if peer == "switchyard":
        conf = os.path.join(work, "switchyard.yaml")
        listen = f"listen: ['127.0.0.1:{free_port()}'], " if tls else f"listen: ['127.0.0.1:{port}'], "
        tls_conf = f"tls: [{{listen: '127.0.0.1:{port}', cert: {tls[0]}, key: {tls[1]}}}], " if tls else ""
        with open(conf, "w") as f:
            f.write(
                f"server: {{{listen}{tls_conf}threads: 1, pid_file: {work}/sy.pid, "
                f"upgrade_sock: {work}/sy.sock, state_dir: {work}/state, access_log: off}}\n"
                f"upstreams: {{up: {{backends: ['127.0.0.1:{up}']}}}}\n"
                "routes: [{name: all, split: {targets: {up: 1}}}]\n"
            )
        return subprocess.Popen([switchyard, "run", "-c", conf], stderr=subprocess.DEVNULL)
    if peer == "bare-h2":
        if protocol != "h2c":
            raise SystemExit("bare-h2 is measured over h2c only")
        bare = os.path.join(os.path.dirname(switchyard), "examples", "bare_h2")
        return subprocess.Popen([bare, f"127.0.0.1:{port}"], stderr=subprocess.DEVNULL)
    if peer == "nginx":
        conf = os.path.join(work, "nginx.conf")
        listen = {
            "h1": f"listen 127.0.0.1:{port};",
            "h2c": f"listen 127.0.0.1:{port} http2;",
            "h2": f"listen 127.0.0.1:{port} ssl http2; ssl_certificate {tls[0] if tls else ''}; "
                  f"ssl_certificate_key {tls[1] if tls else ''};",
        }[protocol]
        with open(conf, "w") as f:
            f.write(
                f"daemon off; worker_processes 1; pid {work}/nginx.pid; error_log {work}/nginx.err;\n"
                "events { worker_connections 40000; }\n"
                "http { access_log off; keepalive_timeout 60s;\n"
                f"  upstream up {{ server 127.0.0.1:{up}; keepalive 32; }}\n"
                f"  server {{ {listen} location / {{ proxy_pass http://up;"
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
        if protocol != "h1":
            raise SystemExit("HAProxy is measured over HTTP/1 only")
        return subprocess.Popen(["haproxy", "-f", conf], stderr=subprocess.DEVNULL)
    raise SystemExit(f"unknown peer {peer}")


def import_h2():
    """The `h2` package (not perf/h2.py beside this script)."""
    here = os.path.dirname(os.path.abspath(__file__))
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    try:
        import h2.config
        import h2.connection
        import h2.events

        return h2
    finally:
        sys.path[:] = saved


class Client:
    """One client connection that sends one GET and reads its whole answer."""

    def __init__(self, port, protocol, request=True):
        self.request = request
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.protocol = protocol
        if protocol == "h2":
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["h2"])
            self.sock = ctx.wrap_socket(self.sock, server_hostname="localhost")
            if self.sock.selected_alpn_protocol() != "h2":
                raise SystemExit("the TLS listener did not choose h2")
        if protocol == "h1":
            if request:
                self.sock.sendall(b"GET / HTTP/1.1\r\nHost: idle.test\r\n\r\n")
            return
        h2 = import_h2()
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.h2.initiate_connection()
        if not request:
            self.sock.sendall(self.h2.data_to_send())
            return
        scheme = "https" if protocol == "h2" else "http"
        headers = [(":method", "GET"), (":path", "/"), (":scheme", scheme), (":authority", "idle.test")]
        self.h2.send_headers(1, headers, end_stream=True)
        self.sock.sendall(self.h2.data_to_send())

    def read_answer(self):
        if not self.request:
            return
        if self.protocol == "h1":
            buf = b""
            while not (b"\r\n\r\n" in buf and buf.endswith(b"ok")):
                chunk = self.sock.recv(4096)
                if not chunk:
                    raise SystemExit("a connection closed before its answer")
                buf += chunk
            return
        h2 = import_h2()
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise SystemExit("an HTTP/2 connection closed before its answer")
            events = self.h2.receive_data(chunk)
            self.sock.sendall(self.h2.data_to_send())
            if any(isinstance(e, h2.events.StreamEnded) and e.stream_id == 1 for e in events):
                return

    def close(self):
        self.sock.close()


def measure(peer, n, idle, switchyard, up, protocol, request):
    work = tempfile.mkdtemp(prefix=f"idle-{peer}-")
    port = free_port()
    proc = start(peer, port, up, work, switchyard, n, protocol)
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
            socks.append(Client(port, protocol, request))
        for s in socks:
            s.read_answer()
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
        "protocol": protocol,
        "request": request,
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
    ap.add_argument("--protocol", default="h1", choices=["h1", "h2c", "h2"])
    ap.add_argument("--no-request", action="store_true", help="open the connections without a request")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * args.connections + 1000
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    up = upstream()
    rows = [
        measure(p, args.connections, args.idle, args.switchyard, up, args.protocol, not args.no_request)
        for p in args.peers.split(",")
    ]
    json.dump(rows, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
