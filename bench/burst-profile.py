#!/usr/bin/env python3
"""Where the CPU time of the bench's pod bursts went, process by process (issue #18).

The bench prints each burst's window on CLOCK_MONOTONIC to stderr
(`bench[window] <label> <start> <end>`, labels such as `rootstock crun` and `floor crun`).
Record the whole machine on that clock, then split the samples that fall in the windows:

    perf record -a -g -e cpu-clock -k CLOCK_MONOTONIC -o perf.data -- \\
        target/release/deps/compare-<hash> --bench --only "concurrent pods,pod floor" \\
        --handlers crun --no-peer 2> bench.err
    bench/burst-profile.py perf.data bench.err [--pods 20] [--symbols SYM,SYM...]

Prints, per label, milliseconds of CPU per pod started for each process name (digits folded,
so `runc:[2:INIT]` of every pod is one row) and, with `--symbols`, the time spent under each
named function (inclusive, from the call chains). Idle (`swapper`) is left out.
"""

import argparse
import collections
import re
import subprocess
import sys


def windows(stderr_file):
    out = collections.defaultdict(list)
    for line in open(stderr_file, errors="replace"):
        m = re.match(r"bench\[window\] (.+) (\d+\.\d+) (\d+\.\d+)$", line.strip())
        if m:
            out[m.group(1)].append((float(m.group(2)), float(m.group(3))))
    return out


def samples(perf_data):
    """(comm, time, period in ns, [symbols of the call chain])."""
    script = subprocess.Popen(
        ["perf", "script", "-i", perf_data, "-F", "comm,time,period,ip,sym"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, errors="replace")
    head = re.compile(r"^(\S.*?)\s+(\d+\.\d+):\s+(\d+)\s*$")
    current = None
    for line in script.stdout:
        m = head.match(line)
        if m:
            if current:
                yield current
            current = (m.group(1), float(m.group(2)), int(m.group(3)), [])
        elif current and line.strip():
            parts = line.split(None, 1)
            if len(parts) == 2:
                current[3].append(parts[1].rsplit(" (", 1)[0].strip())
    if current:
        yield current
    if script.wait() != 0:
        sys.exit("perf script failed")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("perf_data")
    ap.add_argument("bench_stderr")
    ap.add_argument("--pods", type=int, default=20, help="pods started per burst")
    ap.add_argument("--symbols", default="", help="functions to total, comma-separated")
    args = ap.parse_args()
    wins = windows(args.bench_stderr)
    if not wins:
        sys.exit("no bench[window] lines in " + args.bench_stderr)
    symbols = [s for s in args.symbols.split(",") if s]
    by_comm = {label: collections.Counter() for label in wins}
    by_symbol = {label: collections.Counter() for label in wins}
    for comm, t, period, chain in samples(args.perf_data):
        if comm.startswith("swapper"):
            continue
        label = next((lb for lb, ws in wins.items() if any(a <= t <= b for a, b in ws)), None)
        if label is None:
            continue
        by_comm[label][re.sub(r"\d+", "N", comm)] += period
        for s in symbols:
            if s in chain:
                by_symbol[label][s] += period
    for label, ws in sorted(wins.items()):
        per_pod = 1e6 * args.pods * len(ws)
        total = sum(by_comm[label].values()) / per_pod
        print(f"== {label}: {len(ws)} bursts, {total:.1f} ms of CPU per pod")
        for comm, ns in by_comm[label].most_common(15):
            print(f"  {comm:28s} {ns / per_pod:7.2f} ms")
        for s in symbols:
            print(f"  under {s:22s} {by_symbol[label][s] / per_pod:7.2f} ms")


if __name__ == "__main__":
    main()
