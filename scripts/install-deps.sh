#!/bin/bash
# Installs the Debian packages named on the command line that are not installed yet.
# Idempotent and quiet when there is nothing to do; runs `apt-get update` only when needed.
set -euo pipefail
missing=()
for pkg in "$@"; do
	dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
	echo "install-deps: missing Debian packages: ${missing[*]} (run as root, or install them)" >&2
	exit 1
fi
echo "install-deps: installing ${missing[*]}"
# Wait for another apt/dpkg run (a parallel build or test) instead of failing at once.
apt-get -o DPkg::Lock::Timeout=600 update -q
DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}"
