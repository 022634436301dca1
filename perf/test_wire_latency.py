#!/usr/bin/env python3
"""Checks of perf/wire_latency.py on captures written here, with timestamps chosen so the answer is known.

    python3 perf/test_wire_latency.py        (run by .ci/run)
"""
import os
import struct
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wire_latency  # noqa: E402

PROXY, V1, V2, SHADOW = 18080, 19001, 19002, 19003


def segment(sport, dport, payload):
    """An Ethernet + IPv4 + TCP frame as a capture on lo holds it."""
    tcp = struct.pack(">HHIIBBHHH", sport, dport, 1, 1, 5 << 4, 0x18, 65535, 0, 0)
    total = 20 + len(tcp) + len(payload)
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, 6, 0, bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1]))
    return b"\x00" * 12 + b"\x08\x00" + ip + tcp + payload


def write_pcap(path, frames, nano=True):
    """frames: (time in µs, sport, dport, payload)."""
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B23C4D if nano else 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for t_us, sport, dport, payload in frames:
            data = segment(sport, dport, payload)
            sec, rest = divmod(int(round(t_us * 1000)), 10**9)
            frac = rest if nano else rest // 1000
            f.write(struct.pack("<IIII", 1_700_000_000 + sec, frac, len(data), len(data)) + data)


def request(rid=None, path="/orders/1"):
    head = f"GET {path} HTTP/1.1\r\nHost: x\r\n"
    if rid:
        head += f"X-Request-Id: {rid}\r\n"
    return (head + "\r\n").encode()


def response(rid=None, body=b'{"ok":true}'):
    head = "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n" % len(body)
    if rid:
        head += f"x-request-id: {rid}\r\n"
    return (head + "\r\n").encode() + body


class WireLatency(unittest.TestCase):
    def analyse(self, frames, nano=True):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "cap.pcap")
            write_pcap(path, frames, nano)
            return wire_latency.analyse(path, PROXY, (V1, V2))

    def test_the_upstreams_time_is_taken_out_of_the_clients(self):
        counts, added, total, upstream = self.analyse([
            (0, 40000, PROXY, request()),
            (10, 50000, V1, request("a1")),
            (110, V1, 50000, response()[:20]),       # the upstream's answer in two segments
            (120, V1, 50000, response()[20:]),
            (150, PROXY, 40000, response("a1")),
        ])
        self.assertEqual(counts["joined"], 1)
        self.assertAlmostEqual(total[0] * 1e6, 150, places=3)
        self.assertAlmostEqual(upstream[0] * 1e6, 110, places=3)
        self.assertAlmostEqual(added[0] * 1e6, 40, places=3)

    def test_requests_on_kept_alive_connections_are_joined_by_their_own_ids(self):
        # two clients, answered out of order over two upstream connections, then a second request on
        # the first client's connection reusing the second upstream connection
        counts, added, _, _ = self.analyse([
            (0, 40000, PROXY, request()),
            (5, 40001, PROXY, request()),
            (20, 50000, V1, request("a")),
            (25, 50001, V2, request("b")),
            (60, V2, 50001, response()),
            (70, PROXY, 40001, response("b")),       # b: 65 in all, 35 upstream -> 30
            (100, V1, 50000, response()),
            (130, PROXY, 40000, response("a")),      # a: 130 in all, 80 upstream -> 50
            (1000, 40000, PROXY, request()),
            (1010, 50001, V2, request("c")),
            (1050, V2, 50001, response()),
            (1060, PROXY, 40000, response("c")),     # c: 60 in all, 40 upstream -> 20
        ])
        self.assertEqual(counts["joined"], 3)
        self.assertEqual(sorted(round(v * 1e6) for v in added), [20, 30, 50])

    def test_a_mirror_copy_stays_in_the_proxys_share_and_interim_answers_are_not_the_answer(self):
        counts, added, _, _ = self.analyse([
            (0, 40000, PROXY, request()),
            (10, 50000, V1, request("m")),
            (12, 50002, SHADOW, request("m")),
            (50, SHADOW, 50002, response()),
            (60, V1, 50000, b"HTTP/1.1 100 Continue\r\n\r\n"),
            (80, V1, 50000, response()),
            (85, PROXY, 40000, b"HTTP/1.1 100 Continue\r\n\r\n"),
            (100, PROXY, 40000, response("m")),
        ])
        self.assertEqual(counts["joined"], 1)
        # 100 in all; the upstream leg is v1's 10..80, not the shadow's
        self.assertAlmostEqual(added[0] * 1e6, 30, places=3)

    def test_an_id_in_a_later_segment_of_the_head_is_found(self):
        head = request("late")
        cut = head.index(b"X-Request-Id")
        counts, added, _, _ = self.analyse([
            (0, 40000, PROXY, request()),
            (10, 50000, V1, head[:cut - 2]),
            (11, 50000, V1, head[cut - 2:]),
            (50, V1, 50000, response()),
            (70, PROXY, 40000, response("late")),
        ], nano=False)
        self.assertEqual(counts["joined"], 1)
        self.assertAlmostEqual(added[0] * 1e6, 30, places=3)

    def test_a_request_without_both_legs_is_left_out(self):
        counts, added, _, _ = self.analyse([
            (0, 40000, PROXY, request()),
            (50, PROXY, 40000, response("answered-by-the-proxy")),  # e.g. a 404 of no route
            (60, 40001, PROXY, request()),
            (70, 50000, V1, request("never-answered")),
        ])
        self.assertEqual(counts["client_requests"], 2)
        self.assertEqual(counts["joined"], 0)
        self.assertEqual(added, [])

    def test_a_file_that_is_not_a_capture_is_named(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "x.pcap")
            with open(path, "wb") as f:
                f.write(b"not a capture at all, just text")
            with self.assertRaises(SystemExit) as e:
                wire_latency.analyse(path, PROXY, (V1,))
            self.assertIn("not a pcap file", str(e.exception))

    def test_quantiles(self):
        self.assertIsNone(wire_latency.quantile([], 0.99))
        vals = list(range(1, 101))
        self.assertEqual(wire_latency.quantile(vals, 0.5), 51)
        self.assertEqual(wire_latency.quantile(vals, 0.99), 99)
        self.assertEqual(wire_latency.quantile(vals, 1.0), 100)


if __name__ == "__main__":
    unittest.main(verbosity=1)
