#!/usr/bin/env python3
"""The latency a proxy adds, read off a loopback packet capture.

    wire_latency.py CAPTURE.pcap PROXY_PORT UPSTREAM_PORT[,UPSTREAM_PORT...] [--json]

For every request the capture holds on both legs it takes four kernel timestamps:

    t1  the client's request reaches the proxy's port      (first segment of the request head)
    t4  the proxy's answer to the client is complete        (last segment of the response)
    t2  the proxy's request to the upstream leaves          (first segment of the request head)
    t3  the upstream's answer is complete                   (last segment of the response)

and reports the proxy's share, (t4 - t1) - (t3 - t2): the time the request spent in the proxy, its
wake-ups and its queues, without the upstream's time and without the load generator's. The two legs of a
request are joined by X-Request-Id, which every peer of perf/peers/ adds to the upstream request and to
the response. Only the upstream ports given count as the request's own leg, so a mirror's copy to a
shadow port is part of the proxy's time, as it is of its job.

The capture is tcpdump's (`-w`, `--time-stamp-precision=nano` or micro), on lo, of data segments only;
perf/bench.py's wire phase takes it. Timestamps on lo are taken in the sending process's context as the
segment is sent, so they do not wait for the receiver to be scheduled.
"""
import json
import re
import statistics
import struct
import sys

METHODS = (b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"PATCH ", b"OPTIONS ")
REQUEST_ID = re.compile(rb"\r\nx-request-id:[ \t]*([^\r\n]+)", re.IGNORECASE)
# link-layer header lengths of the link types a capture on lo can have
LINK_HEADER = {0: 4, 1: 14, 12: 0, 101: 0, 113: 16, 276: 20}


def final_answer(payload):
    """The first segment of a response that is not an interim 1xx."""
    return payload.startswith(b"HTTP/1.") and payload[9:10] != b"1"


def packets(path):
    """(timestamp in ns, source port, destination port, TCP payload) of every IPv4/TCP packet.

    Integer nanoseconds: a float of seconds since 1970 has a resolution of about 0.2 µs."""
    with open(path, "rb") as f:
        head = f.read(24)
        if len(head) < 24:
            raise SystemExit(f"{path}: not a pcap file (shorter than its header)")
        magic = struct.unpack("<I", head[:4])[0]
        if magic in (0xA1B2C3D4, 0xA1B23C4D):
            endian = "<"
        elif magic in (0xD4C3B2A1, 0x4D3CB2A1):
            endian = ">"
        else:
            raise SystemExit(f"{path}: not a pcap file (magic {magic:#x}; pcapng is not read)")
        nano = magic in (0xA1B23C4D, 0x4D3CB2A1)
        link = struct.unpack(endian + "I", head[20:24])[0] & 0xFFFF
        if link not in LINK_HEADER:
            raise SystemExit(f"{path}: link type {link} is not one a capture on lo has")
        skip = LINK_HEADER[link]
        rec = struct.Struct(endian + "IIII")
        scale = 1 if nano else 1000
        while True:
            hdr = f.read(16)
            if len(hdr) < 16:
                return
            sec, frac, incl, _ = rec.unpack(hdr)
            data = f.read(incl)
            if len(data) < incl:
                return
            ip = data[skip:]
            if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 6:
                continue
            ihl = (ip[0] & 0x0F) * 4
            tcp = ip[ihl:]
            if len(tcp) < 20:
                continue
            sport, dport = struct.unpack(">HH", tcp[:4])
            off = (tcp[12] >> 4) * 4
            payload = tcp[off:]
            if payload:
                yield sec * 1_000_000_000 + frac * scale, sport, dport, payload


class Leg:
    """One connection of one leg: the request being answered on it, and where its answer ended."""

    __slots__ = ("start", "head", "rid", "end", "answered")

    def __init__(self, start, payload):
        self.start = start
        self.head = payload
        self.rid = None
        self.end = None
        self.answered = False
        self.find_id()

    def find_id(self):
        if self.rid is None:
            m = REQUEST_ID.search(self.head)
            if m:
                self.rid = m.group(1).strip()


def analyse(path, proxy_port, upstream_ports):
    upstream_ports = set(upstream_ports)
    client_conns = {}   # client port -> Leg
    upstream_conns = {}  # (proxy port, upstream port) -> Leg
    client_done = {}    # request id (from the response) -> (t1, t4)
    upstream_done = {}  # request id -> (t2, t3)
    counts = {"client_requests": 0, "upstream_requests": 0, "client_without_id": 0}

    def close_client(leg):
        if leg.answered and leg.rid is not None:
            client_done[leg.rid] = (leg.start, leg.end)
        elif leg.answered:
            counts["client_without_id"] += 1

    def close_upstream(leg):
        if leg.answered and leg.rid is not None:
            upstream_done.setdefault(leg.rid, (leg.start, leg.end))

    for t, sport, dport, payload in packets(path):
        if dport == proxy_port:
            leg = client_conns.get(sport)
            if payload.startswith(METHODS):
                if leg is not None:
                    close_client(leg)
                # the client's own X-Request-Id is not the one to join on: the response's is
                client_conns[sport] = Leg(t, b"")
                counts["client_requests"] += 1
        elif sport == proxy_port:
            leg = client_conns.get(dport)
            if leg is None:
                continue
            if final_answer(payload):
                leg.answered = True
                leg.head = payload
                leg.find_id()
            elif leg.answered and leg.rid is None:
                leg.head += payload
                leg.find_id()
            if leg.answered:
                leg.end = t
        elif dport in upstream_ports:
            key = (sport, dport)
            leg = upstream_conns.get(key)
            if payload.startswith(METHODS):
                if leg is not None:
                    close_upstream(leg)
                upstream_conns[key] = Leg(t, payload)
                counts["upstream_requests"] += 1
            elif leg is not None and not leg.answered:
                leg.head += payload
                leg.find_id()
        elif sport in upstream_ports:
            leg = upstream_conns.get((dport, sport))
            if leg is None:
                continue
            if final_answer(payload):
                leg.answered = True
            if leg.answered:
                leg.end = t
    for leg in client_conns.values():
        close_client(leg)
    for leg in upstream_conns.values():
        close_upstream(leg)

    added, total, upstream = [], [], []
    for rid, (t1, t4) in client_done.items():
        up = upstream_done.get(rid)
        if up is None:
            continue
        t2, t3 = up
        added.append(((t4 - t1) - (t3 - t2)) / 1e9)
        total.append((t4 - t1) / 1e9)
        upstream.append((t3 - t2) / 1e9)
    counts["joined"] = len(added)
    counts["client_answered"] = len(client_done)
    return counts, added, total, upstream


def quantile(sorted_vals, q):
    if not sorted_vals:
        return None
    i = min(len(sorted_vals) - 1, max(0, int(round(q * (len(sorted_vals) - 1)))))
    return sorted_vals[i]


def summary(vals):
    s = sorted(vals)
    us = lambda v: None if v is None else round(v * 1e6, 1)  # noqa: E731
    return {
        "p50_us": us(quantile(s, 0.50)),
        "p90_us": us(quantile(s, 0.90)),
        "p99_us": us(quantile(s, 0.99)),
        "p999_us": us(quantile(s, 0.999)),
        "max_us": us(s[-1] if s else None),
        "mean_us": us(statistics.fmean(s) if s else None),
    }


def report(path, proxy_port, upstream_ports):
    counts, added, total, upstream = analyse(path, proxy_port, upstream_ports)
    return dict(counts, added=summary(added), client_leg=summary(total), upstream_leg=summary(upstream))


def main(argv):
    args = [a for a in argv if not a.startswith("--")]
    if len(args) != 3:
        raise SystemExit(__doc__.split("\n\n")[1])
    try:
        proxy_port = int(args[1])
        upstream_ports = [int(p) for p in args[2].split(",")]
    except ValueError:
        raise SystemExit(f"ports must be numbers: {args[1]!r} {args[2]!r}")
    res = report(args[0], proxy_port, upstream_ports)
    if "--json" in argv:
        print(json.dumps(res, indent=2))
        return
    print(f"requests: {res['client_requests']} from clients, {res['upstream_requests']} to upstreams, "
          f"{res['joined']} joined by X-Request-Id")
    for key, title in (("added", "proxy's share"), ("client_leg", "client leg"), ("upstream_leg", "upstream leg")):
        s = res[key]
        print(f"{title:14} " + "  ".join(f"{k[:-3]} {v} us" for k, v in s.items() if v is not None))


if __name__ == "__main__":
    main(sys.argv[1:])
