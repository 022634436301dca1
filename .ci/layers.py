#!/usr/bin/env python3
"""Fails when a top-level module of src/ imports one on a higher floor, or when modules import each
other in a cycle, or when a source file is over MAX_LINES lines. The floors are the layering
src/lib.rs states; test code is not counted."""
import os
import re
import sys

MAX_LINES = 800
FLOORS = [
    ["time", "config", "stats"],
    ["policy", "release"],
    ["state", "upstream", "metrics"],
    ["rollout", "fleet"],
    ["front", "proxy", "admin"],
    ["server", "upgrade", "demo", "ctl", "cli"],
]
FLOOR = {m: i for i, names in enumerate(FLOORS) for m in names}


def sources(path):
    if path.endswith(".rs"):
        return [path]
    return [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs if f.endswith(".rs")]


def without_tests(text):
    cut = text.find("#[cfg(test)]\nmod tests {")
    return text if cut < 0 else text[:cut]


def main():
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
    modules = {}
    for entry in os.listdir(root):
        name = entry[:-3] if entry.endswith(".rs") else entry
        if name not in ("main", "lib"):
            modules[name] = os.path.join(root, entry)
    problems = [f"module {m} has no floor in .ci/layers.py" for m in modules if m not in FLOOR]
    edges = {m: {} for m in modules}
    for m, path in modules.items():
        for f in sources(path):
            if f.endswith("tests.rs"):
                continue
            text = without_tests(open(f, encoding="utf-8").read())
            used = set(re.findall(r"crate::([a-z_0-9]+)", text))
            for group in re.findall(r"crate::\{([^}]*)\}", text):
                used |= set(re.findall(r"\b([a-z_0-9]+)\b", group))
            for u in used:
                if u != m and u in modules:
                    edges[m].setdefault(u, os.path.relpath(f, os.path.dirname(root)))
    for m, targets in sorted(edges.items()):
        for t, where in sorted(targets.items()):
            if m in FLOOR and t in FLOOR and FLOOR[t] > FLOOR[m]:
                problems.append(f"{where}: {m} (floor {FLOOR[m]}) imports {t} (floor {FLOOR[t]}), above it")
    # Cycles (within a floor too): depth-first search for a back edge.
    state = {}

    def visit(m, path):
        state[m] = "open"
        for t in sorted(edges[m]):
            if state.get(t) == "open":
                cycle = path[path.index(t):] + [t]
                problems.append("cycle: " + " -> ".join(cycle))
            elif t not in state:
                visit(t, path + [t])
        state[m] = "done"

    for m in sorted(modules):
        if m not in state:
            visit(m, [m])
    # Rooms of a readable size: no source file over MAX_LINES (functions are clippy.toml's).
    for d, _, fs in os.walk(root):
        for f in fs:
            path = os.path.join(d, f)
            if f.endswith(".rs"):
                lines = sum(1 for _ in open(path, encoding="utf-8"))
                if lines > MAX_LINES:
                    problems.append(f"{os.path.relpath(path, os.path.dirname(root))}: {lines} lines, over {MAX_LINES}")
    if problems:
        print("\n".join(problems))
        sys.exit(1)
    print(f"{len(modules)} modules on {len(FLOORS)} floors, every import downward or level, no cycle; no file over {MAX_LINES} lines")


main()
