#!/bin/sh
# Builds the rootstock image as an OCI layout with umoci: busybox (static) for a shell, the
# two binaries, the unit, the commented default config and install.sh, under /opt/rootstock.
#   build-image.sh LAYOUT_DIR TAG BIN_DIR
# The result is LAYOUT_DIR (an OCI image layout) holding LAYOUT_DIR:TAG; push it with
#   skopeo copy oci:LAYOUT_DIR:TAG docker://REGISTRY/rootstock:TAG   (make image-push)
set -eu
layout=$1 tag=$2 bin_dir=$3
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

rm -rf "$layout"
umoci init --layout "$layout"
umoci new --image "$layout:$tag"
umoci unpack --image "$layout:$tag" "$work/bundle"
rootfs="$work/bundle/rootfs"
mkdir -p "$rootfs/bin" "$rootfs/opt/rootstock/bin" "$rootfs/tmp"
chmod 1777 "$rootfs/tmp"
cp /bin/busybox "$rootfs/bin/busybox"
# The applets install.sh and the chart's node script use.
for applet in sh cat chmod chroot cmp cp dirname echo grep ln mkdir mktemp mv nsenter pwd rm \
	rmdir sed sleep test true [; do
	ln -s busybox "$rootfs/bin/$applet"
done
cp "$bin_dir/rootstock" "$bin_dir/rootstock-monitor" "$rootfs/opt/rootstock/bin/"
cp "$here/rootstock.service" "$here/install.sh" "$rootfs/opt/rootstock/"
"$bin_dir/rootstock" config default >"$rootfs/opt/rootstock/config.toml.example"
umoci repack --image "$layout:$tag" "$work/bundle"
umoci config --image "$layout:$tag" --os linux --architecture amd64 \
	--config.env PATH=/bin --config.workingdir / \
	--config.cmd /opt/rootstock/install.sh --config.cmd --root --config.cmd /host \
	--config.label org.opencontainers.image.title=rootstock
umoci gc --layout "$layout"
echo "built $layout:$tag"
