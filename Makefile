# The two entry points the README documents: `make run` and `make test`; and `make bench`.
RUN_PKGS  := protobuf-compiler runc crun containernetworking-plugins
TEST_PKGS := $(RUN_PKGS) docker-registry busybox-static iptables umoci tar libarchive-tools python3
BENCH_PKGS := $(TEST_PKGS) containerd
CARGO     ?= cargo

.PHONY: run test bench deps-run deps-test deps-bench host-prep

## Build in release mode and run the daemon in the foreground with the embedded defaults.
run: deps-run
	$(CARGO) build --release --bin rootstock
	./target/release/rootstock --default-network

## Run the whole test suite (unit, integration and end-to-end tests).
test: deps-test host-prep
	# The e2e tests start the real daemon binary: build it first so it is never stale.
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace --no-fail-fast

## rootstock side by side with a private containerd (release build); prints the table and
## saves it with the JSON under target/bench-results/full/<unix time>/.
bench: deps-bench host-prep
	$(CARGO) build --release --bins
	$(CARGO) bench -p rootstock-test-e2e --bench compare

deps-run:
	scripts/install-deps.sh $(RUN_PKGS)

deps-test:
	scripts/install-deps.sh $(TEST_PKGS)

deps-bench:
	scripts/install-deps.sh $(BENCH_PKGS)

host-prep:
	scripts/host-prep.sh
