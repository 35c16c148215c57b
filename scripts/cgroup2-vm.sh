#!/bin/bash
# `make test-cgroup2`: runs the cgroup v2 e2e suite (test-e2e/tests/cgroup2.rs) on a real
# cgroup-v2-only kernel. These machines run cgroup v1 and cannot be switched, so this boots
# Debian's kernel under qemu with `cgroup_no_v1=all`: TCG, not KVM (a nested KVM guest hangs
# at boot here). The guest's root is the host's own root, shared read-only over 9p with a
# tmpfs overlay on top, so it runs the very binaries built here (daemon, monitor, test
# binary) and the packages installed here (runc, crun, CNI plugins, docker-registry).
# scripts/cgroup2-guest.sh is the guest's init: it mounts cgroup2, runs the test binary,
# writes one result line into the shared output dir and powers off. This script prints the
# guest console, parses that line and exits non-zero unless every test passed.
#
# Environment: CGROUP2_VM_TIMEOUT (seconds, default 1200), CGROUP2_VM_MEM (MiB, 3072),
# CGROUP2_VM_CPUS (2), CGROUP2_TESTS (a test-name filter passed to the test binary),
# CGROUP2_TEST_BIN (a test binary already built: skips the build).
set -euo pipefail
cd "$(dirname "$0")/.."
ws=$(pwd)
out=${CGROUP2_VM_OUT:-$ws/target/cgroup2-vm}
timeout_s=${CGROUP2_VM_TIMEOUT:-1200}
start=$(date +%s)

# qemu and Debian's kernel from bookworm-backports (the kernel measured here). A fresh
# machine may not list that suite: add it, from the mirror apt already uses.
if ! apt-cache policy 2>/dev/null | grep -q ' bookworm-backports/main'; then
	uris=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
	printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
		"${uris:-http://deb.debian.org/debian}" >/etc/apt/sources.list.d/bookworm-backports.sources
	apt-get -o DPkg::Lock::Timeout=600 update -q
fi
scripts/install-deps.sh -t bookworm-backports qemu-system-x86 linux-image-amd64
scripts/install-deps.sh busybox-static xz-utils cpio

kver=$(dpkg-query -W -f='${Depends}' linux-image-amd64 | sed -n 's/.*linux-image-\([^ ,]*\).*/\1/p')
kernel=/boot/vmlinuz-$kver
moddir=/lib/modules/$kver
[ -r "$kernel" ] && [ -d "$moddir" ] || { echo "cgroup2-vm: no kernel $kernel / $moddir" >&2; exit 1; }

if [ -n "${CGROUP2_TEST_BIN:-}" ]; then
	test_bin=$CGROUP2_TEST_BIN # already built (debugging the VM itself)
else
	echo "cgroup2-vm: building the daemon and the cgroup2 test binary"
	"${CARGO:-cargo}" build --workspace --bins
	test_bin=$("${CARGO:-cargo}" test -p rootstock-test-e2e --test cgroup2 --no-run --message-format=json |
		sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)
fi
[ -x "$test_bin" ] || { echo "cgroup2-vm: test binary not found" >&2; exit 1; }

# The initramfs: busybox plus the modules needed to mount the root (9p over virtio and
# overlayfs), decompressed here because busybox's insmod does not read .ko.xz. Everything
# else the guest loads later with the host's own modprobe from the shared /lib/modules.
initrd=$out/initramfs-$kver.cpio.gz
rm -rf "$out/run"
mkdir -p "$out/run"
if [ ! -s "$initrd" ] || [ "$initrd" -ot "$0" ]; then
	tree=$(mktemp -d)
	trap 'rm -rf "$tree"' EXIT
	mkdir -p "$tree"/{bin,dev,proc,sys,lower,rw,newroot,modules}
	cp /bin/busybox "$tree/bin/busybox"
	for m in fs/netfs/netfs net/9p/9pnet net/9p/9pnet_virtio fs/9p/9p fs/overlayfs/overlay; do
		src=$(ls "$moddir/kernel/$m".ko* | head -n 1)
		case "$src" in
		*.xz) xz -dc "$src" >"$tree/modules/$(basename "$m").ko" ;;
		*.zst) zstd -dcq "$src" >"$tree/modules/$(basename "$m").ko" ;;
		*) cp "$src" "$tree/modules/" ;;
		esac
	done
	cat >"$tree/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in netfs 9pnet 9pnet_virtio 9p overlay; do insmod /modules/$m.ko || echo "init: insmod $m failed"; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=524288 hostroot /lower
mount -t tmpfs -o mode=0755 rw /rw
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work root /newroot
guest=$(sed -n 's/.*rootstock.guest=\([^ ]*\).*/\1/p' /proc/cmdline)
umount /proc /sys /dev
exec switch_root /newroot /bin/bash "$guest"
INIT
	chmod 755 "$tree/init"
	(cd "$tree" && find . | cpio -o -H newc --quiet | gzip -1) >"$initrd.tmp"
	mv "$initrd.tmp" "$initrd"
fi

# What the guest runs, through the writable share it also writes its results to.
cat >"$out/run/run.env" <<ENV
WS=$ws
TEST_BIN=$test_bin
CGROUP2_TESTS=${CGROUP2_TESTS:-}
ENV

echo "cgroup2-vm: booting $kernel (TCG, cgroup_no_v1=all); console in $out/run/console.log"
set +e
timeout --foreground "$timeout_s" qemu-system-x86_64 \
	-accel tcg -cpu max -m "${CGROUP2_VM_MEM:-3072}" -smp "${CGROUP2_VM_CPUS:-2}" \
	-nographic -no-reboot -nodefaults -serial stdio \
	-kernel "$kernel" -initrd "$initrd" \
	-append "console=ttyS0 cgroup_no_v1=all panic=-1 loglevel=4 rootstock.guest=$ws/scripts/cgroup2-guest.sh" \
	-virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
	-virtfs local,path="$out/run",mount_tag=out,security_model=none,multidevs=remap \
	</dev/null 2>&1 | tee "$out/run/console.log"
qemu_rc=${PIPESTATUS[0]}
set -e
elapsed=$(($(date +%s) - start))
result=$(cat "$out/run/result" 2>/dev/null || true)
if [ -z "$result" ]; then
	echo "cgroup2-vm: no result from the guest (qemu exit $qemu_rc; timeout ${timeout_s}s); see $out/run/" >&2
	exit 1
fi
echo "$result (total ${elapsed}s)"
# "cgroup2: N passed, M failed"
passed=$(sed -n 's/^cgroup2: \([0-9]*\) passed, \([0-9]*\) failed.*/\1/p' <<<"$result")
failed=$(sed -n 's/^cgroup2: \([0-9]*\) passed, \([0-9]*\) failed.*/\2/p' <<<"$result")
[ -n "$passed" ] && [ "$passed" -gt 0 ] && [ "$failed" = 0 ]
