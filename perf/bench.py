#!/usr/bin/env python3
"""Switchyard against nginx and HAProxy on one machine, with the same release table (perf/peers/).

Started by perf/run, which builds Switchyard and installs the tools; see perf/README.md for the method.

Layout (perf-method-and-peers.md section 2.2, L1): the proxies are pinned to one CPU (--proxy-cpu), each
with one worker; the load generator and the upstream (one nginx worker) share the other (--load-cpu).
All three proxies run for the whole benchmark; each measurement loads one of them, and the order of the
peers rotates between rounds.

Four phases, each over every scenario and peer:
  1. max: wrk (closed loop) for --duration seconds: requests/s, and the proxy's CPU time per request
     (utime + stime of its processes, from /proc, divided by the requests wrk completed);
  2. fixed rate: oha -q RATE --latency-correction (open loop) for --duration seconds: p50, p99, and
     CPU time per request at that rate. RATE is --rate, or half the slowest peer's median max req/s
     in the pass-through scenario (keep-alive off gets its own; both mirror rows use the fast-shadow
     mirror's).
  3. paired: half that rate, in all, to all the scenario's peers (and the direct upstream) at once, from
     examples/interleaved_load.rs, which sends each request to one of them in turn (a random order per
     turn). Every peer meets the same moments of the machine, so their percentiles compare within a
     run, and p99 per 1 s window gives a paired ratio; each proxy's CPU time per request is taken in the
     same seconds as nginx's. The proxies share their CPU in this phase.
  4. wire: the same open-loop load at a third of that rate while tcpdump captures lo, and from the
     capture (perf/wire_latency.py) the latency the proxy itself adds to each request: the time between
     the client's request reaching it and its answer, less the upstream's time. This leaves out the load
     generator's and the upstream's scheduling, which share a CPU. (Not for the 500 ms shadow, where
     nginx's share is the shadow's 500 ms.)

Every run also records the CPU time the hypervisor took from both CPUs (steal, from /proc/stat), and
before and after the load perf/hiccups.py measures how often each CPU stalls for over 1 ms when idle.

Output: a markdown table (perf/RESULTS.md unless --out) and the raw runs as JSON beside it.
"""
import argparse
import datetime
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request

import wire_latency

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS_DIR = os.path.join(ROOT, "perf", "peers")
WORK = "/tmp/switchyard-perf"
CONNECTIONS = 64

PEERS = {
    "switchyard": 18080,
    "nginx": 18081,
    "haproxy": 18082,
    "pingora": 18083,
}
# the bare Pingora pass-through (examples/bare_pingora.rs) has no release table: it proxies every path
# to v1, so it takes part only where that is the whole job
PEER_SCENARIOS = {"pingora": ("pass", "close")}
DIRECT_PORT = 19001
# the ports of a request's own upstream leg (v1 and v2; the shadows are 19003 and 19004)
PRIMARY_UPSTREAM_PORTS = (19001, 19002)
# nginx answers the 500 ms shadow's row only after the shadow has: its latency is the shadow's
LATENCY_SKIP = ("mirror-slow",)
# the rows also measured straight to the upstream, with no proxy: the floor under the proxies
DIRECT_ROWS = ("pass", "close")
# the bare Pingora pass-through sets no X-Request-Id, which joins a request's two legs in the capture
WIRE_PEERS = ("switchyard", "nginx", "haproxy")

# id, title, path (USER is replaced by a random user id per request), headers, keep-alive, peers
SCENARIOS = [
    ("pass", "pass-through", "/pass/orders/1", [], True, None),
    ("split", "90/10 sticky split", "/split/orders/1?user=USER", [], True, None),
    ("rule", "header rule", "/rule/orders/1?user=USER", ["X-Version: beta"], True, None),
    ("routes", "1,000 routes", "/r/0737/orders/1?user=USER", [], True, None),
    ("mirror", "mirror 100%, fast shadow", "/mirror/orders/1", [], True, ("switchyard", "nginx")),
    ("mirror-slow", "mirror 100%, 500 ms shadow", "/mirror-slow/orders/1", [], True, ("switchyard", "nginx")),
    ("close", "keep-alive off", "/pass/orders/1", [], False, None),
]


def scenario(sid):
    """The SCENARIOS entry of this id: (id, title, path, headers, keep-alive, peers)."""
    return next(s for s in SCENARIOS if s[0] == sid)


def direct(sid):
    """["direct"] for a row that is also measured with no proxy, else []."""
    return ["direct"] if sid in DIRECT_ROWS else []


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def tool_version(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        text = (out.stdout + out.stderr).strip().splitlines()
        return text[0] if text else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "not found"


class Procs:
    """The processes the benchmark started; all are stopped on exit."""

    def __init__(self):
        self.started = []

    def start(self, name, cmd, cpu, env=None):
        logf = open(os.path.join(WORK, f"{name}.out"), "w")
        full = ["taskset", "-c", str(cpu)] + cmd
        p = subprocess.Popen(full, stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.started.append((name, p))
        return p

    def stop_all(self):
        for _, p in reversed(self.started):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.time() + 10
        for _, p in self.started:
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


def children(pid):
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                kids.append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    return kids


def cpu_seconds(pids):
    """utime + stime of the given processes (all their threads, live or ended), in seconds."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


def steal_ticks(cpus):
    """Ticks the hypervisor ran something else while these CPUs had work (/proc/stat's steal column)."""
    total = 0
    with open("/proc/stat") as f:
        for line in f:
            fields = line.split()
            if fields and fields[0] in (f"cpu{c}" for c in cpus) and len(fields) > 8:
                total += int(fields[8])
    return total


def steal_mark(cpus):
    return steal_ticks(cpus), time.time()


def steal_ms_per_s(cpus, mark):
    """ms per second the hypervisor took from these CPUs since `mark` (from steal_mark)."""
    ticks, t0 = mark
    return (steal_ticks(cpus) - ticks) * 1000 / os.sysconf("SC_CLK_TCK") / max(0.001, time.time() - t0)


def hiccups(cpus, seconds=5):
    """perf/hiccups.py on each of these CPUs at once: how often each stalls for over 1 ms."""
    script = os.path.join(ROOT, "perf", "hiccups.py")
    procs = {c: subprocess.Popen(["taskset", "-c", str(c), sys.executable, script, "--seconds", str(seconds)],
                                 stdout=subprocess.PIPE, text=True) for c in cpus}
    out = {}
    for c, p in procs.items():
        text, _ = p.communicate(timeout=seconds + 30)
        out[c] = json.loads(text) if p.returncode == 0 and text.strip() else None
    for c, h in out.items():
        if h:
            log(f"CPU {c} idle: {h['stalls_per_s']:.1f} stalls/s over 1 ms, {h['stalled_ms_per_s']:.1f} ms/s in "
                f"them, longest {h['longest_ms']:.1f} ms")
    return out


def wait_http(port, path, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1).read()
            return
        except Exception:  # noqa: BLE001 - any failure means "not ready yet"
            time.sleep(0.1)
    raise SystemExit(f"port {port} did not answer {path} within {timeout}s; see {WORK}/*.out")


def wrk_script(path, headers):
    """A wrk Lua script that sets the headers and, where the path has USER, a random user per request."""
    lines = [f'wrk.headers["{h.split(":", 1)[0]}"] = "{h.split(":", 1)[1].strip()}"' for h in headers]
    if "USER" in path:
        before, after = path.split("USER", 1)
        lines.append("math.randomseed(os.time())")
        lines.append(
            f'request = function() return wrk.format(nil, "{before}" .. math.random(0, 999999) .. "{after}") end'
        )
    name = os.path.join(WORK, f"wrk-{abs(hash((path, tuple(headers))))}.lua")
    with open(name, "w") as f:
        f.write("\n".join(lines) + "\n")
    return name


def parse_wrk(out):
    res = {"requests": 0, "rps": 0.0, "errors": 0}
    m = re.search(r"(\d+) requests in", out)
    if m:
        res["requests"] = int(m.group(1))
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m:
        res["rps"] = float(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        res["errors"] += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        res["errors"] += sum(int(x) for x in m.groups())
        res["error_kinds"] = dict(zip(("connect", "read", "write", "timeout"), (int(x) for x in m.groups())))
    return res


def oha_url(port, path):
    if "USER" not in path:
        return [f"http://127.0.0.1:{port}{path}"]
    # oha's --rand-regex-url takes "." literally; only the query's "?" needs escaping here
    pattern = f"http://127.0.0.1:{port}" + path.replace("?", "\\?").replace("USER", "[0-9]{6}")
    return ["--rand-regex-url", pattern]


class Bench:
    def __init__(self, args):
        self.args = args
        self.procs = Procs()
        self.pids = {}
        self.runs = []
        self.samples = {}  # (scenario, peer, round) -> the proxy's share of each request, µs, sorted
        self.round = 0
        self.wire_rates = {}
        self.hiccups = {}
        self.paired_rates = {}

    # --- processes

    def start_all(self):
        a = self.args
        env = dict(os.environ, PERF_PEERS=PEERS_DIR)
        up = self.procs.start(
            "upstream", ["nginx", "-c", os.path.join(PEERS_DIR, "upstream.conf")], a.load_cpu
        )
        self.procs.start(
            "slow-shadow", [sys.executable, os.path.join(ROOT, "perf", "slow_upstream.py"), "19004", "500"], a.load_cpu
        )
        sy = self.procs.start(
            "switchyard", [a.switchyard, "run", "-c", os.path.join(PEERS_DIR, "switchyard.yaml")], a.proxy_cpu,
            env=dict(env, RUST_LOG="error"),
        )
        ng = self.procs.start("nginx", ["nginx", "-c", os.path.join(PEERS_DIR, "nginx.conf")], a.proxy_cpu)
        self.pids = {"switchyard": sy.pid, "nginx": ng.pid, "upstream": up.pid}
        if "haproxy" in a.peers:
            hp = self.procs.start("haproxy", ["haproxy", "-db", "-f", os.path.join(PEERS_DIR, "haproxy.cfg")],
                                  a.proxy_cpu, env=env)
            self.pids["haproxy"] = hp.pid
        if "pingora" in a.peers:
            bp = self.procs.start("pingora", [a.bare_pingora, f"127.0.0.1:{PEERS['pingora']}", f"127.0.0.1:{DIRECT_PORT}"],
                                  a.proxy_cpu, env=dict(env, RUST_LOG="error"))
            self.pids["pingora"] = bp.pid
        wait_http(DIRECT_PORT, "/")
        for peer in a.peers:
            wait_http(PEERS[peer], "/pass/ready")
        # every peer answers every scenario's path before anything is measured
        for peer in a.peers:
            for sid, _, path, headers, _, _ in SCENARIOS:
                if peer not in self.peers_for(sid):
                    continue
                req = urllib.request.Request(
                    f"http://127.0.0.1:{PEERS[peer]}{path.replace('USER', '42')}",
                    headers=dict((h.split(":", 1)[0], h.split(":", 1)[1].strip()) for h in headers),
                )
                with urllib.request.urlopen(req, timeout=5) as r:
                    if r.status != 200:
                        raise SystemExit(f"{peer} answered {r.status} to {path}")
                    if peer != "pingora" and not r.headers.get("X-Request-Id"):
                        raise SystemExit(f"{peer} sent no X-Request-Id for {path}")

    def peer_pids(self, peer):
        pid = self.pids[peer]
        return [pid] + children(pid)

    # --- one measurement

    def measure(self, phase, sid, peer, rate=None):
        _, _, path, headers, keepalive, _ = scenario(sid)
        port = DIRECT_PORT if peer == "direct" else PEERS[peer]
        hdrs = list(headers) + ([] if keepalive else ["Connection: close"])
        pids = [] if peer == "direct" else self.peer_pids(peer)
        a = self.args
        cpus = (a.proxy_cpu, a.load_cpu)
        mark = steal_mark(cpus)
        if phase == "max":
            script = wrk_script(path, hdrs)
            base = ["taskset", "-c", str(a.load_cpu), "wrk", "-t1", f"-c{CONNECTIONS}", "-s", script]
            if not keepalive:
                base += ["-H", "Connection: close"]
            url = f"http://127.0.0.1:{port}{path.replace('USER', '1')}"
            subprocess.run(base + ["-d1s", url], capture_output=True, timeout=30)  # warm-up
            c0 = cpu_seconds(pids)
            out = subprocess.run(base + [f"-d{a.duration}s", url], capture_output=True, text=True,
                                 timeout=a.duration + 30).stdout
            cpu = cpu_seconds(pids) - c0
            res = parse_wrk(out)
        elif phase == "wire":
            # tcpdump shares the machine, so the proxy's CPU time is not taken here
            res = self.wire_run(port, path, headers, keepalive, rate)
            cpu = None
        else:
            cmd = self.oha_cmd(port, path, headers, keepalive, rate)
            c0 = cpu_seconds(pids)
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=a.duration + 60)
            cpu = cpu_seconds(pids) - c0
            res = parse_oha(proc.stdout)
        res["cpu_us"] = cpu * 1e6 / res["requests"] if pids and res["requests"] and cpu is not None else None
        res["steal_ms_per_s"] = steal_ms_per_s(cpus, mark)
        samples = res.pop("samples", None)
        run = dict(phase=phase, scenario=sid, peer=peer, rate=rate, round=self.round, **res)
        if samples is not None:
            self.samples[(sid, peer, self.round)] = samples
        self.runs.append(run)
        cpu = f"{run['cpu_us']:.1f} us/req" if run["cpu_us"] else "-"
        lat = f" p50 {res['p50_ms']:.2f} ms p99 {res['p99_ms']:.2f} ms" if phase == "fixed" and res["p50_ms"] else ""
        if phase == "wire" and res.get("added_p99_us") is not None:
            lat = (f" proxy's share p50 {res['added_p50_us']:.0f} us p99 {res['added_p99_us']:.0f} us"
                   f" ({res['joined']} joined, {res['dropped']} dropped)")
        lat += f"  steal {res['steal_ms_per_s']:.1f} ms/s"
        log(f"  {phase:5} {sid:11} {peer:10} {res['rps']:9.0f} req/s  {cpu:>14}{lat}  errors {res['errors']}")
        return run

    def oha_cmd(self, port, path, headers, keepalive, rate):
        a = self.args
        cmd = ["taskset", "-c", str(a.load_cpu), "oha", "--no-tui", "--output-format", "json",
               "-c", str(CONNECTIONS), "-q", str(rate), "--latency-correction", "-z", f"{a.duration}s"]
        if not keepalive:
            cmd.append("--disable-keepalive")
        for h in headers:
            cmd += ["-H", h]
        return cmd + oha_url(port, path)

    def wire_run(self, port, path, headers, keepalive, rate):
        """oha at `rate` while tcpdump captures the proxy's two legs; the proxy's share of each request."""
        a = self.args
        pcap = os.path.join(WORK, "wire.pcap")
        ups = " or ".join(f"port {p}" for p in PRIMARY_UPSTREAM_PORTS)
        # data segments only: the IP length less the IP and TCP headers is not zero
        bpf = (f"tcp and (port {port} or {ups}) and "
               "(((ip[2:2] - ((ip[0]&0xf)<<2)) - ((tcp[12]&0xf0)>>2)) != 0)")
        errf = open(os.path.join(WORK, "tcpdump.err"), "w+")
        tcpdump = subprocess.Popen(
            ["taskset", "-c", str(a.load_cpu), "tcpdump", "-i", "lo", "-nn", "-q", "-s", "1024", "-B", "262144",
             "--time-stamp-precision=nano", "-w", pcap, bpf], stdout=subprocess.DEVNULL, stderr=errf)
        def said():
            errf.seek(0)
            return errf.read()

        try:
            deadline = time.time() + 10
            while time.time() < deadline and "listening on" not in said() and tcpdump.poll() is None:
                time.sleep(0.05)
            if tcpdump.poll() is not None:
                raise SystemExit(f"tcpdump did not start: {said().strip()}")
            proc = subprocess.run(self.oha_cmd(port, path, headers, keepalive, rate), capture_output=True,
                                  text=True, timeout=a.duration + 60)
            time.sleep(0.3)
        finally:
            tcpdump.send_signal(signal.SIGINT)
            try:
                tcpdump.wait(timeout=10)
            except subprocess.TimeoutExpired:
                tcpdump.kill()
                tcpdump.wait()
        m = re.search(r"(\d+) packets dropped by kernel", said())
        errf.close()
        res = parse_oha(proc.stdout)
        try:
            counts, added, _, _ = wire_latency.analyse(pcap, port, PRIMARY_UPSTREAM_PORTS)
        except (OSError, SystemExit) as e:
            log(f"  the capture could not be read: {e}")
            counts, added = {"joined": 0}, []
        finally:
            if os.path.exists(pcap):
                os.remove(pcap)
        added = sorted(v * 1e6 for v in added)
        res.update(joined=counts["joined"], dropped=int(m.group(1)) if m else None, samples=added,
                   added_p50_us=wire_latency.quantile(added, 0.50), added_p99_us=wire_latency.quantile(added, 0.99))
        return res

    def paired_rounds(self, rates):
        for r in range(self.args.rounds):
            self.round = r
            log(f"--- paired, round {r + 1}/{self.args.rounds}")
            for sid in self.args.scenarios:
                if sid in rates:
                    self.paired_run(sid, rates[sid])
                    time.sleep(0.5)

    def paired_run(self, sid, rate):
        """All of the scenario's peers at once at `rate` in all, each request to one of them in turn."""
        a = self.args
        _, _, path, headers, keepalive, _ = scenario(sid)
        peers = self.peers_for(sid) + direct(sid)
        cmd = ["taskset", "-c", str(a.load_cpu), a.interleaved_load, "--rate", str(rate), "--duration",
               str(a.duration), "--warmup", "1", "--connections", str(CONNECTIONS)]
        for h in headers:
            cmd += ["-H", h]
        if not keepalive:
            cmd.append("--close")
        cmd += [f"{p}=http://127.0.0.1:{DIRECT_PORT if p == 'direct' else PEERS[p]}{path}" for p in peers]
        pids = {p: self.peer_pids(p) for p in peers if p != "direct"}
        c0 = {p: cpu_seconds(v) for p, v in pids.items()}
        cpus = (a.proxy_cpu, a.load_cpu)
        mark = steal_mark(cpus)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=a.duration + 60)
        if proc.returncode != 0:
            raise SystemExit(f"interleaved_load failed ({proc.returncode}): {proc.stderr.strip()}")
        cpu = {p: cpu_seconds(v) - c0[p] for p, v in pids.items()}
        steal = steal_ms_per_s(cpus, mark)

        def ms(us):
            return None if us is None else us / 1000

        data = json.loads(proc.stdout)
        # the CPU time spans the warm-up too, so it is divided by every request sent to each peer
        sent = data["sent"] / len(peers)
        for t in data["targets"]:
            cpu_us = cpu[t["name"]] * 1e6 / sent if t["name"] in cpu and sent else None
            run = dict(phase="paired", scenario=sid, peer=t["name"], rate=rate, peers=len(peers), round=self.round,
                       cpu_us=cpu_us,
                       requests=t["requests"], rps=t["requests"] / a.duration, errors=t["errors"],
                       error_kinds=t["error_kinds"], p50_ms=ms(t["p50_us"]), p90_ms=ms(t["p90_us"]),
                       p99_ms=ms(t["p99_us"]), p999_ms=ms(t["p999_us"]),
                       window_p99_ms=[ms(v) for v in t["window_p99_us"]], steal_ms_per_s=steal)
            self.runs.append(run)
            log(f"  paired {sid:11} {t['name']:10} {run['rps']:9.0f} req/s  {fmt(cpu_us)} us/req  "
                f"p50 {fmt(run['p50_ms'], 2)} ms "
                f"p99 {fmt(run['p99_ms'], 2)} ms p99.9 {fmt(run['p999_ms'], 2)} ms  steal {steal:.1f} ms/s  "
                f"errors {t['errors']}")

    def peers_for(self, sid):
        only = scenario(sid)[5]
        return [p for p in self.args.peers
                if (not only or p in only) and sid in PEER_SCENARIOS.get(p, (sid,))]

    def rounds(self, phase, rates):
        for r in range(self.args.rounds):
            self.round = r
            log(f"--- {phase}, round {r + 1}/{self.args.rounds}")
            for sid in self.args.scenarios:
                if phase == "wire" and sid in LATENCY_SKIP:
                    continue
                order = self.peers_for(sid)
                if phase == "wire":
                    order = [p for p in order if p in WIRE_PEERS]
                if phase != "wire":
                    order = order + direct(sid)
                k = r % len(order)
                for peer in order[k:] + order[:k]:
                    self.measure(phase, sid, peer, rates.get(sid) if rates else None)
                    time.sleep(0.5)

    def median(self, phase, sid, peer, key):
        vals = [r[key] for r in self.runs if r["phase"] == phase and r["scenario"] == sid and r["peer"] == peer
                and r.get(key) is not None]
        return statistics.median(vals) if vals else None

    def spread(self, phase, sid, peer, key):
        vals = [r[key] for r in self.runs if r["phase"] == phase and r["scenario"] == sid and r["peer"] == peer
                and r.get(key) is not None]
        return (min(vals), max(vals)) if vals else None

    # Which scenario's maximum sets each scenario's fixed rate: the mirror rows proxy two requests per
    # request and saturate far below pass-through, and keep-alive off is bounded by connection set-up.
    RATE_BASIS = {"close": "close", "mirror": "mirror", "mirror-slow": "mirror"}

    def fixed_rates(self):
        rates = {}
        for sid in self.args.scenarios:
            basis = self.RATE_BASIS.get(sid, "pass")
            if basis not in self.args.scenarios:
                basis = "pass"
            maxes = [self.median("max", basis, p, "rps") for p in self.peers_for(basis)]
            maxes = [m for m in maxes if m]
            if self.args.rate:
                rate = self.args.rate if basis == "pass" else max(100, self.args.rate // 2)
            elif maxes:
                rate = max(100, int(min(maxes) * 0.5) // 100 * 100)
            else:
                rate = 1000
            rates[sid] = rate
        return rates

    def run(self):
        os.makedirs(WORK, exist_ok=True)
        shutil.rmtree(os.path.join(WORK, "switchyard-state"), ignore_errors=True)
        started = datetime.datetime.now(datetime.timezone.utc)
        try:
            self.start_all()
            self.hiccups["before"] = hiccups((self.args.load_cpu, self.args.proxy_cpu))
            self.rounds("max", None)
            rates = self.fixed_rates()
            log(f"fixed rates: {rates}")
            self.rounds("fixed", rates)
            if "paired" in self.args.phases:
                self.paired_rates = {sid: paired_rate(r) for sid, r in rates.items() if sid not in LATENCY_SKIP}
                log(f"paired rates: {self.paired_rates}")
                self.paired_rounds(self.paired_rates)
            if "wire" in self.args.phases:
                self.wire_rates = {sid: wire_rate(r) for sid, r in rates.items() if sid not in LATENCY_SKIP}
                log(f"wire rates: {self.wire_rates}")
                self.rounds("wire", self.wire_rates)
            self.hiccups["after"] = hiccups((self.args.load_cpu, self.args.proxy_cpu))
        finally:
            self.procs.stop_all()
        self.report(started, rates)

    # --- report

    def report(self, started, rates):
        a = self.args
        lines = [
            "# Switchyard, nginx and HAProxy: load test results",
            "",
            f"Run {started:%Y-%m-%d %H:%M} UTC by `{' '.join(['perf/run'] + sys.argv[1:])}` (rounds {a.rounds}, "
            f"{a.duration} s per run, {CONNECTIONS} connections). Method: [perf/README.md](README.md).",
            "",
            "Machine: " + machine(),
            "",
            "Peers: " + "; ".join([
                f"switchyard {git_rev()}",
                tool_version(["nginx", "-v"]).replace("nginx version: ", ""),
                tool_version(["haproxy", "-v"]).split(" - ")[0],
                "pingora: a bare Pingora 0.9 pass-through with Switchyard's runtime settings "
                "(examples/bare_pingora.rs)",
            ]) + f". Load: {tool_version(['wrk', '-v']).split(' [')[0]}, {tool_version(['oha', '--version'])}.",
            "",
            f"Proxies on CPU {a.proxy_cpu} (one worker each); wrk/oha and the upstream (one nginx worker) on "
            f"CPU {a.load_cpu}. Medians over the rounds; the ranges are in the spread table below.",
            "",
            self.hiccup_line(),
            "",
            "| scenario | peer | req/s (max) | ×nginx | ×direct | CPU µs/req (max) | ×nginx "
            "| fixed rate | CPU µs/req (fixed) | ×nginx | p50 ms | p99 ms | p99 ×nginx | p99 − direct ms | errors |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        spread = [
            "| scenario | peer | req/s (max) | CPU µs/req (max) | CPU µs/req (fixed) | p99 ms |",
            "|---|---|---|---|---|---|",
        ]

        for sid, title, *_ in SCENARIOS:
            if sid not in a.scenarios:
                continue
            direct_sid = "close" if sid == "close" else "pass"
            d_rps = self.median("max", direct_sid, "direct", "rps")
            d_p99 = self.median("fixed", direct_sid, "direct", "p99_ms")
            n = {
                "rps": self.median("max", sid, "nginx", "rps"),
                "cpu_max": self.median("max", sid, "nginx", "cpu_us"),
                "cpu_fixed": self.median("fixed", sid, "nginx", "cpu_us"),
                "p99": self.median("fixed", sid, "nginx", "p99_ms"),
            }
            peers = list(a.peers) + direct(sid)
            for peer in peers:
                if peer in PEER_SCENARIOS and sid not in PEER_SCENARIOS[peer]:
                    continue
                if peer != "direct" and peer not in self.peers_for(sid):
                    lines.append(f"| {title} | {peer} | N/A: no mirroring in HAProxy 2.6 ||||||||||||| |")
                    continue
                rps = self.median("max", sid, peer, "rps")
                cpu_max = self.median("max", sid, peer, "cpu_us")
                cpu_fixed = self.median("fixed", sid, peer, "cpu_us")
                p50 = self.median("fixed", sid, peer, "p50_ms")
                p99 = self.median("fixed", sid, peer, "p99_ms")
                errors = sum(r["errors"] for r in self.runs if r["scenario"] == sid and r["peer"] == peer)
                lines.append(
                    f"| {title} | {peer} | {fmt(rps, 0)} | {ratio(rps, n['rps'])} | {ratio(rps, d_rps)} "
                    f"| {fmt(cpu_max)} | {ratio(cpu_max, n['cpu_max'])} | {rates.get(sid, '–'):,} "
                    f"| {fmt(cpu_fixed)} | {ratio(cpu_fixed, n['cpu_fixed'])} | {fmt(p50, 2)} | {fmt(p99, 2)} "
                    f"| {ratio(p99, n['p99'])} | {fmt(None if p99 is None or d_p99 is None else p99 - d_p99, 2)} "
                    f"| {errors} |"
                )
                spread.append(
                    f"| {title} | {peer} | {rng(self.spread('max', sid, peer, 'rps'), 0)} "
                    f"| {rng(self.spread('max', sid, peer, 'cpu_us'))} "
                    f"| {rng(self.spread('fixed', sid, peer, 'cpu_us'))} "
                    f"| {rng(self.spread('fixed', sid, peer, 'p99_ms'), 2)} |"
                )
        lines += self.paired_section()
        lines += self.latency_section()
        lines += [
            "",
            "×nginx: this peer's figure divided by nginx's (below 1.00 is less CPU or latency, above is more "
            "throughput). ×direct: req/s divided by the load generator straight to the upstream. "
            "errors: non-2xx answers and socket errors over all runs.",
            "",
            "## Spread (min–max over the rounds)",
            "",
        ] + spread
        text = "\n".join(lines) + "\n"
        with open(a.out, "w") as f:
            f.write(text)
        with open(os.path.splitext(a.out)[0] + ".json", "w") as f:
            json.dump({"started": started.isoformat(), "rates": rates, "wire_rates": self.wire_rates,
                       "paired_rates": self.paired_rates, "hiccups": self.hiccups, "runs": self.runs}, f, indent=1)
        print(text)
        log(f"wrote {a.out}")


    def by_round(self, phase, sid, peer, key):
        return {r["round"]: r[key] for r in self.runs if r["phase"] == phase and r["scenario"] == sid
                and r["peer"] == peer and r.get(key)}

    def paired(self, phase, sid, peer, key):
        """Geometric mean over the rounds of this peer's figure / nginx's in the same round, with a 95%
        interval from resampling the rounds: runs next to each other in time share the machine's state."""
        mine, ref = self.by_round(phase, sid, peer, key), self.by_round(phase, sid, "nginx", key)
        return geomean_ci([mine[r] / ref[r] for r in mine if r in ref])

    def window_paired(self, sid, peer):
        """Geometric mean over the paired phase's 1 s windows of this peer's p99 / nginx's in the same
        window, with a 95% interval from resampling the windows."""
        def windows(p):
            return {r["round"]: r["window_p99_ms"] for r in self.runs
                    if r["phase"] == "paired" and r["scenario"] == sid and r["peer"] == p}
        mine, ref = windows(peer), windows("nginx")
        return geomean_ci([x / y for rd in mine if rd in ref for x, y in zip(mine[rd], ref[rd]) if x and y])

    def hiccup_line(self):
        def one(when):
            parts = []
            for cpu, h in sorted((self.hiccups.get(when) or {}).items()):
                if h:
                    parts.append(f"CPU {cpu} {h['stalls_per_s']:.1f}/s, {h['stalled_ms_per_s']:.1f} ms/s, "
                                 f"longest {h['longest_ms']:.1f} ms")
            return "; ".join(parts) or "not measured"
        return ("The machine's own stalls over 1 ms with the peers idle (perf/hiccups.py, 5 s on both CPUs at "
                f"once): before the load {one('before')}; after it {one('after')}.")

    def paired_section(self):
        a = self.args
        if "paired" not in a.phases:
            return []
        out = [
            "",
            "## Latency with every peer loaded at once (paired phase)",
            "",
            "examples/interleaved_load.rs at half the fixed rate in all (the rate column is each peer's share), "
            "each request sent to one of the row's peers in turn (the direct upstream too), so every peer meets "
            "the same stalls of the machine. The proxies "
            "share their CPU in this phase, so a stall of one proxy also delays the others: a proxy's own stalls "
            "show in the latency section below, not here. Percentiles are medians over the rounds of each run's "
            "figure, from when each request was due (no coordinated omission). CPU µs/req: the proxy's CPU time "
            "over the run (warm-up included) divided by the requests sent to it; paired: the geometric mean over "
            "the rounds of this peer's figure / nginx's in the same run. By window: the geometric mean "
            "of this peer's p99 / nginx's over every 1 s window of every round, and a 95% interval from "
            "resampling the windows.",
            "",
            "| scenario | peer | req/s each | CPU µs/req | ×nginx paired (95% interval) | p50 ms | p90 ms "
            "| p99 ms | p99.9 ms | p99 ×nginx | p99 ×nginx by window (95% interval) | p99 − direct ms | errors |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for sid, title, *_ in SCENARIOS:
            if sid not in a.scenarios or sid in LATENCY_SKIP:
                continue
            n_p99 = self.median("paired", sid, "nginx", "p99_ms")
            d_p99 = self.median("paired", sid, "direct", "p99_ms")
            for peer in self.peers_for(sid) + direct(sid):
                q = {k: self.median("paired", sid, peer, k)
                     for k in ("rps", "cpu_us", "p50_ms", "p90_ms", "p99_ms", "p999_ms")}
                if q["rps"] is None:
                    continue

                def vs_nginx(paired_ratio):
                    return "1.00" if peer == "nginx" else "–" if peer == "direct" else ci(paired_ratio())

                cpu_paired = vs_nginx(lambda: self.paired("paired", sid, peer, "cpu_us"))
                by_window = vs_nginx(lambda: self.window_paired(sid, peer))
                errors = sum(r["errors"] for r in self.runs if r["phase"] == "paired" and r["scenario"] == sid
                             and r["peer"] == peer)
                minus = None if peer == "direct" or q["p99_ms"] is None or d_p99 is None else q["p99_ms"] - d_p99
                out.append(
                    f"| {title} | {peer} | {fmt(q['rps'], 0)} | {fmt(q['cpu_us'])} | {cpu_paired} "
                    f"| {fmt(q['p50_ms'], 2)} | {fmt(q['p90_ms'], 2)} "
                    f"| {fmt(q['p99_ms'], 2)} | {fmt(q['p999_ms'], 2)} | {ratio(q['p99_ms'], n_p99)} | {by_window} "
                    f"| {fmt(minus, 2)} | {errors} |"
                )
        return out

    def pooled(self, sid, peer):
        """The proxy's share of every request of every wire round, sorted."""
        return sorted(v for (s, p, _), vs in self.samples.items() if s == sid and p == peer for v in vs)

    def latency_section(self):
        a = self.args
        out = [
            "",
            "## Latency: the load generator's view, and the proxy's own share",
            "",
            "p99 (oha) is the fixed-rate phase's, as in the table above. The proxy's share is the wire phase's: "
            "a packet capture at a third of that rate, from which each request's time inside the proxy "
            "(client request in to answer out, less the upstream's time) is taken; p99 over every request of "
            "every round. Paired: the geometric mean over the rounds of this peer's p99 divided by nginx's in "
            "the same round, and a 95% interval from resampling the rounds. Steal: ms per second the "
            "hypervisor ran something else on the two CPUs (fixed phase, wire phase).",
            "",
            "| scenario | peer | p99 ms (oha) | ×nginx paired (95% interval) | wire rate | share p50 µs "
            "| share p99 µs | ×nginx | ×nginx paired (95% interval) | share p99.9 µs | capture drops "
            "| steal ms/s |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]

        for sid, title, *_ in SCENARIOS:
            if sid not in a.scenarios:
                continue
            n_p99 = wire_latency.quantile(self.pooled(sid, "nginx"), 0.99)
            for peer in self.peers_for(sid):
                if peer not in WIRE_PEERS:
                    continue
                shares = self.pooled(sid, peer)
                p50, p99, p999 = (wire_latency.quantile(shares, q) for q in (0.5, 0.99, 0.999))
                if peer == "nginx":
                    oha_paired, share_paired = "1.00", "1.00" if p99 else "–"
                else:
                    oha_paired = ci(self.paired("fixed", sid, peer, "p99_ms"))
                    share_paired = ci(self.paired("wire", sid, peer, "added_p99_us"))
                drops = [r.get("dropped") for r in self.runs if r["phase"] == "wire" and r["scenario"] == sid
                         and r["peer"] == peer]
                steal = [self.median(ph, sid, peer, "steal_ms_per_s") for ph in ("fixed", "wire")]
                out.append(
                    f"| {title} | {peer} | {fmt(self.median('fixed', sid, peer, 'p99_ms'), 2)} | {oha_paired} "
                    f"| {fmt(self.wire_rates.get(sid), 0)} | {fmt(p50, 0)} | {fmt(p99, 0)} | {ratio(p99, n_p99)} "
                    f"| {share_paired} | {fmt(p999, 0)} | {'–' if not drops or None in drops else sum(drops)} "
                    f"| {fmt(steal[0])}, {fmt(steal[1])} |"
                )
        return out


def geomean_ci(ratios):
    """The geometric mean of these ratios, and a 95% interval from 2,000 resamples of them (fixed seed)."""
    logs = [math.log(r) for r in ratios]
    if not logs:
        return None
    rand = random.Random(6)
    boots = sorted(statistics.fmean(rand.choices(logs, k=len(logs))) for _ in range(2000))
    return math.exp(statistics.fmean(logs)), math.exp(boots[49]), math.exp(boots[1950])


def paired_rate(fixed_rate):
    """The paired phase's rate, over all its peers together: half the fixed rate. At the fixed rate the
    load generator and the upstream keep their CPU about 70% busy, and there a stall of that CPU leaves
    a queue that takes twice as long again to drain, or grows for seconds while the host runs slow."""
    return max(100, fixed_rate // 2 // 100 * 100)


def wire_rate(fixed_rate):
    """The wire phase's rate: a third of the fixed rate, as tcpdump shares the load generator's CPU."""
    return max(100, fixed_rate // 3 // 100 * 100)


def fmt(v, d=1):
    return "–" if v is None else f"{v:,.{d}f}"


def ratio(v, ref):
    return "–" if v is None or not ref else f"{v / ref:.2f}"


def rng(t, d=1):
    return "–" if t is None else f"{t[0]:,.{d}f}–{t[1]:,.{d}f}"


def ci(t):
    """A ratio and its interval; two decimals, or two significant digits for one as small as the slow
    mirror's."""
    def r2(v):
        return f"{v:.2f}" if v >= 0.01 else f"{v:.2g}"
    return "–" if t is None else f"{r2(t[0])} ({r2(t[1])}–{r2(t[2])})"


def parse_oha(out):
    res = {"requests": 0, "rps": 0.0, "errors": 0, "p50_ms": None, "p99_ms": None}
    try:
        data = json.loads(out)
    except json.JSONDecodeError:
        res["errors"] = -1
        return res
    codes = data.get("statusCodeDistribution", {})
    ok = sum(v for k, v in codes.items() if k.startswith("2"))
    res["requests"] = sum(codes.values())
    # requests still in flight when the run's time is up are "aborted due to deadline": not failures
    failures = {k: v for k, v in data.get("errorDistribution", {}).items() if "deadline" not in k}
    res["errors"] = (res["requests"] - ok) + sum(failures.values())
    res["error_kinds"] = failures
    res["rps"] = data.get("summary", {}).get("requestsPerSec", 0.0)
    pct = data.get("latencyPercentiles", {})
    if pct.get("p50") is not None:
        res["p50_ms"] = pct["p50"] * 1000
        res["p99_ms"] = pct["p99"] * 1000
    return res


def machine():
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{os.cpu_count()} × {model}, Linux {platform.release()}"


def git_rev():
    out = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "?"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--switchyard", default=os.path.join(ROOT, "target", "release", "switchyard"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    p.add_argument("--rate", type=int, help="fixed rate in req/s (default: half the slowest peer's max)")
    p.add_argument("--bare-pingora", default=os.path.join(ROOT, "target", "release", "examples", "bare_pingora"))
    p.add_argument("--interleaved-load",
                   default=os.path.join(ROOT, "target", "release", "examples", "interleaved_load"))
    p.add_argument("--peers", default="switchyard,nginx,haproxy,pingora")
    p.add_argument("--scenarios", default=",".join(s[0] for s in SCENARIOS))
    p.add_argument("--proxy-cpu", type=int, default=1)
    p.add_argument("--load-cpu", type=int, default=0)
    p.add_argument("--phases", default="max,fixed,paired,wire",
                   help="which of max,fixed,paired,wire to run (max and fixed always run: they set the rates)")
    p.add_argument("--out", default=os.path.join(ROOT, "perf", "RESULTS.md"))
    args = p.parse_args()
    args.phases = [x for x in args.phases.split(",") if x]
    for ph in args.phases:
        if ph not in ("max", "fixed", "paired", "wire"):
            p.error(f"unknown phase {ph!r}; known: max, fixed, paired, wire")
    if "wire" in args.phases and not shutil.which("tcpdump"):
        p.error("the wire phase needs tcpdump (apt-get install tcpdump), or leave it out: --phases max,fixed,paired")
    if "paired" in args.phases and not os.access(args.interleaved_load, os.X_OK):
        p.error(f"the paired phase needs {args.interleaved_load} (cargo build --release --example interleaved_load), "
                "or leave it out: --phases max,fixed,wire")
    args.peers = [x for x in args.peers.split(",") if x]
    args.scenarios = [x for x in args.scenarios.split(",") if x]
    for peer in args.peers:
        if peer not in PEERS:
            p.error(f"unknown peer {peer!r}; known: {', '.join(PEERS)}")
    known = [s[0] for s in SCENARIOS]
    for s in args.scenarios:
        if s not in known:
            p.error(f"unknown scenario {s!r}; known: {', '.join(known)}")
    if "pass" not in args.scenarios:
        args.scenarios.insert(0, "pass")
    Bench(args).run()


if __name__ == "__main__":
    random.seed()
    main()
