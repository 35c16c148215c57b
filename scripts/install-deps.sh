#!/bin/bash
# Installs the Debian packages named on the command line that are not installed yet.
# Idempotent and quiet when there is nothing to do; runs `apt-get update` only when needed.
#   install-deps.sh [-t RELEASE] PKG...
# `-t RELEASE` (e.g. bookworm-backports) installs from that release, as `apt-get -t`: the
# cgroup v2 VM needs a newer qemu and kernel than bookworm's.
set -euo pipefail
release=()
if [ "${1:-}" = "-t" ]; then
	[ -n "${2:-}" ] || { echo "install-deps: -t needs a release name" >&2; exit 2; }
	release=(-t "$2")
	shift 2
fi
missing=()
for pkg in "$@"; do
	dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
	echo "install-deps: missing Debian packages: ${missing[*]} (run as root, or install them)" >&2
	exit 1
fi
echo "install-deps: installing ${missing[*]}${release:+ from ${release[1]}}"
# Wait for another apt/dpkg run (a parallel build or test) instead of failing at once.
apt-get -o DPkg::Lock::Timeout=600 update -q
DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends \
	"${release[@]}" "${missing[@]}"
