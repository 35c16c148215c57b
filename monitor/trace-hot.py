# Regenerates hot-symbols.txt (see build.rs): single-steps one turn of a running release
# monitor's loop under gdb and prints the functions it runs, as `HOT <pc> <name>` lines.
#
#   TPID=<monitor pid> SIG=17 gdb -q -batch -p <monitor pid> -x monitor/trace-hot.py
#
# SIG=17 (SIGCHLD) wakes it for a reap; SIG=0 waits for the container's next output
# instead. Map the pcs to mangled names with `nm -S target/release/rootstock-monitor`, add
# the ones missing from hot-symbols.txt (order: hottest first), rebuild, and check with
# /proc/<pid>/smaps that the monitor's r-xp Rss is one or two 64 KiB windows.
import os

import gdb

gdb.execute("set pagination off")
gdb.execute("set confirm off")
pid = int(os.environ["TPID"])
# Stopped inside poll(2): wake it, then step until it is back in poll.
os.kill(pid, int(os.environ.get("SIG", "17")))
seen = set()
order = []
steps = 0
while steps < 400000:
    gdb.execute("stepi", to_string=True)
    steps += 1
    pc = int(gdb.parse_and_eval("$pc"))
    name = gdb.execute(f"info symbol {pc}", to_string=True).split(" in section")[0]
    name = name.split(" + ")[0].strip()
    if name not in seen:
        seen.add(name)
        order.append((pc, name))
    if pc > 0x7F0000000000:
        # The vDSO (clock_gettime): its clock read retries forever under single-step.
        gdb.execute("finish", to_string=True)
        continue
    insn = gdb.execute("x/i $pc", to_string=True)
    if "syscall" in insn and int(gdb.parse_and_eval("$rax")) == 7:  # poll
        break
print("STEPS", steps)
for pc, name in order:
    print("HOT", hex(pc), name)
gdb.execute("detach")
