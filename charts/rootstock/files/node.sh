#!/bin/sh
# rootstock's node script, run by the chart's DaemonSets in the image `make image` builds.
#   node.sh install    lay out rootstock on the host (mounted under /host), write the config,
#                      start the service with the host's systemd, optionally switch kubelet
#   node.sh uninstall  the reverse (kubelet's saved originals restored first)
# Environment (from the chart's values): PREFIX, START_SERVICE, KUBELET_RECONFIGURE,
# KUBELET_CONFIG, KUBELET_ENDPOINT. Idempotent: a re-run changes nothing that is in place.
# HOST_ROOT, IMAGE_DIR, CHART_DIR, NSENTER and IDLE=false exist for the test (packaging.rs).
set -eu
H=${HOST_ROOT:-/host}
SRC=${IMAGE_DIR:-/opt/rootstock}
CHART=${CHART_DIR:-/etc/rootstock-chart}
# Commands on the host: PID 1's mount, UTS, IPC, network and PID namespaces (hostPID).
host() { "${NSENTER:-nsenter}" -t 1 -m -u -i -n -p -- "$@"; }
log() { echo "rootstock-node: $*"; }
# The pod stays up (a DaemonSet's pod must keep running); its log says what was done.
idle() {
	[ "${IDLE:-true}" = true ] || exit 0
	while :; do sleep 3600; done
}

kubelet_files() {
	echo "$H$KUBELET_CONFIG"
	echo "$H$(dirname "$KUBELET_CONFIG")/kubeadm-flags.env"
}

switch_kubelet() {
	# kubelet is pointed only at a runtime that answers.
	sock=${KUBELET_ENDPOINT#unix://}
	tries=0
	until host test -S "$sock"; do
		tries=$((tries + 1))
		if [ "$tries" -gt 60 ]; then
			log "kubelet not switched: no socket $sock after 60 s (systemctl status rootstock)"
			exit 1
		fi
		sleep 1
	done
	changed=false
	for f in $(kubelet_files); do
		[ -f "$f" ] || continue
		case "$f" in
		*kubeadm-flags.env)
			grep -q -- "--container-runtime-endpoint=$KUBELET_ENDPOINT" "$f" && continue
			grep -q -- "--container-runtime-endpoint=" "$f" || continue
			[ -e "$f.rootstock-orig" ] || cp -p "$f" "$f.rootstock-orig"
			sed -i "s|--container-runtime-endpoint=[^ \"]*|--container-runtime-endpoint=$KUBELET_ENDPOINT|" "$f"
			;;
		*)
			grep -q "^containerRuntimeEndpoint: *\"*$KUBELET_ENDPOINT\"* *\$" "$f" && continue
			[ -e "$f.rootstock-orig" ] || cp -p "$f" "$f.rootstock-orig"
			if grep -q '^containerRuntimeEndpoint:' "$f"; then
				sed -i "s|^containerRuntimeEndpoint:.*|containerRuntimeEndpoint: $KUBELET_ENDPOINT|" "$f"
			else
				echo "containerRuntimeEndpoint: $KUBELET_ENDPOINT" >>"$f"
			fi
			;;
		esac
		log "pointed kubelet at $KUBELET_ENDPOINT in ${f#$H} (original kept as ${f#$H}.rootstock-orig)"
		changed=true
	done
	if [ "$changed" = true ]; then
		log "restarting kubelet"
		host systemctl restart kubelet.service
	fi
}

restore_kubelet() {
	changed=false
	for f in $(kubelet_files); do
		if [ -e "$f.rootstock-orig" ]; then
			mv -f "$f.rootstock-orig" "$f"
			log "restored ${f#$H}"
			changed=true
		fi
	done
	if [ "$changed" = true ]; then
		host systemctl restart kubelet.service
	fi
}

case "${1:-}" in
install)
	changed=false
	cmp -s "$SRC/bin/rootstock" "$H$PREFIX/bin/rootstock" || changed=true
	cmp -s "$SRC/bin/rootstock-monitor" "$H$PREFIX/bin/rootstock-monitor" || changed=true
	"$SRC/install.sh" --root "$H" --prefix "$PREFIX"
	conf="$H/etc/rootstock/config.toml"
	if ! cmp -s "$CHART/config.toml" "$conf"; then
		cp "$CHART/config.toml" "$conf.rootstock-new"
		# Checked by the binary just installed, on the host, before it replaces anything.
		if ! out=$(host "$PREFIX/bin/rootstock" --config /etc/rootstock/config.toml.rootstock-new config show 2>&1); then
			rm -f "$conf.rootstock-new"
			log "the chart's config is invalid, nothing changed: $out"
			exit 1
		fi
		mv -f "$conf.rootstock-new" "$conf"
		log "wrote /etc/rootstock/config.toml"
		changed=true
	fi
	host systemctl daemon-reload
	if [ "$START_SERVICE" = true ]; then
		host systemctl enable rootstock.service
		if [ "$changed" = true ]; then
			# Only the daemon restarts (KillMode=process): containers keep running.
			host systemctl restart rootstock.service
			log "rootstock.service (re)started"
		else
			host systemctl start rootstock.service
		fi
	fi
	if [ "$KUBELET_RECONFIGURE" = true ]; then
		switch_kubelet
	fi
	log "rootstock installed: $(host "$PREFIX/bin/rootstock" --version 2>&1 || true)"
	idle
	;;
uninstall)
	restore_kubelet
	host systemctl disable --now rootstock.service 2>/dev/null || true
	"$SRC/install.sh" --uninstall --root "$H" --prefix "$PREFIX"
	rm -f "$H/etc/rootstock/config.toml"
	rmdir "$H/etc/rootstock" 2>/dev/null || true
	host systemctl daemon-reload
	log "rootstock uninstalled (the store /var/lib/rootstock is kept)"
	idle
	;;
*)
	echo "usage: node.sh install|uninstall" >&2
	exit 2
	;;
esac
