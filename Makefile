# The two entry points the README documents: `make run` and `make test`.
RUN_PKGS  := protobuf-compiler runc crun containernetworking-plugins
TEST_PKGS := $(RUN_PKGS) docker-registry busybox-static iptables umoci
CARGO     ?= cargo

.PHONY: run test deps-run deps-test host-prep

## Build in release mode and run the daemon in the foreground with the embedded defaults.
run: deps-run
	$(CARGO) build --release --bin rootstock
	./target/release/rootstock --default-network

## Run the whole test suite (unit, integration and end-to-end tests).
test: deps-test host-prep
	# The e2e tests start the real daemon binary: build it first so it is never stale.
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace --no-fail-fast

deps-run:
	scripts/install-deps.sh $(RUN_PKGS)

deps-test:
	scripts/install-deps.sh $(TEST_PKGS)

host-prep:
	scripts/host-prep.sh
