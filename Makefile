# The two commands that matter (see README):
#   make demo   run the seed walk-through end to end on this machine
#   make test   install every tool the tests need (cached), lint, and run all tests
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo
export SECRETS_STORE_CACHE ?= $(HOME)/.cache/secrets-store-rs
export SECRETS_STORE_TOOLS_BIN ?= $(SECRETS_STORE_CACHE)/bin
# The AWS SDK must never reach for instance metadata on a developer machine or in CI.
export AWS_EC2_METADATA_DISABLED := true

.PHONY: test tools lint build unit crds demo bench fuzz soak clean-cache images

## test: everything CI runs (.ci/run calls exactly this)
test: tools lint deny
	$(CARGO) test --workspace --all-targets --locked

## tools: build/cache the real test peers (etcd, kube-apiserver, kube-controller-manager, moto, csi-sanity, helm, cargo-deny, the upstream driver)
tools:
	bash hack/tools.sh core

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

build:
	$(CARGO) build --workspace --locked

## crds: regenerate deploy/crds and the chart's copy from the Rust types
crds:
	$(CARGO) run -q -p secrets-store -- crds --out-dir deploy/crds
	$(CARGO) run -q -p secrets-store -- crds --out-dir charts/secrets-store-rs/crds

## demo: the seed walk-through end to end on a real node (kubelet + containerd + runc) on this
## machine, then tear it down. Needs root. Builds only the tools it needs (not `make tools`' test-only
## csi-sanity, cargo-deny, upstream driver); `hack/tools.sh` prints `==> building ...` for each.
DEMO_TOOLS := moto etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl helm node-packages
demo:
	@echo "==> make demo: a first run builds the pinned Kubernetes tools from source into $(SECRETS_STORE_CACHE)" \
	  "(kube-apiserver, kubelet, etcd, helm, ...: about 13 min on 2 cores) and the Rust workspace; later runs skip both." >&2
	bash hack/tools.sh $(DEMO_TOOLS)
	$(CARGO) build -p secrets-store --bin secrets-store --example demo --locked
	$(CARGO) run -q -p secrets-store --example demo --locked

## images: pause, nginx stand-in and secrets-store images as `docker save` tarballs in
## $(SECRETS_STORE_CACHE)/images for `ctr -n k8s.io images import` (no Docker engine, no registry).
## Packages target/release/secrets-store as it is (built only if missing; rebuild it first).
images:
	bash hack/images.sh

clean-cache:
	rm -rf $(SECRETS_STORE_CACHE)

.PHONY: deny
## deny: licenses, duplicate crates, one rustls crypto provider, crates.io only (deny.toml).
## No advisories check: the RustSec database cannot be fetched on these machines.
deny:
	bash hack/tools.sh cargo-deny
	$(CARGO) fetch --locked
	PATH="$(SECRETS_STORE_TOOLS_BIN):$$PATH" $(CARGO) deny --offline --locked check bans licenses sources

## fuzz: run every cargo-fuzz target for FUZZ_SECONDS each (nightly; see fuzz/README.md).
## New inputs go to fuzz/target/corpus/<target>; the committed seeds in fuzz/corpus/<target> are
## only read (make test replays them on stable). FUZZ_MAX_LEN is twice the largest input limit
## (the AWS provider's 64 KiB `objects` cap), so inputs reach every limit and go past it.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= objects objects_yaml jmes_path volume_context paths
FUZZ_MAX_LEN ?= 131072
fuzz:
	bash hack/tools.sh cargo-fuzz
	for t in $(FUZZ_TARGETS); do \
	  mkdir -p fuzz/target/corpus/$$t; \
	  PATH="$(SECRETS_STORE_TOOLS_BIN):$$PATH" $(CARGO) +nightly fuzz run --fuzz-dir fuzz $$t \
	    fuzz/target/corpus/$$t fuzz/corpus/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) -max_len=$(FUZZ_MAX_LEN) -timeout=10 -rss_limit_mb=4096; \
	done

## soak: the fault suite with long counts (1,000 SIGKILL-interrupted rotations, a 60 s AWS outage);
## make test runs the same tests with short counts. FAULTS_SEED=<n> replays a kill schedule.
SOAK_ROTATIONS ?= 1000
SOAK_OUTAGE_SECS ?= 60
soak: tools
	SOAK_ROTATIONS=$(SOAK_ROTATIONS) SOAK_OUTAGE_SECS=$(SOAK_OUTAGE_SECS) \
	  $(CARGO) test -p secrets-store --locked --test faults -- --nocapture --test-threads 1

## bench: the benchmark runner (crates/bench) in release mode on the real test cluster; rewrites the
## generated block of BENCHMARKS.md and docs/bench/bench.png. Not part of make test (its smoke test is).
bench: tools
	$(CARGO) build --release --locked -p secrets-store -p secrets-store-bench
	target/release/secrets-store-bench --write .
