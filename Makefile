# The two entry points the README documents: `make run` and `make test`; and `make bench`.
RUN_PKGS  := protobuf-compiler runc crun containernetworking-plugins
# systemd: `systemd-analyze verify` of the unit (nothing is started by installing it);
# tar, libarchive-tools (bsdtar), python3: the layer corpus made by other tools;
# golang-go (bookworm's 1.19), golang-github-docker-spdystream-dev, python3-websockets: the SPDY (Go,
# moby/spdystream) and WebSocket clients of the streaming tests (test-e2e/tests/streaming.rs);
# openssl: the CA and certificate of the streaming TLS test (streaming_tls.rs);
# python3-prometheus-client: the OpenMetrics parser of the metrics test (test-e2e/tests/metrics.rs).
TEST_PKGS := $(RUN_PKGS) docker-registry busybox-static iptables umoci systemd tar libarchive-tools \
	python3 golang-go golang-github-docker-spdystream-dev python3-websockets openssl python3-prometheus-client
BENCH_PKGS := $(TEST_PKGS) containerd
CARGO     ?= cargo
# Test builds compile the image store's crash points in (release builds never do); clippy
# in .ci/run uses the same list.
TEST_FEATURES := rootstock-cri/failpoints,rootstock-imagestore/failpoints,rootstock-test-e2e/failpoints

# Installing on a node: `make install` (PREFIX, DESTDIR), `make image`, `make image-push`.
PREFIX    ?= /usr/local
DESTDIR   ?=
# Which build to install or put in the image: release (default) or debug.
PROFILE   ?= release
# Cargo features of that build (the e2e packaging tests pass the suite's own TEST_FEATURES).
FEATURES  ?=
CARGO_PROFILE := $(if $(filter debug,$(PROFILE)),dev,$(PROFILE))
VERSION   := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
IMAGE_DIR ?= target/image/rootstock
IMAGE_TAG ?= $(VERSION)
# Where `make image-push` sends the image, e.g. registry.example.com/rootstock.
IMAGE_REPO ?= localhost:5000/rootstock

.PHONY: run test test-reliability bench test-cgroup2 deps-run deps-test deps-bench host-prep build-bins install uninstall \
	image image-push tools

## Build in release mode and run the daemon in the foreground with the embedded defaults.
run: deps-run
	$(CARGO) build --release --bin rootstock --bin rootstock-monitor
	./target/release/rootstock --default-network

## Run the whole test suite (unit, integration and end-to-end tests).
test: deps-test host-prep tools
	# The e2e tests start the real daemon binary: build it first so it is never stale.
	$(CARGO) build --workspace --bins --features $(TEST_FEATURES)
	$(CARGO) test --workspace --no-fail-fast --features $(TEST_FEATURES)

## The long reliability runs (#19), one at a time: the crash matrix over every failpoint (the
## test build, which has them), then the 1,000-pod-cycle soak and 100 pods under kubelet-style
## relists against the release daemon (memory and latency figures are a release build's); each
## prints its figures. Not part of `make test` (which runs the matrix's fast subset).
test-reliability: deps-test host-prep
	$(CARGO) build --workspace --bins --features $(TEST_FEATURES)
	$(CARGO) test -p rootstock-test-e2e --features failpoints --test crash_matrix \
		-- --ignored --nocapture --test-threads=1
	$(CARGO) build --release --bins
	ROOTSTOCK_BIN=$(CURDIR)/target/release/rootstock $(CARGO) test -p rootstock-test-e2e \
		--features failpoints --test soak -- --ignored --nocapture --test-threads=1

## rootstock side by side with a private containerd (release build); prints the table and
## saves it with the JSON under target/bench-results/full/<unix time>/.
bench: deps-bench host-prep
	$(CARGO) build --release --bins
	python3 cri/hot-text/remap.py --check target/release/rootstock
	$(CARGO) bench -p rootstock-bench --bench compare

## The cgroup v2 suite (test-e2e/tests/cgroup2.rs) in a cgroup-v2-only qemu VM booted on the
## host's own root; installs qemu and Debian's backports kernel itself. Not part of `make test`.
test-cgroup2: deps-test
	CARGO=$(CARGO) scripts/cgroup2-vm.sh

deps-run:
	scripts/install-deps.sh $(RUN_PKGS)

deps-test:
	scripts/install-deps.sh $(TEST_PKGS)

deps-bench:
	scripts/install-deps.sh $(BENCH_PKGS)

host-prep:
	scripts/host-prep.sh

## The binaries `install` and `image` use (the whole workspace, as `make test` builds it, so
## both share one set of dependency features).
build-bins:
	$(CARGO) build --profile $(CARGO_PROFILE) --workspace --bins $(if $(FEATURES),--features $(FEATURES))

## Lay out rootstock and rootstock-monitor in $(PREFIX)/bin, rootstock.service in
## $(PREFIX)/lib/systemd/system and /etc/rootstock/config.toml.example, under $(DESTDIR).
## Then: systemctl daemon-reload && systemctl enable --now rootstock.
install: build-bins
	packaging/install.sh --root "$(DESTDIR)" --prefix "$(PREFIX)" --bin-dir target/$(PROFILE)

## Remove what `install` laid out (the configuration and the store stay).
uninstall:
	packaging/install.sh --uninstall --root "$(DESTDIR)" --prefix "$(PREFIX)"

## An OCI image layout $(IMAGE_DIR) holding $(IMAGE_DIR):$(IMAGE_TAG): busybox, the binaries,
## the unit, the default config and /opt/rootstock/install.sh (what the installer chart runs).
image: build-bins
	scripts/install-deps.sh umoci busybox-static
	packaging/build-image.sh "$(IMAGE_DIR)" "$(IMAGE_TAG)" target/$(PROFILE)

## Push the image to $(IMAGE_REPO):$(IMAGE_TAG) with skopeo (add --dest-tls-verify=false
## via SKOPEO_FLAGS for a plain-HTTP registry).
image-push: image
	scripts/install-deps.sh skopeo
	skopeo copy $(SKOPEO_FLAGS) "oci:$(IMAGE_DIR):$(IMAGE_TAG)" "docker://$(IMAGE_REPO):$(IMAGE_TAG)"

## Tools the tests use that Debian does not package: helm 3 in target/tools/.
tools:
	scripts/install-tools.sh
