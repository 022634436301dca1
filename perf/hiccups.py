#!/usr/bin/env python3
"""How often this CPU stops running us: the floor under every latency percentile measured on it.

Sleeps 200 µs at a time for --seconds and counts the wake-ups that came more than 1 ms late. With the
machine otherwise idle, such a stall is the kernel or, on a VM, the hypervisor running something else
(which a guest's steal counter does not always show). A request that arrives during a stall waits
for it, on either CPU it passes through, so stalls that add up to 1% of the time set a p99.

Pin it with taskset; perf/bench.py runs it on both CPUs at once, before and after the load.
Prints one JSON object: stalls per second, ms per second lost to them, the longest, and the p99 and
p99.9 of how late a wake-up came.
"""
import argparse
import json
import time

STEP = 0.0002
STALL = 0.001


def measure(seconds):
    late = []
    end = time.perf_counter() + seconds
    while True:
        t = time.perf_counter()
        if t >= end:
            break
        time.sleep(STEP)
        late.append(time.perf_counter() - t - STEP)
    return summarise(late, seconds)


def summarise(late, seconds):
    late = sorted(late)
    stalls = [x for x in late if x > STALL]

    def q(p):
        return late[min(len(late) - 1, int(len(late) * p))] * 1e6 if late else None

    return {
        "seconds": seconds,
        "wakeups": len(late),
        "stalls_per_s": len(stalls) / seconds,
        "stalled_ms_per_s": sum(stalls) * 1e3 / seconds,
        "longest_ms": late[-1] * 1e3 if late else None,
        "late_p99_us": q(0.99),
        "late_p999_us": q(0.999),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0)
    args = p.parse_args()
    if not args.seconds > 0:
        p.error("--seconds must be above 0")
    print(json.dumps(measure(args.seconds)))


if __name__ == "__main__":
    main()
