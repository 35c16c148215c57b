#!/bin/bash
# Host preparation for test machines of this kind (idempotent).
# hugetlb starts attached to the (otherwise empty) cgroup2 hierarchy; crun refuses to run
# until it is its own v1 hierarchy, as runc and the other controllers are.
set -euo pipefail
unified=/sys/fs/cgroup/unified
if [ -r "$unified/cgroup.controllers" ] && grep -qw hugetlb "$unified/cgroup.controllers" \
	&& ! mountpoint -q /sys/fs/cgroup/hugetlb; then
	mkdir -p /sys/fs/cgroup/hugetlb
	mount -t cgroup -o hugetlb hugetlb /sys/fs/cgroup/hugetlb
	echo "host-prep: mounted the hugetlb controller at /sys/fs/cgroup/hugetlb"
fi
