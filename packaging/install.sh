#!/bin/sh
# Lays out (or removes) rootstock on a node: the two binaries, the systemd unit and the
# commented default configuration. One script for every way of installing, so they agree:
#   make install DESTDIR=… PREFIX=…          (from the source tree)
#   /opt/rootstock/install.sh --root /host   (from the image, e.g. by the installer chart)
# It never starts, stops or enables anything: that is systemctl's job (the chart does it
# with nsenter into the host). POSIX sh: the image has only busybox.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=""                 # like DESTDIR: where the node's / is
prefix=/usr/local
bin_dir="$here/bin"     # where rootstock and rootstock-monitor are
unit="$here/rootstock.service"
example="$here/config.toml.example"
action=install

usage() {
	echo "usage: $0 [--uninstall] [--root DIR] [--prefix DIR] [--bin-dir DIR] [--unit FILE] [--example FILE]" >&2
	exit 2
}
while [ $# -gt 0 ]; do
	case "$1" in
	--uninstall) action=uninstall ;;
	--root) root=${2%/}; shift ;;
	--prefix) prefix=${2%/}; shift ;;
	--bin-dir) bin_dir=$2; shift ;;
	--unit) unit=$2; shift ;;
	--example) example=$2; shift ;;
	*) usage ;;
	esac
	shift
done

bindir="$prefix/bin"
unitdir="$prefix/lib/systemd/system"
confdir="/etc/rootstock"

# Written next to the destination and renamed over it: a running binary cannot be
# overwritten in place (ETXTBSY), and a reader never sees half a file.
put() { # put SRC DEST MODE
	mkdir -p "$(dirname "$2")"
	cp "$1" "$2.rootstock-new"
	chmod "$3" "$2.rootstock-new"
	mv -f "$2.rootstock-new" "$2"
	echo "installed $2"
}

if [ "$action" = uninstall ]; then
	for f in "$bindir/rootstock" "$bindir/rootstock-monitor" "$unitdir/rootstock.service" \
		"$confdir/config.toml.example"; do
		if [ -e "$root$f" ]; then
			rm -f "$root$f"
			echo "removed $root$f"
		fi
	done
	# The operator's config.toml and the store (/var/lib/rootstock) are left alone.
	rmdir "$root$confdir" 2>/dev/null || true
	exit 0
fi

for b in rootstock rootstock-monitor; do
	[ -x "$bin_dir/$b" ] || { echo "install.sh: $bin_dir/$b not found (build first)" >&2; exit 1; }
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
put "$bin_dir/rootstock" "$root$bindir/rootstock" 0755
put "$bin_dir/rootstock-monitor" "$root$bindir/rootstock-monitor" 0755
sed "s|@BINDIR@|$bindir|g" "$unit" >"$tmp/rootstock.service"
put "$tmp/rootstock.service" "$root$unitdir/rootstock.service" 0644
# The image carries the example pre-generated (it has no C library to run the binary with).
if [ ! -f "$example" ]; then
	"$bin_dir/rootstock" config default >"$tmp/config.toml.example"
	example="$tmp/config.toml.example"
fi
put "$example" "$root$confdir/config.toml.example" 0644
