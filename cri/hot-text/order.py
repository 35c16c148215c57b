import json, subprocess, re, sys
BIN = '/tmp/mem/trace/bin/rootstock'
snaps = json.load(open('snaps.json'))
pid, s = max(snaps.items(), key=lambda kv: len(kv[1]))
first, last = set(s[0][1]), set(s[-1][1])
# file offset -> vaddr for the executable segment
ph = subprocess.run(['readelf', '-lW', BIN], capture_output=True, text=True).stdout
segs = []
for l in ph.splitlines():
    f = l.split()
    if f and f[0] == 'LOAD' and 'E' in f[-2:-1][0]:
        segs.append((int(f[1], 16), int(f[2], 16), int(f[4], 16)))
off0, va0, sz = segs[0]
def pages_va(offs): return {o - off0 + va0 for o in offs}
syms = []
for l in subprocess.run(['nm', '-S', '--defined-only', BIN], capture_output=True, text=True).stdout.splitlines():
    f = l.split()
    if len(f) == 4 and f[2] in 'tTwW':
        a, n = int(f[0], 16), int(f[1], 16)
        if n: syms.append((a, n, f[3]))
syms.sort()
def funcs(pages):
    out = []
    for a, n, name in syms:
        p0, p1 = a // 4096 * 4096, (a + n - 1) // 4096 * 4096
        if any(p in pages for p in range(p0, p1 + 1, 4096)):
            out.append((a, n, name))
    return out
idle = funcs(pages_va(first)); busy = funcs(pages_va(last))
seen = set(); order = []
for a, n, name in idle + busy:
    if name not in seen:
        seen.add(name); order.append(name)
print('idle pages', len(first), 'funcs', len(idle), 'KiB', sum(n for _, n, _ in idle) // 1024, file=sys.stderr)
print('busy pages', len(last), 'funcs', len(busy), 'KiB', sum(n for _, n, _ in busy) // 1024, file=sys.stderr)
print('total text syms', len(syms), 'KiB', sum(n for _, n, _ in syms) // 1024, file=sys.stderr)
from collections import Counter
print('dup names among order', sum(1 for c in Counter(n for _, _, n in syms).values() if c > 1), file=sys.stderr)
open('hot.txt', 'w').write('\n'.join(order) + '\n')
