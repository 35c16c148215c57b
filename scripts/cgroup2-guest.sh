#!/bin/bash
# The init of the cgroup v2 guest (scripts/cgroup2-vm.sh boots it): PID 1 on the host's
# root shared read-only over 9p with a tmpfs overlay. Sets up what a v2 node has (cgroup2
# at /sys/fs/cgroup with the controllers enabled, as systemd leaves it), runs the cgroup2
# test binary the host built, writes "cgroup2: N passed, M failed" to the shared output dir
# and powers off. Not meant to run anywhere else.
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
out=/mnt/out
finish() {
	echo "$1" | tee "$out/result"
	sync
	echo o >/proc/sysrq-trigger
	sleep 10
}
[ "$$" = 1 ] || { echo "cgroup2-guest: must be the guest's init" >&2; exit 1; }

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /dev/mqueue
ln -sfn /proc/self/fd /dev/fd
for i in 0 1 2; do ln -sfn /proc/self/fd/$i /dev/$(echo stdin stdout stderr | cut -d" " -f$((i + 1))); done
mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs -o mode=1777 shm /dev/shm
mount -t mqueue mqueue /dev/mqueue
# Per-boot state on a fresh tmpfs (the host's /run shows through the root otherwise). The
# daemons' stores must not sit on overlayfs (the guest's root): the tests' temp dirs go to a
# tmpfs of their own, not over /tmp, which may hold the workspace (a clone in /tmp).
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /scratch
mount -t tmpfs -o mode=1777 tmpfs /scratch
export TMPDIR=/scratch
mkdir -p "$out"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 out "$out" || exit 1
# Everything on the console and in guest.log.
exec > >(tee -a "$out/guest.log") 2>&1
mount -t cgroup2 -o nsdelegate,memory_recursiveprot cgroup2 /sys/fs/cgroup ||
	finish "cgroup2: 0 passed, 1 failed (cannot mount cgroup2)"
# As systemd leaves a v2 node: every controller available to the tree below the root.
sed 's/\([a-z_]\+\)/+\1/g' /sys/fs/cgroup/cgroup.controllers >/sys/fs/cgroup/cgroup.subtree_control
echo "cgroup2-guest: $(uname -r); controllers: $(cat /sys/fs/cgroup/cgroup.subtree_control)"
# A few 2 MiB huge pages, so the hugetlb limit is a real one.
echo 16 >/proc/sys/vm/nr_hugepages
hostname cgroup2-guest
ip link set lo up
modprobe -a bridge veth br_netfilter 2>/dev/null

# shellcheck disable=SC1091
. "$out/run.env"
cd "$WS/test-e2e" || finish "cgroup2: 0 passed, 1 failed (no workspace $WS)"
filter=()
[ -n "${CGROUP2_TESTS:-}" ] && filter=("$CGROUP2_TESTS")
start=$(date +%s)
# Each test starts its own registry and daemon; two at a time on the two vCPUs.
ROOTSTOCK_CGROUP2_GUEST=1 "$TEST_BIN" --include-ignored --test-threads=2 "${filter[@]}" 2>&1 | tee "$out/test.log"
summary=$(grep '^test result:' "$out/test.log" | tail -n 1)
passed=$(sed -n 's/.* \([0-9]*\) passed.*/\1/p' <<<"$summary")
failed=$(sed -n 's/.* \([0-9]*\) failed.*/\1/p' <<<"$summary")
finish "cgroup2: ${passed:-0} passed, ${failed:-1} failed (guest $(($(date +%s) - start))s, kernel $(uname -r))"
