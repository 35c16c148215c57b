#!/usr/bin/env python3
"""Refreshes hot-symbols.txt for a new build whose symbol names changed.

A Rust symbol's name carries a hash of its crate's build metadata, which changes with any
workspace Cargo.toml edit (a dependency, a feature) or rustc upgrade; lld then skips the stale
names and the layout loosens. This maps each listed name, hash removed, to the names of the
given binary with the same key (all of them for generic instances), keeping the order:

    cargo build --release --bin rootstock
    python3 cri/hot-text/remap.py target/release/rootstock
    cargo build --release --bin rootstock    # links with the refreshed order

With --check it only says how many of the listed names the binary has (`make bench` prints
it: well under all of them means the ordering is stale and the daemon's idle RSS grows).
"""
import re
import subprocess
import sys
from pathlib import Path

HOT = Path(__file__).with_name("hot-symbols.txt")


def key(name):
    name = re.sub(r"17h[0-9a-f]{16}E$", "", name)  # legacy mangling's hash
    return re.sub(r"Cs[0-9A-Za-z]+_", "Cs_", name)  # v0 mangling's crate disambiguators


def main():
    check = sys.argv[1] == "--check"
    binary = sys.argv[-1]
    out = subprocess.run(["nm", "--defined-only", binary], capture_output=True, text=True, check=True)
    names = [l.split()[-1] for l in out.stdout.splitlines() if len(l.split()) == 3 and l.split()[1] in "tTwW"]
    present = set(names)
    if check:
        hot = [l.strip() for l in HOT.read_text().splitlines() if l.strip()]
        found = sum(h in present for h in hot)
        stale = "" if found >= 0.9 * len(hot) else " (stale: refresh with cri/hot-text/remap.py, see README)"
        print(f"hot-text ordering: {found} of {len(hot)} names in {binary}{stale}")
        return
    by_key = {}
    for n in names:
        by_key.setdefault(key(n), []).append(n)
    hot = [l.strip() for l in HOT.read_text().splitlines() if l.strip()]
    result, seen, exact = [], set(), 0
    for h in hot:
        found = [h] if h in present else by_key.get(key(h), [])
        exact += h in present
        for n in found:
            if n not in seen:
                seen.add(n)
                result.append(n)
    HOT.write_text("\n".join(result) + "\n")
    print(f"{len(hot)} names: {exact} unchanged, {len(result)} written", file=sys.stderr)


if __name__ == "__main__":
    main()
